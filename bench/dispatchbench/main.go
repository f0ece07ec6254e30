// Command dispatchbench measures the control plane end to end, in one
// process but over real parts: a sentinel on a real SQLite file and a worker
// connected over real ZeroMQ (tcp loopback, hardened transport), running a
// no-op guest so that only dispatch and bookkeeping are timed.
//
//   - dispatch latency: one job at a time, from the moment Enqueue returns
//     (the job is QUEUED and the sentinel is woken) to the moment the worker's
//     guest starts running it; p50/p99 over -n jobs;
//   - throughput: -jobs no-op jobs enqueued up front (one transaction), run by -workers workers
//     of -slots slots each, from start to the last COMPLETED;
//   - reference, same process: a bare zmq4 ROUTER→DEALER→ROUTER round trip
//     over plain tcp loopback, to show what the transport alone costs.
//
// Run: make bench (or go run ./bench/dispatchbench).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	dto "github.com/prometheus/client_model/go"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
	"github.com/casparianflow/casparian/sentinel"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
	"github.com/casparianflow/casparian/worker"
)

const noopKind guest.Kind = "noop"

// noop is a guest that emits nothing; it reports when each run starts.
type noop struct{ started chan int64 }

func (n *noop) Kind() guest.Kind { return noopKind }
func (n *noop) Load(ctx context.Context, p guest.Plugin) (guest.Instance, error) {
	return n, nil
}
func (n *noop) Close(ctx context.Context) error { return nil }
func (n *noop) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	if n.started != nil {
		n.started <- in.JobID
	}
	return nil
}

