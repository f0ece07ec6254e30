// Package sentinel is the control plane daemon: it owns the job queue (a
// SQLite file, package store) and dispatches jobs over a ZeroMQ ROUTER to
// workers (package worker), speaking Protocol v4 (package protocol) over the
// hardened transports of package transport.
//
// One goroutine owns all state (the worker registry) and runs every queue
// operation; a receive goroutine feeds it decoded messages, and each worker
// has its own bounded send queue and sender goroutine, so a worker that stops
// reading cannot stall dispatch to the others. docs/OPERATIONS.md describes
// the daemon from an operator's side, docs/PROTOCOL.md the messages.
package sentinel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/plain"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
	"github.com/casparianflow/casparian/sentinel/transport"
)

// Defaults of Config (the original's compile-time constants where it had one).
const (
	DefaultBind             = "tcp://127.0.0.1:5555"
	DefaultHeartbeatTimeout = 60 * time.Second
	DefaultCleanupInterval  = 10 * time.Second
	DefaultProbeInterval    = 5 * time.Second
	DefaultLease            = 30 * time.Second
	DefaultPollInterval     = 500 * time.Millisecond
	DefaultSendQueue        = 1024
	DefaultCrashLoopAfter   = 3
	DefaultCrashLoopPause   = time.Second
)

// Config configures a Sentinel. Zero values take the defaults above.
type Config struct {
	// Bind lists the endpoints to listen on: tcp://HOST:PORT or ipc:///PATH.
	// Default DefaultBind. tcp://HOST:0 picks a free port (see Endpoints).
	Bind []string
	// Store is the job queue. Required; the caller closes it.
	Store *store.Store
	// Logger receives the daemon's logs. nil discards them.
	Logger *slog.Logger
	// Registerer, if set, gets the sentinel's metrics.
	Registerer prometheus.Registerer
	// HeartbeatTimeout evicts a worker silent for that long and requeues its
	// jobs. Default 60 s.
	HeartbeatTimeout time.Duration
	// CleanupInterval is how often silent workers are evicted and expired
	// leases reaped. Default 10 s.
	CleanupInterval time.Duration
	// ProbeInterval is how often each worker gets a HEARTBEAT probe, which
	// tells it the sentinel is alive. Default 5 s.
	ProbeInterval time.Duration
	// Lease is how long a dispatched job stays RUNNING without news from its
	// worker; worker heartbeats extend it. Default 30 s.
	Lease time.Duration
	// PollInterval is how often the queue is checked for jobs enqueued by
	// other processes (in-process Enqueue wakes the dispatcher at once).
	// Default 500 ms.
	PollInterval time.Duration
	// SendQueue bounds the messages waiting to be sent to one worker; a
	// worker whose queue is full is evicted. Default 1024.
	SendQueue int
	// TrustOnFirstUse adds the key of a correctly signed DEPLOY from an
	// unknown publisher to the allow-list (cf_publisher) instead of refusing
	// it. Default false: only keys added with `casparian keys trust` publish.
	TrustOnFirstUse bool
	// AllowUnsigned accepts DEPLOYs without a signature (the original's
	// publisher never signed). Default false.
	AllowUnsigned bool
	// CrashLoopAfter is the number of attempts of one plugin in a row that
	// crashed, hung past their deadline or hit a resource limit after which
	// its jobs run one at a time, CrashLoopPause apart, until one succeeds
	// (see crashloop.go). Default 3; negative disables it.
	CrashLoopAfter int
	// CrashLoopPause is the least time between two attempts of a
	// crash-looping plugin. Default 1 s.
	CrashLoopPause time.Duration
	// MaxPayload caps incoming payloads. Default protocol.DefaultMaxPayload.
	MaxPayload uint32
	// Security authenticates peers (workers, publishers): with a
	// PlainPassword every endpoint requires ZeroMQ PLAIN with that shared
	// secret; tls:// endpoints need Security.TLS (mutual TLS). Zero value:
	// no authentication, as the original system (keep the endpoints on
	// loopback or ipc://).
	Security transport.ServerSecurity
}

