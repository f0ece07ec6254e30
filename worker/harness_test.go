package worker_test

// The test harness: a fake sentinel (a real zmq4 ROUTER on a hardened
// endpoint, speaking sentinel/protocol), a tiny in-process guest runtime for
// tests that need many or fast jobs, and a helper that runs a real
// worker.Worker over a real host.Host against them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/sandbox"
	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/protocol"
	"github.com/casparianflow/casparian/sentinel/transport"
	"github.com/casparianflow/casparian/worker"
)

func TestMain(m *testing.M) {
	if err := transport.Register(transport.DefaultLimits()); err != nil {
		log.Fatal(err)
	}
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for a message or a state: generous, since the
// suite runs under -race on a small, noisy machine. Waits return as soon as
// the condition holds.
const waitTimeout = 20 * time.Second

// ---------------------------------------------------------------------------
// Fake sentinel

// rmsg is one message the fake sentinel received.
type rmsg struct {
	id   []byte // the DEALER's routing identity
	m    protocol.Message
	at   time.Time
	used bool
}

func (r *rmsg) String() string {
	return fmt.Sprintf("%s job=%d %s", r.m.OpCode, r.m.JobID, r.m.Payload)
}

// fakeSentinel is a ROUTER that records what it receives and can answer.
type fakeSentinel struct {
	t    *testing.T
	ep   string // the user endpoint it listens on: tcp://HOST:PORT or ipc:///PATH
	sock zmq4.Socket
	// autoAck makes it answer every CONCLUDE with an ACK of the same job id
	// (extension conclude-ack), as the real sentinel does.
	autoAck atomic.Bool

	mu      sync.Mutex
	msgs    []*rmsg
	changed chan struct{} // closed and replaced whenever msgs grows
	closed  bool
	recvEnd chan struct{}
}

var quietZMQ = zmq4.WithLogger(log.New(io.Discard, "", 0))

// newSentinel listens on 127.0.0.1 with a kernel-chosen port.
func newSentinel(t *testing.T) *fakeSentinel { return newSentinelAt(t, "tcp://127.0.0.1:0") }

// newSentinelAt listens on the user endpoint ep (tcp:// or ipc://), through
// the hardened transport; it retries briefly, since an endpoint just
// released by a previous fake sentinel may take a moment to free.
func newSentinelAt(t *testing.T, userEP string) *fakeSentinel {
	t.Helper()
	ep, err := transport.Endpoint(userEP)
	if err != nil {
		t.Fatal(err)
	}
	var sock zmq4.Socket
	deadline := time.Now().Add(waitTimeout)
	for {
		sock = zmq4.NewRouter(context.Background(), quietZMQ)
		err = sock.Listen(ep)
		if err == nil {
			break
		}
		sock.Close()
		if time.Now().After(deadline) {
			t.Fatalf("listen %s: %v", ep, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.HasPrefix(userEP, "tcp://") {
		userEP = "tcp://" + sock.Addr().String()
	}
	s := &fakeSentinel{t: t, ep: userEP, sock: sock, changed: make(chan struct{}), recvEnd: make(chan struct{})}
	s.autoAck.Store(true)
	go s.recvLoop()
	t.Cleanup(s.close)
	return s
}

// connect is the endpoint a worker dials (the plain form: the worker itself
// rewrites it to the hardened scheme).
func (s *fakeSentinel) connect() string { return s.ep }

func (s *fakeSentinel) recvLoop() {
	defer close(s.recvEnd)
	for {
		msg, err := s.sock.Recv()
		if err != nil {
			return
		}
		id, m, err := protocol.DecodeRouter(msg.Frames)
		if err != nil {
			s.t.Errorf("fake sentinel: the worker sent a malformed message: %v (%d frames)", err, len(msg.Frames))
			continue
		}
		if m.OpCode == protocol.OpConclude && s.autoAck.Load() {
			s.send(id, protocol.OpAck, m.JobID, protocol.DeployResponse{Success: true, Message: "concluded"})
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, &rmsg{id: id, m: m, at: time.Now()})
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// close stops the ROUTER (the worker sees its connection drop). Idempotent.
func (s *fakeSentinel) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.sock.Close()
	<-s.recvEnd
}

// sendFrames sends raw frames (identity first).
func (s *fakeSentinel) sendFrames(frames ...[]byte) {
	s.t.Helper()
	if err := s.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
		s.t.Errorf("fake sentinel send: %v", err)
	}
}

// send encodes and sends one message to the peer with the given identity;
// v nil means an empty payload.
func (s *fakeSentinel) send(id []byte, op protocol.OpCode, jobID uint64, v any) {
	s.t.Helper()
	m, err := protocol.NewMessage(op, jobID, v)
	if err != nil {
		s.t.Fatal(err)
	}
	frames, err := protocol.EncodeRouter(id, m)
	if err != nil {
		s.t.Fatal(err)
	}
	s.sendFrames(frames...)
}

// dispatch sends a DISPATCH for job id.
func (s *fakeSentinel) dispatch(peer []byte, id uint64, d protocol.DispatchCommand) {
	s.t.Helper()
	s.send(peer, protocol.OpDispatch, id, d)
}

// waitMsg returns the first not yet consumed message that matches, waiting
// for it; it marks it consumed.
func (s *fakeSentinel) waitMsg(what string, match func(*rmsg) bool) *rmsg {
	s.t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		for _, r := range s.msgs {
			if !r.used && match(r) {
				r.used = true
				s.mu.Unlock()
				return r
			}
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			s.t.Fatalf("fake sentinel: no %s within %s; received:\n%s", what, waitTimeout, s.dump())
			return nil
		}
	}
}

// wait returns the next unconsumed message with this opcode and job id
// (any job id when jobID < 0) that satisfies ok (nil = any).
func (s *fakeSentinel) wait(op protocol.OpCode, jobID int64, ok func(*rmsg) bool) *rmsg {
	s.t.Helper()
	return s.waitMsg(fmt.Sprintf("%s job=%d", op, jobID), func(r *rmsg) bool {
		return r.m.OpCode == op && (jobID < 0 || r.m.JobID == uint64(jobID)) && (ok == nil || ok(r))
	})
}

// identify waits for the next IDENTIFY and returns it with its payload.
func (s *fakeSentinel) identify() (*rmsg, protocol.IdentifyPayload) {
	s.t.Helper()
	r := s.wait(protocol.OpIdentify, 0, nil)
	var p protocol.IdentifyPayload
	if err := r.m.Unmarshal(&p); err != nil {
		s.t.Fatalf("IDENTIFY payload: %v", err)
	}
	return r, p
}

// heartbeat waits for the next HEARTBEAT whose payload satisfies ok.
func (s *fakeSentinel) heartbeat(what string, ok func(protocol.HeartbeatPayload) bool) protocol.HeartbeatPayload {
	s.t.Helper()
	var hb protocol.HeartbeatPayload
	s.waitMsg("HEARTBEAT "+what, func(r *rmsg) bool {
		if r.m.OpCode != protocol.OpHeartbeat {
			return false
		}
		var p protocol.HeartbeatPayload
		if err := r.m.Unmarshal(&p); err != nil {
			s.t.Errorf("HEARTBEAT payload %q: %v", r.m.Payload, err)
			return false
		}
		if ok != nil && !ok(p) {
			return false
		}
		hb = p
		return true
	})
	return hb
}

// conclude waits for the next CONCLUDE of job id and decodes it.
func (s *fakeSentinel) conclude(id int64) (*rmsg, protocol.JobReceipt) {
	s.t.Helper()
	r := s.wait(protocol.OpConclude, id, nil)
	var rc protocol.JobReceipt
	if err := r.m.Unmarshal(&rc); err != nil {
		s.t.Fatalf("CONCLUDE payload %q: %v", r.m.Payload, err)
	}
	return r, rc
}

// count counts the received messages (consumed or not) that match.
func (s *fakeSentinel) count(match func(*rmsg) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.msgs {
		if match(r) {
			n++
		}
	}
	return n
}

func (s *fakeSentinel) countOp(op protocol.OpCode, jobID int64) int {
	return s.count(func(r *rmsg) bool {
		return r.m.OpCode == op && (jobID < 0 || r.m.JobID == uint64(jobID))
	})
}

func (s *fakeSentinel) dump() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.msgs {
		fmt.Fprintf(&b, "  %s %s\n", r.at.Format("15:04:05.000"), r.String())
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Test guest runtime

const kindTest guest.Kind = "gotest"

// testRuntime runs "plugins" whose source is a tiny script, one command:
//
//	block        wait until cancelled
//	gate:NAME    wait until the test opens gate NAME (or cancelled), then emit 2 rows
//	emit:N       emit one batch of N rows to topic "out"
//	fail:MSG     fail with a PLUGIN_ERROR
type testRuntime struct {
	mu         sync.Mutex
	starts     map[int64]int // runs started, per job id
	changed    chan struct{} // closed and replaced when starts changes
	running    int
	maxRunning int
	gates      map[string]chan struct{}
	cancelled  []int64
}

func newTestRuntime() *testRuntime {
	return &testRuntime{starts: map[int64]int{}, changed: make(chan struct{}), gates: map[string]chan struct{}{}}
}

func (r *testRuntime) Kind() guest.Kind { return kindTest }

func (r *testRuntime) Load(_ context.Context, p guest.Plugin) (guest.Instance, error) {
	return &testInstance{rt: r, script: string(p.Source)}, nil
}

func (r *testRuntime) Close(context.Context) error { return nil }

func (r *testRuntime) gate(name string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.gates[name]
	if g == nil {
		g = make(chan struct{})
		r.gates[name] = g
	}
	return g
}

// open releases the jobs waiting on gate name.
func (r *testRuntime) open(name string) {
	g := r.gate(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-g:
	default:
		close(g)
	}
}

// openAll releases every gate, present and future.
func (r *testRuntime) openAll() {
	r.mu.Lock()
	names := make([]string, 0, len(r.gates))
	for n := range r.gates {
		names = append(names, n)
	}
	r.mu.Unlock()
	for _, n := range names {
		r.open(n)
	}
}

func (r *testRuntime) max() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxRunning
}

// waitStarted waits until job id has started.
func (r *testRuntime) waitStarted(t *testing.T, id int64) {
	t.Helper()
	r.waitStarts(t, id, 1)
}

// waitStarts waits until job id has been started n times.
func (r *testRuntime) waitStarts(t *testing.T, id int64, n int) {
	t.Helper()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	for {
		r.mu.Lock()
		got, ch := r.starts[id], r.changed
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("job %d started %d times within %s, want %d", id, got, waitTimeout, n)
		}
	}
}

type testInstance struct {
	rt     *testRuntime
	script string
}

func (i *testInstance) Close(context.Context) error { return nil }

func cancelled(ctx context.Context, in guest.Input) error {
	kind := guest.ErrCancelled
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		kind = guest.ErrTimeout
	}
	return &guest.Error{Kind: kind, Message: fmt.Sprintf("test plugin stopped (job %d)", in.JobID), ExitCode: -1}
}

func (i *testInstance) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	r := i.rt
	r.mu.Lock()
	r.running++
	r.maxRunning = max(r.maxRunning, r.running)
	r.starts[in.JobID]++
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running--
		if ctx.Err() != nil {
			r.cancelled = append(r.cancelled, in.JobID)
		}
		r.mu.Unlock()
	}()

	cmd, arg, _ := strings.Cut(i.script, ":")
	switch cmd {
	case "block":
		<-ctx.Done()
		return cancelled(ctx, in)
	case "gate":
		select {
		case <-r.gate(arg):
		case <-ctx.Done():
			return cancelled(ctx, in)
		}
		return emit(ctx, out, 2)
	case "emit":
		n, err := strconv.Atoi(arg)
		if err != nil {
			return guest.Errorf(guest.ErrPlugin, "bad script %q", i.script)
		}
		return emit(ctx, out, n)
	case "fail":
		return guest.Errorf(guest.ErrPlugin, "%s", arg)
	}
	return guest.Errorf(guest.ErrPlugin, "unknown test script %q", i.script)
}

