// Package conformance certifies guest kinds and plugins: [TestGuest] runs
// the named cases of [Cases] against any [guest.Runtime], with the
// reference plugin its [Harness] supplies, and [TestPlugin] runs a plugin
// author's own plugin on their inputs with the checks every job must pass.
// [Run] does the same outside `go test` (`casparian conformance`).
//
// The package never imports a concrete guest: harnesses for the shipped
// kinds are in conformance/kinds. The reference plugins' behaviours and the
// tables they emit are defined in conformance/reftable; docs/CONFORMANCE.md
// says what a new guest type must implement and what each case demands.
package conformance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/host/guest"
)

// Harness is what a guest kind supplies to the suite.
type Harness struct {
	// Kind is the kind under test (for messages and reports).
	Kind guest.Kind
	// NewRuntime returns a new runtime of the kind under test. Arrow data
	// it decodes must come from mem (the suite checks that every byte is
	// released), and it must accept batches of at least Options.BigBatchMB
	// plus 1 MiB.
	NewRuntime func(mem memory.Allocator) (guest.Runtime, error)
	// Plugin returns the kind's reference plugin, which implements the modes
	// of package reftable. It is called once per suite run.
	Plugin func() (guest.Plugin, error)
}

// Options tune a suite run. Zero values mean the defaults.
type Options struct {
	// BigBatchMB is the size of case stream/big_batch's batch. Default 256.
	BigBatchMB int
	// TinyBatches is the batch count of case stream/tiny_batches. Default 10,000.
	TinyBatches int
	// Grace is how long past a deadline or a cancellation Run may take to
	// return. Default 5 s.
	Grace time.Duration
	// Only runs the cases whose names contain one of these strings.
	Only []string
	// TempDir holds the suite's input files. Default os.TempDir().
	TempDir string
}

func (o Options) withDefaults() Options {
	if o.BigBatchMB <= 0 {
		o.BigBatchMB = 256
	}
	if o.TinyBatches <= 0 {
		o.TinyBatches = 10_000
	}
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	return o
}

// Result is the outcome of one case.
type Result struct {
	Case     string        `json:"case"`
	Passed   bool          `json:"passed"`
	Duration time.Duration `json:"duration_ns"`
	Message  string        `json:"message,omitempty"`
}

// Report is the outcome of a suite run.
type Report struct {
	Kind    guest.Kind `json:"kind"`
	Started time.Time  `json:"started"`
	Results []Result   `json:"results"`
}

// Failed counts the failed cases.
func (r Report) Failed() int {
	n := 0
	for _, c := range r.Results {
		if !c.Passed {
			n++
		}
	}
	return n
}

// Case is one named check.
type Case struct {
	Name string
	// Doc says what the case demands of a guest.
	Doc string
	run func(e *env) error
}

// env is what a case works with: the suite's runtime and loaded reference
// plugin, its allocator and its input files.
type env struct {
	ctx    context.Context
	h      Harness
	opts   Options
	mem    *memory.CheckedAllocator
	rt     guest.Runtime
	plugin guest.Plugin
	inst   guest.Instance
	dir    string // input files
	input  string // a small input file
	cache  map[string]*Recorder
}

// Run runs the cases against the harness's kind and reports each. It
// returns an error only when the suite cannot start (no runtime, no
// reference plugin).
func Run(ctx context.Context, h Harness, opts Options) (Report, error) {
	rep := Report{Kind: h.Kind, Started: time.Now()}
	e, err := newEnv(ctx, h, opts.withDefaults())
	if err != nil {
		return rep, err
	}
	defer e.close()
	for _, c := range Cases() {
		if !e.selected(c.Name) {
			continue
		}
		rep.Results = append(rep.Results, e.runCase(c))
	}
	return rep, nil
}