func (c Config) withDefaults() Config {
	if len(c.Bind) == 0 {
		c.Bind = []string{DefaultBind}
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.CleanupInterval <= 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.SendQueue <= 0 {
		c.SendQueue = DefaultSendQueue
	}
	if c.CrashLoopAfter == 0 {
		c.CrashLoopAfter = DefaultCrashLoopAfter
	}
	if c.CrashLoopPause <= 0 {
		c.CrashLoopPause = DefaultCrashLoopPause
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Sentinel is the control plane daemon. Create it with New, then call Run.
type Sentinel struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	metrics *Metrics
	dec     protocol.Decoder

	wake    chan struct{}
	ready   chan struct{}
	stopped chan struct{} // closed when Run returns
	calls   chan func()

	mu        sync.Mutex
	endpoints []string // bound endpoints, user schemes (tcp://, ipc://)

	// Owned by the loop goroutine.
	routers  []*routerSock
	workers  map[string]*worker // by routeKey (endpoint index + routing identity)
	byID     map[string]*worker // by worker_id
	order    []string           // routing identities, rotated for fairness
	plugins  map[string]cachedPlugin
	envCache *cachedEnvs       // plugin environments, as pluginEnvs caches them
	pending  []pendingConclude // CONCLUDEs received, not yet recorded
	loops    *crashLoops       // crash-looping plugins
}

// New validates cfg and returns a Sentinel. It registers the metrics.
func New(cfg Config) (*Sentinel, error) {
	if cfg.Store == nil {
		return nil, errors.New("sentinel: Config.Store is required")
	}
	cfg = cfg.withDefaults()
	s := &Sentinel{
		cfg:     cfg,
		log:     cfg.Logger,
		st:      cfg.Store,
		metrics: newMetrics(),
		loops:   newCrashLoops(cfg.CrashLoopAfter, cfg.CrashLoopPause),
		dec:     protocol.Decoder{MaxPayload: cfg.MaxPayload},
		wake:    make(chan struct{}, 1),
		ready:   make(chan struct{}),
		stopped: make(chan struct{}),
		calls:   make(chan func()),
		workers: map[string]*worker{},
		byID:    map[string]*worker{},
	}
	if cfg.Registerer != nil {
		if err := s.metrics.register(cfg.Registerer, cfg.Store); err != nil {
			return nil, fmt.Errorf("sentinel: register metrics: %w", err)
		}
	}
	return s, nil
}

// Metrics returns the sentinel's collectors.
func (s *Sentinel) Metrics() *Metrics { return s.metrics }

// Ready is closed once every endpoint is bound.
func (s *Sentinel) Ready() <-chan struct{} { return s.ready }

// Endpoints returns the bound endpoints (with the real port for tcp://…:0).
// Valid after Ready is closed.
func (s *Sentinel) Endpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.endpoints...)
}

// Wake makes the dispatcher look at the queue now (after an in-process
// Enqueue); otherwise it polls every PollInterval.
func (s *Sentinel) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run binds the endpoints and serves until ctx is cancelled, then shuts
// down: it stops dispatching, marks its workers GONE in the registry table
// and closes the socket. Jobs that are RUNNING keep their leases: workers
// finish them and conclude to the next sentinel, or the leases expire.
func (s *Sentinel) Run(ctx context.Context) error {
	defer close(s.stopped)
	if err := transport.Register(transport.DefaultLimits()); err != nil {
		return fmt.Errorf("sentinel: %w", err)
	}
	transport.SetServerSecurity(s.cfg.Security)
	s.warnInsecure()
	if _, err := s.st.MarkWorkersGone(ctx, "sentinel restarted"); err != nil {
		s.log.Warn("could not reset the worker table", "error", err)
	}
	sockCtx, cancelSock := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSock()
	// One ROUTER per endpoint: a zmq4 socket keeps a single listener, and a
	// second Listen would take over the first one's accept loop.
	var bound []string
	for i, ep := range s.cfg.Bind {
		hep, err := transport.Endpoint(ep)
		if err != nil {
			return fmt.Errorf("sentinel: --bind %s: %w", ep, err)
		}
		if err := removeStaleSocket(ep); err != nil {
			return fmt.Errorf("sentinel: --bind %s: %w", ep, err)
		}
		opts := []zmq4.Option{zmq4.WithLogger(zmqLogger(s.log))}
		if len(s.cfg.Security.PlainPassword) > 0 {
			// zmq4's PLAIN server accepts any credentials: the hardened
			// listener has checked the password before zmq4 sees the conn.
			opts = append(opts, zmq4.WithSecurity(plain.Security("", "")))
		}
		sock := zmq4.NewRouter(sockCtx, opts...)
		defer sock.Close()
		if err := sock.Listen(hep); err != nil {
			return fmt.Errorf("sentinel: listen on %s: %w (is another sentinel running there?)", ep, err)
		}
		b := boundEndpoint(ep, sock.Addr())
		s.routers = append(s.routers, &routerSock{idx: i, endpoint: b, sock: sock})
		bound = append(bound, b)
	}
	s.mu.Lock()
	s.endpoints = bound
	s.mu.Unlock()
	s.log.Info("sentinel listening", "endpoints", strings.Join(bound, ","), "database", s.st.Path(),
		"lease", s.cfg.Lease, "heartbeat_timeout", s.cfg.HeartbeatTimeout)
	close(s.ready)

	inbox := make(chan inMsg, 256)
	var recvWG sync.WaitGroup
	for _, r := range s.routers {
		recvWG.Add(1)
		go s.receive(sockCtx, r, inbox, &recvWG)
	}

	cleanup := time.NewTicker(s.cfg.CleanupInterval)
	probe := time.NewTicker(s.cfg.ProbeInterval)
	poll := time.NewTicker(s.cfg.PollInterval)
	defer cleanup.Stop()
	defer probe.Stop()
	defer poll.Stop()

	s.reap(ctx) // leases left by a previous sentinel
	s.dispatch(ctx)
	for {
		select {
		case <-ctx.Done():
			s.flushConcludes(context.WithoutCancel(ctx))
			s.shutdown()
			cancelSock()
			recvWG.Wait()
			return nil
		case msg := <-inbox:
			s.handle(ctx, msg)
			// Drain what else is waiting (bounded), record the CONCLUDEs
			// among it in one transaction, then dispatch into freed slots.
			for n := 1; n < maxBatch; n++ {
				select {
				case msg := <-inbox:
					s.handle(ctx, msg)
					continue
				default:
				}
				break
			}
			s.flushConcludes(ctx)
			s.dispatch(ctx)
		case <-s.wake:
			s.dispatch(ctx)
		case <-poll.C:
			s.dispatch(ctx)
		case <-probe.C:
			s.probe()
		case <-cleanup.C:
			s.evictSilent(ctx)
			s.reap(ctx)
			s.dispatch(ctx)
		case fn := <-s.calls:
			fn()
		}
	}
}

