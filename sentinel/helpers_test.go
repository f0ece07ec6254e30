package sentinel

// Test harness: a real Sentinel over a real SQLite file, and fake workers
// that are real zmq4 DEALERs speaking Protocol v4.

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/store"
	"github.com/casparianflow/casparian/sentinel/transport"
)

// Timeouts of the harness. The box is small and tests run with -race, so
// waits for things that must happen are generous, and windows in which
// something must NOT happen are short.
const (
	waitFor = 10 * time.Second
	quiet   = 300 * time.Millisecond
)

// testConfig is the default Config of the tests: fast timers except the
// ones that would evict or reap behind a test's back.
func testConfig() Config {
	return Config{
		Bind:             []string{"tcp://127.0.0.1:0"},
		HeartbeatTimeout: time.Minute,
		CleanupInterval:  25 * time.Millisecond,
		ProbeInterval:    time.Second,
		Lease:            time.Minute,
		PollInterval:     50 * time.Millisecond,
		AllowUnsigned:    true, // deploy_test.go checks signing with it off
	}
}

// testStoreOptions keeps backoff short so requeued jobs are claimable at once.
func testStoreOptions() store.Options {
	return store.Options{BackoffBase: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond, Synchronous: "NORMAL"}
}

type env struct {
	t      *testing.T
	ctx    context.Context
	st     *store.Store
	s      *Sentinel
	reg    *prometheus.Registry
	dbPath string
	root   string // source root of the input files
	eps    []string

	cancel  context.CancelFunc
	runErr  chan error
	stopped bool
	fv      int64 // default input file version
}

type envOpt struct {
	cfg    func(*Config)
	store  *store.Options
	dbPath string // reuse a database (restart tests)
}

