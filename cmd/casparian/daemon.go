package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/sink"
	"github.com/casparianflow/casparian/internal/obs"
	"github.com/casparianflow/casparian/sentinel"
	"github.com/casparianflow/casparian/sentinel/scan"
	"github.com/casparianflow/casparian/sentinel/store"
	"github.com/casparianflow/casparian/worker"
	"github.com/casparianflow/casparian/worker/envs"
)

// commonFlags are the operator flags every daemon takes.
type commonFlags struct {
	logLevel, logFormat, metricsAddr string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.logLevel, "log-level", "", "log level: debug, info, warn, error (default $"+obs.EnvLogLevel+", else info)")
	fs.StringVar(&c.logFormat, "log-format", "", "log format: text or json (default $"+obs.EnvLogFormat+", else text)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve /metrics and /healthz on this HOST:PORT (empty = off)")
}

type sentinelFlags struct {
	database                         *string
	lease, hbTimeout, cleanup, probe time.Duration
	poll                             time.Duration
	scanInterval                     time.Duration
	tofu, allowUnsigned              bool
	maxRetries                       int
	backoff                          time.Duration
	crashLoopAfter                   int
	crashLoopPause                   time.Duration
}

func (f *sentinelFlags) register(fs *flag.FlagSet) {
	f.database = databaseFlag(fs)
	fs.DurationVar(&f.lease, "lease", sentinel.DefaultLease, "job lease; worker heartbeats extend it, an expired one requeues the job")
	fs.DurationVar(&f.hbTimeout, "heartbeat-timeout", sentinel.DefaultHeartbeatTimeout, "evict a worker silent this long and requeue its jobs")
	fs.DurationVar(&f.cleanup, "cleanup-interval", sentinel.DefaultCleanupInterval, "how often silent workers and expired leases are checked")
	fs.DurationVar(&f.probe, "probe-interval", sentinel.DefaultProbeInterval, "how often workers are probed")
	fs.DurationVar(&f.poll, "poll-interval", sentinel.DefaultPollInterval, "how often the queue is checked for jobs added by other processes")
	fs.IntVar(&f.maxRetries, "max-retries", 5, "times a failed-retriable, lost or rejected job is queued again before it is FAILED for good (0: never)")
	fs.DurationVar(&f.backoff, "retry-backoff", 2*time.Second, "delay before the first retry; it doubles for each later one (up to 5m)")
	fs.IntVar(&f.crashLoopAfter, "crash-loop-after", sentinel.DefaultCrashLoopAfter, "after this many attempts of a plugin in a row crashed, hung or hit a resource limit, run its jobs one at a time until one succeeds (0: never)")
	fs.DurationVar(&f.crashLoopPause, "crash-loop-pause", sentinel.DefaultCrashLoopPause, "least time between two attempts of a crash-looping plugin")
	fs.BoolVar(&f.tofu, "trust-on-first-use", false, "trust the key of a correctly signed DEPLOY from an unknown publisher (default: only keys added with casparian keys trust)")
	fs.BoolVar(&f.allowUnsigned, "allow-unsigned-deploys", false, "accept DEPLOYs without a signature (the original system's publisher)")
	fs.DurationVar(&f.scanInterval, "scan-interval", 0, "rescan the source roots this often, queueing jobs for new and changed files (0: never; see casparian source add)")
}

// openStore opens the queue with the retry policy of the flags.
func (f *sentinelFlags) openStore(ctx context.Context) (*store.Store, error) {
	if f.maxRetries < 0 || f.backoff <= 0 {
		return nil, errors.New("--max-retries must be 0 or more and --retry-backoff positive")
	}
	retries := f.maxRetries
	if retries == 0 {
		retries = -1 // store.Options: negative means none
	}
	return openStoreWith(ctx, *f.database, store.Options{MaxRetries: retries, BackoffBase: f.backoff})
}

