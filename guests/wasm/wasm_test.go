package wasm_test

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestEmitTopicsLogsAndInput(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	if c, ok := inst.(guest.Concurrent); !ok || !c.Concurrent() {
		t.Error("a WASM instance should run inputs concurrently")
	}
	cfg := map[string]any{"batches": 4, "rows": 5}
	rec, err := e.run(context.Background(), inst, cfg)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if got := len(rec.Batches["rows"]); got != 4 {
		t.Fatalf("rows topic: %d batches, want 4", got)
	}
	if got := rec.Rows("rows"); got != 20 {
		t.Errorf("rows topic: %d rows, want 20", got)
	}
	want := []string{"rows", "rows", "rows", "rows", "summary"}
	if fmt.Sprint(rec.Order) != fmt.Sprint(want) {
		t.Errorf("emit order %v, want %v", rec.Order, want)
	}
	last := rec.Batches["rows"][3]
	if id := last.Column(0).(*array.Int64).Value(4); id != 19 {
		t.Errorf("last id = %d, want 19", id)
	}
	if s := last.Column(1).(*array.String).Value(0); !strings.HasPrefix(s, "row-15-") {
		t.Errorf("name = %q", s)
	}
	sum := rec.Batches["summary"][0]
	col := func(name string) arrow.Array { return sum.Column(sum.Schema().FieldIndices(name)[0]) }
	if v := col("lines").(*array.Int64).Value(0); v != 4 {
		t.Errorf("the plugin read %d lines of its input, want 4", v)
	}
	if v := col("job_id").(*array.Int64).Value(0); v != 42 {
		t.Errorf("job_id = %d", v)
	}
	if v := col("file_id").(*array.Int64).Value(0); v != 7 {
		t.Errorf("file_id = %d", v)
	}
	if v := col("path").(*array.String).Value(0); v != "/input/input data é.csv" {
		t.Errorf("the plugin saw its input at %q, want /input/input data é.csv", v)
	}
	if v := col("year").(*array.Int64).Value(0); v != 2022 {
		t.Errorf("the deterministic clock says year %d, want 2022", v)
	}
	if s := rec.LogText("sdk"); !strings.Contains(s, "read input lines=4") {
		t.Errorf("SDK log not forwarded; sdk logs:\n%s", s)
	}
	if s := rec.LogText("stdout"); s != "hello on stdout\n" {
		t.Errorf("stdout lines %q", s)
	}
	if s := rec.LogText("stderr"); s != "hello on stderr\n" {
		t.Errorf("stderr lines %q", s)
	}

}

// With a fresh instance per run (MaxRunsPerInstance 1), the fake clock and
// random source make every run of the same module identical.
func TestFreshInstancesAreDeterministic(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxRunsPerInstance = 1 })
	inst := e.load(context.Background())
	random := func() int64 {
		t.Helper()
		rec, err := e.run(context.Background(), inst, map[string]any{"batches": 1, "rows": 1})
		if err != nil {
			t.Fatal(guest.JobError(42, err))
		}
		sum := rec.Batches["summary"][0]
		return sum.Column(sum.Schema().FieldIndices("random")[0]).(*array.Int64).Value(0)
	}
	if r1, r2 := random(), random(); r1 != r2 {
		t.Errorf("random values differ between runs (%d, %d): the default random source should be deterministic", r1, r2)
	}
	if n := e.rt.WarmInstances(); n != 0 {
		t.Errorf("%d warm instances kept with MaxRunsPerInstance 1", n)
	}
}

// calls runs the plugin's "count" mode on input and returns how many jobs
// the module instance that ran it has served.
func calls(t *testing.T, e *env, inst guest.Instance, input string) int {
	t.Helper()
	rec := &testenv.Recorder{}
	defer rec.Release()
	if err := inst.Run(context.Background(), guest.Input{JobID: 1, Path: input, Config: map[string]any{"mode": "count"}}, rec); err != nil {
		t.Fatal(guest.JobError(1, err))
	}
	var n int
	if _, err := fmt.Sscanf(strings.TrimSpace(rec.LogText("sdk")), "calls n=%d", &n); err != nil {
		t.Fatalf("sdk log %q: %v", rec.LogText("sdk"), err)
	}
	return n
}

// A successful run leaves its instance warm for the next run; a failed run
// closes it; MaxRunsPerInstance recycles it.
func TestWarmInstanceReuse(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxRunsPerInstance = 3 })
	inst := e.load(context.Background())
	if n := e.rt.WarmInstances(); n != 1 {
		t.Errorf("after Load: %d warm instances, want 1 (the one Load checked)", n)
	}
	for want := 1; want <= 3; want++ {
		if got := calls(t, e, inst, e.in); got != want {
			t.Fatalf("run %d: the instance served %d jobs, want %d (a warm instance)", want, got, want)
		}
	}
	// Three runs served: the fourth gets a fresh instance.
	if got := calls(t, e, inst, e.in); got != 1 {
		t.Errorf("after 3 runs the instance served %d jobs, want a fresh one (1)", got)
	}
	// A failed run closes its instance; the next run starts afresh.
	if _, err := e.run(context.Background(), inst, map[string]any{"mode": "error"}); err == nil {
		t.Fatal("mode error succeeded")
	}
	if n := e.rt.WarmInstances(); n != 0 {
		t.Errorf("after a failed run: %d warm instances, want 0", n)
	}
	if got := calls(t, e, inst, e.in); got != 1 {
		t.Errorf("after a failed run the instance served %d jobs, want a fresh one (1)", got)
	}
}

