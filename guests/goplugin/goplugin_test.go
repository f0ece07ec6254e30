package goplugin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestTwoTopics(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	rec, pid := e.mustRun(inst, map[string]any{"mode": "emit", "batches": 3, "rows": 100})
	if pid <= 0 {
		t.Fatalf("pid %d", pid)
	}
	if got := rec.Rows("numbers"); got != 300 {
		t.Errorf("numbers: %d rows, want 300", got)
	}
	if got := rec.Rows("words"); got != 300 {
		t.Errorf("words: %d rows, want 300", got)
	}
	want := []string{"numbers", "words", "numbers", "words", "numbers", "words"}
	if fmt.Sprint(rec.Order) != fmt.Sprint(want) {
		t.Errorf("emit order %v, want %v", rec.Order, want)
	}
	n := rec.Batches["numbers"][1]
	if n.Schema().Field(1).Name != "x" || n.Column(0).(*array.Int64).Value(0) != 100 || n.Column(1).(*array.Float64).Value(3) != 1.5 {
		t.Errorf("numbers batch 1: %v", n)
	}
	if w := rec.Batches["words"][2]; w.Column(1).(*array.String).Value(99) != "w299" {
		t.Errorf("words batch 2: %v", w)
	}
	// The input reached the plugin as given.
	for key, want := range map[string]string{"job_id": "42", "file_id": "7", "path": e.in} {
		if got, _ := attr(rec, "job started", key); got != want {
			t.Errorf("plugin saw %s=%q, want %q", key, got, want)
		}
	}
}

// A 100 MB batch crosses in chunks under gRPC's 4 MiB cap.
func TestBatch100MB(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	const size = 100 << 20
	rec, _ := e.mustRun(inst, map[string]any{"mode": "big", "bytes": size})
	if got := rec.Rows("big"); got != size/8 {
		t.Fatalf("big: %d rows, want %d", got, size/8)
	}
	col := rec.Batches["big"][0].Column(0).(*array.Int64)
	for _, i := range []int{0, 1, size/16 + 3, size/8 - 1} {
		if col.Value(i) != int64(i)*3 {
			t.Fatalf("value %d = %d", i, col.Value(i))
		}
	}
}

func TestBatchOverLimit(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.MaxBatchBytes = 1 << 20 })
	inst := e.load(guest.Plugin{})
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "big", "bytes": 4 << 20})
	ge := mustGuestError(t, err, guest.ErrResourceLimit)
	if !strings.Contains(ge.Message, `topic "big"`) {
		t.Errorf("message %q", ge.Message)
	}
}

// A wrong checksum is refused before anything runs.
func TestChecksumMismatch(t *testing.T) {
	markers := t.TempDir()
	e := newEnv(t, func(c *goplugin.Config) {
		c.Env = []string{"CF_TEST_MARKER_DIR=" + markers}
		c.Sandbox.Writable = []string{markers}
	})
	inst := e.load(guest.Plugin{Hash: strings.Repeat("ab", 32)})
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "emit"})
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if !strings.Contains(ge.Message, "SHA-256") || !strings.Contains(ge.Message, "refusing to start") {
		t.Errorf("message %q", ge.Message)
	}
	if ents, _ := os.ReadDir(markers); len(ents) != 0 {
		t.Fatalf("the plugin started despite the checksum mismatch: %v", ents)
	}

	// The right hash (computed by Load when empty) runs, and marks its start.
	good := e.load(guest.Plugin{})
	if h := good.(interface{ Hash() string }).Hash(); len(h) != 64 {
		t.Fatalf("Load recorded hash %q", h)
	}
	e.mustRun(good, map[string]any{"mode": "emit", "batches": 0})
	if ents, _ := os.ReadDir(markers); len(ents) != 1 {
		t.Fatalf("markers after a good start: %v", ents)
	}

	// A malformed hash fails at Load.
	if _, err := e.rt.Load(context.Background(), guest.Plugin{Name: "x", Path: testPlugin(t), Hash: "nope"}); !errors.Is(err, guest.ErrPlugin) {
		t.Fatalf("malformed hash: %v", err)
	}
}

