package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance/reftable"
	"github.com/casparianflow/casparian/host/guest"
)

// Cases returns the suite's cases, in the order they run.
func Cases() []Case {
	var cs []Case
	for i, f := range reftable.TypesSchema.Fields() {
		cs = append(cs, Case{
			Name: "types/" + f.Name,
			Doc:  fmt.Sprintf("column %q (%s) arrives with its exact type, its values and its null in row 1", f.Name, f.Type),
			run:  func(e *env) error { return e.checkType(i) },
		})
	}
	return append(cs, []Case{
		{"stream/empty", "a plugin that emits nothing succeeds with no batch", caseEmpty},
		{"stream/zero_rows", "zero-row batches arrive, with their schema", caseZeroRows},
		{"stream/tiny_batches", "10,000 one-row batches all arrive, in order", caseTiny},
		{"stream/big_batch", "a batch of 256 MB arrives whole (the guest may split it, not lose or corrupt it)", caseBig},
		{"stream/many_topics", "16 topics with 16 different schemas arrive, each with its schema", caseTopics},
		{"stream/schema_change", "a batch the Output refuses (a schema change within a topic) stops the plugin and fails the run with that error", caseSchemaChange},
		{"error/message", "a plugin's error fails the run as PLUGIN_ERROR with the plugin's message", caseError},
		{"error/panic", "a panic or exception fails the run with its message; the host is untouched", casePanic},
		{"error/exit", "a plugin that exits with status 3 fails the run as CRASHED (or PLUGIN_ERROR) naming the status", caseExit},
		{"error/hang_deadline", "a plugin that ignores everything is stopped at the run's deadline: TIMEOUT within the grace period", caseHang},
		{"error/cancel_midstream", "cancelling a streaming run stops it: CANCELLED within the grace period, no batch after Run returns", caseCancel},
		{"error/noise", "megabytes of stdout and stderr do not block or break the run; the lines reach the logs", caseNoise},
		{"input/unicode_path", "an input whose path has spaces and non-ASCII characters is read whole", caseUnicodePath},
		{"logs/forwarded", "a plugin's log record reaches the Output with its message and level", caseLogs},
		{"lifecycle/concurrent", "four runs at once all succeed", caseConcurrent},
		{"lifecycle/close_twice", "Close is idempotent on instances and runtimes; Load after Close fails", caseCloseTwice},
		{"lifecycle/no_leak", "after a runtime is closed, no goroutine, child process, open file or Arrow buffer of it remains", caseNoLeak},
	}...)
}

// types runs mode "types" once per suite run.
func (e *env) types() (*Recorder, error) {
	if r, ok := e.cache["types"]; ok {
		return r, nil
	}
	rec, err := e.run(e.ctx, e.inst, e.input, mode("types"), 0)
	if err != nil {
		rec.Release()
		return nil, fmt.Errorf("the types run failed: %s", guest.JobError(1, err))
	}
	e.cache["types"] = rec
	return rec, nil
}

func (e *env) checkType(i int) error {
	rec, err := e.types()
	if err != nil {
		return err
	}
	want := reftable.Types(memory.DefaultAllocator)
	defer want.Release()
	field := want.Schema().Field(i)
	got, gotField, err := column(rec.Batches(reftable.TopicTypes), field.Name)
	if err != nil {
		return err
	}
	defer got.Release()
	if !arrow.TypeEqual(field.Type, gotField.Type) {
		return fmt.Errorf("column %q has type %s, want %s", field.Name, gotField.Type, field.Type)
	}
	if gotField.Nullable != field.Nullable {
		return fmt.Errorf("column %q nullable=%v, want %v", field.Name, gotField.Nullable, field.Nullable)
	}
	exp := want.Column(i)
	if got.Len() != exp.Len() {
		return fmt.Errorf("column %q has %d rows, want %d", field.Name, got.Len(), exp.Len())
	}
	if got.NullN() != exp.NullN() || !got.IsNull(1) {
		return fmt.Errorf("column %q: row 1 must be null, and only it (got %d nulls; row 1 = %s): the guest lost or invented a null",
			field.Name, got.NullN(), got.ValueStr(1))
	}
	if !array.Equal(exp, got) {
		var diffs []string
		for r := 0; r < exp.Len(); r++ {
			if a, b := exp.ValueStr(r), got.ValueStr(r); a != b {
				diffs = append(diffs, fmt.Sprintf("row %d: got %s, want %s", r, b, a))
			}
		}
		// Equal row by row: the layouts differ where Arrow leaves them free
		// (e.g. a struct child's validity under a null parent).
		if len(diffs) > 0 {
			return fmt.Errorf("column %q: %s", field.Name, strings.Join(diffs, "; "))
		}
	}
	return nil
}