// crashLoopAfter maps the flag (0: never) to sentinel.Config (negative: never).
func crashLoopAfter(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// startScanner runs the periodic scan of the source roots, if enabled.
func (f *sentinelFlags) startScanner(ctx context.Context, st *store.Store, s *sentinel.Sentinel, log *slog.Logger) {
	if f.scanInterval <= 0 {
		return
	}
	log.Info("scanning the source roots", "interval", f.scanInterval)
	go scan.Loop(ctx, st, f.scanInterval, scan.Options{Logger: log}, s.Wake)
}

func (f *sentinelFlags) config(bind []string, st *store.Store, log *slog.Logger, reg prometheus.Registerer) sentinel.Config {
	return sentinel.Config{Bind: bind, Store: st, Logger: log, Registerer: reg, Lease: f.lease,
		HeartbeatTimeout: f.hbTimeout, CleanupInterval: f.cleanup, ProbeInterval: f.probe, PollInterval: f.poll,
		TrustOnFirstUse: f.tofu, AllowUnsigned: f.allowUnsigned, CrashLoopAfter: crashLoopAfter(f.crashLoopAfter),
		CrashLoopPause: f.crashLoopPause}
}

type workerFlags struct {
	secret    []byte      // set from securityFlags by the command
	clientTLS *tls.Config // likewise

	output, workerID, caps, compression, guests string
	envsDir                                     string
	envsMaxMB                                   int64
	slots                                       int
	timeout                                     time.Duration
	heartbeat, sentinelTimeout, drain           time.Duration
	rt                                          runtimeFlags
}

func (f *workerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.output, "output", "output", "root directory of relative sink paths")
	fs.StringVar(&f.workerID, "worker-id", "", "worker id (default HOSTNAME-PID)")
	fs.StringVar(&f.caps, "capabilities", "*", `plugins this worker runs: "*" or a comma-separated list of names`)
	fs.IntVar(&f.slots, "slots", worker.DefaultSlots, "jobs run at once")
	fs.StringVar(&f.guests, "guests", "python,goplugin,wasm", "guest kinds this worker runs")
	f.rt.register(fs)
	fs.StringVar(&f.compression, "compression", "snappy", "Parquet compression: snappy, zstd, gzip, none")
	fs.DurationVar(&f.timeout, "timeout", 0, "per-job timeout (0 = none)")
	fs.DurationVar(&f.heartbeat, "heartbeat-interval", worker.DefaultHeartbeatInterval, "how often the worker reports to the sentinel")
	fs.DurationVar(&f.sentinelTimeout, "sentinel-timeout", worker.DefaultSentinelTimeout, "reconnect when the sentinel is silent this long")
	fs.DurationVar(&f.drain, "drain-timeout", worker.DefaultDrainTimeout, "on SIGTERM, wait this long for running jobs before aborting them")
	fs.StringVar(&f.envsDir, "envs-dir", "", "where this worker builds the environments of Python plugins with requirements, one per env_hash "+
		"(default: the user cache dir's casparian/venvs; one worker per directory; \"off\": run every plugin with --python)")
	fs.Int64Var(&f.envsMaxMB, "envs-max-mb", 10240, "evict least-recently-used environments beyond this size")
}

// newEnvs opens the environment manager, unless disabled. A directory
// another worker holds is a warning: this worker then does not provision.
func (f *workerFlags) newEnvs(python string, log *slog.Logger) *envs.Manager {
	dir := f.envsDir
	if dir == "off" {
		return nil
	}
	if dir == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			log.Warn("no user cache dir: plugin environments are off (set --envs-dir)", "error", err)
			return nil
		}
		dir = filepath.Join(c, "casparian", "venvs")
	}
	m, err := envs.New(envs.Config{Dir: dir, BasePython: python, MaxBytes: f.envsMaxMB << 20, Logger: log})
	if err != nil {
		log.Warn("plugin environments are off on this worker; plugins with requirements will run elsewhere", "error", err)
		return nil
	}
	log.Info("plugin environments", "dir", dir, "installer", m.Installer())
	return m
}

// newWorker builds the host (Python guest runtime + Parquet/SQLite sinks) and
// the worker around it. The returned cleanup closes the runtime.
func (f *workerFlags) newWorker(ctx context.Context, connect string, log *slog.Logger, reg prometheus.Registerer) (*worker.Worker, func(), error) {
	if f.slots < 1 {
		return nil, nil, errors.New("--slots must be at least 1")
	}
	var caps []string
	for _, c := range strings.Split(f.caps, ",") {
		if c = strings.TrimSpace(c); c != "" {
			caps = append(caps, c)
		}
	}
	if len(caps) == 0 {
		return nil, nil, errors.New(`--capabilities is empty: pass "*" or plugin names`)
	}
	if err := os.MkdirAll(f.output, 0o755); err != nil {
		return nil, nil, fmt.Errorf("--output: %w", err)
	}
	kinds, err := parseKinds(f.guests)
	if err != nil {
		return nil, nil, fmt.Errorf("--guests: %w", err)
	}
	rts, cleanup, err := f.rt.newRuntimes(ctx, kinds, f.slots, log)
	if err != nil {
		return nil, nil, err
	}
	log.Info("guests ready", "kinds", f.guests)
	h, err := host.New(host.Config{Runtimes: rts, OutputDir: f.output,
		JobTimeout: f.timeout, Logger: log, Sink: sink.Options{Compression: f.compression}})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	var em *envs.Manager
	if py, ok := rts[guest.KindPython].(*python.Runtime); ok {
		em = f.newEnvs(py.Interpreter(), log)
	}
	w, err := worker.New(worker.Config{Connect: connect, WorkerID: f.workerID, Capabilities: caps, Slots: f.slots,
		Host: h, Logger: log, Registerer: reg, HeartbeatInterval: f.heartbeat, SentinelTimeout: f.sentinelTimeout,
		DrainTimeout: f.drain, Plugin: worker.DispatchPlugin, Envs: em, Secret: f.secret, TLS: f.clientTLS})
	if err != nil {
		if em != nil {
			em.Close()
		}
		cleanup()
		return nil, nil, err
	}
	return w, func() {
		if em != nil {
			em.Close()
		}
		cleanup()
	}, nil
}