// Inline binaries (guest.Plugin.Source) run from a private copy.
func TestInlineSource(t *testing.T) {
	e := newEnv(t, nil)
	b, err := os.ReadFile(testPlugin(t))
	if err != nil {
		t.Fatal(err)
	}
	inst := e.load(guest.Plugin{Name: "inline", Source: b})
	if rec, _ := e.mustRun(inst, map[string]any{"mode": "emit", "batches": 1, "rows": 5}); rec.Rows("numbers") != 5 {
		t.Fatalf("rows %d", rec.Rows("numbers"))
	}
	if _, err := e.rt.Load(context.Background(), guest.Plugin{Name: "inline", Source: b, Hash: strings.Repeat("0", 64)}); !errors.Is(err, guest.ErrPlugin) {
		t.Fatalf("inline bytes with a wrong hash: %v", err)
	}
}

// A returned error is PLUGIN_ERROR and leaves the process in the pool.
func TestPluginError(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	rec, err := e.run(context.Background(), inst, map[string]any{"mode": "error"})
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if ge.Message != "bad row 17 in "+e.in {
		t.Errorf("message %q", ge.Message)
	}
	if msg := guest.JobError(42, err); !strings.HasPrefix(msg, "[Job 42] PLUGIN_ERROR: bad row 17") {
		t.Errorf("job error %q", msg)
	}
	pid := pidOf(t, rec)
	if _, again := e.mustRun(inst, map[string]any{"mode": "emit", "batches": 0}); again != pid {
		t.Errorf("after a plugin error the next job ran in pid %d, want the warm %d", again, pid)
	}

	// A missing input file is INPUT.
	err = inst.Run(context.Background(), guest.Input{JobID: 1, Path: filepath.Join(e.dir, "missing.csv"), Config: map[string]any{"mode": "input"}}, &testenv.Recorder{})
	mustGuestError(t, err, guest.ErrInput)
}

// A panic in Process is PLUGIN_ERROR with the stack; the process is not reused.
func TestPanic(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	rec, err := e.run(context.Background(), inst, map[string]any{"mode": "panic"})
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if !strings.Contains(ge.Message, "panic: assignment to entry in nil map") {
		t.Errorf("message %q", ge.Message)
	}
	if !strings.Contains(ge.Traceback, "testplugin/main.go") || !strings.Contains(ge.Traceback, "main.plugin.Process") {
		t.Errorf("traceback does not point at the plugin:\n%s", ge.Traceback)
	}
	pid := pidOf(t, rec)
	assertGone(t, pid)
	if _, again := e.mustRun(inst, map[string]any{"mode": "emit", "batches": 0}); again == pid {
		t.Errorf("the process that panicked was reused")
	}
}

// os.Exit(3) in mid-job is CRASHED with the exit code and the stderr tail.
func TestCrash(t *testing.T) {
	markers := t.TempDir()
	e := newEnv(t, func(c *goplugin.Config) {
		c.Env = []string{"CF_TEST_MARKER_DIR=" + markers}
		c.Sandbox.Writable = []string{markers}
	})
	inst := e.load(guest.Plugin{})
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "exit"})
	ge := mustGuestError(t, err, guest.ErrCrashed)
	if ge.ExitCode != 3 || !strings.Contains(ge.Message, "exit status 3") {
		t.Errorf("exit code %d, message %q", ge.ExitCode, ge.Message)
	}
	if !strings.Contains(ge.Stderr, "about to die") {
		t.Errorf("stderr tail %q", ge.Stderr)
	}
	// (The plugin's log record with its pid may die with it: the marker file has it.)
	assertGone(t, startedPIDs(t, markers)...)
}

// startedPIDs lists the pids of the test plugins started with CF_TEST_MARKER_DIR=dir.
func startedPIDs(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "started-"))
		if err != nil {
			t.Fatalf("marker %q", e.Name())
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		t.Fatal("no plugin started")
	}
	return pids
}

// A plugin that ignores its context is killed at the deadline.
func TestHangDeadline(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	e.mustRun(inst, map[string]any{"mode": "emit", "batches": 0}) // a warm process: the deadline is the job's alone
	// The deadline leaves the plugin time to start its child on a loaded
	// machine; the bound on Run's return is the deadline plus KillGrace and
	// slack for -race.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	rec, err := e.run(ctx, inst, map[string]any{"mode": "hang", "child": true})
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("Run returned %s after start, deadline 3s", d)
	}
	if !strings.Contains(ge.Message, "deadline") {
		t.Errorf("message %q", ge.Message)
	}
	// The process is gone when Run returns (it was waited for); the child it
	// started got SIGKILL through the process group before Run returned, and
	// the kernel tears it down a moment later.
	assertGone(t, pidOf(t, rec))
	waitGone(t, 2*time.Second, intAttr(t, rec, "child started", "child_pid"))
}