// column returns the named column of batches, concatenated.
func column(bs []arrow.RecordBatch, name string) (arrow.Array, arrow.Field, error) {
	if len(bs) == 0 {
		return nil, arrow.Field{}, errors.New("no batch arrived on topic \"types\"")
	}
	var parts []arrow.Array
	var field arrow.Field
	for _, b := range bs {
		idx := b.Schema().FieldIndices(name)
		if len(idx) != 1 {
			return nil, arrow.Field{}, fmt.Errorf("the batch on topic \"types\" has no column %q (schema %s)", name, oneLine(b.Schema()))
		}
		field = b.Schema().Field(idx[0])
		parts = append(parts, b.Column(idx[0]))
	}
	if len(parts) == 1 {
		parts[0].Retain()
		return parts[0], field, nil
	}
	c, err := array.Concatenate(parts, memory.DefaultAllocator)
	return c, field, err
}

// runMode runs the suite's instance in mode; the caller releases rec.
func (e *env) runMode(cfg map[string]any, timeout time.Duration) (*Recorder, error) {
	return e.run(e.ctx, e.inst, e.input, cfg, timeout)
}

func mustSucceed(err error) error {
	if err != nil {
		return fmt.Errorf("the run failed: %s", guest.JobError(1, err))
	}
	return nil
}