// A warm instance sees only the current run's input: the previous input is
// gone from /input.
func TestWarmInstanceSeesOnlyItsInput(t *testing.T) {
	e := newEnv(t, func(*wasm.Config) {})
	inst := e.load(context.Background())
	first := filepath.Join(t.TempDir(), "first.csv")
	if err := os.WriteFile(first, []byte("a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := calls(t, e, inst, first); got != 1 {
		t.Fatalf("served %d, want 1", got)
	}
	if n := e.rt.WarmInstances(); n != 1 {
		t.Fatalf("%d warm instances, want 1: the next run must take the one that saw first.csv", n)
	}
	rec := &testenv.Recorder{}
	defer rec.Release()
	err := inst.Run(context.Background(), guest.Input{JobID: 2, Path: e.in,
		Config: map[string]any{"mode": "open", "path": "/input/first.csv"}}, rec)
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if !strings.Contains(ge.Message, "first.csv") || !strings.Contains(ge.Hint, "sees only its input file") {
		t.Errorf("not actionable:\n%s", ge.Detail())
	}
}

// An instance whose memory grew past MaxWarmMemoryBytes is not kept.
func TestWarmInstanceMemoryCap(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxWarmMemoryBytes = 1 << 20 })
	inst := e.load(context.Background())
	if got := calls(t, e, inst, e.in); got != 1 {
		t.Errorf("served %d, want 1", got)
	}
	if n := e.rt.WarmInstances(); n != 0 {
		t.Errorf("%d warm instances kept above the memory cap", n)
	}
}

// Concurrent runs each take an instance; at most MaxWarmInstances stay.
func TestWarmInstancesConcurrent(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxWarmInstances = 2 })
	inst := e.load(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := &testenv.Recorder{}
			defer rec.Release()
			errs <- inst.Run(context.Background(), guest.Input{JobID: 3, Path: e.in,
				Config: map[string]any{"mode": "slow", "batches": 2, "sleep_ms": 50}}, rec)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(guest.JobError(3, err))
		}
	}
	if n := e.rt.WarmInstances(); n != 2 {
		t.Errorf("%d warm instances after 4 concurrent runs, want 2 (MaxWarmInstances)", n)
	}
}

func TestGoroutinesInsideProcess(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	rec, err := e.run(context.Background(), inst, map[string]any{"mode": "parallel", "workers": 6})
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if n := len(rec.Batches["rows"]); n != 6 || rec.Rows("rows") != 60 {
		t.Errorf("%d batches, %d rows; want 6, 60", n, rec.Rows("rows"))
	}
}

func TestRealClockAndRandom(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) {
		c.RealClock = true
		c.RandSource = crand.Reader
	})
	inst := e.load(context.Background())
	var rands []int64
	for i := 0; i < 2; i++ {
		rec, err := e.run(context.Background(), inst, map[string]any{"batches": 0})
		if err != nil {
			t.Fatal(guest.JobError(42, err))
		}
		sum := rec.Batches["summary"][0]
		if y := sum.Column(4).(*array.Int64).Value(0); y != int64(time.Now().Year()) {
			t.Errorf("real clock says year %d", y)
		}
		rands = append(rands, sum.Column(5).(*array.Int64).Value(0))
	}
	if rands[0] == rands[1] {
		t.Errorf("two runs drew the same random number %d from a real random source", rands[0])
	}
}

