package wasm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	abi "github.com/casparianflow/casparian/sdk/wasm"
)

// instance is a loaded module. Each Run takes a module instance of its own:
// a warm one left by an earlier successful run, or a new one.
type instance struct {
	rt     *Runtime
	mod    *module
	name   string
	closed atomic.Bool
}

var (
	_ guest.Instance   = (*instance)(nil)
	_ guest.Concurrent = (*instance)(nil)
)

// Concurrent is true: every Run has its own module instance.
func (i *instance) Concurrent() bool { return true }

// Close lets the runtime evict the compiled module once no Instance uses it.
// It is idempotent.
func (i *instance) Close(context.Context) error {
	if i.closed.CompareAndSwap(false, true) {
		i.rt.release(i.mod)
	}
	return nil
}

// Run takes a module instance (a warm one, or a new one that runs
// _initialize), shows it the input file read-only, calls casparian_process
// and streams the batches the module emits to out. ctx's deadline or
// cancellation stops the module wherever it is. After a successful run the
// instance is kept for a later run of the same module (Config.MaxRunsPerInstance);
// after any failure it is closed before Run returns.
func (i *instance) Run(ctx context.Context, in guest.Input, out guest.Output) error {
	if i.closed.Load() {
		return guest.Errorf(guest.ErrPlugin, "plugin %s: the instance is closed", i.name)
	}
	if ctx.Err() != nil {
		return ctxError(ctx, "before the plugin started")
	}
	abs, name, err := checkInput(in.Path)
	if err != nil {
		return &guest.Error{Kind: guest.ErrInput, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("input %s: %v", in.Path, err), Hint: "check that the file exists and is readable"}
	}
	r := i.rt
	st := &runState{rt: r, label: i.name, out: out, tail: guestlog.NewTail(r.cfg.StderrTail)}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if d := r.cfg.IdleTimeout; d > 0 {
		st.idle = &idleWatch{d: d, t: time.AfterFunc(d, func() { cancel(&idleError{d}) })}
		defer st.idle.t.Stop()
	}
	if len(i.mod.info.Topics) > 0 {
		st.topics = map[string]bool{}
		for _, t := range i.mod.info.Topics {
			st.topics[t.Name] = true
		}
	}
	st.stdout = &guestlog.Writer{Touch: st.idle.poke, Emit: func(l string) {
		out.Log(guest.LogRecord{Level: slog.LevelInfo, Message: l, Stream: "stdout"})
	}}
	st.stderr = &guestlog.Writer{Touch: st.idle.poke, Emit: func(l string) {
		st.stderrLine(l)
		out.Log(guest.LogRecord{Level: slog.LevelWarn, Message: l, Stream: "stderr"})
	}}
	start := time.Now()
	w := r.take(i.mod)
	reused := w != nil
	if w == nil {
		if w, err = r.newWarm(ctx, i.mod, st, i.name); err != nil {
			st.flush()
			return err
		}
	}
	w.attach(st)
	ok := false
	defer func() {
		st.flush() // the module's last partial lines, before the instance goes
		w.runs++
		if ok {
			r.giveBack(i.mod, w)
		} else {
			w.detach()
			_ = w.mod.Close(context.WithoutCancel(ctx))
		}
	}()
	guestPath := w.fs.set(abs, name)

	cfg := in.Config
	if cfg == nil {
		cfg = map[string]any{}
	}
	doc, err := json.Marshal(abi.Input{Path: guestPath, JobID: in.JobID, FileID: in.FileVersionID,
		Config: cfg, MaxBatchBytes: r.cfg.MaxBatchBytes})
	if err != nil {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %s: encode the job's config as JSON: %v", i.name, err)}
	}
	mod := w.mod
	res, err := st.call(ctx, mod, abi.ExportAlloc, uint64(len(doc)))
	if err != nil {
		return err
	}
	ptr := uint32(res)
	if ptr == 0 || !mod.Memory().Write(ptr, doc) {
		return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: casparian_alloc(%d) returned %d, not a block of its memory", i.name, len(doc), ptr),
			Hint:    "casparian_alloc must return a pointer to size writable bytes (docs/WASM_ABI.md)"}
	}
	st.processing = true
	res, err = st.call(ctx, mod, abi.ExportProcess, uint64(ptr), uint64(len(doc)))
	st.processing = false
	if err != nil {
		return err
	}
	if status := uint32(res); status != abi.StatusOK {
		return st.guestFailure(abi.ExportProcess, status)
	}
	if _, err := st.call(ctx, mod, abi.ExportFree, uint64(ptr), uint64(len(doc))); err != nil {
		return err
	}
	ok = ctx.Err() == nil
	r.cfg.Logger.Debug("wasm run done", "plugin", i.name, "job_id", in.JobID, "batches", st.batches, "rows", st.rows,
		"warm", reused, "duration", time.Since(start).Round(time.Microsecond))
	return nil
}

