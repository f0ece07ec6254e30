//go:build !linux

package sandbox

import (
	"errors"
	"log/slog"
	"os/exec"

	"github.com/casparianflow/casparian/internal/rlimit"
)

// Outside Linux there is no sandbox: New returns a nil Guest, which
// sandboxes nothing.
func newGuest(Options, string, *slog.Logger) (*Guest, error) { return nil, nil }

// errUnsupported is what wrapping a command returns outside Linux.
var errUnsupported = errors.New("sandbox: not supported on this OS")

func (g *Guest) wrap(*exec.Cmd, rlimit.Limits) (bool, error) { return false, errUnsupported }

type cgroup struct{ dir string }

func (c *cgroup) forkFailures() int64 { return 0 }
func (c *cgroup) destroy() error      { return nil }

// LandlockABI is 0 outside Linux.
func LandlockABI() int { return 0 }

// Status tells what the sandbox can use on this machine: nothing here.
type Status struct {
	CgroupVersion int
	CgroupReason  string
	CgroupParent  string
	LandlockABI   int
}

// Check reports that nothing is available outside Linux.
func Check(*slog.Logger) Status { return Status{CgroupReason: "not Linux"} }

// Leftovers is empty outside Linux.
func Leftovers() ([]string, []int) { return nil, nil }