func TestPluginErrors(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	ctx := context.Background()

	t.Run("returned error", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "error"})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		if ge.Message != "bad row 17 in /input/input data é.csv" {
			t.Errorf("message %q", ge.Message)
		}
		if msg := guest.JobError(42, err); !strings.HasPrefix(msg, "[Job 42] PLUGIN_ERROR: bad row 17") {
			t.Errorf("job error %q", msg)
		}
	})
	t.Run("panic", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "panic"})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		if !strings.Contains(ge.Message, "panic: assignment to entry in nil map") {
			t.Errorf("message %q", ge.Message)
		}
		if !strings.Contains(ge.Traceback, "main.plugin.Process") || !strings.Contains(ge.Traceback, "main.go:") {
			t.Errorf("traceback does not point at the plugin:\n%s", ge.Traceback)
		}
	})
	t.Run("undeclared topic", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "undeclared"})
		ge := mustGuestError(t, err, guest.ErrSchema)
		if !strings.Contains(ge.Message, `"secret" is not declared`) {
			t.Errorf("message %q", ge.Message)
		}
	})
	t.Run("exit", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "exit"})
		ge := mustGuestError(t, err, guest.ErrCrashed)
		if ge.ExitCode != 3 || !strings.Contains(ge.Stderr, "exiting with status 3") {
			t.Errorf("exit code %d, stderr %q", ge.ExitCode, ge.Stderr)
		}
	})
	t.Run("fatal error in a goroutine", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "fatal"})
		ge := mustGuestError(t, err, guest.ErrCrashed)
		if !strings.Contains(ge.Message, "crashed in casparian_process: panic: goroutine boom") || !strings.Contains(ge.Stderr, "main.go:") {
			t.Errorf("message %q, stderr:\n%s", ge.Message, ge.Stderr)
		}
	})
	// The instance is still good after all that.
	rec, err := e.run(ctx, inst, nil)
	if err != nil || rec.Rows("rows") != 15 {
		t.Fatalf("run after failures: %v, %d rows", err, rec.Rows("rows"))
	}
}

func TestSandbox(t *testing.T) {
	e := newEnv(t, nil)
	if err := os.WriteFile(filepath.Join(e.dir, "sibling.txt"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	inst := e.load(context.Background())
	ctx := context.Background()

	t.Run("probe", func(t *testing.T) {
		rec, err := e.run(ctx, inst, map[string]any{"mode": "escape"})
		if err != nil {
			t.Fatal(guest.JobError(42, err))
		}
		b := rec.Batches["probe"][0]
		for i := 0; i < int(b.NumRows()); i++ {
			what, msg := b.Column(0).(*array.String).Value(i), b.Column(1).(*array.String).Value(i)
			t.Logf("%-40s -> %s", what, msg)
			switch {
			case strings.HasPrefix(what, "list /input:"):
				if msg != "" || what != "list /input: input data é.csv" {
					t.Errorf("%s (%s): /input should list exactly the input file", what, msg)
				}
			case strings.HasPrefix(what, "list /:"):
				if msg != "" || what != "list /: input" {
					t.Errorf("%s (%s): / should list only input", what, msg)
				}
			case strings.HasPrefix(what, "hostname"):
			case msg == "":
				t.Errorf("%s: succeeded inside the sandbox", what)
			}
		}
		data, err := os.ReadFile(e.in)
		if err != nil || string(data) != "a,b\n1,x\n2,y\n3,z\n" {
			t.Errorf("the input changed: %q, %v", data, err)
		}
	})
	t.Run("open outside the mount", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "open", "path": "/etc/passwd"})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		if !strings.Contains(ge.Message, "/etc/passwd") || !strings.Contains(ge.Hint, "sees only its input file") {
			t.Errorf("not actionable:\n%s", ge.Detail())
		}
	})
	t.Run("sibling of the input", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "open", "path": "/input/sibling.txt"})
		ge := mustGuestError(t, err, guest.ErrPlugin)
		if !strings.Contains(ge.Hint, "sees only its input file") {
			t.Errorf("not actionable:\n%s", ge.Detail())
		}
	})
	t.Run("write the input", func(t *testing.T) {
		_, err := e.run(ctx, inst, map[string]any{"mode": "write"})
		ge := mustGuestError(t, err, guest.ErrInput)
		if !strings.Contains(ge.Message, "/input/input data é.csv") {
			t.Errorf("message %q", ge.Message)
		}
	})
	t.Run("missing input", func(t *testing.T) {
		rec := &testenv.Recorder{}
		err := inst.Run(ctx, guest.Input{JobID: 42, Path: filepath.Join(e.dir, "gone.csv")}, rec)
		mustGuestError(t, err, guest.ErrInput)
	})
}

func TestDeadlineStopsInfiniteLoop(t *testing.T) {
	// A runtime of its own, warmed by a first run: the short deadline then
	// falls in casparian_process, not in instantiating a module on a
	// loaded machine.
	e := newEnv(t, func(*wasm.Config) {})
	inst := e.load(context.Background())
	if _, err := e.run(context.Background(), inst, map[string]any{"mode": "noop"}); err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if n := e.rt.WarmInstances(); n != 1 {
		t.Fatalf("%d warm instances, want 1", n)
	}
	before := goroutines()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := e.run(ctx, inst, map[string]any{"mode": "loop"})
	took := time.Since(start)
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, "casparian_process") {
		t.Errorf("message %q", ge.Message)
	}
	if took > 10*time.Second {
		t.Errorf("the loop was stopped only after %s", took)
	}
	t.Logf("stopped after %s", took.Round(time.Millisecond))
	waitGoroutines(t, before)
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) {
		c.IdleTimeout = 1500 * time.Millisecond // above start-up time under -race on a loaded machine
		c.RealClock = true
	})
	inst := e.load(context.Background())
	// Output keeps it alive: 20 batches 100 ms apart make a run longer than
	// the idle timeout.
	start := time.Now()
	rec, err := e.run(context.Background(), inst, map[string]any{"mode": "slow", "batches": 20, "sleep_ms": 100})
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if took := time.Since(start); rec.Rows("rows") != 20 || took < 1900*time.Millisecond {
		t.Errorf("%d rows in %s; want 20 in at least 2 s", rec.Rows("rows"), took)
	}
	before := goroutines()
	start = time.Now()
	_, err = e.run(context.Background(), inst, map[string]any{"mode": "loop"})
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, "emitted, logged and printed nothing for 1.5s in casparian_process") {
		t.Errorf("message %q", ge.Message)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("stopped after %s", took)
	}
	waitGoroutines(t, before)
}

