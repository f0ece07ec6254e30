package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/casparianflow/casparian/internal/fault"
	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// faultTrials is how many times each crash point is tried: 1 in make test,
// more with CASPARIAN_FAULT_TRIALS (make test-faults).
func faultTrials() int {
	if n, err := strconv.Atoi(os.Getenv("CASPARIAN_FAULT_TRIALS")); err == nil && n > 0 {
		return n
	}
	return 1
}

// A worker killed with SIGKILL while the plugin runs, while a batch is in a
// sink's temporary file, or after its outputs were renamed into place but
// before its CONCLUDE: the job runs again on another worker, ends COMPLETED
// with exactly one output file, and no temporary file is left.
func TestWorkerCrashPoints(t *testing.T) {
	for _, point := range []string{fault.GuestRun, fault.SinkWrite, fault.AfterCommit} {
		t.Run(point, func(t *testing.T) {
			for trial := range faultTrials() {
				crashTrial(t, point, trial)
				if t.Failed() {
					return
				}
			}
		})
	}
}

func crashTrial(t *testing.T, point string, trial int) {
	c := newCluster(t)
	c.recordHistory()
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 2, func(i int) string { return "0.2 6" })
	ids := c.enqueue("slow", plugin, inputs)
	c.startSentinel("--lease", "3s")
	crashed, _ := c.startWorkerEnv("doomed", c.tcp, []string{"CASPARIAN_FAULT=" + point}, "--slots", "1")
	select {
	case <-crashed.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("trial %d: the worker did not crash at %s", trial, point)
	}
	if !strings.Contains(crashed.cmd.ProcessState.String(), "killed") {
		t.Fatalf("trial %d: the worker ended with %s, want killed", trial, crashed.cmd.ProcessState)
	}
	c.startWorker("rescuer", c.ipc)
	c.waitDone(int64(len(ids)), 2*time.Minute)
	rerun := 0
	for _, id := range ids {
		if c.job(id).Attempt >= 2 {
			rerun++
		}
	}
	if rerun != 1 {
		t.Errorf("trial %d: %d jobs ran more than once, want exactly the one the crash interrupted", trial, rerun)
	}
	// All COMPLETED, one output each with its 6 rows, no temporary file.
	c.checkHistory(expect{rows: constRows(6)})
}

// constRows is an expect.rows for jobs that all write n rows.
func constRows(n int64) func(int64) int64 { return func(int64) int64 { return n } }

// A poison job (its plugin process dies every time) is tried exactly
// 1 + --max-retries times with backoff, then FAILED with the last error;
// the other jobs all complete meanwhile.
func TestPoisonJobRetries(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "poison_plugin.py")
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 12, func(i int) string {
		if i == 0 {
			return "poison"
		}
		return "ok"
	})
	ids := c.enqueue("poison", plugin, inputs)
	c.startSentinel("--max-retries", "4", "--retry-backoff", "200ms")
	c.startWorker("w1", c.tcp)
	waitFor(t, 3*time.Minute, "11 jobs COMPLETED and the poison one FAILED", func() bool {
		m := c.counts()
		return m[store.StatusCompleted] == 11 && m[store.StatusFailed] == 1
	})
	j := c.job(ids[0])
	if j.Status != store.StatusFailed || j.Attempt != 5 || j.RetryCount != 4 {
		t.Errorf("poison job: %s after %d attempts (%d retries), want FAILED after exactly 5 attempts", j.Status, j.Attempt, j.RetryCount)
	}
	if !strings.Contains(j.ErrorMessage, "9") || !strings.Contains(j.ErrorMessage, "CRASHED") {
		t.Errorf("poison job's last error %q does not say how the plugin died", j.ErrorMessage)
	}
	c.checkHistory(expect{failed: map[int64]string{ids[0]: "CRASHED"}, rows: constRows(1)})
}