// maxBatch bounds the messages handled between two dispatch passes.
const maxBatch = 512

// do runs fn on the loop goroutine and waits for it; it returns false if the
// sentinel is not running (not yet serving, or stopped) or ctx ends first.
func (s *Sentinel) do(ctx context.Context, fn func()) bool {
	select {
	case <-s.ready:
	default:
		return false
	}
	done := make(chan struct{})
	select {
	case s.calls <- func() { fn(); close(done) }:
		<-done
		return true
	case <-s.stopped:
		return false
	case <-ctx.Done():
		return false
	}
}

// routerSock is one bound endpoint.
type routerSock struct {
	idx      int
	endpoint string
	sock     zmq4.Socket
}

// inMsg is a received message and the endpoint it came in on.
type inMsg struct {
	r   *routerSock
	msg zmq4.Msg
}

func (s *Sentinel) receive(ctx context.Context, r *routerSock, inbox chan<- inMsg, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		msg, err := r.sock.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Debug("receive failed", "endpoint", r.endpoint, "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		select {
		case inbox <- inMsg{r: r, msg: msg}:
		case <-ctx.Done():
			return
		}
	}
}

// removeStaleSocket deletes an ipc:// socket file nobody listens on (left by
// a killed sentinel); a live one is left alone, so Listen then fails.
func removeStaleSocket(ep string) error {
	path, ok := strings.CutPrefix(ep, "ipc://")
	if !ok {
		return nil
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil // missing, or not a socket: Listen reports it
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a running process (another sentinel?)", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return os.Remove(path)
	}
	return nil
}

// boundEndpoint renders the endpoint actually bound, with the user's scheme.
func boundEndpoint(ep string, addr net.Addr) string {
	if strings.HasPrefix(ep, "tcp://") && addr != nil && strings.HasSuffix(ep, ":0") {
		if ta, ok := addr.(*net.TCPAddr); ok {
			host := strings.TrimSuffix(strings.TrimPrefix(ep, "tcp://"), ":0")
			return fmt.Sprintf("tcp://%s:%d", host, ta.Port)
		}
	}
	return ep
}

// sha256Hex is the hex SHA-256 of the concatenated parts.
func sha256Hex(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sortedKeys[V any](m map[int64]V) []int64 {
	ids := make([]int64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// warnInsecure logs the endpoints whose peers are not authenticated, or
// whose shared secret would cross the network in clear.
func (s *Sentinel) warnInsecure() {
	for _, ep := range s.cfg.Bind {
		scheme, rest, _ := strings.Cut(ep, "://")
		if scheme != "tcp" && scheme != transport.SchemeTCP {
			continue
		}
		host, _, err := net.SplitHostPort(rest)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			continue
		}
		if len(s.cfg.Security.PlainPassword) == 0 {
			s.log.Warn("endpoint reachable from the network accepts unauthenticated peers: set --secret-file (and use tls:// for remote workers)", "endpoint", ep)
		} else {
			s.log.Warn("the shared secret crosses the network in clear on this endpoint: use tls:// for remote workers", "endpoint", ep)
		}
	}
}