func TestCancel(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	before := goroutines()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	_, err := e.run(ctx, inst, map[string]any{"mode": "loop"})
	mustGuestError(t, err, guest.ErrCancelled)
	waitGoroutines(t, before)

	// Already cancelled: the module never starts.
	_, err = e.run(ctx, inst, nil)
	mustGuestError(t, err, guest.ErrCancelled)
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for goroutines() > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := goroutines(); n > want {
		t.Errorf("%d goroutines after the run, %d before", n, want)
	}
}

func TestMemoryLimit(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MemoryLimitPages = 1024 }) // 64 MiB
	inst := e.load(context.Background())
	_, err := e.run(context.Background(), inst, map[string]any{"mode": "grow"})
	ge := mustGuestError(t, err, guest.ErrResourceLimit)
	if !strings.Contains(ge.Message, "ran out of memory (limit 64 MiB") || !strings.Contains(ge.Message, "fatal error: out of memory") ||
		!strings.Contains(ge.Hint, "memory limit") {
		t.Errorf("not actionable:\n%s", ge.Detail())
	}
	// Other runs are unaffected.
	if _, err := e.run(context.Background(), inst, nil); err != nil {
		t.Fatal(guest.JobError(42, err))
	}
}

func TestEmitRefusedStopsPlugin(t *testing.T) {
	e := newEnv(t, nil)
	inst := e.load(context.Background())
	refusal := &guest.Error{Kind: guest.ErrSink, Message: "disk full"}
	rec := &testenv.Recorder{}
	defer rec.Release()
	n := 0
	rec.EmitHook = func(topic string, _ arrow.RecordBatch) error {
		n++
		if n == 2 {
			return refusal
		}
		return nil
	}
	err := inst.Run(context.Background(), guest.Input{JobID: 42, Path: e.in, Config: map[string]any{"batches": 5}}, rec)
	if !errors.Is(err, refusal) && err != error(refusal) {
		t.Fatalf("Run returned %v, want the Output's error", err)
	}
	if n != 2 || len(rec.Batches["rows"]) != 1 {
		t.Errorf("the plugin went on after the refusal: %d emits, %d batches recorded", n, len(rec.Batches["rows"]))
	}
}

func TestBigBatchIsSplit(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxBatchBytes = 64 << 10 })
	inst := e.load(context.Background())
	rec, err := e.run(context.Background(), inst, map[string]any{"mode": "big", "rows": 20000})
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("rows") != 20000 {
		t.Fatalf("%d rows, want 20000", rec.Rows("rows"))
	}
	if n := len(rec.Batches["rows"]); n < 8 {
		t.Errorf("%d batches: a ~1 MiB batch was not split for a 64 KiB limit", n)
	}
	var next int64
	for _, b := range rec.Batches["rows"] {
		ids := b.Column(0).(*array.Int64)
		for i := 0; i < ids.Len(); i++ {
			if ids.Value(i) != next {
				t.Fatalf("row %d has id %d", next, ids.Value(i))
			}
			next++
		}
	}
}

func TestConcurrentRuns(t *testing.T) {
	// A runtime of its own, so that the concurrent Loads below are the
	// first: one of them compiles (from the disk cache), the others wait.
	e := newEnv(t, func(c *wasm.Config) {})
	insts := make([]guest.Instance, 4)
	var lwg sync.WaitGroup
	for i := range insts {
		lwg.Add(1)
		go func(i int) {
			defer lwg.Done()
			var err error
			insts[i], err = e.rt.Load(context.Background(), guest.Plugin{Name: "testplugin", Path: testPlugin(t)})
			if err != nil {
				t.Errorf("concurrent Load %d: %v", i, err)
			}
		}(i)
	}
	lwg.Wait()
	for _, in := range insts[1:] {
		if in != nil {
			in.Close(context.Background())
		}
	}
	inst := insts[0]
	if inst == nil {
		t.FailNow()
	}
	defer inst.Close(context.Background())
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	recs := make([]*testenv.Recorder, n)
	loopCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			recs[i] = &testenv.Recorder{}
			cfg := map[string]any{"batches": i + 1, "rows": 10}
			ctx := context.Background()
			if i == 0 {
				cfg, ctx = map[string]any{"mode": "loop"}, loopCtx // one never ends by itself
			}
			errs[i] = inst.Run(ctx, guest.Input{JobID: int64(i), Path: e.in, Config: cfg}, recs[i])
		}(i)
	}
	wg.Wait()
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	if !errors.Is(errs[0], guest.ErrTimeout) {
		t.Errorf("looping run: %v", errs[0])
	}
	for i := 1; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("run %d: %v", i, errs[i])
			continue
		}
		if got := recs[i].Rows("rows"); got != int64((i+1)*10) {
			t.Errorf("run %d: %d rows, want %d", i, got, (i+1)*10)
		}
		sum := recs[i].Batches["summary"][0]
		if id := sum.Column(1).(*array.Int64).Value(0); id != int64(i) {
			t.Errorf("run %d saw job id %d", i, id)
		}
	}
}

