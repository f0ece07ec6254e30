package goplugin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/rlimit"
	"github.com/casparianflow/casparian/internal/sandbox"
	"github.com/casparianflow/casparian/internal/testenv"
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

// processesWithArg lists the live processes with arg in their command line.
func processesWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "\x00"+arg+"\x00") && !testenv.ProcessGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A fork bomb whose children leave the process group (setsid) fails its
// job with RESOURCE_LIMIT at the cap of processes; the process is not
// reused, every process it made is gone when Run returns, its cgroup too,
// and the next job runs in a new process.
func TestForkBomb(t *testing.T) {
	requireSandbox(t)
	e := newEnv(t, func(c *goplugin.Config) { c.Sandbox.MaxProcesses = 64 })
	inst := e.load(guest.Plugin{})
	secs := "6000." + strconv.Itoa(os.Getpid()) // marks the children
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "forkbomb", "secs": secs})
	ge := mustGuestError(t, err, guest.ErrResourceLimit)
	if !strings.Contains(ge.Hint, "cap of 64 processes") {
		t.Errorf("the error does not say what happened:\n%s", ge.Detail())
	}
	if pids := processesWithArg(secs); len(pids) > 0 {
		t.Errorf("%d processes of the fork bomb survived: %v", len(pids), pids)
	}
	if dirs, pids := sandbox.Leftovers(); len(dirs) > 0 || len(pids) > 0 {
		t.Errorf("cgroups left: %v, processes in them: %v", dirs, pids)
	}
	e.mustRun(inst, map[string]any{"mode": "emit", "batches": 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.rt.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if dirs, pids := sandbox.Leftovers(); len(dirs) > 0 || len(pids) > 0 {
		t.Errorf("after Close, cgroups left: %v, processes in them: %v", dirs, pids)
	}
}

// A plugin writes in its private directory (its working directory and
// TMPDIR); a write anywhere else fails the job with the permission error
// and leaves nothing.
func TestWriteOutsideScratchDir(t *testing.T) {
	requireSandbox(t)
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	e.mustRun(inst, map[string]any{"mode": "write"})
	outside := t.TempDir()
	for _, path := range []string{filepath.Join(outside, "outside"), filepath.Join(os.TempDir(), "cf-sandbox-test-"+strconv.Itoa(os.Getpid()))} {
		_, err := e.run(context.Background(), inst, map[string]any{"mode": "write", "path": path})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		msg := guest.JobError(42, err)
		if !strings.Contains(msg, "[Job 42] PLUGIN_ERROR: open "+path+": permission denied") || !strings.Contains(ge.Hint, "private directory") {
			t.Errorf("the error does not read as expected:\n%s", msg)
		}
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v)", path, err)
		}
	}
	// The process served all three jobs: a plugin error does not retire it.
	e.mustRun(inst, map[string]any{"mode": "input"})
}