func newEnv(ctx context.Context, h Harness, opts Options) (*env, error) {
	if h.NewRuntime == nil || h.Plugin == nil {
		return nil, errors.New("conformance: the harness needs NewRuntime and Plugin")
	}
	p, err := h.Plugin()
	if err != nil {
		return nil, fmt.Errorf("conformance: reference plugin for %s: %w", h.Kind, err)
	}
	dir, err := os.MkdirTemp(opts.TempDir, "conformance-")
	if err != nil {
		return nil, err
	}
	e := &env{ctx: ctx, h: h, opts: opts, mem: memory.NewCheckedAllocator(memory.NewGoAllocator()),
		plugin: p, dir: dir, cache: map[string]*Recorder{}}
	e.input = filepath.Join(dir, "input.txt")
	if err := os.WriteFile(e.input, []byte("conformance input\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if e.rt, err = h.NewRuntime(e.mem); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("conformance: new %s runtime: %w", h.Kind, err)
	}
	if e.inst, err = e.rt.Load(ctx, p); err != nil {
		e.rt.Close(context.Background())
		os.RemoveAll(dir)
		return nil, fmt.Errorf("conformance: load the %s reference plugin: %s", h.Kind, guest.JobError(0, err))
	}
	return e, nil
}

func (e *env) selected(name string) bool {
	if len(e.opts.Only) == 0 {
		return true
	}
	for _, s := range e.opts.Only {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

func (e *env) close() {
	for _, r := range e.cache {
		r.Release()
	}
	if e.inst != nil {
		e.inst.Close(context.Background())
	}
	e.rt.Close(context.Background())
	os.RemoveAll(e.dir)
}

// runCase runs one case, turning a panic into a failure and checking that
// the case left no Arrow memory behind.
func (e *env) runCase(c Case) (res Result) {
	res.Case = c.Name
	start := time.Now()
	before := e.mem.CurrentAlloc()
	defer func() {
		res.Duration = time.Since(start)
		if r := recover(); r != nil {
			buf := make([]byte, 4096)
			buf = buf[:runtime.Stack(buf, false)]
			res.Passed, res.Message = false, fmt.Sprintf("panic in the case: %v\n%s", r, buf)
		}
	}()
	err := c.run(e)
	if err == nil {
		if leaked := e.mem.CurrentAlloc() - before; leaked > 0 && !e.cached(c.Name) {
			err = fmt.Errorf("%d bytes of Arrow memory still allocated after the case: a batch was not released", leaked)
		}
	}
	if err != nil {
		return Result{Case: c.Name, Passed: false, Duration: time.Since(start), Message: err.Error()}
	}
	return Result{Case: c.Name, Passed: true, Duration: time.Since(start)}
}

// cached reports whether the case keeps its recording for later cases.
func (e *env) cached(name string) bool { return strings.HasPrefix(name, "types/") }

// run runs the reference plugin in mode with cfg on input and records what
// it emits. The run is bounded by timeout (0: none) plus Grace: a guest
// that does not return by then is reported, and left running.
func (e *env) run(ctx context.Context, inst guest.Instance, input string, cfg map[string]any, timeout time.Duration) (*Recorder, error) {
	rec := NewRecorder()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return rec, e.bounded(ctx, timeout, func(ctx context.Context) error {
		return inst.Run(ctx, guest.Input{JobID: 1, FileVersionID: 1, Path: input, Config: cfg}, rec)
	})
}

// bounded calls fn, which must return within timeout+Grace (or 10 min
// without a timeout).
func (e *env) bounded(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	limit := timeout + e.opts.Grace
	if timeout <= 0 {
		limit = 10 * time.Minute
	}
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		return &stuckError{limit: limit}
	}
}

// stuckError is a Run that did not return in time.
type stuckError struct {
	limit time.Duration
	after string // "" or what the limit counts from
}

func (s *stuckError) Error() string {
	after := ""
	if s.after != "" {
		after = " of " + s.after
	}
	return fmt.Sprintf("Run did not return within %s%s: the guest must stop the plugin at the deadline or on cancellation, whatever the plugin does", s.limit, after)
}

// mode is the config of a reference-plugin mode.
func mode(m string, kv ...any) map[string]any {
	cfg := map[string]any{"mode": m}
	for i := 0; i+1 < len(kv); i += 2 {
		cfg[kv[i].(string)] = kv[i+1]
	}
	return cfg
}