func main() {
	var (
		samples  = flag.Int("n", 500, "jobs for the latency measurement (one at a time)")
		jobs     = flag.Int("jobs", 2000, "jobs for the throughput measurement")
		workers  = flag.Int("workers", 2, "workers for the throughput measurement")
		slots    = flag.Int("slots", 4, "slots per worker")
		roundTrp = flag.Int("rt", 2000, "bare zmq4 round trips for the reference")
		kinds    = flag.String("throughput-guests", "noop,goplugin,wasm", "guests for the throughput runs: noop (in-process), goplugin, wasm")
		cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	)
	flag.Parse()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "dispatchbench: cpu profile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*samples, *jobs, *workers, *slots, *roundTrp, strings.Split(*kinds, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "dispatchbench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

type cluster struct {
	st      *store.Store
	s       *sentinel.Sentinel
	started chan int64
	fv      int64
	cancel  func()
	wg      sync.WaitGroup
	closers []func()
}

// benchGuest is the guest the workers run.
type benchGuest struct {
	kind   guest.Kind
	plugin guest.Plugin
	rt     func(slots int) (guest.Runtime, error) // sized as `casparian worker --slots` sizes it
}

func startCluster(dir string, nWorkers, slots int, g *benchGuest) (*cluster, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "queue.db"), store.Options{})
	if err != nil {
		cancel()
		return nil, err
	}
	c := &cluster{st: st, started: make(chan int64, 1<<16), cancel: cancel}
	in := filepath.Join(dir, "input.txt")
	if err := os.WriteFile(in, []byte("x"), 0o644); err != nil {
		return nil, err
	}
	if c.fv, err = st.AddFile(ctx, store.FileSpec{Root: dir, RelPath: "input.txt"}); err != nil {
		return nil, err
	}
	if _, err := st.AddPlugin(ctx, store.PluginSpec{Name: "noop", SourceCode: "noop"}); err != nil {
		return nil, err
	}
	c.s, err = sentinel.New(sentinel.Config{Bind: []string{"tcp://127.0.0.1:0"}, Store: st,
		PollInterval: time.Second, Lease: time.Minute})
	if err != nil {
		return nil, err
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); _ = c.s.Run(ctx) }()
	<-c.s.Ready()
	ep := c.s.Endpoints()[0]
	kind, plugin := noopKind, guest.Plugin{Kind: noopKind, Hash: "0"}
	if g != nil {
		kind, plugin = g.kind, g.plugin
	}
	for i := range nWorkers {
		// A runtime per worker, as each worker process has its own.
		var rt guest.Runtime = &noop{started: c.started}
		if g != nil {
			if rt, err = g.rt(slots); err != nil {
				return nil, err
			}
			c.closers = append(c.closers, func() { rt.Close(context.Background()) })
		}
		h, err := host.New(host.Config{Runtimes: map[guest.Kind]guest.Runtime{kind: rt}, OutputDir: dir,
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return nil, err
		}
		w, err := worker.New(worker.Config{Connect: ep, WorkerID: fmt.Sprintf("bench-%d", i), Slots: slots, Host: h,
			Plugin: func(d *protocol.DispatchCommand) (guest.Plugin, error) {
				p := plugin
				p.Name = d.PluginName
				return p, nil
			}})
		if err != nil {
			return nil, err
		}
		c.wg.Add(1)
		go func() { defer c.wg.Done(); _ = w.Run(ctx) }()
	}
	// Wait until every worker is registered.
	for deadline := time.Now().Add(10 * time.Second); len(c.s.Workers(ctx)) < nWorkers; {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("workers did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c, nil
}

func (c *cluster) stop() {
	c.cancel()
	c.wg.Wait()
	for _, f := range c.closers {
		f()
	}
	c.st.Close()
}

func (c *cluster) waitCompleted(n int64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		m, err := c.st.Counts(context.Background())
		if err != nil {
			return err
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

func run(samples, jobs, nWorkers, slots, rt int, kinds []string) error {
	ctx := context.Background()
	fmt.Printf("Control plane benchmark: sentinel + worker in one process, real SQLite (WAL; claims without fsync, enqueue/conclude fsynced), ZeroMQ over tcp loopback, no-op guest.\n\n")

	// The plugins are built first: a module file written in the last 2 s is
	// hashed again at every Load (its timestamps cannot yet prove it
	// unchanged), which is not what a deployed plugin costs.
	guests, cleanup, err := benchGuests(kinds)
	if err != nil {
		return err
	}
	defer cleanup()
	if slices.ContainsFunc(guests, func(g *benchGuest) bool { return g != nil }) {
		time.Sleep(2500 * time.Millisecond)
	}

	// 1. Dispatch latency, one job at a time.
	dir, err := os.MkdirTemp("", "dispatchbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c, err := startCluster(dir, 1, slots, nil)
	if err != nil {
		return err
	}
	lat := make([]time.Duration, 0, samples)
	for i := range samples + 20 {
		t0 := time.Now()
		id, err := c.st.Enqueue(ctx, c.fv, "noop", 0, "")
		if err != nil {
			return err
		}
		c.s.Wake()
		select {
		case got := <-c.started:
			if got != id {
				return fmt.Errorf("guest started job %d, want %d", got, id)
			}
		case <-time.After(10 * time.Second):
			return fmt.Errorf("job %d never started", id)
		}
		d := time.Since(t0)
		if err := c.waitCompleted(int64(i+1), 10*time.Second); err != nil {
			return err
		}
		if i >= 20 { // warm-up
			lat = append(lat, d)
		}
	}
	var hm dto.Metric
	_ = c.s.Metrics().DispatchLatency.Write(&hm)
	sentinelMean := time.Duration(hm.Histogram.GetSampleSum() / float64(hm.Histogram.GetSampleCount()) * 1e9)
	c.stop()
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }

	// 2. Reference: bare zmq4 round trip over plain tcp.
	ref, err := zmqRoundTrip(rt)
	if err != nil {
		return err
	}
	slices.Sort(ref)
	rp := func(q float64) time.Duration { return ref[min(len(ref)-1, int(q*float64(len(ref))))] }

	fmt.Printf("Dispatch latency (enqueue returned -> guest started), %d jobs one at a time, after 20 warm-up jobs:\n", len(lat))
	fmt.Printf("  %-44s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("  %-44s %10s %10s\n", "casparian (claim + resolve + DISPATCH + start)", us(p(0.50)), us(p(0.99)))
	fmt.Printf("  %-44s %10s %10s\n", "bare zmq4 round trip, same process (ref)", us(rp(0.50)), us(rp(0.99)))
	fmt.Printf("  %-44s %10s %10s\n", "goal", "500µs", "5000µs")
	fmt.Printf("  %-44s %10s\n", "original's claim (status report)", "~5ms")
	fmt.Printf("  of which the sentinel's claim + resolve + queueing (casparian_dispatch_latency_seconds), mean: %s\n", us(sentinelMean))
	fmt.Printf("  ratio casparian p50 / bare zmq4 round trip p50: %.1fx\n\n", float64(p(0.5))/float64(rp(0.5)))

	// 3. Throughput, per guest kind.
	fmt.Printf("Throughput: %d no-op jobs, %d workers x %d slots, enqueued up front in one transaction, from the enqueue to the last COMPLETED:\n", jobs, nWorkers, slots)
	for _, g := range guests {
		dir2, err := os.MkdirTemp("", "dispatchbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir2)
		c2, err := startCluster(dir2, nWorkers, slots, g)
		if err != nil {
			return err
		}
		go func() {
			for range c2.started {
			}
		}()
		specs := make([]store.JobSpec, jobs)
		for i := range specs {
			specs[i] = store.JobSpec{FileVersionID: c2.fv, PluginName: "noop"}
		}
		t0 := time.Now()
		if _, err := c2.st.EnqueueMany(ctx, specs); err != nil { // one transaction, as a scan or `casparian enqueue` does
			return err
		}
		enq := time.Since(t0)
		c2.s.Wake()
		if err := c2.waitCompleted(int64(jobs), 5*time.Minute); err != nil {
			return err
		}
		total := time.Since(t0)
		c2.stop()
		name := "no-op guest in process"
		if g != nil {
			name = string(g.kind) + " no-op plugin"
		}
		fmt.Printf("  %-26s enqueue %6s, end to end %7s -> %5.0f jobs/s\n", name, enq.Round(time.Millisecond),
			total.Round(time.Millisecond), float64(jobs)/total.Seconds())
	}
	// 4. The same through the real daemons, as OS processes.
	var real []*benchGuest
	for _, g := range guests {
		if g != nil {
			real = append(real, g)
		}
	}
	if len(real) > 0 {
		bin := filepath.Join(os.TempDir(), fmt.Sprintf("dispatchbench-casparian-%d", os.Getpid()))
		if err := gobuild(nil, "-o", bin, "./cmd/casparian"); err != nil {
			return err
		}
		defer os.Remove(bin)
		fmt.Printf("  through the daemons (casparian sentinel + %d x casparian worker --slots %d, OS processes; from the enqueue commit):\n", nWorkers, slots)
		for _, g := range real {
			d, err := daemonThroughput(bin, g, jobs, nWorkers, slots)
			if err != nil {
				return fmt.Errorf("%s through the daemons: %w", g.kind, err)
			}
			fmt.Printf("  %-26s %24s %7s -> %5.0f jobs/s\n", string(g.kind)+" no-op plugin", "end to end", d.Round(time.Millisecond),
				float64(jobs)/d.Seconds())
		}
	}
	fmt.Printf("  goal with the go-plugin and WASM guests: >= 1000 jobs/s\n")
	fmt.Printf("  (enqueue is one transaction for all jobs; claims and conclusions are batched per worker visit)\n")
	return nil
}

// benchGuests builds bench/guestbench/plugin as needed and returns the
// guests to measure (nil = the in-process no-op guest).
func benchGuests(kinds []string) ([]*benchGuest, func(), error) {
	dir, err := os.MkdirTemp("", "dispatchbench-plugin-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	var out []*benchGuest
	for _, k := range kinds {
		switch strings.TrimSpace(k) {
		case "noop":
			out = append(out, nil)
		case "goplugin":
			exe := filepath.Join(dir, "plugin")
			if err := gobuild(nil, "-o", exe, "./bench/guestbench/plugin"); err != nil {
				return nil, cleanup, err
			}
			sum, err := manifest.HashFile(exe)
			if err != nil {
				return nil, cleanup, err
			}
			out = append(out, &benchGuest{kind: guest.KindGoPlugin,
				plugin: guest.Plugin{Kind: guest.KindGoPlugin, Path: exe, Hash: sum},
				rt: func(slots int) (guest.Runtime, error) {
					return goplugin.New(goplugin.Config{MaxIdlePerPlugin: slots, MaxIdle: max(goplugin.DefaultMaxIdle, slots)})
				}})
		case "wasm":
			mod := filepath.Join(dir, "plugin.wasm")
			if err := gobuild([]string{"GOOS=wasip1", "GOARCH=wasm"}, "-tags", "arrow_json_stdlib", "-buildmode=c-shared", "-o", mod, "./bench/guestbench/plugin"); err != nil {
				return nil, cleanup, err
			}
			sum, err := manifest.HashFile(mod)
			if err != nil {
				return nil, cleanup, err
			}
			out = append(out, &benchGuest{kind: guest.KindWASM,
				plugin: guest.Plugin{Kind: guest.KindWASM, Path: mod, Hash: sum},
				rt:     func(slots int) (guest.Runtime, error) { return wasm.New(wasm.Config{MaxWarmInstances: slots}) }})
		default:
			return nil, cleanup, fmt.Errorf("unknown guest %q: want noop, goplugin or wasm", k)
		}
	}
	return out, cleanup, nil
}

func gobuild(env []string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-trimpath"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

func us(d time.Duration) string { return fmt.Sprintf("%dµs", d.Microseconds()) }

// zmqRoundTrip times n ROUTER→DEALER→ROUTER round trips over plain zmq4 tcp.
func zmqRoundTrip(n int) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := zmq4.NewRouter(ctx)
	defer r.Close()
	if err := r.Listen("tcp://127.0.0.1:0"); err != nil {
		return nil, err
	}
	d := zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity("ref")))
	defer d.Close()
	if err := d.Dial("tcp://" + r.Addr().String()); err != nil {
		return nil, err
	}
	if err := d.Send(zmq4.NewMsg([]byte("hello"))); err != nil {
		return nil, err
	}
	if _, err := r.Recv(); err != nil {
		return nil, err
	}
	out := make([]time.Duration, 0, n)
	payload := make([]byte, 512)
	for range n {
		t0 := time.Now()
		if err := r.Send(zmq4.NewMsgFrom([]byte("ref"), payload)); err != nil {
			return nil, err
		}
		m, err := d.Recv()
		if err != nil {
			return nil, err
		}
		if err := d.Send(m); err != nil {
			return nil, err
		}
		if _, err := r.Recv(); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}