// SIGTERM to a worker running 4 jobs: the two that finish within the drain
// deadline complete; the two that cannot are aborted and handed back
// (requeued, not failed), and run to completion on another worker. No job
// stays RUNNING, and each has exactly one output.
func TestWorkerDrain(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 4, func(i int) string {
		if i < 2 {
			return "2 4" // done within the 6 s drain deadline
		}
		return "60 4" // not: aborted and requeued
	})
	ids := c.enqueue("slow", plugin, inputs)
	c.startSentinel()
	w, _ := c.startWorker("draining", c.tcp, "--slots", "4", "--drain-timeout", "6s")
	waitFor(t, time.Minute, "4 jobs running", func() bool { return c.counts()[store.StatusRunning] == 4 })
	w.signal(syscall.SIGTERM)
	if rc := w.wait(t, time.Minute); rc != 0 {
		t.Errorf("the draining worker exited with %d", rc)
	}
	m := c.counts()
	if m[store.StatusRunning] != 0 || m[store.StatusCompleted] != 2 || m[store.StatusQueued] != 2 {
		t.Fatalf("after the drain: %v, want 2 COMPLETED, 2 QUEUED, none RUNNING", m)
	}
	// The long ones are handed back, not failed: shorten them and let
	// another worker finish them.
	for _, in := range inputs[2:] {
		if err := os.WriteFile(in, []byte("0 4"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c.startWorker("next", c.tcp)
	c.waitDone(int64(len(ids)), 2*time.Minute)
	c.checkHistory(expect{rows: constRows(4)})
}

// A full disk while a Parquet file is written: the job fails with a
// retriable SINK error, leaves no partial or temporary file, and once space
// is back its retry completes. Two ways to fill the disk: the worker's file
// size capped at 64 KiB (RLIMIT_FSIZE, as a small filesystem would cap it),
// and a real 256 KiB tmpfs as the worker's --output, enlarged to 64 MiB
// afterwards (needs root or CAP_SYS_ADMIN; without them the file-size
// variant runs in its place, and the test log says why).
func TestDiskFullDuringWrite(t *testing.T) {
	t.Run("file-size-limit", diskFullFileSize)
	t.Run("tmpfs", func(t *testing.T) {
		c := newCluster(t)
		dir := filepath.Join(c.dir, "small")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", dir).CombinedOutput(); err != nil {
			t.Logf("cannot mount a tmpfs (%v: %s): running the file-size variant instead", err, strings.TrimSpace(string(out)))
			diskFullFileSize(t)
			return
		}
		// Registered before the daemons start, so it runs after they are stopped.
		t.Cleanup(func() {
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v: %s; detaching it", dir, err, out)
				_ = exec.Command("umount", "-l", dir).Run()
			}
		})
		c.recordHistory()
		plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
		ids := c.enqueue("slow", plugin, writeInputs(t, filepath.Join(c.dir, "in"), 1, func(int) string { return "0 400000" }))
		c.startSentinel("--retry-backoff", "3s")
		c.startWorker("w1", c.tcp, "--output", dir)
		waitFor(t, time.Minute, "the write to fail and the job to be requeued", func() bool {
			j := c.job(ids[0])
			return j.Status == store.StatusQueued && j.RetryCount == 1
		})
		j := c.job(ids[0])
		if !strings.Contains(j.LastError, "SINK") || !strings.Contains(j.LastError, "no space left on device") {
			t.Errorf("last error %q, want a SINK failure: no space left on device", j.LastError)
		}
		// Nothing left behind: no file, and all the space free again (a
		// temporary file deleted but still open would hold its blocks).
		var left []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				left = append(left, p)
			}
			return nil
		})
		if len(left) != 0 {
			t.Errorf("files on the full filesystem after the failed write: %v", left)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(dir, &fs); err != nil {
			t.Fatal(err)
		}
		if fs.Bfree != fs.Blocks {
			t.Errorf("%d of %d blocks of the tmpfs still used after the failed write", fs.Blocks-fs.Bfree, fs.Blocks)
		}
		t.Logf("failed write: %s; tmpfs blocks free %d of %d", firstLine(j.LastError), fs.Bfree, fs.Blocks)
		// Space is back.
		if out, err := exec.Command("mount", "-o", "remount,size=64m", dir).CombinedOutput(); err != nil {
			t.Fatalf("remount %s with 64 MiB: %v: %s", dir, err, out)
		}
		c.waitDone(1, time.Minute)
		c.checkHistory(expect{rows: constRows(400000), outDirs: []string{dir}})
	})
}

// diskFullFileSize is the RLIMIT_FSIZE variant of TestDiskFullDuringWrite.
func diskFullFileSize(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	plugin := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py")
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 1, func(int) string { return "0 400000" })
	ids := c.enqueue("slow", plugin, inputs)
	c.startSentinel("--retry-backoff", "3s")
	w, _ := c.startWorker("w1", c.tcp)
	// The soft limit only, so that it can be lifted again.
	setFSize := func(cur uint64) {
		t.Helper()
		var lim unix.Rlimit
		if err := unix.Prlimit(w.cmd.Process.Pid, unix.RLIMIT_FSIZE, nil, &lim); err != nil {
			t.Fatal(err)
		}
		lim.Cur = min(cur, lim.Max)
		if err := unix.Prlimit(w.cmd.Process.Pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
			t.Fatal(err)
		}
	}
	setFSize(64 << 10)
	waitFor(t, time.Minute, "the write to fail and the job to be requeued", func() bool {
		j := c.job(ids[0])
		return j.Status == store.StatusQueued && j.RetryCount == 1
	})
	j := c.job(ids[0])
	if !strings.Contains(j.LastError, "SINK") {
		t.Errorf("last error %q, want a SINK failure", j.LastError)
	}
	if got := c.outputs(""); len(got) != 0 { // also fails on temporary leftovers
		t.Errorf("outputs after the failed write: %v", got)
	}
	// Space is back.
	setFSize(unix.RLIM_INFINITY)
	c.waitDone(1, time.Minute)
	c.checkHistory(expect{rows: constRows(400000)})
}