// Cancelling mid-stream stops the plugin and kills it.
func TestCancelMidStream(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &testenv.Recorder{}
	defer rec.Release()
	n := 0
	rec.EmitHook = func(string, arrow.RecordBatch) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	}
	err := inst.Run(ctx, guest.Input{JobID: 42, Path: e.in, Config: map[string]any{"mode": "stream"}}, rec)
	mustGuestError(t, err, guest.ErrCancelled)
	if got := len(rec.Order); got < 2 || got > 3 {
		t.Errorf("%d batches recorded, cancelled during the third", got)
	}
	assertGone(t, pidOf(t, rec))
}

// An Emit error stops the stream and is returned, wrapped.
func TestEmitError(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	sinkErr := errors.New("disk full")
	rec := &testenv.Recorder{}
	defer rec.Release()
	n := 0
	rec.EmitHook = func(string, arrow.RecordBatch) error {
		if n++; n == 2 {
			return sinkErr
		}
		return nil
	}
	err := inst.Run(context.Background(), guest.Input{JobID: 42, Path: e.in, Config: map[string]any{"mode": "stream"}}, rec)
	mustGuestError(t, err, guest.ErrSink)
	if !errors.Is(err, sinkErr) {
		t.Errorf("error %v does not wrap the Emit error", err)
	}
	if len(rec.Order) != 1 {
		t.Errorf("%d batches recorded after the refused one", len(rec.Order))
	}
	assertGone(t, pidOf(t, rec))
}

// A topic the plugin did not declare is refused by the SDK (SCHEMA); a batch
// with another schema than declared too.
func TestUndeclaredTopic(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "undeclared"})
	ge := mustGuestError(t, err, guest.ErrSchema)
	if !strings.Contains(ge.Message, `topic "secret" is not declared`) {
		t.Errorf("message %q", ge.Message)
	}
	_, err = e.run(context.Background(), inst, map[string]any{"mode": "wrongschema"})
	ge = mustGuestError(t, err, guest.ErrSchema)
	if !strings.Contains(ge.Message, "differs from the declared schema") {
		t.Errorf("message %q", ge.Message)
	}
}

// Logs arrive with their level, stream and attributes.
func TestLogs(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})
	rec, _ := e.mustRun(inst, map[string]any{"mode": "logs"})
	type want struct {
		level  slog.Level
		stream string
		attrs  map[string]string
	}
	wants := map[string]want{
		"debug record":      {slog.LevelDebug, "sdk", map[string]string{"n": "1"}},
		"info record":       {slog.LevelInfo, "sdk", map[string]string{"name": "x"}},
		"warn record":       {slog.LevelWarn, "sdk", map[string]string{"req.id": "7", "req.inner.k": "v"}},
		"error record":      {slog.LevelError, "sdk", map[string]string{"component": "parser", "err": "bad thing"}},
		"hello from stdout": {slog.LevelInfo, "stdout", nil},
		"raw stderr line":   {slog.LevelWarn, "stderr", nil},
		"hclog warning":     {slog.LevelWarn, "stderr", map[string]string{"logger": "mylib", "key": "value", "count": "3"}},
		"hclog error":       {slog.LevelError, "stderr", map[string]string{"logger": "mylib"}},
	}
	// stdout and stderr lines travel on their own pipes, not ordered with
	// the stream: the sync line makes sure they are all in before Run returns.
	found := map[string]guest.LogRecord{}
	for _, l := range logs(rec) {
		found[l.Message] = l
	}
	for msg, w := range wants {
		l, ok := found[msg]
		if !ok {
			t.Errorf("log %q not forwarded during the job", msg)
			continue
		}
		if l.Level != w.level || l.Stream != w.stream {
			t.Errorf("%q: level %v stream %q, want %v %q", msg, l.Level, l.Stream, w.level, w.stream)
		}
		got := map[string]string{}
		for _, a := range l.Attrs {
			got[a.Key] = a.Value.String()
		}
		for k, v := range w.attrs {
			if got[k] != v {
				t.Errorf("%q: attr %s=%q, want %q (all: %v)", msg, k, got[k], v, got)
			}
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", rec.LogText(""))
	}
	if strings.Contains(rec.LogText(""), "casparian-sync") {
		t.Errorf("sync lines forwarded:\n%s", rec.LogText(""))
	}

	// The default level drops the SDK's debug records at the source.
	e2 := newEnv(t, func(c *goplugin.Config) { c.LogLevel = 0 })
	rec2, _ := e2.mustRun(e2.load(guest.Plugin{}), map[string]any{"mode": "logs"})
	if strings.Contains(rec2.LogText("sdk"), "debug record") {
		t.Errorf("debug record sent at LogLevel info")
	}
}