func emit(ctx context.Context, out guest.Output, n int) error {
	b := array.NewInt64Builder(memory.NewGoAllocator())
	defer b.Release()
	for k := range n {
		b.Append(int64(k))
	}
	col := b.NewArray()
	defer col.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, int64(n))
	defer rec.Release()
	return out.Emit(ctx, "out", rec)
}

// testPlugin is the Config.Plugin of the harness: plugin names starting
// with "py" are Python plugins (worker.PythonPlugin, the default), anything
// else is a test-runtime script.
func testPlugin(d *protocol.DispatchCommand) (guest.Plugin, error) {
	if strings.HasPrefix(d.PluginName, "py") {
		return worker.PythonPlugin(d)
	}
	return guest.Plugin{Name: d.PluginName, Kind: kindTest, Source: []byte(d.SourceCode)}, nil
}

// ---------------------------------------------------------------------------
// Worker under test

type harness struct {
	t      *testing.T
	s      *fakeSentinel
	w      *worker.Worker
	rt     *testRuntime
	py     *python.Runtime // nil unless requested
	pyDir  string          // a directory the Python plugins may write besides their scratch dir
	out    string          // the host's output dir
	input  string          // an input file (3 lines)
	cancel context.CancelFunc
	done   chan error
	logs   *logBuffer
}