func caseEmpty(e *env) error {
	rec, err := e.runMode(mode("empty"), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	if n := rec.Emits(); n != 0 {
		return fmt.Errorf("%d batches arrived from a plugin that emitted none", n)
	}
	return nil
}

func caseZeroRows(e *env) error {
	rec, err := e.runMode(mode("zero_rows"), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	bs := rec.Batches(reftable.TopicRows)
	if len(bs) != 2 {
		return fmt.Errorf("%d batches arrived on %q, want the 2 zero-row batches the plugin emitted", len(bs), reftable.TopicRows)
	}
	for _, b := range bs {
		if b.NumRows() != 0 || !b.Schema().Equal(reftable.RowsSchema) {
			return fmt.Errorf("got a batch of %d rows with schema %s, want 0 rows of %s", b.NumRows(), oneLine(b.Schema()), oneLine(reftable.RowsSchema))
		}
	}
	return nil
}

func caseTiny(e *env) error {
	n := e.opts.TinyBatches
	rec, err := e.runMode(mode("tiny", "batches", n), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	bs := rec.Batches(reftable.TopicRows)
	if len(bs) != n {
		return fmt.Errorf("%d batches arrived, want %d", len(bs), n)
	}
	for i, b := range bs {
		if b.NumRows() != 1 {
			return fmt.Errorf("batch %d has %d rows, want 1", i, b.NumRows())
		}
		if v := b.Column(0).(*array.Int64).Value(0); v != int64(i) {
			return fmt.Errorf("batch %d holds id %d: batches arrived out of order", i, v)
		}
	}
	return nil
}

func caseBig(e *env) error {
	const rows = 16
	mb := e.opts.BigBatchMB
	size := mb << 20 / rows
	rec, err := e.runMode(mode("big", "mb", mb, "rows", rows), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	var got int64
	row := 0
	for _, b := range rec.Batches(reftable.TopicBig) {
		col := b.Column(0).(*array.Binary)
		for i := 0; i < col.Len(); i, row = i+1, row+1 {
			v := col.Value(i)
			got += int64(len(v))
			if len(v) != size {
				return fmt.Errorf("row %d holds %d bytes, want %d", row, len(v), size)
			}
			for _, j := range []int{0, 1, size / 2, size - 1} {
				if v[j] != byte(j%251) {
					return fmt.Errorf("row %d byte %d is %d, want %d: the data was corrupted", row, j, v[j], j%251)
				}
			}
		}
	}
	if row != rows || got != int64(rows*size) {
		return fmt.Errorf("%d rows / %d bytes arrived, want %d rows / %d bytes", row, got, rows, rows*size)
	}
	return nil
}

func caseTopics(e *env) error {
	const n = 16
	rec, err := e.runMode(mode("topics", "n", n), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	for i := range n {
		topic := fmt.Sprintf("%s%d", reftable.TopicPrefix, i)
		bs := rec.Batches(topic)
		if len(bs) != 1 {
			return fmt.Errorf("topic %q: %d batches, want 1", topic, len(bs))
		}
		if !bs[0].Schema().Equal(reftable.TopicSchema(i)) {
			return fmt.Errorf("topic %q has schema %s, want %s", topic, oneLine(bs[0].Schema()), oneLine(reftable.TopicSchema(i)))
		}
		if v := bs[0].Column(i).(*array.Int64).Value(0); v != int64(i) {
			return fmt.Errorf("topic %q holds %d, want %d", topic, v, i)
		}
	}
	return nil
}

// wantKind checks that err is a *guest.Error of one of kinds.
func wantKind(err error, what string, kinds ...error) (*guest.Error, error) {
	if err == nil {
		return nil, fmt.Errorf("the run succeeded; %s must fail it", what)
	}
	var ge *guest.Error
	if !errors.As(err, &ge) {
		return nil, fmt.Errorf("%s: Run returned %T (%v), want a *guest.Error", what, err, err)
	}
	for _, k := range kinds {
		if errors.Is(err, k) {
			return ge, nil
		}
	}
	var names []string
	for _, k := range kinds {
		names = append(names, k.Error())
	}
	return ge, fmt.Errorf("%s: error kind %s, want %s (%s)", what, ge.Code(), strings.Join(names, " or "), guest.JobError(1, err))
}

func caseSchemaChange(e *env) error {
	rec, err := e.runMode(mode("schema_change"), 0)
	defer rec.Release()
	ge, kerr := wantKind(err, "a batch the Output refused", guest.ErrSchema)
	if kerr != nil {
		return kerr
	}
	if !strings.Contains(ge.Error(), "differs from the topic's schema") {
		return fmt.Errorf("the error does not carry the Output's reason: %s", guest.JobError(1, err))
	}
	if n := rec.Rows(reftable.TopicRows); n != 1 {
		return fmt.Errorf("%d rows arrived, want the 1 row before the refused batch", n)
	}
	return nil
}

func caseError(e *env) error {
	rec, err := e.runMode(mode("error"), 0)
	defer rec.Release()
	ge, kerr := wantKind(err, "the plugin's error", guest.ErrPlugin)
	if kerr != nil {
		return kerr
	}
	if !strings.Contains(ge.Message, reftable.ErrorMessage) {
		return fmt.Errorf("message %q does not carry the plugin's message %q", ge.Message, reftable.ErrorMessage)
	}
	return nil
}

func casePanic(e *env) error {
	rec, err := e.runMode(mode("panic"), 0)
	defer rec.Release()
	ge, kerr := wantKind(err, "a panic", guest.ErrPlugin, guest.ErrCrashed)
	if kerr != nil {
		return kerr
	}
	if !strings.Contains(ge.Error()+ge.Stderr+ge.Traceback, reftable.PanicMessage) {
		return fmt.Errorf("the error does not carry the panic's message %q: %s", reftable.PanicMessage, guest.JobError(1, err))
	}
	return e.stillWorks()
}

// stillWorks checks that the suite's instance still runs a job.
func (e *env) stillWorks() error {
	rec, err := e.runMode(mode("logs"), 0)
	defer rec.Release()
	if err != nil {
		return fmt.Errorf("the next run on the same instance failed: %s", guest.JobError(1, err))
	}
	return nil
}

func caseExit(e *env) error {
	rec, err := e.runMode(mode("exit"), 0)
	defer rec.Release()
	ge, kerr := wantKind(err, "an exit with status 3", guest.ErrCrashed, guest.ErrPlugin)
	if kerr != nil {
		return kerr
	}
	if ge.ExitCode != reftable.ExitCode && !strings.Contains(ge.Error(), fmt.Sprint(reftable.ExitCode)) {
		return fmt.Errorf("the error names neither the exit status %d nor has ExitCode %d: %s", reftable.ExitCode, ge.ExitCode, guest.JobError(1, err))
	}
	return e.stillWorks()
}

func caseHang(e *env) error {
	const deadline = 2 * time.Second
	start := time.Now()
	rec, err := e.runMode(mode("hang"), deadline)
	defer rec.Release()
	took := time.Since(start)
	var stuck *stuckError
	if errors.As(err, &stuck) {
		return err
	}
	if _, kerr := wantKind(err, "a hung plugin at its deadline", guest.ErrTimeout); kerr != nil {
		return kerr
	}
	if took > deadline+e.opts.Grace {
		return fmt.Errorf("Run returned %s after its start, deadline %s + grace %s", took.Round(time.Millisecond), deadline, e.opts.Grace)
	}
	return e.stillWorks()
}

func caseCancel(e *env) error {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	rec := NewRecorder()
	defer rec.Release()
	var mu sync.Mutex
	var cancelledAt time.Time
	emits := 0
	rec.EmitHook = func(string, arrow.RecordBatch) error {
		mu.Lock()
		defer mu.Unlock()
		if emits++; emits == 3 {
			cancelledAt = time.Now()
			cancel()
		}
		return nil
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- e.inst.Run(ctx, guest.Input{JobID: 1, Path: e.input, Config: mode("stream")}, rec) }()
	var err error
	for waiting := true; waiting; {
		select {
		case err = <-done:
			waiting = false
		case <-time.After(20 * time.Millisecond):
			mu.Lock()
			at := cancelledAt
			mu.Unlock()
			if !at.IsZero() && time.Since(at) > e.opts.Grace {
				return &stuckError{limit: e.opts.Grace, after: "the cancellation"}
			}
			if at.IsZero() && time.Since(start) > 2*time.Minute {
				return errors.New("the streaming plugin emitted fewer than 3 batches in 2 minutes")
			}
		}
	}
	if _, kerr := wantKind(err, "a cancelled run", guest.ErrCancelled); kerr != nil {
		return kerr
	}
	mu.Lock()
	at, n := cancelledAt, emits
	mu.Unlock()
	if at.IsZero() {
		return errors.New("the run ended before its third batch, so it was never cancelled")
	}
	if d := time.Since(at); d > e.opts.Grace {
		return fmt.Errorf("Run returned %s after the cancellation (grace %s)", d.Round(time.Millisecond), e.opts.Grace)
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	after := emits
	mu.Unlock()
	if after != n {
		return fmt.Errorf("%d batches arrived after Run returned: the plugin was not stopped", after-n)
	}
	return e.stillWorks()
}

func caseNoise(e *env) error {
	rec, err := e.runMode(mode("noise", "mb", 4), 2*time.Minute)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	if n := rec.Rows(reftable.TopicRows); n != 1 {
		return fmt.Errorf("%d rows arrived after the noise, want 1", n)
	}
	noisy := 0
	for _, l := range rec.Logs() {
		if strings.Contains(l.Message, "noise noise") {
			noisy++
		}
	}
	if noisy == 0 {
		return errors.New("none of the plugin's stdout or stderr lines reached the logs")
	}
	return nil
}

func caseUnicodePath(e *env) error {
	dir := filepath.Join(e.dir, "a dir with spaces", "ünïcödé 数据")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	in := filepath.Join(dir, "fïle name ✓ 📄.txt")
	content := "line one ✓\nline two: ünïcödé\n"
	if err := os.WriteFile(in, []byte(content), 0o644); err != nil {
		return err
	}
	rec, err := e.run(e.ctx, e.inst, in, mode("echo"), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	bs := rec.Batches(reftable.TopicEcho)
	if len(bs) != 1 || bs[0].NumRows() != 1 {
		return fmt.Errorf("want one echo row, got %d batches", len(bs))
	}
	path := bs[0].Column(0).(*array.String).Value(0)
	got := bs[0].Column(1).(*array.String).Value(0)
	if got != content {
		return fmt.Errorf("the plugin read %q from %q, want %q", got, path, content)
	}
	if filepath.Base(path) != filepath.Base(in) {
		return fmt.Errorf("the plugin saw its input as %q, whose name differs from %q", path, filepath.Base(in))
	}
	return nil
}

func caseLogs(e *env) error {
	rec, err := e.runMode(mode("logs"), 0)
	defer rec.Release()
	if err := mustSucceed(err); err != nil {
		return err
	}
	var seen []string
	for _, l := range rec.Logs() {
		if !strings.Contains(l.Message, reftable.LogMessage) {
			seen = append(seen, l.Message)
			continue
		}
		if l.Level < 0 {
			return fmt.Errorf("the info record arrived at level %s", l.Level)
		}
		attr := strings.Contains(l.Message, reftable.LogKey+"="+reftable.LogValue)
		for _, a := range l.Attrs {
			if a.Key == reftable.LogKey && a.Value.String() == reftable.LogValue {
				attr = true
			}
		}
		if !attr {
			return fmt.Errorf("the record %q lost its attribute %s=%s", l.Message, reftable.LogKey, reftable.LogValue)
		}
		return nil
	}
	return fmt.Errorf("no log record carries %q; records: %q", reftable.LogMessage, seen)
}

func caseConcurrent(e *env) error {
	const n = 4
	insts := make([]guest.Instance, n)
	for i := range insts {
		insts[i] = e.inst
	}
	if c, ok := e.inst.(guest.Concurrent); !ok || !c.Concurrent() {
		// One instance per run, as the host does for such kinds.
		for i := range insts {
			inst, err := e.rt.Load(e.ctx, e.plugin)
			if err != nil {
				return fmt.Errorf("load %d: %s", i, guest.JobError(0, err))
			}
			defer inst.Close(context.Background())
			insts[i] = inst
		}
	}
	errs := make([]error, n)
	recs := make([]*Recorder, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs[i], errs[i] = e.run(e.ctx, insts[i], e.input, mode("sleep", "ms", 300), 0)
		}()
	}
	wg.Wait()
	for i := range n {
		defer recs[i].Release()
		if errs[i] != nil {
			return fmt.Errorf("run %d of %d concurrent: %s", i+1, n, guest.JobError(int64(i+1), errs[i]))
		}
		if r := recs[i].Rows(reftable.TopicRows); r != 1 {
			return fmt.Errorf("run %d: %d rows, want 1 (batches went to the wrong run?)", i+1, r)
		}
	}
	return nil
}

func caseCloseTwice(e *env) error {
	rt, err := e.h.NewRuntime(e.mem)
	if err != nil {
		return err
	}
	inst, err := rt.Load(e.ctx, e.plugin)
	if err != nil {
		rt.Close(context.Background())
		return fmt.Errorf("load: %s", guest.JobError(0, err))
	}
	rec, err := e.run(e.ctx, inst, e.input, mode("logs"), 0)
	rec.Release()
	if err != nil {
		rt.Close(context.Background())
		return fmt.Errorf("run: %s", guest.JobError(1, err))
	}
	for i := range 2 {
		if err := inst.Close(context.Background()); err != nil {
			rt.Close(context.Background())
			return fmt.Errorf("Instance.Close #%d: %v", i+1, err)
		}
	}
	for i := range 2 {
		if err := rt.Close(context.Background()); err != nil {
			return fmt.Errorf("Runtime.Close #%d: %v", i+1, err)
		}
	}
	if inst2, err := rt.Load(e.ctx, e.plugin); err == nil {
		inst2.Close(context.Background())
		return errors.New("a Load after Runtime.Close succeeded; it must fail")
	}
	return nil
}

func caseNoLeak(e *env) error {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	time.Sleep(200 * time.Millisecond) // let earlier cases' goroutines end
	goBefore, procsBefore, filesBefore := runtime.NumGoroutine(), descendants(), openFiles()
	rt, err := e.h.NewRuntime(mem)
	if err != nil {
		return err
	}
	inst, err := rt.Load(e.ctx, e.plugin)
	if err != nil {
		rt.Close(context.Background())
		return fmt.Errorf("load: %s", guest.JobError(0, err))
	}
	for _, cfg := range []map[string]any{mode("logs"), mode("types"), mode("error"), mode("exit"), mode("logs")} {
		rec, _ := e.run(e.ctx, inst, e.input, cfg, 0)
		rec.Release()
	}
	// A cancelled run too.
	ctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
	rec, _ := e.run(ctx, inst, e.input, mode("stream"), 0)
	cancel()
	rec.Release()
	inst.Close(context.Background())
	if err := rt.Close(context.Background()); err != nil {
		return fmt.Errorf("Runtime.Close: %v", err)
	}
	var problems []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		problems = problems[:0]
		if n := runtime.NumGoroutine(); n > goBefore {
			problems = append(problems, fmt.Sprintf("%d goroutines more than before the runtime was created", n-goBefore))
		}
		if ps := newProcs(procsBefore, descendants()); len(ps) > 0 {
			problems = append(problems, "child processes still running: "+strings.Join(ps, ", "))
		}
		if n := openFiles(); filesBefore >= 0 && n > filesBefore {
			problems = append(problems, fmt.Sprintf("%d more open files than before", n-filesBefore))
		}
		if n := mem.CurrentAlloc(); n != 0 {
			problems = append(problems, fmt.Sprintf("%d bytes of Arrow memory not released", n))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(problems) > 0 {
		return fmt.Errorf("10 s after Close: %s", strings.Join(problems, "; "))
	}
	return nil
}