// Warm processes are reused per artifact and recycled after MaxJobsPerProcess.
func TestWarmPoolMaxJobs(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.MaxJobsPerProcess = 3 })
	inst := e.load(guest.Plugin{})
	job := map[string]any{"mode": "emit", "batches": 1, "rows": 1}
	_, p1 := e.mustRun(inst, job)
	_, p2 := e.mustRun(inst, job)
	// Another Load of the same artifact shares the pool.
	_, p3 := e.mustRun(e.load(guest.Plugin{Name: "again"}), job)
	if p1 != p2 || p2 != p3 {
		t.Fatalf("pids %d %d %d: want one warm process", p1, p2, p3)
	}
	_, p4 := e.mustRun(inst, job)
	if p4 == p1 {
		t.Fatalf("process %d served more than MaxJobsPerProcess=3 jobs", p1)
	}
	waitGone(t, 5*time.Second, p1)
}

// An idle process is stopped after MaxIdleTime; the next job starts a new one.
func TestWarmPoolIdle(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.MaxIdleTime = 300 * time.Millisecond })
	inst := e.load(guest.Plugin{})
	job := map[string]any{"mode": "emit", "batches": 0}
	_, p1 := e.mustRun(inst, job)
	waitGone(t, 5*time.Second, p1)
	_, p2 := e.mustRun(inst, job)
	if p2 == p1 {
		t.Fatalf("idle process reused after MaxIdleTime")
	}
}

// MaxIdle < 0 runs every job in a fresh process.
func TestNoPool(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.MaxIdle = -1 })
	inst := e.load(guest.Plugin{})
	job := map[string]any{"mode": "emit", "batches": 0}
	_, p1 := e.mustRun(inst, job)
	_, p2 := e.mustRun(inst, job)
	if p1 == p2 {
		t.Fatalf("process reused with MaxIdle -1")
	}
	waitGone(t, 5*time.Second, p1)
}

// Concurrent Runs of one instance get a process each; the pool keeps at
// most MaxIdlePerPlugin of them warm.
func TestConcurrentRuns(t *testing.T) {
	e := newEnv(t, func(c *goplugin.Config) { c.MaxIdlePerPlugin = 2 })
	inst := e.load(guest.Plugin{})
	if !inst.(guest.Concurrent).Concurrent() {
		t.Fatal("instance is not Concurrent")
	}
	const n = 4
	var wg sync.WaitGroup
	pids := make([]int, n)
	errs := make([]error, n)
	recs := make([]*testenv.Recorder, n)
	var inFlight sync.WaitGroup
	inFlight.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &testenv.Recorder{}
			recs[i] = rec
			once := sync.Once{}
			// Hold every job until all have emitted once: they overlap.
			rec.EmitHook = func(string, arrow.RecordBatch) error {
				once.Do(func() {
					inFlight.Done()
					inFlight.Wait()
				})
				return nil
			}
			errs[i] = inst.Run(context.Background(), guest.Input{JobID: int64(i), Path: e.in, Config: map[string]any{"mode": "emit", "batches": 2, "rows": 10}}, rec)
		}()
	}
	wg.Wait()
	seen := map[int]bool{}
	for i := range n {
		defer recs[i].Release()
		if errs[i] != nil {
			t.Fatalf("job %d: %v", i, errs[i])
		}
		if recs[i].Rows("numbers") != 20 {
			t.Errorf("job %d: %d rows", i, recs[i].Rows("numbers"))
		}
		pids[i] = pidOf(t, recs[i])
		seen[pids[i]] = true
	}
	if len(seen) != n {
		t.Fatalf("concurrent jobs shared processes: %v", pids)
	}
	// Two stay warm, two were evicted.
	gone := 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		gone = 0
		for _, pid := range pids {
			if testenv.ProcessGone(pid) {
				gone++
			}
		}
		if gone == n-2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone != n-2 {
		t.Fatalf("%d of %d processes stopped, want %d (MaxIdlePerPlugin 2)", gone, n, n-2)
	}
}

