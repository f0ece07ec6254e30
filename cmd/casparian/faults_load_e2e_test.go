package main_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// longFaults is true under make test-faults (CASPARIAN_FAULT_TRIALS > 1):
// the scenarios below then run their long, measuring variants.
func longFaults() bool { return faultTrials() > 1 }

// resumeBound is what is asserted of "dispatch resumes within 2 s of a
// sentinel restart": the goal under make test-faults; 10 s under make test
// (a short run under -race on a loaded 2-core machine). Measured values are
// logged and recorded in docs/RELIABILITY.md.
func resumeBound() time.Duration {
	if longFaults() {
		return 2 * time.Second
	}
	return 10 * time.Second
}

// kill -9 of the sentinel while thousands of small jobs run on two workers,
// then a restart on the same database and endpoints (as a supervisor would
// restart it): nothing is lost, stuck or committed twice (checkHistory), and
// dispatching resumes quickly. Measured: from the restarted process's start
// to its first DISPATCH, and to the first COMPLETED of a job it dispatched.
func TestClusterSentinelKilledUnderLoad(t *testing.T) {
	// make test: one kill, restarted a second later (as a supervisor
	// would); make test-faults: five, restarted at once, after 2, 5 and
	// 10 s, and at once.
	jobs, outages := 2000, []time.Duration{time.Second}
	if longFaults() {
		jobs, outages = 5000, []time.Duration{0, 2 * time.Second, 5 * time.Second, 10 * time.Second, 0}
	}
	kills := len(outages)
	c := newCluster(t)
	c.recordHistory()
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), jobs, func(i int) string { return fmt.Sprintf("ok %d", 1+i%7) })
	ids := c.enqueueBinary("fast", faultPlugin(t, "goplugin"), inputs)
	rows := map[int64]int64{}
	for i, id := range ids {
		rows[id] = int64(1 + i%7)
	}
	c.startSentinel()
	c.startWorker("worker-a", c.tcp, "--slots", "4")
	c.startWorker("worker-b", c.ipc, "--slots", "4")

	var resumes, firstDone []time.Duration
	for k := range kills {
		// Kill at evenly spaced points of the run.
		at := int64(jobs * (k + 1) / (kills + 2))
		waitFor(t, 5*time.Minute, fmt.Sprintf("%d jobs COMPLETED", at), func() bool { return c.counts()[store.StatusCompleted] >= at })
		before := c.counts()
		c.sentinel.signal(syscall.SIGKILL)
		c.sentinel.wait(t, 10*time.Second)
		time.Sleep(outages[k])
		c.startSentinel()
		s := c.sentinel
		var dispatched time.Time
		waitFor(t, time.Minute, "the restarted sentinel's first DISPATCH", func() bool {
			for _, ev := range parseLog(s) {
				if ev.msg == "job dispatched" {
					dispatched = ev.time
					return true
				}
			}
			return false
		})
		// The first COMPLETED of a job this sentinel dispatched (not one
		// a worker finished meanwhile and reports on reconnecting).
		var completed time.Time
		waitFor(t, time.Minute, "the first COMPLETED of a job the restarted sentinel dispatched", func() bool {
			mine := map[[2]int64]bool{}
			for _, ev := range parseLog(s) {
				switch ev.msg {
				case "job dispatched":
					mine[[2]int64{ev.int("job_id"), ev.int("attempt")}] = true
				case "job completed":
					if mine[[2]int64{ev.int("job_id"), ev.int("attempt")}] {
						completed = ev.time
						return true
					}
				}
			}
			return false
		})
		resume, done := dispatched.Sub(s.started), completed.Sub(s.started)
		listening := time.Time{}
		for _, ev := range parseLog(s) {
			if ev.msg == "sentinel listening" {
				listening = ev.time
				break
			}
		}
		t.Logf("outage %s: kill %d at %d COMPLETED (%d RUNNING): restarted sentinel listening after %s, first DISPATCH after %s, first COMPLETED after %s",
			outages[k], k+1, before[store.StatusCompleted], before[store.StatusRunning], listening.Sub(s.started).Round(time.Millisecond),
			resume.Round(time.Millisecond), done.Round(time.Millisecond))
		resumes, firstDone = append(resumes, resume), append(firstDone, done)
		if resume > resumeBound() {
			t.Errorf("dispatch resumed %s after the restart, want at most %s (goal: 2 s)", resume.Round(time.Millisecond), resumeBound())
		}
	}
	c.waitDone(int64(jobs), 10*time.Minute)
	t.Logf("%d jobs, %d sentinel kills: resume (restart → first DISPATCH) %s; restart → first COMPLETED %s",
		jobs, kills, durations(resumes), durations(firstDone))
	c.checkHistory(expect{topics: []string{"rows"}, rows: func(id int64) int64 { return rows[id] }})
}