func newEnv(t *testing.T, o envOpt) *env {
	t.Helper()
	ctx := t.Context()
	e := &env{t: t, ctx: ctx, reg: prometheus.NewRegistry()}
	dir := t.TempDir()
	e.root = filepath.Join(dir, "root")
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatal(err)
	}
	e.dbPath = o.dbPath
	if e.dbPath == "" {
		e.dbPath = filepath.Join(dir, "queue.db")
	}
	so := testStoreOptions()
	if o.store != nil {
		so = *o.store
	}
	st, err := store.Open(ctx, e.dbPath, so)
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	cfg := testConfig()
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	cfg.Store = st
	cfg.Registerer = e.reg
	if testing.Verbose() && os.Getenv("SENTINEL_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	rctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- s.Run(rctx) }()
	t.Cleanup(func() {
		e.stop()
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-e.runErr:
		e.stopped = true
		t.Fatalf("Run returned before Ready: %v", err)
	case <-time.After(waitFor):
		t.Fatal("sentinel not ready")
	}
	e.eps = s.Endpoints()
	if len(e.eps) != len(cfg.Bind) {
		t.Fatalf("Endpoints() = %v, want %d endpoints", e.eps, len(cfg.Bind))
	}
	return e
}

// stop cancels Run and waits for it; it returns how long that took.
func (e *env) stop() time.Duration {
	if e.stopped {
		return 0
	}
	e.stopped = true
	start := time.Now()
	e.cancel()
	select {
	case err := <-e.runErr:
		if err != nil {
			e.t.Errorf("Run returned %v", err)
		}
	case <-time.After(waitFor):
		e.t.Errorf("Run did not return %s after its context was cancelled", waitFor)
	}
	return time.Since(start)
}

// ep returns the first bound endpoint with the given scheme prefix.
func (e *env) ep(scheme string) string {
	e.t.Helper()
	for _, ep := range e.eps {
		if strings.HasPrefix(ep, scheme+"://") {
			return ep
		}
	}
	e.t.Fatalf("no %s endpoint in %v", scheme, e.eps)
	return ""
}

// ---- queue helpers ----

var pluginSeq atomic.Int64

// plugin registers an ACTIVE manifest for name and returns its source.
func (e *env) plugin(name string) string {
	e.t.Helper()
	src := fmt.Sprintf("# plugin %s #%d\ndef parse(path):\n    return []\n", name, pluginSeq.Add(1))
	if _, err := e.st.AddPlugin(e.ctx, store.PluginSpec{Name: name, Version: "1.0.0", SourceCode: src}); err != nil {
		e.t.Fatal(err)
	}
	return src
}

// file writes root/rel and registers it; it returns the file version id.
func (e *env) file(rel, content string) int64 {
	e.t.Helper()
	p := filepath.Join(e.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	fv, err := e.st.AddFile(e.ctx, store.FileSpec{Root: e.root, RelPath: rel})
	if err != nil {
		e.t.Fatal(err)
	}
	return fv
}

func (e *env) defaultFile() int64 {
	if e.fv == 0 {
		e.fv = e.file("input.csv", "a,b\n1,2\n")
	}
	return e.fv
}

// job enqueues a job for plugin on the default input file and wakes the
// dispatcher.
func (e *env) job(plugin string) int64 { return e.jobWith(e.defaultFile(), plugin, 0, "") }

func (e *env) jobWith(fv int64, plugin string, priority int64, overrides string) int64 {
	e.t.Helper()
	id, err := e.st.Enqueue(e.ctx, fv, plugin, priority, overrides)
	if err != nil {
		e.t.Fatal(err)
	}
	e.s.Wake()
	return id
}

func (e *env) get(id int64) *store.Job {
	e.t.Helper()
	j, err := e.st.Get(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

// waitStatus waits until job id has status and returns it.
func (e *env) waitStatus(id int64, status string) *store.Job {
	e.t.Helper()
	var j *store.Job
	eventually(e.t, waitFor, func() (bool, string) {
		j = e.get(id)
		return j.Status == status, fmt.Sprintf("job %d is %s (attempt %d, last error %q), want %s",
			id, j.Status, j.Attempt, j.LastError, status)
	})
	return j
}

func (e *env) counts() map[string]int64 {
	e.t.Helper()
	c, err := e.st.Counts(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// db opens a second connection to the database, for rows the store API
// does not expose.
func (e *env) db() *sql.DB {
	e.t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { db.Close() })
	return db
}

// workerRow returns the cf_worker_node row of a worker id.
func (e *env) workerRow(id string) (store.WorkerRecord, bool) {
	e.t.Helper()
	ws, err := e.st.ListWorkers(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, w := range ws {
		if w.WorkerID == id {
			return w, true
		}
	}
	return store.WorkerRecord{}, false
}

// registered returns the ids of the workers the sentinel has registered.
func (e *env) registered() []string {
	var ids []string
	for _, w := range e.s.Workers(e.ctx) {
		ids = append(ids, w.ID)
	}
	return ids
}

func (e *env) info(id string) (WorkerInfo, bool) {
	for _, w := range e.s.Workers(e.ctx) {
		if w.ID == id {
			return w, true
		}
	}
	return WorkerInfo{}, false
}

func (e *env) waitRegistered(ids ...string) {
	e.t.Helper()
	eventually(e.t, waitFor, func() (bool, string) {
		got := e.registered()
		for _, id := range ids {
			if !slices.Contains(got, id) {
				return false, fmt.Sprintf("registered workers %v, want %v among them", got, ids)
			}
		}
		return true, ""
	})
}

// sync waits until the loop goroutine has finished what it was doing (e.g.
// the rest of handling a message whose reply the test already received).
func (e *env) sync() {
	e.t.Helper()
	if !e.s.do(e.ctx, func() {}) {
		e.t.Fatal("sentinel not running")
	}
}

// ---- metrics ----

// val reads a counter or gauge.
func val(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	m, ok := c.(prometheus.Metric)
	if !ok {
		t.Fatalf("%T is not a single metric", c)
	}
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	case pb.Histogram != nil:
		return float64(pb.Histogram.GetSampleCount())
	}
	t.Fatalf("unsupported metric %v", &pb)
	return 0
}

func (e *env) waitMetric(name string, c prometheus.Collector, want float64) {
	e.t.Helper()
	eventually(e.t, waitFor, func() (bool, string) {
		got := val(e.t, c)
		return got == want, fmt.Sprintf("%s = %v, want %v", name, got, want)
	})
}

// ---- polling ----

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", d, why)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- fake worker ----

type workerOpts struct {
	ID       string
	Caps     []string
	Slots    int
	Exts     []string
	Endpoint string // default: the env's first endpoint
	Hostname string
	NoRecv   bool // never read from the socket
}

// fakeWorker is a DEALER peer. Messages are read by a goroutine into in;
// the test goroutine consumes them with expect/next (which skip the
// sentinel's HEARTBEAT probes and keep out-of-order messages pending).
type fakeWorker struct {
	t        *testing.T
	id       string
	sock     zmq4.Socket
	in       chan protocol.Message
	pending  []protocol.Message
	probes   atomic.Int64
	closed   atomic.Bool
	hbStop   chan struct{}
	hbDone   chan struct{}
	mu       sync.Mutex
	held     map[int64]bool // job ids listed in heartbeats
	attempts map[int64]int64
}

var routeSeq atomic.Int64

// dial connects a DEALER with a fresh routing identity; it does not
// IDENTIFY.
func (e *env) dial(endpoint string, noRecv bool) *fakeWorker {
	e.t.Helper()
	if endpoint == "" {
		endpoint = e.eps[0]
	}
	hep, err := transport.Endpoint(endpoint)
	if err != nil {
		e.t.Fatal(err)
	}
	rid := fmt.Sprintf("route-%d-%d", os.Getpid(), routeSeq.Add(1))
	sock := zmq4.NewDealer(context.Background(), zmq4.WithID(zmq4.SocketIdentity(rid)),
		zmq4.WithDialerRetry(20*time.Millisecond), zmq4.WithDialerMaxRetries(50),
		zmq4.WithLogger(log.New(io.Discard, "", 0)))
	if err := sock.Dial(hep); err != nil {
		sock.Close()
		e.t.Fatalf("dial %s: %v", hep, err)
	}
	f := &fakeWorker{t: e.t, sock: sock, in: make(chan protocol.Message, 4096),
		held: map[int64]bool{}, attempts: map[int64]int64{}}
	if !noRecv {
		go f.recvLoop()
	}
	e.t.Cleanup(f.close)
	return f
}

// worker dials and IDENTIFYs.
func (e *env) worker(o workerOpts) *fakeWorker {
	e.t.Helper()
	f := e.dial(o.Endpoint, o.NoRecv)
	f.id = o.ID
	f.identify(o)
	return f
}

func (f *fakeWorker) identify(o workerOpts) {
	f.t.Helper()
	f.send(protocol.OpIdentify, 0, protocol.IdentifyPayload{Capabilities: o.Caps, WorkerID: o.ID, Slots: o.Slots,
		ProtocolExtensions: o.Exts, Hostname: o.Hostname})
}

func (f *fakeWorker) recvLoop() {
	for {
		m, err := f.sock.Recv()
		if err != nil {
			if f.closed.Load() {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		msg, err := protocol.Decode(m.Frames)
		if err != nil {
			f.t.Errorf("worker %s: undecodable message from the sentinel: %v", f.id, err)
			continue
		}
		if msg.OpCode == protocol.OpHeartbeat && len(msg.Payload) == 0 {
			f.probes.Add(1)
			continue
		}
		select {
		case f.in <- msg:
		default:
			f.t.Errorf("worker %s: inbox full", f.id)
		}
	}
}

func (f *fakeWorker) close() {
	if f.closed.Swap(true) {
		return
	}
	f.stopHeartbeats()
	f.sock.Close()
}

func (f *fakeWorker) sendRaw(frames ...[]byte) {
	f.t.Helper()
	if err := f.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		f.t.Errorf("worker %s: send: %v", f.id, err)
	}
}

func (f *fakeWorker) send(op protocol.OpCode, jobID uint64, payload any) {
	f.t.Helper()
	m, err := protocol.NewMessage(op, jobID, payload)
	if err != nil {
		f.t.Fatal(err)
	}
	frames, err := protocol.Encode(m)
	if err != nil {
		f.t.Fatal(err)
	}
	f.sendRaw(frames...)
}

// tryExpect returns the first message with opcode op (and job id, unless
// jobID < 0), keeping other messages pending.
func (f *fakeWorker) tryExpect(op protocol.OpCode, jobID int64, d time.Duration) (protocol.Message, bool) {
	match := func(m protocol.Message) bool {
		return m.OpCode == op && (jobID < 0 || m.JobID == uint64(jobID))
	}
	for i, m := range f.pending {
		if match(m) {
			f.pending = slices.Delete(f.pending, i, i+1)
			return m, true
		}
	}
	deadline := time.After(d)
	for {
		select {
		case m := <-f.in:
			if match(m) {
				return m, true
			}
			f.pending = append(f.pending, m)
		case <-deadline:
			return protocol.Message{}, false
		}
	}
}

func (f *fakeWorker) expect(op protocol.OpCode, jobID int64) protocol.Message {
	f.t.Helper()
	m, ok := f.tryExpect(op, jobID, waitFor)
	if !ok {
		f.t.Fatalf("worker %s: no %s (job %d) within %s; pending: %s", f.id, op, jobID, waitFor, f.describePending())
	}
	return m
}

// expectNone fails if a message with opcode op arrives within d.
func (f *fakeWorker) expectNone(op protocol.OpCode, d time.Duration) {
	f.t.Helper()
	if m, ok := f.tryExpect(op, -1, d); ok {
		f.t.Fatalf("worker %s: unexpected %s for job %d: %s", f.id, op, m.JobID, m.Payload)
	}
}

func (f *fakeWorker) describePending() string {
	var parts []string
	for _, m := range f.pending {
		parts = append(parts, fmt.Sprintf("%s(job %d)", m.OpCode, m.JobID))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// dispatch waits for a DISPATCH and returns its job id and payload.
func (f *fakeWorker) dispatch() (int64, protocol.DispatchCommand) {
	f.t.Helper()
	m := f.expect(protocol.OpDispatch, -1)
	var d protocol.DispatchCommand
	if err := m.Unmarshal(&d); err != nil {
		f.t.Fatalf("bad DISPATCH payload: %v", err)
	}
	f.mu.Lock()
	f.attempts[int64(m.JobID)] = d.Attempt
	f.mu.Unlock()
	return int64(m.JobID), d
}

func (f *fakeWorker) attempt(id int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[id]
}

// conclude sends a CONCLUDE for job id with the attempt it was dispatched
// with (unless rc.Attempt is set, or -1 to send none).
func (f *fakeWorker) conclude(id int64, rc protocol.JobReceipt) {
	f.t.Helper()
	switch {
	case rc.Attempt < 0:
		rc.Attempt = 0
	case rc.Attempt == 0:
		rc.Attempt = f.attempt(id)
	}
	f.send(protocol.OpConclude, uint64(id), rc)
}

// hold/release set the job ids the worker's heartbeats list.
func (f *fakeWorker) hold(ids ...int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		f.held[id] = true
	}
}

func (f *fakeWorker) release(ids ...int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		delete(f.held, id)
	}
}

func (f *fakeWorker) status() protocol.HeartbeatPayload {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := protocol.HeartbeatPayload{Status: protocol.WorkerIdle}
	for id := range f.held {
		p.ActiveJobIDs = append(p.ActiveJobIDs, id)
	}
	slices.Sort(p.ActiveJobIDs)
	if len(p.ActiveJobIDs) > 0 {
		p.Status = protocol.WorkerAlive
		p.ActiveJobCount = len(p.ActiveJobIDs)
	}
	return p
}

func (f *fakeWorker) heartbeat() {
	f.t.Helper()
	f.send(protocol.OpHeartbeat, 0, f.status())
}

// startHeartbeats sends a HEARTBEAT (listing the held jobs) every interval
// until the worker is closed or stopHeartbeats is called.
func (f *fakeWorker) startHeartbeats(interval time.Duration) {
	f.hbStop = make(chan struct{})
	f.hbDone = make(chan struct{})
	go func() {
		defer close(f.hbDone)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			select {
			case <-f.hbStop:
				return
			case <-tk.C:
				m, _ := protocol.NewMessage(protocol.OpHeartbeat, 0, f.status())
				frames, _ := protocol.Encode(m)
				_ = f.sock.Send(zmq4.NewMsgFrom(frames...))
			}
		}
	}()
}

func (f *fakeWorker) stopHeartbeats() {
	if f.hbStop != nil {
		close(f.hbStop)
		<-f.hbDone
		f.hbStop = nil
	}
}

// ---- raw ZMTP peer ----

// rawPeer is a hand-rolled ZMTP 3.0 DEALER over TCP with a tiny receive
// buffer. After its handshake it can send, and never reads: unlike a zmq4
// DEALER, whose reader goroutine buffers messages before it stops reading,
// it stalls the sentinel's writes to it at once.
type rawPeer struct {
	c net.Conn
}

func dialRaw(t *testing.T, endpoint, identity string) *rawPeer {
	t.Helper()
	addr, ok := strings.CutPrefix(endpoint, "tcp://")
	if !ok {
		t.Fatalf("rawPeer needs a tcp endpoint, got %s", endpoint)
	}
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitFor))
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xFF, 0x7F, 3, 0
	copy(g[12:32], "NULL")
	if _, err := c.Write(g); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 64)); err != nil {
		t.Fatalf("raw peer: server greeting: %v", err)
	}
	ready := []byte{5}
	ready = append(ready, "READY"...)
	ready = appendProp(ready, "Socket-Type", "DEALER")
	ready = appendProp(ready, "Identity", identity)
	p := &rawPeer{c: c}
	if err := p.writeFrame(0x04, ready); err != nil {
		t.Fatal(err)
	}
	// The server's READY.
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("raw peer: server READY: %v", err)
	}
	if hdr[0]&0x02 != 0 {
		t.Fatal("raw peer: unexpected long command")
	}
	if _, err := io.ReadFull(c, make([]byte, hdr[1])); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Time{})
	return p
}

func appendProp(b []byte, k, v string) []byte {
	b = append(b, byte(len(k)))
	b = append(b, k...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func (p *rawPeer) writeFrame(flags byte, body []byte) error {
	var b []byte
	if len(body) > 255 {
		b = append(b, flags|0x02)
		b = binary.BigEndian.AppendUint64(b, uint64(len(body)))
	} else {
		b = append(b, flags, byte(len(body)))
	}
	b = append(b, body...)
	_, err := p.c.Write(b)
	return err
}

func (p *rawPeer) send(t *testing.T, op protocol.OpCode, jobID uint64, payload any) {
	t.Helper()
	m, err := protocol.NewMessage(op, jobID, payload)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := protocol.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	_ = p.c.SetWriteDeadline(time.Now().Add(waitFor))
	for i, fr := range frames {
		var more byte
		if i < len(frames)-1 {
			more = 0x01
		}
		if err := p.writeFrame(more, fr); err != nil {
			t.Fatalf("raw peer: send %s: %v", op, err)
		}
	}
}

func zmqMsg(frames [][]byte) zmq4.Msg { return zmq4.NewMsgFrom(frames...) }
