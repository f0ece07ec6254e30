package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// 200 jobs of the Python example over a sentinel and two workers, one on
// tcp:// and one on ipc://: every job COMPLETED, one file per job and topic,
// and /metrics agreeing with the queue.
func TestCluster200Jobs(t *testing.T) {
	c := newCluster(t)
	src := filepath.Join(testenv.RepoRoot(), "examples", "python-csv", "data")
	csvs, _ := filepath.Glob(filepath.Join(src, "*.csv"))
	if len(csvs) == 0 {
		t.Fatal("no example CSVs")
	}
	inDir := filepath.Join(c.dir, "in")
	inputs := writeInputs(t, inDir, 200, func(i int) string {
		b, err := os.ReadFile(csvs[i%len(csvs)])
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	})
	for i, p := range inputs { // the example plugin wants .csv files
		np := strings.TrimSuffix(p, ".txt") + ".csv"
		if err := os.Rename(p, np); err != nil {
			t.Fatal(err)
		}
		inputs[i] = np
	}
	ids := c.enqueue("orders", filepath.Join(testenv.RepoRoot(), "examples", "python-csv", "orders_plugin.py"), inputs)
	c.startSentinel()
	_, mA := c.startWorker("worker-tcp", c.tcp)
	_, mB := c.startWorker("worker-ipc", c.ipc)
	c.waitDone(200, 5*time.Minute)

	c.expectOnePerJob("orders", ids)
	c.expectOnePerJob("daily_totals", ids)

	// Both workers took part, each running several jobs at once.
	owners := map[string]int{}
	for _, id := range ids {
		j := c.job(id)
		if j.Attempt != 1 {
			t.Errorf("[Job %d] attempt %d, want 1 (no retries in a clean run)", id, j.Attempt)
		}
		owners[workerOf(t, c, id)]++
	}
	if owners["worker-tcp"] == 0 || owners["worker-ipc"] == 0 {
		t.Errorf("jobs per worker = %v, want both workers used", owners)
	}

	sm := scrape(t, c.metrics)
	for name, want := range map[string]float64{
		"casparian_jobs_dispatched_total":          200,
		"casparian_jobs_completed_total":           200,
		"casparian_jobs_failed_total":              0,
		"casparian_workers_registered_total":       2,
		`casparian_queue_jobs{status="COMPLETED"}`: 200,
		`casparian_queue_jobs{status="QUEUED"}`:    0,
		`casparian_queue_jobs{status="RUNNING"}`:   0,
		"casparian_stale_conclusions_total":        0,
		"casparian_dispatch_latency_seconds_count": 200,
		"casparian_job_duration_seconds_count":     200,
	} {
		if got, ok := sm[name]; !ok || got != want {
			t.Errorf("sentinel metric %s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if sm["casparian_messages_received_total"] < 400 || sm["casparian_dispatch_time_microseconds_total"] <= 0 ||
		sm["casparian_conclude_time_microseconds_total"] <= 0 {
		t.Errorf("message/timing counters not incremented: %v", pick(sm, "casparian_messages_received_total",
			"casparian_dispatch_time_microseconds_total", "casparian_conclude_time_microseconds_total"))
	}
	wa, wb := scrape(t, mA), scrape(t, mB)
	for _, name := range []string{"casparian_worker_jobs_received_total", "casparian_worker_jobs_completed_total",
		"casparian_worker_bridge_executions_total", "casparian_worker_parquet_files_written_total"} {
		want := 200.0
		if strings.Contains(name, "parquet_files") {
			want = 400
		}
		if got := wa[name] + wb[name]; got != want {
			t.Errorf("workers' %s sum = %v, want %v", name, got, want)
		}
	}
	if wa["casparian_worker_jobs_completed_total"] != float64(owners["worker-tcp"]) {
		t.Errorf("worker-tcp completed %v jobs by its metrics, %d by the queue", wa["casparian_worker_jobs_completed_total"], owners["worker-tcp"])
	}
	t.Logf("jobs per worker: %v", owners)
}

// workerOf is the worker that concluded a job (worker_host is set at claim).
func workerOf(t *testing.T, c *cluster, id int64) string {
	t.Helper()
	var host string
	if err := c.sql().QueryRow(`SELECT COALESCE(worker_host, '') FROM cf_processing_queue WHERE id = ?`, id).Scan(&host); err != nil {
		t.Fatal(err)
	}
	return host
}

func pick(m map[string]float64, names ...string) map[string]float64 {
	out := map[string]float64{}
	for _, n := range names {
		out[n] = m[n]
	}
	return out
}

// kill -9 of a worker mid-run: its jobs are re-run on the other worker, none
// stays RUNNING, and there is exactly one complete output file per job.
func TestClusterWorkerKilled(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 12, func(i int) string { return "1.5 10" })
	ids := c.enqueue("slow", filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py"), inputs)
	c.startSentinel("--heartbeat-timeout", "3s")
	a, _ := c.startWorker("worker-a", c.tcp, "--slots", "3")
	waitFor(t, 60*time.Second, "worker-a to run 3 jobs", func() bool { return leasedTo(t, c, "worker-a") == 3 })
	// Let the plugins emit their first batch (temporary files exist).
	time.Sleep(700 * time.Millisecond)
	a.signal(syscall.SIGKILL)
	a.wait(t, 10*time.Second)
	c.startWorker("worker-b", c.ipc, "--slots", "3")
	c.waitDone(int64(len(ids)), 3*time.Minute)

	rerun := 0
	for _, id := range ids {
		j := c.job(id)
		if workerOf(t, c, id) != "worker-b" && j.Attempt == 1 {
			continue
		}
		if j.Attempt > 1 {
			rerun++
		}
	}
	if rerun < 3 {
		t.Errorf("%d jobs re-run after the kill, want at least the 3 worker-a held", rerun)
	}
	if !strings.Contains(c.sentinel.out.String(), "worker evicted") {
		t.Error("the sentinel never logged the eviction of the killed worker")
	}
	// All COMPLETED, one output of 10 rows each, no temporary file left by
	// the killed worker, no plugin process left.
	c.checkHistory(expect{rows: constRows(10)})
}

// leasedTo counts RUNNING jobs leased to a worker.
func leasedTo(t *testing.T, c *cluster, worker string) int {
	var n int
	if err := c.sql().QueryRow(`SELECT count(*) FROM cf_processing_queue WHERE status = 'RUNNING' AND lease_owner = ?`,
		worker).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The sentinel is killed mid-run and restarted: workers reconnect,
// re-identify, their running jobs are adopted and the run completes.
func TestClusterSentinelRestart(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 16, func(i int) string { return "1 6" })
	ids := c.enqueue("slow", filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py"), inputs)
	c.startSentinel()
	c.startWorker("worker-a", c.tcp, "--slots", "2")
	c.startWorker("worker-b", c.ipc, "--slots", "2")
	waitFor(t, 60*time.Second, "a few jobs completed", func() bool { return c.counts()[store.StatusCompleted] >= 3 })
	c.sentinel.signal(syscall.SIGKILL)
	c.sentinel.wait(t, 10*time.Second)
	time.Sleep(1500 * time.Millisecond) // jobs finish while no sentinel listens
	c.startSentinel()
	c.waitDone(int64(len(ids)), 3*time.Minute)
	out := c.sentinel.out.String()
	if strings.Count(out, "worker registered") < 2 {
		t.Errorf("the restarted sentinel saw %d registrations, want both workers back:\n%s",
			strings.Count(out, "worker registered"), tail(out, 40))
	}
	c.checkHistory(expect{rows: constRows(6)})
}

// SIGSTOP of a worker past its lease: the job is re-run elsewhere; after
// SIGCONT the stopped worker's late CONCLUDE is rejected by the fencing check,
// and there is one output.
func TestClusterStoppedWorkerFenced(t *testing.T) {
	c := newCluster(t)
	c.recordHistory()
	inputs := writeInputs(t, filepath.Join(c.dir, "in"), 1, func(i int) string { return "3 8" })
	ids := c.enqueue("slow", filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py"), inputs)
	// A lease well above the 1 s heartbeats, so worker-b's run survives a
	// loaded machine; once worker-a is silent for a lease the sentinel sends
	// it no new job, so the re-run goes to worker-b.
	c.startSentinel("--lease", "4s")
	a, _ := c.startWorker("worker-a", c.tcp, "--sentinel-timeout", "60s")
	waitFor(t, 60*time.Second, "worker-a to run the job", func() bool { return leasedTo(t, c, "worker-a") == 1 })
	a.signal(syscall.SIGSTOP)
	_, mB := c.startWorker("worker-b", c.ipc)
	c.waitDone(1, 2*time.Minute)
	j := c.job(ids[0])
	if j.Attempt < 2 || workerOf(t, c, ids[0]) != "worker-b" {
		t.Fatalf("job attempt %d by %s, want a re-run (attempt ≥ 2) by worker-b", j.Attempt, workerOf(t, c, ids[0]))
	}
	a.signal(syscall.SIGCONT)
	waitFor(t, 30*time.Second, "the late CONCLUDE to be rejected", func() bool {
		return scrape(t, c.metrics)["casparian_stale_conclusions_total"] >= 1
	})
	if !strings.Contains(c.sentinel.out.String(), "rejected a late CONCLUDE") {
		t.Error("no log line for the rejected CONCLUDE")
	}
	j2 := c.job(ids[0])
	if j2.Status != store.StatusCompleted || j2.Attempt != j.Attempt {
		t.Errorf("after the late CONCLUDE the job is %s attempt %d, want COMPLETED attempt %d", j2.Status, j2.Attempt, j.Attempt)
	}
	if got := scrape(t, mB)["casparian_worker_jobs_completed_total"]; got != 1 {
		t.Errorf("worker-b completed %v jobs, want 1", got)
	}
	// One output (the stale run's commit replaced the same file), accepted
	// once; worker-a exits on SIGTERM, no plugin left.
	c.checkHistory(expect{rows: constRows(8)})
}
