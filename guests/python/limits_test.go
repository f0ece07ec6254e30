package python_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/rlimit"
)

// A plugin that allocates 10 GB, opens thousands of files, burns CPU or
// writes a huge file fails its job with a clear error; the host is
// untouched and the next job runs.
func TestProcessLimits(t *testing.T) {
	e := newEnv(t, func(c *python.Config) {
		c.ProcessLimits = rlimit.Limits{AddressSpace: 2 << 30, OpenFiles: 256, CPUSeconds: 2, FileSize: 8 << 20}
	})
	ctx := context.Background()
	cases := []struct {
		name, src string
		kind      error
		want      string
	}{
		{"10 GB allocation", `
class Handler:
    def execute(self, path):
        big = bytearray(10 * 1024 * 1024 * 1024)
        return None
`, guest.ErrResourceLimit, "MemoryError"},
		{"thousands of open files", `
class Handler:
    def execute(self, path):
        files = [open(path) for _ in range(5000)]
        return None
`, guest.ErrPlugin, "Too many open files"},
		{"a huge file", `
import os
class Handler:
    def execute(self, path):
        with open(os.path.join(self.config["dir"], "huge.bin"), "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
        return None
`, guest.ErrPlugin, "File too large"},
	}
	// The huge-file plugin reads self.config: give it the BasePlugin shape.
	cases[2].src = strings.Replace(cases[2].src, "class Handler:", "from casparian_flow.sdk import BasePlugin\nclass Handler(BasePlugin):", 1)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.run(ctx, c.src)
			ge := mustGuestError(t, err, c.kind)
			if !strings.Contains(ge.Message+ge.Traceback+ge.Stderr, c.want) {
				t.Errorf("error does not mention %q:\n%s", c.want, ge.Detail())
			}
		})
	}
	t.Run("CPU time", func(t *testing.T) {
		start := time.Now()
		_, err := e.run(ctx, `
class Handler:
    def execute(self, path):
        n = 0
        while True:
            n += 1
`)
		ge := mustGuestError(t, err, guest.ErrCrashed)
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("a 2 s CPU limit stopped the loop after %s", d)
		}
		if !strings.Contains(ge.Message, "signal") && !strings.Contains(ge.Message, "CPU") {
			t.Errorf("message %q does not say how it died", ge.Message)
		}
	})
	// The runtime still works.
	if _, err := e.run(ctx, "class Handler:\n    def execute(self, path):\n        return None\n"); err != nil {
		t.Fatal(guest.JobError(1, err))
	}
}