// TestCompilationCache: testPlugin compiled the module into the shared
// cache; a new runtime on that directory loads it from disk, and a second
// Load on the same runtime reuses the compiled module in memory.
func TestCompilationCache(t *testing.T) {
	path := testPlugin(t)
	dir := sharedCache()
	var files int
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files++
		}
		return nil
	})
	if files == 0 {
		t.Fatalf("the compilation cache %s is empty after a compile", dir)
	}

	ctx := context.Background()
	p := guest.Plugin{Name: "testplugin", Kind: guest.KindWASM, Path: path}
	rt, err := wasm.New(wasm.Config{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	timeLoad := func() (guest.Instance, time.Duration) {
		t.Helper()
		start := time.Now()
		inst, err := rt.Load(ctx, p)
		if err != nil {
			t.Fatal(guest.JobError(0, err))
		}
		return inst, time.Since(start)
	}
	inst1, disk := timeLoad()
	inst1.Close(ctx)
	inst, mem := timeLoad()
	defer inst.Close(ctx)
	t.Logf("Load of the %s test module: compile %s, from the disk cache %s, in memory %s (%d cache files)",
		fileSize(path), coldLoad.Round(time.Millisecond), disk.Round(time.Millisecond), mem.Round(time.Microsecond), files)

	// The module loaded from the cache runs.
	in := filepath.Join(t.TempDir(), "in.csv")
	if err := os.WriteFile(in, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &testenv.Recorder{}
	defer rec.Release()
	if err := inst.Run(ctx, guest.Input{Path: in, Config: map[string]any{"batches": 1}}, rec); err != nil {
		t.Fatal(err)
	}
	if rec.Rows("rows") != 5 {
		t.Errorf("%d rows", rec.Rows("rows"))
	}
}

func fileSize(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
}

// TestHashCheck: a module whose SHA-256 differs from the plugin's Hash is
// refused, also when the runtime remembers the file from an earlier Load,
// and a module file replaced in place is read again.
func TestHashCheck(t *testing.T) {
	defer wasm.SetRacyWindow(0)() // remember the file we just wrote
	e := newEnv(t, nil)
	src, err := os.ReadFile(testPlugin(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.dir, "plugin.wasm")
	if err := os.WriteFile(path, src, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(src)
	good := hex.EncodeToString(sum[:])
	load := func(hash string) error {
		inst, err := e.rt.Load(context.Background(), guest.Plugin{Name: "testplugin", Path: path, Hash: hash})
		if err == nil {
			inst.Close(context.Background())
		}
		return err
	}
	wrong := strings.Repeat("ab", 32)
	ge := mustGuestError(t, load(wrong), guest.ErrPlugin)
	if !strings.Contains(ge.Message, "SHA-256 is "+good+", expected "+wrong) {
		t.Errorf("message %q", ge.Message)
	}
	if err := load(strings.ToUpper(good)); err != nil {
		t.Fatal(err)
	}
	// Remembered now: not read again, and the check still applies.
	reads := wasm.Reads(e.rt)
	mustGuestError(t, load(wrong), guest.ErrPlugin)
	if err := load(good); err != nil {
		t.Fatal(err)
	}
	if n := wasm.Reads(e.rt) - reads; n != 0 {
		t.Errorf("an unchanged module file was read %d more times", n)
	}

	// Replace the file's content (same path, same size: only the content
	// and its ctime change).
	other := append([]byte(nil), src...)
	copy(other[len(other)-8:], "CHANGED!") // inside the last custom section
	if err := os.WriteFile(path, other, 0o644); err != nil {
		t.Fatal(err)
	}
	ge = mustGuestError(t, load(good), guest.ErrPlugin)
	if strings.Contains(ge.Message, "SHA-256 is "+good) || wasm.Reads(e.rt) != reads+1 {
		t.Errorf("the changed file was not read again: %s", ge.Message)
	}
}

// TestBadModules loads modules that are not valid plugins.
func TestBadModules(t *testing.T) {
	e := newEnv(t, nil)
	full := func(process []byte) []byte { return abiModule(1, process, "") }
	cases := []struct {
		name string
		bin  []byte
		kind error
		want []string // substrings of the message, then of the hint
	}{
		{"not wasm", []byte("#!/bin/sh\necho hi\n"), guest.ErrPlugin,
			[]string{"not a WebAssembly module", "GOOS=wasip1 GOARCH=wasm"}},
		{"truncated", full(i32c(0))[:40], guest.ErrPlugin, []string{"compile plugin handmade"}},
		{"missing exports", wmodule{pages: 1, funcs: []wfunc{
			{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)},
			{export: "_initialize"},
		}}.bytes(), guest.ErrPlugin,
			[]string{"does not export casparian_alloc, casparian_free, casparian_info, casparian_process", "docs/WASM_ABI.md"}},
		{"command module", wmodule{pages: 1, funcs: []wfunc{{export: "_start"}}}.bytes(), guest.ErrPlugin,
			[]string{"is a WASI command", "-buildmode=c-shared"}},
		{"no memory export", func() []byte {
			m := wmodule{pages: 1, noMemExport: true}
			for name := range map[string]bool{"casparian_abi_version": true} {
				m.funcs = append(m.funcs, wfunc{export: name, results: []byte{tI32}, body: i32c(1)})
			}
			m.funcs = append(m.funcs,
				wfunc{export: "casparian_alloc", params: []byte{tI32}, results: []byte{tI32}, body: i32c(1)},
				wfunc{export: "casparian_free", params: []byte{tI32, tI32}},
				wfunc{export: "casparian_info", results: []byte{tI32}, body: i32c(0)},
				wfunc{export: "casparian_process", params: []byte{tI32, tI32}, results: []byte{tI32}, body: i32c(0)})
			return m.bytes()
		}(), guest.ErrPlugin, []string{`does not export its linear memory as "memory"`}},
		{"wrong signature", wmodule{pages: 1, funcs: []wfunc{
			{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)},
			{export: "casparian_alloc", params: []byte{tI32}, results: []byte{tI32}, body: i32c(1)},
			{export: "casparian_free", params: []byte{tI32, tI32}},
			{export: "casparian_info", results: []byte{tI32}, body: i32c(0)},
			{export: "casparian_process", params: []byte{tI32}, results: []byte{tI32}, body: i32c(0)},
		}}.bytes(), guest.ErrPlugin, []string{"export casparian_process: signature (i32) -> (i32), the ABI says (i32, i32) -> (i32)"}},
		{"foreign import", wmodule{pages: 1, imports: []wimport{{"env", "abort", nil, nil}},
			funcs: []wfunc{{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)}}}.bytes(),
			guest.ErrPlugin, []string{"imports env.abort, which the host does not provide"}},
		{"unknown host function", wmodule{pages: 1, imports: []wimport{{"casparian", "exec", nil, nil}},
			funcs: []wfunc{{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)}}}.bytes(),
			guest.ErrPlugin, []string{"imports casparian.exec", "emit, log, set_error, set_info"}},
		{"wrong ABI version", abiModule(99, i32c(0), ""), guest.ErrPlugin,
			[]string{"speaks WASM ABI version 99, this host speaks version 1", "rebuild the plugin"}},
		{"trap in info", func() []byte {
			return wmodule{pages: 1, funcs: []wfunc{
				{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)},
				{export: "casparian_alloc", params: []byte{tI32}, results: []byte{tI32}, body: i32c(1)},
				{export: "casparian_free", params: []byte{tI32, tI32}},
				{export: "casparian_info", results: []byte{tI32}, body: []byte{opUnreachable}},
				{export: "casparian_process", params: []byte{tI32, tI32}, results: []byte{tI32}, body: i32c(0)},
			}}.bytes()
		}(), guest.ErrCrashed, []string{"trapped in casparian_info: wasm error: unreachable"}},
		{"memory too big", wmodule{pages: 2000, funcs: []wfunc{{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(1)}}}.bytes(),
			guest.ErrResourceLimit, []string{"min 2000 pages (125 Mi) over limit of 1024 pages", "initial memory"}},
	}
	small := newEnv(t, func(c *wasm.Config) { c.MemoryLimitPages = 1024 })
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := e
			if c.name == "memory too big" {
				env = small
			}
			_, err := env.loadBytes(c.bin)
			ge := mustGuestError(t, err, c.kind)
			text := ge.Message + "\nhint: " + ge.Hint
			for _, w := range c.want {
				if !strings.Contains(text, w) {
					t.Errorf("%q not in:\n%s", w, text)
				}
			}
		})
	}
}