// instantiate makes a new anonymous instance of m, with w's file system (if
// any) mounted at /input and w's stdout and stderr.
func (r *Runtime) instantiate(ctx context.Context, m *module, st *runState, w *warm, label string) (api.Module, error) {
	argv0 := label
	if argv0 == "" {
		argv0 = "plugin"
	}
	cfg := wazero.NewModuleConfig().
		WithName("").         // anonymous: any number of instances at once
		WithStartFunctions(). // _initialize is called by start, to attribute its errors
		WithArgs(argv0).
		WithStdout(&w.stdout).
		WithStderr(&w.stderr).
		WithFSConfig(w.fs.config())
	if r.cfg.RealClock {
		cfg = cfg.WithSysWalltime().WithSysNanotime().WithSysNanosleep()
	}
	if r.cfg.RandSource != nil {
		cfg = cfg.WithRandSource(r.cfg.RandSource)
	}
	mod, err := r.wr.InstantiateModule(withState(ctx, st), m.compiled, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctxError(ctx, "while instantiating the module")
		}
		kind := guest.ErrPlugin
		if strings.Contains(err.Error(), "memory") {
			kind = guest.ErrResourceLimit
		}
		return nil, &guest.Error{Kind: kind, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %s: instantiate the module: %v", label, err)}
	}
	return mod, nil
}

// runState is what the host functions of one module instance share with
// the Run (or the Load probe) that drives it. It travels in the context of
// every call into the module.
type runState struct {
	rt     *Runtime
	label  string
	probe  bool         // the Load-time instance: emit is not allowed
	out    guest.Output // nil in the probe
	topics map[string]bool
	mod    api.Module

	stdout, stderr *guestlog.Writer
	tail           *guestlog.Tail // the last stderr lines
	crash          []string       // the first "panic: " or "fatal error: " line on stderr and those after it
	sawOOM         bool           // stderr said "out of memory"

	idle       *idleWatch // nil without an idle timeout
	processing bool       // inside casparian_process
	info       []byte     // the set_info document
	errDoc     []byte     // the last set_error document
	failure    error      // why the host stopped the module, if it did

	batches, rows int64
}

// idleWatch cancels a run whose module shows no sign of life for d.
type idleWatch struct {
	d time.Duration
	t *time.Timer
}

// poke restarts the countdown; pause stops it (while the host works).
func (w *idleWatch) poke() {
	if w != nil {
		w.t.Reset(w.d)
	}
}

func (w *idleWatch) pause() {
	if w != nil {
		w.t.Stop()
	}
}

// idleError is the cause of a run cancelled by its idleWatch.
type idleError struct{ d time.Duration }

func (e *idleError) Error() string { return fmt.Sprintf("no sign of life from the module for %s", e.d) }

type stateKey struct{}

func withState(ctx context.Context, st *runState) context.Context {
	return context.WithValue(ctx, stateKey{}, st)
}

func stateOf(ctx context.Context) *runState {
	st, _ := ctx.Value(stateKey{}).(*runState)
	return st
}

// errStopped is the panic value a host function uses to stop the module;
// the reason is in runState.failure.
var errStopped = errors.New("stopped by the casparian host")

// stop records why the host stops the module and unwinds it (wazero turns
// a host function's panic into the error of the call into the module).
func (st *runState) stop(err *guest.Error) {
	st.failure = err
	panic(errStopped)
}

// stderrLine keeps what a crash report needs of one stderr line. A Go
// module's crash dump starts with the panic or fatal error and the stack of
// the goroutine that raised it, then lists every other goroutine: the start
// is what matters, the tail may be all idle runtime goroutines.
func (st *runState) stderrLine(l string) {
	st.tail.Add(l)
	if strings.Contains(l, "out of memory") {
		st.sawOOM = true
	}
	switch {
	case st.crash == nil && (strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ")):
		st.crash = []string{l}
	case st.crash != nil && len(st.crash) < st.rt.cfg.StderrTail:
		st.crash = append(st.crash, guestlog.Truncate(l, 2000))
	}
}

func (st *runState) flush() {
	st.stdout.Close()
	st.stderr.Close()
}

// start runs the module's initializer and checks its ABI version.
func (st *runState) start(ctx context.Context, mod api.Module, m *module) error {
	if m.hasInit {
		if _, err := st.call(ctx, mod, abi.ExportInitialize); err != nil {
			return err
		}
	}
	v, err := st.call(ctx, mod, abi.ExportABIVersion)
	if err != nil {
		return err
	}
	if int32(v) != abi.ABIVersion {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s speaks WASM ABI version %d, this host speaks version %d", st.label, int32(v), abi.ABIVersion),
			Hint:    "rebuild the plugin with an SDK that matches this host (see docs/WASM_ABI.md)"}
	}
	return nil
}