// daemonSetup parses flags and builds the logger and the metrics server.
type daemon struct {
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *obs.Server
}

func startDaemon(name string, c commonFlags, stderr io.Writer) (*daemon, error) {
	log, err := obs.NewLogger(stderr, c.logLevel, c.logFormat, slog.LevelInfo)
	if err != nil {
		return nil, err
	}
	if name != "" {
		log = log.With("component", name)
	}
	d := &daemon{log: log, reg: obs.NewRegistry()}
	return d, nil
}

func (d *daemon) serveMetrics(addr string, health obs.Health) error {
	if addr == "" {
		return nil
	}
	srv, err := obs.Listen(addr, d.reg, health, d.log)
	if err != nil {
		return err
	}
	d.metrics = srv
	d.log.Info("serving metrics", "url", "http://"+srv.Addr().String()+"/metrics", "health", "http://"+srv.Addr().String()+"/healthz")
	return nil
}

func (d *daemon) close() {
	if d.metrics != nil {
		_ = d.metrics.Close()
	}
}

// secondSignalExits makes a second SIGINT/SIGTERM kill the process at once
// (the first one, which cancels ctx, starts a graceful stop). Call the
// returned func when the command returns.
func secondSignalExits(ctx context.Context, log *slog.Logger) func() {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		log.Info("stopping (send the signal again to exit at once)")
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		<-ch
		log.Warn("second signal: exiting now; running jobs stay RUNNING until their leases expire")
		os.Exit(130)
	}()
	return func() { close(done) }
}

type multiValue []string

func (m *multiValue) String() string { return strings.Join(*m, ",") }
func (m *multiValue) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*m = append(*m, p)
		}
	}
	return nil
}

func parseDaemonFlags(fs *flag.FlagSet, args []string, stderr io.Writer, usage string) int {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "casparian %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

func cmdSentinel(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sentinel", flag.ContinueOnError)
	var (
		c    commonFlags
		sf   sentinelFlags
		sec  securityFlags
		bind multiValue
	)
	c.register(fs)
	sf.register(fs)
	sec.register(fs)
	fs.Var(&bind, "bind", "endpoint to listen on: tcp://HOST:PORT or ipc:///PATH; repeatable or comma-separated (default "+sentinel.DefaultBind+")")
	if rc := parseDaemonFlags(fs, args, stderr, "Usage: casparian sentinel [--bind tcp://0.0.0.0:5555] [--database sqlite://casparian_flow.db] [flags]\n\nRuns the control plane: the SQLite job queue and the ZeroMQ ROUTER workers connect to.\n"); rc >= 0 {
		return rc
	}
	d, err := startDaemon("sentinel", c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 2
	}
	defer d.close()
	st, err := sf.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 1
	}
	defer st.Close()
	cfg := sf.config(bind, st, d.log, d.reg)
	if cfg.Security, err = sec.server(); err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 1
	}
	s, err := sentinel.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 1
	}
	if err := d.serveMetrics(c.metricsAddr, sentinelHealth(st)); err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 1
	}
	defer secondSignalExits(ctx, d.log)()
	sf.startScanner(ctx, st, s, d.log)
	if err := s.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "casparian sentinel: %v\n", err)
		return 1
	}
	return 0
}

func sentinelHealth(st *store.Store) obs.Health {
	return func(ctx context.Context) error {
		_, err := st.Counts(ctx)
		if err != nil {
			return fmt.Errorf("database: %w", err)
		}
		return nil
	}
}