// poisonRatioBound is what make test asserts of the healthy jobs'
// throughput beside a poison plugin, relative to a clean run (a short run
// under -race on a shared machine is noisy); make test-faults asserts the
// goal, 90%, on the median of its trials.
func poisonRatioBound() float64 {
	if longFaults() {
		return 0.90
	}
	return 0.50
}

// A poison plugin beside healthy jobs: the healthy jobs' throughput with a
// poison plugin's jobs interleaved (its process dies on every run; each job
// is retried with backoff up to the default 5 retries, then FAILED), against
// a clean run of the same jobs on the same cluster shape (a sentinel, two
// workers of 4 slots). Throughput: healthy jobs per second from the first
// one's claim to the last one's end. After 3 crashes in a row the sentinel
// runs the poison plugin's jobs one at a time, --crash-loop-pause apart
// (sentinel/crashloop.go): without that, 20 poison jobs among 300 took up to
// 74% of the healthy throughput (their crashed attempts held the slots).
//
// make test: go-plugin, 300 healthy and 10 poison jobs, a 200 ms retry
// backoff and crash-loop pause (every poison attempt is due during the
// run). make test-faults: the defaults (2 s backoff, 1 s pause); go-plugin,
// 3,000 and 20, 3 trials; and Python (a process per job for healthy jobs
// too), 300 and 10, one trial (it takes 3 minutes).
func TestClusterPoisonPluginThroughput(t *testing.T) {
	type variant struct {
		kind            string
		healthy, poison int
		backoff, pause  string
		trials          int
	}
	vs := []variant{{"goplugin", 300, 10, "200ms", "200ms", 1}}
	if longFaults() {
		vs = []variant{{"goplugin", 3000, 20, "2s", "1s", 3}, {"python", 300, 10, "2s", "1s", 1}}
	}
	for _, v := range vs {
		t.Run(v.kind, func(t *testing.T) {
			var ratios []float64
			for trial := range v.trials {
				// Alternate which run goes first (the first one of a
				// process starts on colder caches).
				var clean, mixed float64
				if trial%2 == 0 {
					clean = poisonRun(t, v.kind, v.healthy, 0, v.backoff, v.pause)
					mixed = poisonRun(t, v.kind, v.healthy, v.poison, v.backoff, v.pause)
				} else {
					mixed = poisonRun(t, v.kind, v.healthy, v.poison, v.backoff, v.pause)
					clean = poisonRun(t, v.kind, v.healthy, 0, v.backoff, v.pause)
				}
				r := mixed / clean
				ratios = append(ratios, r)
				t.Logf("%s trial %d: %d healthy jobs: %.1f jobs/s clean, %.1f jobs/s beside %d poison jobs (retry backoff %s, crash-loop pause %s): %.0f%%",
					v.kind, trial+1, v.healthy, clean, mixed, v.poison, v.backoff, v.pause, 100*r)
				if t.Failed() {
					return
				}
			}
			sort.Float64s(ratios)
			med := ratios[len(ratios)/2]
			t.Logf("%s: healthy throughput beside a poison plugin: median %.0f%% of a clean run over %d trials (goal ≥ 90%%)",
				v.kind, 100*med, v.trials)
			if med < poisonRatioBound() {
				t.Errorf("healthy throughput beside a poison plugin is %.0f%% of a clean run, want ≥ %.0f%% (goal 90%%)",
					100*med, 100*poisonRatioBound())
			}
		})
	}
}