// Close kills running jobs and warm processes and leaves nothing behind.
func TestCloseLeavesNoProcess(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(guest.Plugin{})

	// A streaming job holds one process...
	pids := make(chan int, 1)
	rec := &hookedRecorder{onLog: func(l guest.LogRecord) {
		if l.Message == "job started" {
			for _, a := range l.Attrs {
				if a.Key == "pid" {
					pid, _ := strconv.Atoi(a.Value.String())
					pids <- pid
				}
			}
		}
	}}
	defer rec.Release()
	done := make(chan error, 1)
	go func() {
		done <- inst.Run(context.Background(), guest.Input{JobID: 9, Path: e.in, Config: map[string]any{"mode": "stream"}}, rec)
	}()
	var busy int
	select {
	case busy = <-pids:
	case <-time.After(20 * time.Second):
		t.Fatal("streaming job did not start")
	}
	// ...while another one leaves a warm process behind.
	_, warm := e.mustRun(inst, map[string]any{"mode": "emit", "batches": 0})
	if busy == warm {
		t.Fatal("two jobs shared a process")
	}
	if err := e.rt.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertGone(t, warm, busy)
	mustGuestError(t, <-done, guest.ErrCancelled)
	if _, err := e.rt.Load(context.Background(), guest.Plugin{Name: "x", Path: testPlugin(t)}); err == nil {
		t.Fatal("Load after Close succeeded")
	}
	if err := inst.Run(context.Background(), guest.Input{Path: e.in}, &testenv.Recorder{}); !errors.Is(err, guest.ErrCancelled) {
		t.Fatalf("Run after Close: %v", err)
	}
	if err := e.rt.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// hookedRecorder is a Recorder that also reports each log record as it comes.
type hookedRecorder struct {
	testenv.Recorder
	onLog func(guest.LogRecord)
}

func (r *hookedRecorder) Log(l guest.LogRecord) {
	r.Recorder.Log(l)
	r.onLog(l)
}

// The plugin process sees only the allow-listed environment, go-plugin's
// handshake variables and the configured extras: not the host's secrets.
func TestEnvironmentIsReduced(t *testing.T) {
	t.Setenv("CASPARIAN_TEST_SECRET", "hunter2")
	e := newEnv(t, func(cfg *goplugin.Config) { cfg.Env = []string{"EXTRA_FOR_GUEST=1"} })
	inst := e.load(guest.Plugin{})
	defer inst.Close(context.Background())
	rec, _ := e.mustRun(inst, map[string]any{"mode": "env"})
	keys := map[string]bool{}
	for _, b := range rec.Batches["words"] {
		col := b.Column(1).(*array.String)
		for i := 0; i < col.Len(); i++ {
			keys[col.Value(i)] = true
		}
	}
	t.Logf("the plugin's environment: %v", slices.Sorted(maps.Keys(keys)))
	if keys["CASPARIAN_TEST_SECRET"] {
		t.Error("the host's environment leaked into the plugin")
	}
	for _, k := range []string{"EXTRA_FOR_GUEST", "TMPDIR", "PATH"} {
		if !keys[k] {
			t.Errorf("%s missing from the plugin's environment %v", k, keys)
		}
	}
	for k := range keys {
		// The allow-list, the scratch TMPDIR, the extras, go-plugin's
		// handshake (the magic cookie, PLUGIN_*) and the SDK's host flag.
		if !slices.Contains([]string{"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "EXTRA_FOR_GUEST",
			"CASPARIAN_FLOW_PLUGIN", "CASPARIAN_GOPLUGIN_HOST"}, k) && !strings.HasPrefix(k, "PLUGIN_") {
			t.Errorf("unexpected variable %s in the plugin's environment", k)
		}
	}
}