// TestHostileModules runs hand-made modules that misuse the imports.
func TestHostileModules(t *testing.T) {
	e := newEnv(t, nil)
	emit := emitCall
	cases := []struct {
		name    string
		process []byte
		errJSON string
		kind    error
		want    string
	}{
		{"trap", []byte{opUnreachable}, "", guest.ErrCrashed, "trapped in casparian_process: wasm error: unreachable"},
		{"junk IPC", emit(offTopic, 4, offJunk, 64), "", guest.ErrProtocol, `topic "rows": invalid Arrow IPC stream`},
		{"oversized batch", emit(offTopic, 4, 0, 1<<30), "", guest.ErrResourceLimit, "batch of 1073741824 bytes for topic \"rows\" exceeds the 67108864-byte limit"},
		{"batch outside memory", emit(offTopic, 4, 60000, 100000), "", guest.ErrProtocol, "emit data (pointer 60000, length 100000) lies outside the module's 65536-byte memory"},
		{"bad topic", emit(offJunk, 3, offJunk, 64), "", guest.ErrSchema, "invalid topic"},
		{"log outside memory", cat(i32c(0), i32c(65000), i32c(1000), call(fnLog), i32c(0)), "", guest.ErrProtocol, "log message"},
		{"silent failure", i32c(7), "", guest.ErrPlugin, "casparian_process failed with status 7 and reported no error"},
		{"reported input error", cat(i32c(offError), i32c(int64(len(`{"kind":"INPUT","type":"IOError","message":"cannot parse line 3"}`))), call(fnSetError), i32c(1)),
			`{"kind":"INPUT","type":"IOError","message":"cannot parse line 3"}`, guest.ErrInput, "IOError: cannot parse line 3"},
		{"claims to be cancelled", cat(i32c(offError), i32c(int64(len(`{"kind":"CANCELLED","message":"nope"}`))), call(fnSetError), i32c(1)),
			`{"kind":"CANCELLED","message":"nope"}`, guest.ErrPlugin, "nope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			inst, err := e.loadBytes(abiModule(1, c.process, c.errJSON))
			if err != nil {
				t.Fatal(guest.JobError(0, err))
			}
			_, err = e.run(context.Background(), inst, nil)
			ge := mustGuestError(t, err, c.kind)
			if !strings.Contains(ge.Message, c.want) {
				t.Errorf("%q not in %q", c.want, ge.Message)
			}
		})
	}
}