// call calls an export and turns a failure into a *guest.Error.
func (st *runState) call(ctx context.Context, mod api.Module, name string, params ...uint64) (uint64, error) {
	fn := mod.ExportedFunction(name)
	if fn == nil { // checked at Load; only a closed module gets here
		return 0, guest.Errorf(guest.ErrPlugin, "plugin %s: export %s is missing", st.label, name)
	}
	res, err := fn.Call(withState(ctx, st), params...)
	if err != nil {
		return 0, st.callError(ctx, name, err)
	}
	if len(res) == 0 {
		return 0, nil
	}
	return res[0], nil
}

// callError describes why a call into the module failed.
func (st *runState) callError(ctx context.Context, fn string, err error) error {
	if ctx.Err() != nil {
		return ctxError(ctx, "in "+fn)
	}
	if st.failure != nil {
		return st.failure
	}
	st.flush()
	e := &guest.Error{Kind: guest.ErrCrashed, ExitCode: -1, Stderr: st.tail.String()}
	var exit *sys.ExitError
	var what string // what happened, after "plugin X ... in fn"
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeContextCanceled:
			return &guest.Error{Kind: guest.ErrCancelled, ExitCode: -1, Message: "job cancelled in " + fn}
		case sys.ExitCodeDeadlineExceeded:
			return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1, Message: "job deadline exceeded in " + fn}
		}
		e.ExitCode = int(exit.ExitCode())
		what = fmt.Sprintf("exited with status %d in %s", exit.ExitCode(), fn)
		e.Hint = "the last stderr lines above show why the module exited"
	} else {
		// wazero's message, then "wasm stack trace:" and the frames.
		msg, trace, _ := strings.Cut(err.Error(), "\n")
		what = fmt.Sprintf("trapped in %s: %s", fn, msg)
		e.Traceback = strings.TrimSpace(trace)
		e.Hint = "the wasm stack trace above shows where the module trapped"
	}
	// A Go module reports an unrecovered panic or a fatal runtime error on
	// stderr, then traps: that line says more than "unreachable".
	if st.crash != nil {
		what = fmt.Sprintf("crashed in %s: %s", fn, st.crash[0])
		e.Stderr = strings.Join(st.crash, "\n")
		e.Hint = "the stderr lines above show the panic and the goroutine that raised it"
	}
	e.Message = fmt.Sprintf("plugin %s %s", st.label, what)
	if st.outOfMemory() {
		limit := st.rt.cfg.MemoryLimitPages
		e.Kind = guest.ErrResourceLimit
		e.Message = fmt.Sprintf("plugin %s ran out of memory (limit %d MiB, %d pages): it %s", st.label, limit/16, limit, what)
		e.Hint = "make the plugin hold less in memory (emit smaller batches as it goes), or raise the WASM memory limit"
	}
	return e
}

// outOfMemory guesses whether the module died for lack of memory: it said
// so on stderr (the Go runtime's "fatal error: out of memory"), or its
// memory is within 4 MiB of the limit.
func (st *runState) outOfMemory() bool {
	if st.sawOOM {
		return true
	}
	if st.mod == nil {
		return false
	}
	limit := uint64(st.rt.cfg.MemoryLimitPages) * pageSize
	return uint64(st.mod.Memory().Size())+4<<20 >= limit
}

// guestFailure builds the error for a non-zero status from an export.
func (st *runState) guestFailure(fn string, status uint32) error {
	return parseFailure(st.errDoc, st.label, fn, status)
}

