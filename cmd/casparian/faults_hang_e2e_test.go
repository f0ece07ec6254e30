package main_test

import (
	"bufio"

	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// hangOvershootBound is what is asserted of the time from a hung job's
// deadline to its conclusion: the goal, 1 s, under make test-faults; 3 s
// under make test (a short run under -race on a shared machine). Measured
// values are logged and recorded in docs/RELIABILITY.md.
func hangOvershootBound() time.Duration {
	if longFaults() {
		return time.Second
	}
	return 3 * time.Second
}

// A plugin that ignores cancellation (and SIGTERM) and never returns, in
// each guest kind, run through the daemons with a per-job deadline
// (worker --timeout 2s, sentinel --max-retries 0): the job is concluded
// FAILED with a TIMEOUT at the deadline plus at most a second; afterwards
// the worker's goroutines and child processes are back to what they were
// before the job, the hung plugin's processes are gone, and the next job
// runs. make test-faults: 5 trials per kind.
func TestClusterHungPlugin(t *testing.T) {
	trials := 1
	if longFaults() {
		trials = 5
	}
	for _, kind := range []string{"python", "goplugin", "wasm"} {
		t.Run(kind, func(t *testing.T) {
			var overs []time.Duration
			for range trials {
				overs = append(overs, hangTrial(t, kind))
				if t.Failed() {
					return
				}
			}
			t.Logf("%s: hung job concluded after its deadline by %s", kind, durations(overs))
		})
	}
}

// hangTrial runs one hung job of a guest kind and returns how long after
// its deadline it was concluded.
func hangTrial(t *testing.T, kind string) time.Duration {
	const deadline = 2 * time.Second
	c := newCluster(t)
	c.recordHistory()
	enqueue := func(name, content string) int64 {
		in := filepath.Join(c.dir, "in", name+".txt")
		if err := os.MkdirAll(filepath.Dir(in), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(in, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if kind == "python" {
			return c.enqueue("hang", filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "hang_plugin.py"),
				[]string{in})[0]
		}
		return c.enqueueBinary("hang", faultPlugin(t, kind), []string{in})[0]
	}
	enqueue("warm", "ok 1")
	c.startSentinel("--max-retries", "0")
	w, maddr := c.startWorker("w1", c.ipc, "--slots", "1", "--timeout", deadline.String())
	pid := w.cmd.Process.Pid
	c.waitDone(1, 3*time.Minute) // the runtime is warm (a WASM module compiled)

	// Baseline: settled goroutines and child processes.
	time.Sleep(time.Second)
	baseG, baseP := goroutines(t, maddr), descendants(pid)
	hung := enqueue("hung", "hang")
	var during []procInfo
	waitFor(t, time.Minute, "the hung job to be concluded", func() bool {
		if ps := descendants(pid); len(ps) > len(during) {
			during = ps
		}
		return c.job(hung).Status == store.StatusFailed
	})
	j := c.job(hung)
	if !strings.Contains(j.ErrorMessage, "TIMEOUT") {
		t.Errorf("the hung job failed with %q, want a TIMEOUT", j.ErrorMessage)
	}
	// From the worker starting the job to the sentinel recording
	// its conclusion, less the deadline.
	// The sentinel logs the conclusion just after recording it: wait
	// for the line.
	var started, concluded time.Time
	logged := func() bool {
		started, concluded = time.Time{}, time.Time{}
		for _, ev := range c.logEvents() {
			if ev.int("job_id") != hung {
				continue
			}
			if ev.msg == "job started" && started.IsZero() {
				started = ev.time
			}
			if ev.proc == "sentinel" && strings.Contains(ev.msg, "failed") && concluded.IsZero() {
				concluded = ev.time
			}
		}
		return !started.IsZero() && !concluded.IsZero()
	}
	waitFor(t, 10*time.Second, "the hung job's 'job started' and the sentinel's conclusion in the logs", logged)
	over := concluded.Sub(started) - deadline
	t.Logf("%s: hung job concluded %s after its deadline (%s from its start); plugin processes while it hung: %d",
		kind, over.Round(time.Millisecond), concluded.Sub(started).Round(time.Millisecond), len(during))
	if over > hangOvershootBound() {
		t.Errorf("%s: the hung job was concluded %s after its %s deadline, want at most %s (goal 1 s)",
			kind, over.Round(time.Millisecond), deadline, hangOvershootBound())
	}

	// Back to the baseline: goroutines (a little slack for the
	// runtime's own), child processes, and the hung ones gone.
	var g int
	var ps []procInfo
	settled := func() bool {
		g, ps = goroutines(t, maddr), descendants(pid)
		return g <= baseG+2 && len(ps) <= len(baseP)
	}
	until := time.Now().Add(10 * time.Second)
	for !settled() && time.Now().Before(until) {
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s: worker goroutines %d before the hung job, %d after; child processes %d before, %d while it hung, %d after",
		kind, baseG, g, len(baseP), len(during), len(ps))
	if g > baseG+2 || len(ps) > len(baseP) {
		t.Errorf("%s: the worker did not return to its baseline: goroutines %d → %d, child processes %d → %d: %v",
			kind, baseG, g, len(baseP), len(ps), ps)
	}
	// With one slot, every plugin process there while the job hung
	// ran it (go-plugin: the warm process it took).
	for _, p := range during {
		if q, ok := (procKey{p.pid, p.start}).alive(); ok {
			t.Errorf("%s: the hung plugin's process %d (%q) is still there", kind, q.pid, q.cmdline)
		}
	}

	// The worker still runs jobs.
	enqueue("next", "ok 1")
	waitFor(t, time.Minute, "the next job COMPLETED", func() bool { return c.counts()[store.StatusCompleted] == 2 })
	c.checkHistory(expect{failed: map[int64]string{hung: "TIMEOUT"}, rows: constRows(1)})
	return over
}

// descendants lists the processes below pid.
func descendants(pid int) []procInfo {
	all := listProcs()
	var out []procInfo
	var walk func(int)
	walk = func(parent int) {
		for _, p := range all {
			if p.ppid == parent && p.state != 'Z' {
				if full, ok := readProc(p.pid); ok {
					p = full
				}
				out = append(out, p)
				walk(p.pid)
			}
		}
	}
	walk(pid)
	return out
}

// goroutines reads go_goroutines from a daemon's /metrics, on a fresh
// connection each time (a kept-alive one holds a goroutine of its own).
func goroutines(t *testing.T, addr string) int {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatalf("no go_goroutines on %s/metrics", addr)
	return 0
}
