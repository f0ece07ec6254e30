package python_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/rlimit"
	"github.com/casparianflow/casparian/internal/sandbox"
	"github.com/casparianflow/casparian/internal/testenv"
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

// requireSandbox fails the test when this Linux machine lacks the pids
// cgroup or Landlock the sandbox relies on (CI has both); it skips only
// outside Linux, without /sys/fs/cgroup, or without Landlock at all.
func requireSandbox(t *testing.T) sandbox.Status {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the sandbox is Linux only")
	}
	if _, err := os.Stat("/sys/fs/cgroup"); err != nil {
		t.Skip("no /sys/fs/cgroup on this machine")
	}
	st := sandbox.Check(nil)
	if st.LandlockABI < 1 {
		t.Skip("the kernel has no Landlock")
	}
	if st.CgroupVersion == 0 {
		t.Fatalf("no usable pids cgroup for the sandbox: %s", st.CgroupReason)
	}
	return st
}

// processesUnder lists the live processes whose command line mentions s.
func processesUnder(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) && !testenv.ProcessGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// scratchDir is the directory a plugin printed as "scratch <dir>".
func scratchDir(t *testing.T, rec *testenv.Recorder) string {
	t.Helper()
	for _, l := range strings.Split(rec.LogText("stdout"), "\n") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(l), "scratch "); ok {
			return d
		}
	}
	t.Fatalf("the plugin did not print its scratch dir; stdout:\n%s", rec.LogText("stdout"))
	return ""
}

// A fork bomb whose children leave the process group (setsid) fails its
// job with RESOURCE_LIMIT at the cap of processes; every process it made
// is gone when Run returns, its cgroup too, and the next job runs.
func TestForkBomb(t *testing.T) {
	requireSandbox(t)
	e := newEnv(t, func(c *python.Config) { c.Sandbox.MaxProcesses = 64 })
	rec, err := e.run(context.Background(), `
import os, tempfile, time
class Handler:
    def execute(self, path):
        print("scratch", tempfile.gettempdir(), flush=True)
        while True:
            if os.fork() == 0:
                os.setsid()
                time.sleep(600)
                os._exit(0)
`)
	ge := mustGuestError(t, err, guest.ErrResourceLimit)
	t.Logf("%s", guest.JobError(42, err))
	if !strings.Contains(ge.Message, "Resource temporarily unavailable") || !strings.Contains(ge.Hint, "cap of 64 processes") {
		t.Errorf("the error does not say what happened:\n%s", ge.Detail())
	}
	if pids := processesUnder(scratchDir(t, rec)); len(pids) > 0 {
		t.Errorf("%d processes of the fork bomb survived: %v", len(pids), pids)
	}
	if dirs, pids := sandbox.Leftovers(); len(dirs) > 0 || len(pids) > 0 {
		t.Errorf("cgroups left: %v, processes in them: %v", dirs, pids)
	}
	if _, err := e.run(context.Background(), "class Handler:\n    def execute(self, path):\n        return None\n"); err != nil {
		t.Fatal(guest.JobError(1, err))
	}
}

// A plugin writes in its scratch directory (its working directory and
// TMPDIR) and reads its input; a write anywhere else fails the job with
// the permission error and leaves nothing; so does a TCP connection.
func TestWriteOutsideScratchDir(t *testing.T) {
	requireSandbox(t)
	e := newEnv(t, nil)
	outside := t.TempDir()
	ctx := context.Background()

	rec, err := e.run(ctx, `
import os, tempfile, pyarrow as pa, pyarrow.csv as pc
class Handler:
    def execute(self, path):
        d = tempfile.gettempdir()
        assert os.path.samefile(d, os.getcwd()), (d, os.getcwd())
        os.makedirs(os.path.join(d, "sub"))
        with open(os.path.join(d, "sub", "part.csv"), "wb") as f:
            f.write(open(path, "rb").read())
        os.rename(os.path.join(d, "sub", "part.csv"), "all.csv")
        with tempfile.NamedTemporaryFile() as f:
            f.write(b"x")
        return pc.read_csv("all.csv")
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("output") != 3 {
		t.Errorf("%d rows, want 3", rec.Rows("output"))
	}

	for _, c := range []struct{ name, code, path string }{
		{"new file in a directory outside", `open(%q, "w").write("x")`, filepath.Join(outside, "outside")},
		{"directory outside", `os.mkdir(%q)`, filepath.Join(outside, "newdir")},
		{"file in /tmp", `open(%q, "w").write("x")`, filepath.Join(os.TempDir(), "cf-sandbox-test-"+strconv.Itoa(os.Getpid()))},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.run(ctx, fmt.Sprintf("import os\nclass Handler:\n    def execute(self, path):\n        "+c.code+"\n", c.path))
			ge := mustGuestError(t, err, guest.ErrPlugin)
			msg := guest.JobError(42, err)
			t.Logf("%s", msg)
			if !strings.Contains(msg, "[Job 42] PLUGIN_ERROR: PermissionError: [Errno 13] Permission denied: '"+c.path+"'") ||
				!strings.Contains(ge.Hint, "scratch directory") {
				t.Errorf("the error does not read as expected:\n%s", msg)
			}
			if _, err := os.Stat(c.path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists (%v)", c.path, err)
			}
		})
	}

	t.Run("TCP", func(t *testing.T) {
		if sandbox.LandlockABI() < 4 {
			t.Skip("this kernel's Landlock does not restrict TCP")
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		src := fmt.Sprintf("import socket\nclass Handler:\n    def execute(self, path):\n        socket.create_connection(('127.0.0.1', %d), timeout=10).close()\n", ln.Addr().(*net.TCPAddr).Port)
		_, err = e.run(ctx, src)
		mustGuestError(t, err, guest.ErrPlugin)
		if !strings.Contains(err.Error(), "Permission denied") {
			t.Errorf("%v", err)
		}
		open := newEnv(t, func(c *python.Config) { c.Sandbox.AllowNetwork = true })
		if _, err := open.run(ctx, src); err != nil {
			t.Errorf("with AllowNetwork: %s", guest.JobError(42, err))
		}
	})
	if dirs, pids := sandbox.Leftovers(); len(dirs) > 0 || len(pids) > 0 {
		t.Errorf("cgroups left: %v, processes in them: %v", dirs, pids)
	}
}
