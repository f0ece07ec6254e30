// Package sandbox confines a subprocess guest (a Python shim, a go-plugin
// executable) beyond its resource limits, so that a fork bomb or a write
// outside the job's directory fails the job, not the host:
//
//   - Processes: every guest process gets a cgroup of its own with the pids
//     controller (cgroup v2, or v1's pids hierarchy), whose pids.max caps the
//     processes and threads the guest and everything it starts may have. The
//     kernel enforces it for root too, unlike RLIMIT_NPROC. When the guest
//     ends, every process left in its cgroup is killed (nothing a double
//     fork hid survives) and the cgroup is removed.
//   - Files: Landlock (Linux 5.13+) restricts the guest to reading and
//     executing anywhere, and writing only under its scratch directory (plus
//     /dev/null, /dev/zero, /dev/full and Options.Writable). A write
//     elsewhere fails with EACCES (Python: PermissionError).
//   - Network: where the kernel supports it (Landlock ABI 4+, Linux 6.7+),
//     TCP bind and connect are denied (UDP too from ABI 10), unless
//     Options.AllowNetwork.
//   - Signals and abstract Unix sockets: from Landlock ABI 6 on, the guest
//     cannot signal or connect to processes outside its sandbox.
//
// Landlock has to be applied by the process itself before it executes the
// guest, so the host starts itself (/proc/self/exe) as a small wrapper: the
// package's init function notices the CASPARIAN_SANDBOX_EXEC environment
// variable, joins the guest's cgroup, applies the resource limits and
// Landlock, and replaces itself (execve) with the guest command. Any binary
// that runs subprocess guests imports this package, so the wrapper is always
// there; nothing else of the binary runs in the wrapper but package
// initialisation.
//
// Both mechanisms degrade: without a usable pids cgroup the processes are
// capped by RLIMIT_NPROC only (which root ignores), without Landlock writes
// are not restricted; each is logged once at warn level.
package sandbox

import (
	"log/slog"
	"os/exec"
	"sync"

	"github.com/casparianflow/casparian/internal/rlimit"
)

// EnvExec is the environment variable that makes a process the sandbox
// wrapper; its value is the JSON spec of what to apply before exec.
const EnvExec = "CASPARIAN_SANDBOX_EXEC"

// EnvCgroupParent names a cgroup directory (under a cgroup v2 or v1 pids
// mount) under which the guests' cgroups are made instead of the host's own
// cgroup. Use it where the host's own cgroup cannot have children with the
// pids controller, e.g. a systemd service with Delegate=pids and
// DelegateSubgroup=host: point it at the service's cgroup.
const EnvCgroupParent = "CASPARIAN_CGROUP_PARENT"

// DefaultMaxProcesses is the default pids.max of a guest's cgroup: processes
// and threads. pyarrow alone starts a thread per core (plus an I/O pool), so
// it leaves room for big machines while a fork bomb stops early.
const DefaultMaxProcesses = 512

// exitWrapperFailed is the wrapper's exit status when it could not sandbox
// or start the guest (126 like a shell's "cannot execute").
const exitWrapperFailed = 126

// Options configure the sandbox of the guest processes. The zero value is
// the default.
type Options struct {
	// MaxProcesses caps the processes and threads of one guest process and
	// everything it starts (pids.max of its cgroup). Default
	// DefaultMaxProcesses.
	MaxProcesses int
	// AllowNetwork lets the guest bind and connect TCP (and UDP) sockets.
	// By default both are denied where the kernel can deny them.
	AllowNetwork bool
	// Writable are more files or directories the guest may write besides
	// its scratch directory, e.g. /dev/shm for Python's multiprocessing.
	// Paths that do not exist are ignored.
	Writable []string
}

func (o Options) maxProcesses() int {
	if o.MaxProcesses <= 0 {
		return DefaultMaxProcesses
	}
	return o.MaxProcesses
}

// spec is what the wrapper applies; it travels in EnvExec as JSON.
type spec struct {
	// Path is the executable to run; the wrapper's arguments after its own
	// argv[0] are the guest's argv.
	Path string `json:"path"`
	// Cgroup is the directory of the cgroup to join; "" for none.
	Cgroup string `json:"cgroup,omitempty"`
	// Landlock: apply it (when the kernel supports it).
	Landlock bool `json:"landlock"`
	// Writable are the paths the guest may write: its scratch directory first.
	Writable []string `json:"writable,omitempty"`
	// Network: leave TCP and UDP alone.
	Network bool `json:"network,omitempty"`
	// Limits are the resource limits, set right before exec.
	Limits rlimit.Limits `json:"limits"`
}

// Guest is the sandbox of one guest process. A nil *Guest is valid and
// sandboxes nothing.
type Guest struct {
	dir  string // the scratch directory
	opts Options
	cg   *cgroup // nil: no cgroup (unavailable)

	closeOnce sync.Once
	closeErr  error
}

// New prepares the sandbox of one guest process whose scratch directory
// (where it may write) is dir: it makes the guest's cgroup when cgroups are
// usable. log receives the one-time warnings about what is unavailable.
// Close the Guest when the process has ended.
func New(opts Options, dir string, log *slog.Logger) (*Guest, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return newGuest(opts, dir, log)
}

// Wrap changes cmd, whose Path, Args and Env are set, to start through the
// sandbox wrapper, which applies limits (rlimits) itself right before the
// guest runs. It reports whether it did; a nil Guest does not, and the
// caller applies the limits itself.
func (g *Guest) Wrap(cmd *exec.Cmd, limits rlimit.Limits) (bool, error) {
	if g == nil || cmd.Err != nil {
		return false, nil
	}
	return g.wrap(cmd, limits)
}

// ForkFailures reports how many times a process of the guest failed to fork
// (or start a thread) because the guest reached MaxProcesses.
func (g *Guest) ForkFailures() int64 {
	if g == nil || g.cg == nil {
		return 0
	}
	return g.cg.forkFailures()
}

// MaxProcesses is the guest's cap on processes and threads (0 when no
// cgroup enforces one).
func (g *Guest) MaxProcesses() int {
	if g == nil || g.cg == nil {
		return 0
	}
	return g.opts.maxProcesses()
}

// Cgroup is the directory of the guest's cgroup ("" when there is none).
func (g *Guest) Cgroup() string {
	if g == nil || g.cg == nil {
		return ""
	}
	return g.cg.dir
}

// Close kills every process left in the guest's cgroup and removes the
// cgroup. Call it once the guest process has ended. It is idempotent.
func (g *Guest) Close() error {
	if g == nil || g.cg == nil {
		return nil
	}
	g.closeOnce.Do(func() { g.closeErr = g.cg.destroy() })
	return g.closeErr
}