type options struct {
	python     bool          // add the real Python runtime
	jobTimeout time.Duration // host.Config.JobTimeout
	cfg        func(*worker.Config)
}

// startWorker runs a worker against s until the test ends. Defaults: Slots
// 2, fast heartbeats and backoff, a long sentinel timeout (tests that want
// the timeout set it), Plugin = testPlugin.
func startWorker(t *testing.T, s *fakeSentinel, o options) *harness {
	t.Helper()
	h := &harness{t: t, s: s, rt: newTestRuntime(), out: t.TempDir(), done: make(chan error, 1), logs: &logBuffer{}}
	dir := t.TempDir()
	h.input = filepath.Join(dir, "input.csv")
	if err := os.WriteFile(h.input, []byte("alpha\nbeta\ngamma\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runtimes := map[guest.Kind]guest.Runtime{kindTest: h.rt}
	if o.python {
		h.pyDir = shortTempDir(t)
		py, err := python.New(python.Config{Python: testenv.Python(t), KillGrace: 2 * time.Second, TempDir: shortTempDir(t),
			Sandbox: sandbox.Options{Writable: []string{h.pyDir}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { py.Close(context.Background()) })
		h.py = py
		runtimes[guest.KindPython] = py
	}
	hst, err := host.New(host.Config{Runtimes: runtimes, OutputDir: h.out, JobTimeout: o.jobTimeout})
	if err != nil {
		t.Fatal(err)
	}
	cfg := worker.Config{
		Connect:           s.connect(),
		WorkerID:          "w-" + strings.ReplaceAll(t.Name(), "/", "-"),
		Slots:             2,
		Host:              hst,
		Logger:            slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HeartbeatInterval: 100 * time.Millisecond,
		SentinelTimeout:   time.Minute,
		DrainTimeout:      2 * time.Second,
		ReconnectMin:      20 * time.Millisecond,
		ReconnectMax:      200 * time.Millisecond,
		Plugin:            testPlugin,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.w = w
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- w.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

// stop ends the worker quickly whatever state the test left it in: it
// releases test jobs, drops the sentinel (so no ACK is awaited) and
// cancels Run.
func (h *harness) stop() {
	h.rt.openAll()
	h.cancel()
	h.s.close()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
		h.done <- err // for a later waitRun
	case <-time.After(30 * time.Second):
		h.t.Errorf("Run did not return within 30s of the test's end")
	}
	if h.t.Failed() {
		h.t.Logf("worker logs:\n%s", h.logs.String())
	}
}

// waitRun waits for Run to return and returns its error.
func (h *harness) waitRun(d time.Duration) error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(d):
		h.t.Fatalf("Run did not return within %s", d)
		return nil
	}
}

// runReturned reports whether Run has returned.
func (h *harness) runReturned() bool {
	select {
	case err := <-h.done:
		h.done <- err
		return true
	default:
		return false
	}
}

// dispatch sends a DISPATCH of a test script (or Python source when plugin
// starts with "py") for the harness's input file.
func (h *harness) dispatch(peer []byte, id int64, attempt int64, plugin, src string) {
	h.t.Helper()
	h.s.dispatch(peer, uint64(id), protocol.DispatchCommand{PluginName: plugin, FilePath: h.input,
		FileVersionID: 100 + id, EnvHash: "system", SourceCode: src, Attempt: attempt})
}

// shortTempDir is a temp dir with a short path (Unix socket paths are
// limited to 107 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// eventually polls cond until it holds or the wait times out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	panic("unsupported metric")
}

// wantMetric fails unless metric has the value.
func wantMetric(t *testing.T, name string, c prometheus.Metric, want float64) {
	t.Helper()
	if got := value(c); got != want {
		t.Errorf("metric %s = %v, want %v", name, got, want)
	}
}

// logBuffer collects the worker's logs for failure reports.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
