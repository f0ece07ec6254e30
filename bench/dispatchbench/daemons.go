package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

// daemonThroughput runs the real daemons as OS processes: `casparian
// sentinel` and nWorkers `casparian worker --slots slots`, over tcp
// loopback, on a real SQLite file. The plugin is registered and warmed by
// `casparian enqueue --plugin-file` (one job); then jobs no-op jobs are
// added in one transaction (as a scan would) and timed from that commit to
// the last COMPLETED. The sentinel sees new jobs by polling its database
// every 20 ms, as it sees jobs another process enqueues.
func daemonThroughput(bin string, g *benchGuest, jobs, nWorkers, slots int) (time.Duration, error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "dispatchbench-daemons-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "queue.db")
	out := filepath.Join(dir, "out")
	in := filepath.Join(dir, "input.txt")
	if err := os.WriteFile(in, []byte("x"), 0o644); err != nil {
		return 0, err
	}
	addr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			done := make(chan struct{})
			go func() { _ = p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = p.Process.Kill()
				<-done
			}
		}
	}()
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return 0, err
	}
	start := func(name string, args ...string) error {
		f, err := os.Create(filepath.Join(logs, name+".log"))
		if err != nil {
			return err
		}
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.Env = append(os.Environ(), "CASPARIAN_LOG=warn")
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
		return nil
	}
	if err := start("sentinel", "sentinel", "--bind", "tcp://"+addr, "--database", db, "--poll-interval", "20ms"); err != nil {
		return 0, err
	}
	for i := range nWorkers {
		if err := start(fmt.Sprintf("worker-%d", i), "worker", "--connect", "tcp://"+addr, "--output", out,
			"--worker-id", fmt.Sprintf("w%d", i), "--slots", fmt.Sprint(slots), "--guests", string(g.kind)); err != nil {
			return 0, err
		}
	}
	fail := func(err error) (time.Duration, error) {
		return 0, fmt.Errorf("%w (daemon logs: %s)", err, tails(logs))
	}
	// Register and warm the plugin with one job.
	reg := exec.Command(bin, "enqueue", "--database", db, "--plugin", "noop", "--plugin-file", g.plugin.Path, in)
	if b, err := reg.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("casparian enqueue: %v\n%s", err, b))
	}
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if err := waitCount(st, 1, time.Minute); err != nil {
		return fail(err)
	}
	first, err := st.List(ctx, store.Filter{Limit: 1})
	if err != nil || len(first) != 1 {
		return fail(fmt.Errorf("the warm-up job: %v", err))
	}
	specs := make([]store.JobSpec, jobs)
	for i := range specs {
		specs[i] = store.JobSpec{FileVersionID: first[0].FileVersionID, PluginName: "noop"}
	}
	t0 := time.Now()
	if _, err := st.EnqueueMany(ctx, specs); err != nil {
		return 0, err
	}
	if err := waitCount(st, int64(jobs)+1, 5*time.Minute); err != nil {
		return fail(err)
	}
	return time.Since(t0), nil
}

// waitCount waits until n jobs are COMPLETED; a FAILED job is an error.
func waitCount(st *store.Store, n int64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		m, err := st.Counts(context.Background())
		if err != nil {
			return err
		}
		if m[store.StatusFailed] > 0 {
			jobs, _ := st.List(context.Background(), store.Filter{Statuses: []string{store.StatusFailed}, Limit: 1})
			if len(jobs) > 0 {
				return fmt.Errorf("[Job %d] FAILED: %s", jobs[0].ID, jobs[0].ErrorMessage)
			}
			return fmt.Errorf("%d jobs FAILED", m[store.StatusFailed])
		}
		if m[store.StatusCompleted] >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d jobs completed after %s (%v)", m[store.StatusCompleted], n, d, m)
		}
		time.Sleep(pollEvery)
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// tails returns the last lines of every daemon log in dir.
func tails(dir string) string {
	var b strings.Builder
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 10 {
			lines = lines[len(lines)-10:]
		}
		fmt.Fprintf(&b, "\n--- %s\n%s", e.Name(), strings.Join(lines, "\n"))
	}
	return b.String()
}

// pollEvery is how often the bench counts COMPLETED jobs: counting scans the
// queue, so polling faster would take CPU from what is measured; it adds at
// most this much to a run of seconds.
const pollEvery = 25 * time.Millisecond