func failureHint(kind error, msg string) string {
	switch kind {
	case guest.ErrInput:
		return "check that the input file exists and is readable"
	case guest.ErrSchema:
		return "emit only to the topics listed in Info().Topics, with their declared schemas"
	case guest.ErrResourceLimit:
		return "the plugin hit a limit; raise it or make the plugin use less"
	}
	m := strings.ToLower(msg)
	for _, s := range []string{"no such file", "not exist", "not found", "permission denied", "read-only", "not permitted",
		"bad file descriptor", "bad file number", "not supported", "not implemented", "capabilit",
		"connection refused", "connection reset"} {
		if strings.Contains(m, s) {
			return "inside the WASM sandbox the plugin sees only its input file, read-only, at the path in sdk.Input.Path (" +
				abi.InputMount + "/<file name>); no other file, directory, network or environment variable exists there"
		}
	}
	return "the plugin returned this error; the traceback, if any, points at the plugin's code"
}

func ctxError(ctx context.Context, during string) *guest.Error {
	var idle *idleError
	if errors.As(context.Cause(ctx), &idle) {
		return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1,
			Message: fmt.Sprintf("the plugin emitted, logged and printed nothing for %s %s", idle.d, during),
			Hint:    "the plugin may be stuck in a loop; if it legitimately computes that long between batches, raise the WASM idle timeout"}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
		return &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1, Message: "job deadline exceeded " + during,
			Hint: "the plugin ran longer than the job timeout; raise it if the input is legitimately large"}
	}
	return &guest.Error{Kind: guest.ErrCancelled, ExitCode: -1, Message: "job cancelled " + during, Err: context.Cause(ctx)}
}

// hostEmit implements casparian.emit(topic_ptr, topic_len, ipc_ptr, ipc_len) -> status.
func hostEmit(ctx context.Context, mod api.Module, stack []uint64) {
	st := stateOf(ctx)
	if st == nil {
		panic(errStopped)
	}
	if st.probe || !st.processing {
		st.stop(&guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s called casparian.emit outside casparian_process", st.label),
			Hint:    "emit batches only while processing an input"})
	}
	st.idle.pause() // the host's time, not the module's
	defer st.idle.poke()
	topic, data, gerr := decodeEmit(mod.Memory(), st.label, st.topics, st.rt.cfg.MaxBatchBytes,
		api.DecodeU32(stack[0]), api.DecodeU32(stack[1]), api.DecodeU32(stack[2]), api.DecodeU32(stack[3]))
	if gerr != nil {
		st.stop(gerr)
	}
	gerr = decodeBatches(data, st.rt.cfg.Allocator, st.label, topic, func(rec arrow.RecordBatch) error {
		if err := st.out.Emit(ctx, topic, rec); err != nil {
			return err
		}
		st.batches++
		st.rows += rec.NumRows()
		return nil
	})
	if gerr != nil {
		st.stop(gerr)
	}
	stack[0] = api.EncodeU32(abi.StatusOK)
}

func validateTopic(topic string) error { return bridge.ValidateTopic(topic) }

// hostLog implements casparian.log(level, msg_ptr, msg_len).
func hostLog(ctx context.Context, mod api.Module, stack []uint64) {
	st := stateOf(ctx)
	if st == nil {
		panic(errStopped)
	}
	st.idle.poke()
	level, msg, gerr := decodeLog(mod.Memory(), st.label, guestlog.DefaultMaxLine, api.DecodeI32(stack[0]), api.DecodeU32(stack[1]), api.DecodeU32(stack[2]))
	if gerr != nil {
		st.stop(gerr)
	}
	if st.out == nil {
		st.rt.cfg.Logger.Log(ctx, level, msg, "plugin", st.label, "stream", "sdk")
		return
	}
	st.out.Log(guest.LogRecord{Level: level, Message: msg, Stream: "sdk"})
}

// hostSetInfo implements casparian.set_info(json_ptr, json_len).
func hostSetInfo(ctx context.Context, mod api.Module, stack []uint64) {
	st := stateOf(ctx)
	if st == nil {
		panic(errStopped)
	}
	doc, gerr := decodeInfoDoc(mod.Memory(), st.label, api.DecodeU32(stack[0]), api.DecodeU32(stack[1]))
	if gerr != nil {
		st.stop(gerr)
	}
	st.info = doc
}

// hostSetError implements casparian.set_error(json_ptr, json_len).
func hostSetError(ctx context.Context, mod api.Module, stack []uint64) {
	st := stateOf(ctx)
	if st == nil {
		panic(errStopped)
	}
	doc, gerr := decodeErrorDoc(mod.Memory(), st.label, api.DecodeU32(stack[0]), api.DecodeU32(stack[1]))
	if gerr != nil {
		st.stop(gerr)
	}
	st.errDoc = doc
}