// TestHandmadeModule runs a module written without any SDK (the ABI is
// language-neutral) that emits an Arrow IPC stream made elsewhere, and shows
// that the host enforces the topics the module declares.
func TestHandmadeModule(t *testing.T) {
	e := newEnv(t, nil)
	mem := memory.NewGoAllocator()
	b := array.NewInt64Builder(mem)
	b.AppendValues([]int64{10, 20, 30}, nil)
	col := b.NewArray()
	b.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, 3)
	col.Release()
	ipc, err := bridge.EncodeIPC(schema, rec)
	rec.Release()
	if err != nil {
		t.Fatal(err)
	}
	msg := "two batches"
	process := cat(
		emitCall(offTopic, 4, offIPC, int64(len(ipc))), []byte{opDrop},
		emitCall(offTopic, 4, offIPC, int64(len(ipc))), []byte{opDrop},
		i32c(4), i32c(offError), i32c(int64(len(msg))), call(fnLog),
		i32c(0))
	inst, err := e.loadBytes(handmade{version: 1, process: process, errJSON: msg, ipc: ipc}.bytes())
	if err != nil {
		t.Fatal(guest.JobError(0, err))
	}
	out, err := e.run(context.Background(), inst, nil)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if out.Rows("rows") != 6 || len(out.Batches["rows"]) != 2 {
		t.Errorf("%d rows in %d batches, want 6 in 2", out.Rows("rows"), len(out.Batches["rows"]))
	}
	if v := out.Batches["rows"][1].Column(0).(*array.Int64).Value(2); v != 30 {
		t.Errorf("value %d", v)
	}
	if len(out.Logs) != 1 || out.Logs[0].Message != msg || out.Logs[0].Level != slog.LevelWarn || out.Logs[0].Stream != "sdk" {
		t.Errorf("logs %+v", out.Logs)
	}

	// Declared topics: "rows" only; emitting to "other" stops the module.
	process = cat(
		emitCall(offTopic, 4, offIPC, int64(len(ipc))), []byte{opDrop},
		emitCall(offOther, 5, offIPC, int64(len(ipc))), []byte{opDrop},
		[]byte{opUnreachable}) // never reached
	inst, err = e.loadBytes(handmade{version: 1, process: process, ipc: ipc,
		info: `{"name":"declared","topics":[{"name":"rows"}]}`}.bytes())
	if err != nil {
		t.Fatal(guest.JobError(0, err))
	}
	out, err = e.run(context.Background(), inst, nil)
	ge := mustGuestError(t, err, guest.ErrSchema)
	if !strings.Contains(ge.Message, `emitted to topic "other", which its Info does not declare`) {
		t.Errorf("message %q", ge.Message)
	}
	if out.Rows("rows") != 3 {
		t.Errorf("the batch before the refusal: %d rows", out.Rows("rows"))
	}
}