// poisonRun runs healthy jobs of a guest kind with poison jobs spread evenly
// among them (by id, so by claim order) and returns the healthy jobs'
// throughput.
func poisonRun(t *testing.T, kind string, healthy, poison int, backoff, pause string) float64 {
	c := newCluster(t)
	c.recordHistory()
	testdata := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster")
	good := writeInputs(t, filepath.Join(c.dir, "in"), healthy, func(int) string { return "0 100" })
	bad := writeInputs(t, filepath.Join(c.dir, "poison"), poison, func(int) string { return "poison" })
	enqueue := func(plugin string, inputs []string) []int64 {
		switch {
		case kind == "python" && plugin == "healthy":
			return c.enqueue(plugin, filepath.Join(testdata, "slow_plugin.py"), inputs)
		case kind == "python":
			return c.enqueue(plugin, filepath.Join(testdata, "poison_plugin.py"), inputs)
		case plugin == "healthy":
			return c.enqueueBinary(plugin, faultPlugin(t, "goplugin"), inputs)
		}
		return c.enqueueBinary(plugin, faultPlugin(t, "poison"), inputs)
	}
	var goodIDs, badIDs []int64
	for i := 0; i <= poison; i++ {
		goodIDs = append(goodIDs, enqueue("healthy", good[healthy*i/(poison+1):healthy*(i+1)/(poison+1)])...)
		if i < poison {
			badIDs = append(badIDs, enqueue("poison", bad[i:i+1])...)
		}
	}
	c.startSentinel("--retry-backoff", backoff, "--crash-loop-pause", pause)
	c.startWorker("worker-a", c.tcp, "--slots", "4")
	c.startWorker("worker-b", c.ipc, "--slots", "4")
	waitFor(t, 15*time.Minute, "every job concluded", func() bool {
		m := c.counts()
		return m[store.StatusCompleted]+m[store.StatusFailed] == int64(healthy+poison)
	})
	var first, last time.Time
	for _, id := range goodIDs {
		j := c.job(id)
		if first.IsZero() || j.ClaimTime.Before(first) {
			first = j.ClaimTime
		}
		if j.EndTime.After(last) {
			last = j.EndTime
		}
	}
	// Every poison job FAILED; after 6 crashes, unless a crash was taken
	// for a final error (logged: see the report in docs/RELIABILITY.md).
	failed := map[int64]string{}
	short := 0
	for _, id := range badIDs {
		failed[id] = ""
		if j := c.job(id); j.Attempt != 6 {
			short++
			t.Logf("[Job %d] poison job FAILED after %d attempts: %s", id, j.Attempt, firstLine(j.ErrorMessage))
		}
	}
	if short > 0 {
		t.Logf("%d of %d poison jobs FAILED before their 6th attempt", short, poison)
	}
	// The sentinel held the poison plugin to one job at a time, and said so.
	if poison > 0 {
		looping := ""
		for _, ev := range parseLog(c.sentinel) {
			if strings.Contains(ev.msg, "is crash-looping") {
				looping = ev.msg
				break
			}
		}
		if looping == "" {
			t.Errorf("the sentinel never reported the poison plugin crash-looping")
		} else {
			t.Logf("sentinel: %s", looping)
		}
	}
	c.checkHistory(expect{failed: failed, rows: constRows(100)})
	return float64(healthy) / last.Sub(first).Seconds()
}