func workerHealth(m *worker.Metrics) obs.Health {
	return func(context.Context) error {
		if gaugeValue(m.Connected) < 1 {
			return errors.New("not connected to a sentinel")
		}
		return nil
	}
}

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var (
		c       commonFlags
		wf      workerFlags
		sec     securityFlags
		connect string
	)
	c.register(fs)
	wf.register(fs)
	sec.register(fs)
	fs.StringVar(&connect, "connect", worker.DefaultConnect, "sentinel endpoint: tcp://HOST:PORT or ipc:///PATH")
	if rc := parseDaemonFlags(fs, args, stderr, "Usage: casparian worker --connect tcp://HOST:5555 --output DIR [flags]\n\nRuns jobs the sentinel dispatches, up to --slots at once. SIGTERM drains: running jobs finish (or are handed back after --drain-timeout).\n"); rc >= 0 {
		return rc
	}
	d, err := startDaemon("worker", c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "casparian worker: %v\n", err)
		return 2
	}
	defer d.close()
	if wf.secret, wf.clientTLS, err = sec.client(); err != nil {
		fmt.Fprintf(stderr, "casparian worker: %v\n", err)
		return 1
	}
	w, cleanup, err := wf.newWorker(ctx, connect, d.log, d.reg)
	if err != nil {
		fmt.Fprintf(stderr, "casparian worker: %v\n", err)
		return 1
	}
	defer cleanup()
	if err := d.serveMetrics(c.metricsAddr, workerHealth(w.Metrics())); err != nil {
		fmt.Fprintf(stderr, "casparian worker: %v\n", err)
		return 1
	}
	defer secondSignalExits(ctx, d.log)()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "casparian worker: %v\n", err)
		return 1
	}
	return 0
}

func cmdStart(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	var (
		c         commonFlags
		sf        sentinelFlags
		wf        workerFlags
		sec       securityFlags
		addr      string
		untilIdle bool
	)
	c.register(fs)
	sf.register(fs)
	wf.register(fs)
	sec.register(fs)
	fs.StringVar(&addr, "addr", sentinel.DefaultBind, "endpoint the sentinel binds and the worker connects to (tcp://HOST:PORT or ipc:///PATH)")
	fs.BoolVar(&untilIdle, "exit-when-done", false, "stop once no job is QUEUED or RUNNING (for batch runs and demos)")
	if rc := parseDaemonFlags(fs, args, stderr, "Usage: casparian start [--addr tcp://127.0.0.1:5555] [--database sqlite://casparian_flow.db] [--output output] [flags]\n\nRuns a sentinel and one worker in one process. Add jobs with casparian enqueue; watch them with casparian jobs.\n"); rc >= 0 {
		return rc
	}
	d, err := startDaemon("", c, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 2
	}
	defer d.close()
	st, err := sf.openStore(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	defer st.Close()
	cfg := sf.config([]string{addr}, st, d.log.With("component", "sentinel"), d.reg)
	if cfg.Security, err = sec.server(); err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	// The embedded worker presents the same secret and certificate.
	if wf.secret, wf.clientTLS, err = sec.client(); err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	s, err := sentinel.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	w, cleanup, err := wf.newWorker(ctx, addr, d.log.With("component", "worker"), d.reg)
	if err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	defer cleanup()
	if err := d.serveMetrics(c.metricsAddr, sentinelHealth(st)); err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	defer secondSignalExits(ctx, d.log)()

	// The worker stops (draining) first, then the sentinel, so the
	// worker's last CONCLUDEs are recorded.
	sctx, stopSentinel := context.WithCancel(context.WithoutCancel(ctx))
	wctx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	serr := make(chan error, 1)
	go func() { serr <- s.Run(sctx) }()
	sf.startScanner(wctx, st, s, d.log.With("component", "scanner"))
	select {
	case <-s.Ready():
	case err := <-serr:
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		stopSentinel()
		return 1
	}
	fmt.Fprintf(stderr, "casparian: sentinel on %s, worker %s with %d slots, database %s, output %s\n",
		strings.Join(s.Endpoints(), ","), w.ID(), wf.slots, st.Path(), wf.output)
	if untilIdle {
		go waitIdle(wctx, st, stopWorker, d.log)
	}
	werr := w.Run(wctx)
	stopSentinel()
	if err := <-serr; err != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", err)
		return 1
	}
	if werr != nil {
		fmt.Fprintf(stderr, "casparian start: %v\n", werr)
		return 1
	}
	return 0
}

// waitIdle calls stop once the queue has no QUEUED or RUNNING job.
func waitIdle(ctx context.Context, st *store.Store, stop func(), log *slog.Logger) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		counts, err := st.Counts(ctx)
		if err != nil {
			continue
		}
		if counts[store.StatusQueued] == 0 && counts[store.StatusRunning] == 0 {
			log.Info("no job is queued or running: stopping")
			stop()
			return
		}
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil || m.Gauge == nil {
		return 0
	}
	return m.Gauge.GetValue()
}
