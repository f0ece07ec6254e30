package goplugin_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/rlimit"
)

// A plugin process that allocates 10 GB or burns CPU past its limits dies
// and fails its job; the host is untouched and the next job runs.
func TestProcessLimits(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) {
		c.ProcessLimits = rlimit.Limits{AddressSpace: 2 << 30, CPUSeconds: 2}
	})
	inst := e.load(guest.Plugin{})
	t.Run("10 GB allocation", func(t *testing.T) {
		_, err := e.run(context.Background(), inst, map[string]any{"mode": "alloc", "gb": 10})
		ge := mustGuestError(t, err, guest.ErrResourceLimit)
		if !strings.Contains(ge.Message, "out of memory") {
			t.Errorf("no word of the memory limit:\n%s", ge.Detail())
		}
	})
	t.Run("CPU time", func(t *testing.T) {
		start := time.Now()
		_, err := e.run(context.Background(), inst, map[string]any{"mode": "spin"})
		ge := mustGuestError(t, err, guest.ErrResourceLimit)
		if !strings.Contains(ge.Message, "of CPU time (limit 2s)") {
			t.Errorf("message %q does not name the CPU limit", ge.Message)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("a 2 s CPU limit stopped the loop after %s", d)
		}
	})
	e.mustRun(inst, map[string]any{"mode": "emit", "batches": 1})
}