func TestLoadTimeout(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.LoadTimeout = 200 * time.Millisecond })
	before := goroutines()
	_, err := e.loadBytes(handmade{version: 1, process: i32c(0), init: loopForever}.bytes())
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, "did not finish _initialize and casparian_info within 200ms") {
		t.Errorf("message %q", ge.Message)
	}
	waitGoroutines(t, before)
}

// TestEviction: at most MaxModules compiled modules stay in memory when no
// Instance uses them; one in use is never evicted.
func TestEviction(t *testing.T) {
	e := newEnv(t, func(c *wasm.Config) { c.MaxModules = 1 })
	mod := func(status int64) []byte { return abiModule(1, i32c(status), "") }
	load := func(bin []byte) guest.Instance {
		t.Helper()
		inst, err := e.rt.Load(context.Background(), guest.Plugin{Name: "handmade", Source: bin})
		if err != nil {
			t.Fatal(err)
		}
		return inst
	}
	run := func(inst guest.Instance) error {
		return inst.Run(context.Background(), guest.Input{Path: e.in}, &testenv.Recorder{})
	}
	kept := func(want int) {
		t.Helper()
		if n := wasm.Modules(e.rt); n != want {
			t.Errorf("%d compiled modules kept, want %d", n, want)
		}
	}
	a := load(mod(0))
	b := load(mod(5)) // a is in use: both stay
	kept(2)
	if err := run(a); err != nil {
		t.Fatal(err)
	}
	if err := run(b); !errors.Is(err, guest.ErrPlugin) {
		t.Fatalf("b: %v", err)
	}
	a.Close(context.Background())
	b.Close(context.Background())
	kept(1)
	c := load(mod(6)) // evicts the other
	kept(1)
	if err := run(c); !errors.Is(err, guest.ErrPlugin) {
		t.Fatalf("c: %v", err)
	}
	c.Close(context.Background())
	a = load(mod(0)) // compiled again
	kept(1)
	defer a.Close(context.Background())
	if err := run(a); err != nil {
		t.Fatal(err)
	}
}

func TestClosedRuntime(t *testing.T) {
	rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
	if err != nil {
		t.Fatal(err)
	}
	if rt.Kind() != guest.KindWASM {
		t.Errorf("kind %q", rt.Kind())
	}
	if rt.CacheDir() != sharedCache() {
		t.Errorf("cache dir %q", rt.CacheDir())
	}
	rt.Close(context.Background())
	rt.Close(context.Background())
	_, err = rt.Load(context.Background(), guest.Plugin{Path: testPlugin(t)})
	mustGuestError(t, err, guest.ErrPlugin)
}

// TestThroughHost runs the test plugin as a job of the real host: batches
// go to Parquet sinks, the plugin's logs to the host's logger.
func TestThroughHost(t *testing.T) {
	e := newEnv(t, nil)
	out := t.TempDir()
	var logs strings.Builder
	var mu sync.Mutex
	h, err := host.New(host.Config{
		Runtimes:   map[guest.Kind]guest.Runtime{guest.KindWASM: e.rt},
		OutputDir:  out,
		JobTimeout: time.Minute,
		Logger: slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(b)
		}), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	rc := h.Run(context.Background(), host.Job{ID: 9, FileVersionID: 3, InputPath: e.in,
		Plugin: guest.Plugin{Name: "testplugin", Kind: guest.KindWASM, Path: testPlugin(t)},
		Config: map[string]any{"batches": 2, "rows": 7}})
	if rc.Err != nil {
		t.Fatal(rc.Err)
	}
	if rc.Rows["rows"] != 14 || rc.Rows["summary"] != 1 || len(rc.Artifacts) != 2 {
		t.Fatalf("receipt %+v", rc)
	}
	for _, a := range rc.Artifacts {
		p, _ := strings.CutPrefix(a.URI, "parquet://")
		if st, err := os.Stat(p); err != nil || st.Size() == 0 {
			t.Errorf("artifact %s: %v", a.URI, err)
		}
	}
	mu.Lock()
	text := logs.String()
	mu.Unlock()
	for _, want := range []string{"stream=sdk", "read input lines=4", "stream=stdout", "hello on stdout", "job_id=9", "guest=wasm"} {
		if !strings.Contains(text, want) {
			t.Errorf("host log lacks %q:\n%s", want, text)
		}
	}

	rc = h.Run(context.Background(), host.Job{ID: 10, InputPath: e.in,
		Plugin: guest.Plugin{Name: "testplugin", Kind: guest.KindWASM, Path: testPlugin(t)},
		Config: map[string]any{"mode": "error"}})
	if rc.Status != host.StatusFailed || !strings.HasPrefix(rc.Err.Error(), "[Job 10] PLUGIN_ERROR: bad row 17") {
		t.Errorf("failed job: %s, %v", rc.Status, rc.Err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }
