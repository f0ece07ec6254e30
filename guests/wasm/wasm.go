// Package wasm is the WASM guest: it runs plugins compiled to WebAssembly
// (WASI preview 1 reactor modules that speak the ABI of docs/WASM_ABI.md)
// inside the host process, on wazero's optimizing compiler.
//
// # Cost model
//
// [Runtime.Load] compiles a module once per artifact (keyed by its SHA-256)
// and keeps the compiled code in memory for later Loads; the machine code is
// also written to an on-disk compilation cache, so the next process that
// loads the same module skips the compiler. Load then instantiates the
// module once to check its ABI version and read its Info. A module file
// this process hashed before and that has not changed since (same inode,
// size, mtime and ctime, on Linux; internal/filehash) is not read and hashed
// again while its compiled module is in memory.
// Load's instance is kept warm: a [guest.Instance.Run] takes a warm instance
// of its module (or instantiates one: new linear memory, _initialize),
// makes one casparian_process call, and after a success gives the instance
// back for the next run ([Config.MaxRunsPerInstance], [Config.MaxWarmInstances],
// [Config.MaxWarmMemoryBytes]); after any failure it closes it. Concurrent
// runs take separate instances, so an Instance runs any number of inputs at
// once.
//
// For a 10 MB Go module (bench/guestbench/plugin built with -tags
// arrow_json_stdlib; 15 MB without the tag) on a 2-core VM: compiling takes
// about 4 s, a Load from the disk cache in a new process about 0.15-0.2 s
// (half of it wazero validating the module's code, which it does before
// looking in its cache), a Load from memory microseconds, a run that emits
// nothing on a warm instance about 0.2 ms, and on a new one about 17 ms
// (three quarters of it wazero evaluating the initializers of the module's
// function table and data segments; the rest mostly Go's runtime
// initialization).
//
// # Sandbox
//
// A module sees, through WASI: its input file, read-only (mode 0444), at
// /input/<base name of the file>, and nothing else of the host's file
// system: /input lists only that file, / is an empty read-only directory
// listing only "input", every other path does not exist, ".." does not leave
// /input, and any open for writing fails with EROFS. Also: an empty stdin;
// stdout and stderr, forwarded line by line as log records; argv[0] (the
// plugin name) and no other argument; no environment variables; no network
// (wazero implements no WASI sockets unless asked to). The clocks are fake
// and deterministic by default (the wall clock starts at
// 2022-01-01T00:00:00Z and every reading advances the clocks by 1 ms; sleep
// returns at once) and random_get returns a fixed deterministic sequence;
// [Config.RealClock] and [Config.RandSource] give the module the real ones.
// Linear memory is capped by [Config.MemoryLimitPages]; the run's context
// deadline or cancellation stops the module even in a tight loop (wazero's
// WithCloseOnContextDone), and a trap, a Go panic or an exit of the module is
// a job error, never a host crash. What the module may call is
// docs/WASM_ABI.md: WASI preview 1 and the four casparian functions.
//
// # Limits and known pitfalls
//
//   - No instruction budget: wazero has no fuel (wazero#422). A module burns
//     CPU until the job's deadline or [Config.IdleTimeout] stops it.
//   - WithCloseOnContextDone makes compiled code call back into Go at every
//     loop iteration to see whether the module was closed (wazero#2466; PR
//     #2533 would make it a memory read). In a Go module that costs much:
//     emitting 100,000 rows with the test plugin runs 3.4 times slower with
//     it than without (1.9 s against 0.58 s, BenchmarkEmit100kRows). It is what makes
//     deadlines, cancellation and the idle timeout work, so it stays on.
//   - A reactor's exports must not run before _initialize
//     (golang/go#71240: a Go module fails obscurely); commands are refused at
//     Load and _initialize is always called first.
//   - The compilation cache must outlive the runtime that uses it
//     (extism/go-sdk#97); Close closes them in that order. Its entries are
//     keyed by the module's bytes, the CloseOnContextDone setting (wazero PR
//     #1381), the wazero version and the CPU's features, so a directory can
//     be shared by processes and versions. In test binaries wazero cannot
//     read its own version and files entries under "dev".
//   - Running out of memory is recognized from the module saying so on
//     stderr (Go: "fatal error: out of memory") or from its memory being
//     within 4 MiB of the limit when it died; a module that traps for lack
//     of memory far below the limit without a word is reported as CRASHED.
//
// # Errors
//
// Every failure is a *guest.Error: ErrPlugin for a module that is not a
// valid plugin (not WebAssembly, missing exports, wrong ABI version, a hash
// mismatch) or that reported an error; ErrCrashed for a trap or an exit;
// ErrResourceLimit when it ran out of memory or emitted an oversized batch;
// ErrProtocol for invalid Arrow data; ErrSchema for a bad or undeclared
// topic; ErrTimeout and ErrCancelled when the run's context ends it.
package wasm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/filehash"
	"github.com/casparianflow/casparian/internal/guestlog"
	abi "github.com/casparianflow/casparian/sdk/wasm"
)

// Defaults for Config's zero values.
const (
	DefaultMemoryLimitPages   = 16384     // 1 GiB of linear memory
	DefaultMaxBatchBytes      = 64 << 20  // one emitted Arrow IPC stream
	DefaultMaxModuleBytes     = 256 << 20 // one .wasm artifact
	DefaultMaxModules         = 8
	DefaultStderrTail         = 20
	DefaultLoadTimeout        = 30 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultMaxRunsPerInstance = 1000
	DefaultMaxWarmInstances   = 4
	DefaultMaxWarmMemoryBytes = 256 << 20
	DefaultWarmIdleTimeout    = 5 * time.Minute

	maxMemoryPages = 65536   // 4 GiB, the wasm32 ceiling
	maxDocBytes    = 1 << 20 // one info or error JSON document
	pageSize       = 64 << 10
)

// Config configures the WASM guest. Every zero value means the default.
type Config struct {
	// CacheDir is the directory of the on-disk compilation cache (wazero's
	// file cache, keyed by the module's SHA-256, the wazero version and the
	// CPU; about 4 bytes of machine code per byte of a Go module). Nothing
	// is ever removed from it: prune it when plugins are retired. Default:
	// os.UserCacheDir()/casparian/wasm. When no user cache directory
	// exists, compiled code is kept in memory only.
	CacheDir string
	// NoDiskCache keeps compiled code in memory only.
	NoDiskCache bool
	// MemoryLimitPages caps the linear memory of every module instance, in
	// 64 KiB pages. Default 16384 (1 GiB); at most 65536 (4 GiB).
	MemoryLimitPages uint32
	// MaxBatchBytes caps the Arrow IPC stream of one emit call; a bigger one
	// fails the job with ErrResourceLimit. It is passed to the module, whose
	// SDK splits bigger batches. Default 64 MiB.
	MaxBatchBytes int64
	// MaxModuleBytes caps the size of a .wasm artifact. Default 256 MiB.
	MaxModuleBytes int64
	// MaxModules is how many compiled modules stay in memory when no
	// Instance uses them (least recently loaded first out). A compiled 15 MB
	// Go module takes about 60 MB of machine code. Default 8.
	MaxModules int
	// RealClock gives modules the host's wall clock, monotonic clock and
	// sleep. Default false: deterministic fake clocks (see the package doc).
	RealClock bool
	// RandSource is what random_get reads, e.g. crypto/rand.Reader; it must
	// be safe for concurrent use. Default nil: a deterministic sequence.
	RandSource io.Reader
	// IdleTimeout is the longest a run may go without the module emitting a
	// batch, logging, or writing to stdout or stderr (time spent in the
	// Output's Emit does not count); past it the run fails with ErrTimeout.
	// wazero has no instruction budget ("fuel", wazero#422), so this and the
	// job's deadline are what stop a module stuck in a loop. Default 60 s, as
	// the Python guest's; negative disables it.
	IdleTimeout time.Duration
	// LoadTimeout bounds the module's _initialize and casparian_info calls
	// at Load (a module that loops there never gets to run). Compiling is not
	// bounded: it cannot be interrupted. Default 30 s.
	LoadTimeout time.Duration
	// MaxRunsPerInstance is how many runs one module instance serves. A run
	// that succeeds leaves its instance warm for the next run of the same
	// module, which then skips instantiation and _initialize (for a Go
	// module ~18 ms of a no-op run's ~18.5 ms); a run that fails closes it.
	// Later runs see what earlier ones left in the module's memory, as the
	// warm processes of the go-plugin guest do, and the fake clocks and
	// random source go on from where the last run left them. 1 gives every
	// run a fresh instance (and every run of the same input the same clock
	// readings and random numbers). Default 1000.
	MaxRunsPerInstance int
	// MaxWarmInstances is how many idle instances each module keeps.
	// Default 4 (a worker's default slot count).
	MaxWarmInstances int
	// MaxWarmMemoryBytes: an instance whose linear memory grew past this is
	// closed after its run rather than kept (a Go module's memory never
	// shrinks). Default 256 MiB.
	MaxWarmMemoryBytes uint64
	// WarmIdleTimeout closes an idle instance unused this long (checked when
	// the module runs again). Default 5 minutes.
	WarmIdleTimeout time.Duration
	// StderrTail is how many stderr lines a crash error quotes. Default 20.
	StderrTail int
	// Allocator allocates decoded Arrow data. Default memory.DefaultAllocator.
	Allocator memory.Allocator
	// Logger receives the runtime's own diagnostics (compiles, cache hits,
	// module stdout/stderr during Load). Plugin output during a run goes to
	// the guest.Output. nil discards them.
	Logger *slog.Logger
}

// Runtime runs WASM plugins. It is safe for concurrent use.
type Runtime struct {
	cfg   Config
	wr    wazero.Runtime
	cache wazero.CompilationCache // nil without a disk cache

	mu      sync.Mutex
	closed  bool
	modules map[string]*module // by SHA-256 hex
	reads   int                // module files read, for tests
	tick    uint64             // load counter, for least-recently-loaded eviction
}

var _ guest.Runtime = (*Runtime)(nil)

// module is one compiled artifact.
type module struct {
	hash  string
	ready chan struct{} // closed when compiled and err set
	err   error         // the Load error, if compiling or probing failed

	compiled wazero.CompiledModule
	info     abi.Info
	size     int
	hasInit  bool // exports _initialize

	refs     int     // open Instances; guarded by Runtime.mu
	lastLoad uint64  // Runtime.tick at the last Load; guarded by Runtime.mu
	idle     []*warm // warm instances, most recently used last; guarded by Runtime.mu
}

// New checks cfg, opens the compilation cache and creates the wazero runtime.
func New(cfg Config) (*Runtime, error) {
	if cfg.MemoryLimitPages == 0 {
		cfg.MemoryLimitPages = DefaultMemoryLimitPages
	}
	if cfg.MemoryLimitPages > maxMemoryPages {
		return nil, fmt.Errorf("wasm guest: memory limit of %d pages is above the wasm32 maximum of %d (4 GiB)", cfg.MemoryLimitPages, maxMemoryPages)
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.MaxBatchBytes > 1<<31 {
		return nil, fmt.Errorf("wasm guest: batch limit of %d bytes is above 2 GiB", cfg.MaxBatchBytes)
	}
	if cfg.MaxModuleBytes <= 0 {
		cfg.MaxModuleBytes = DefaultMaxModuleBytes
	}
	if cfg.MaxModules <= 0 {
		cfg.MaxModules = DefaultMaxModules
	}
	if cfg.StderrTail <= 0 {
		cfg.StderrTail = DefaultStderrTail
	}
	if cfg.MaxRunsPerInstance <= 0 {
		cfg.MaxRunsPerInstance = DefaultMaxRunsPerInstance
	}
	if cfg.MaxWarmInstances <= 0 {
		cfg.MaxWarmInstances = DefaultMaxWarmInstances
	}
	if cfg.MaxWarmMemoryBytes == 0 {
		cfg.MaxWarmMemoryBytes = DefaultMaxWarmMemoryBytes
	}
	if cfg.WarmIdleTimeout <= 0 {
		cfg.WarmIdleTimeout = DefaultWarmIdleTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.LoadTimeout <= 0 {
		cfg.LoadTimeout = DefaultLoadTimeout
	}
	if cfg.Allocator == nil {
		cfg.Allocator = memory.DefaultAllocator
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rc := wazero.NewRuntimeConfigCompiler().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(cfg.MemoryLimitPages).
		WithCoreFeatures(api.CoreFeaturesV2)
	r := &Runtime{cfg: cfg, modules: map[string]*module{}}
	if !cfg.NoDiskCache {
		if cfg.CacheDir == "" {
			if d, err := os.UserCacheDir(); err == nil {
				cfg.CacheDir = filepath.Join(d, "casparian", "wasm")
			}
		}
		if cfg.CacheDir != "" {
			c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
			if err != nil {
				return nil, fmt.Errorf("wasm guest: compilation cache in %s: %w (set another directory, or disable the disk cache)", cfg.CacheDir, err)
			}
			r.cache = c
			rc = rc.WithCompilationCache(c)
		}
	}
	r.cfg = cfg
	ctx := context.Background()
	r.wr = wazero.NewRuntimeWithConfig(ctx, rc)
	if err := r.instantiateHostModules(ctx); err != nil {
		r.wr.Close(ctx)
		if r.cache != nil {
			r.cache.Close(ctx)
		}
		return nil, fmt.Errorf("wasm guest: %w", err)
	}
	return r, nil
}

// Kind reports guest.KindWASM.
func (r *Runtime) Kind() guest.Kind { return guest.KindWASM }

// CacheDir returns the directory of the on-disk compilation cache, or "" when
// compiled code is kept in memory only.
func (r *Runtime) CacheDir() string {
	if r.cache == nil {
		return ""
	}
	return r.cfg.CacheDir
}

// Close closes the wazero runtime (ending any module still running) and the
// compilation cache. It is idempotent.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.modules = map[string]*module{} // closing the wazero runtime closes their instances
	r.mu.Unlock()
	// The cache must outlive the runtime that uses it (extism/go-sdk#97).
	err := r.wr.Close(ctx)
	if r.cache != nil {
		err = errors.Join(err, r.cache.Close(ctx))
	}
	return err
}

// Load reads the module (p.Source, else p.Path), checks its SHA-256 against
// p.Hash when given, and returns an Instance. The first Load of an artifact
// compiles it (or reads the compiled code from the disk cache), checks its
// imports, exports and ABI version, and reads its Info; later Loads of the
// same bytes reuse that work. ctx and Config.LoadTimeout bound the calls
// into the module at Load; compiling cannot be interrupted.
func (r *Runtime) Load(ctx context.Context, p guest.Plugin) (guest.Instance, error) {
	if r.isClosed() {
		return nil, guest.Errorf(guest.ErrPlugin, "wasm guest is closed")
	}
	// A module file hashed before and unchanged since (same identity,
	// size, mtime and ctime: internal/filehash) whose compiled module is in
	// memory is not read and hashed again: that is 10-60 ms for a 10 MB Go
	// module.
	var key filehash.Key
	var hash string
	if p.Source == nil && p.Path != "" {
		key = filehash.Stat(p.Path)
		if h, ok := key.Lookup(); ok {
			r.mu.Lock()
			if r.modules[h] != nil {
				hash = h
			}
			r.mu.Unlock()
		}
	}
	var bin []byte
	if hash == "" {
		var err error
		r.mu.Lock()
		r.reads++
		r.mu.Unlock()
		if bin, err = r.readArtifact(p); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(bin)
		hash = hex.EncodeToString(sum[:])
	}
	if p.Hash != "" && !strings.EqualFold(p.Hash, hash) {
		return nil, &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: module SHA-256 is %s, expected %s", pluginLabel(p), hash, strings.ToLower(p.Hash)),
			Hint:    "the module changed after it was registered: publish it again, or check what replaced the file"}
	}

	r.mu.Lock()
	if bin == nil && r.modules[hash] == nil { // evicted since the lookup above: read it
		r.mu.Unlock()
		return r.Load(ctx, p)
	}
	if r.closed {
		r.mu.Unlock()
		return nil, guest.Errorf(guest.ErrPlugin, "wasm guest is closed")
	}
	m, found := r.modules[hash]
	if !found {
		m = &module{hash: hash, ready: make(chan struct{}), size: len(bin)}
		r.modules[hash] = m
	}
	m.refs++ // keeps m from eviction while it compiles and while the Instance lives
	r.tick++
	m.lastLoad = r.tick
	r.mu.Unlock()

	if bin != nil {
		key.Remember(hash) // unless the file changed in the last 2 s or since Stat
	}
	if !found {
		start := time.Now()
		m.err = r.compile(ctx, m, bin, p)
		r.cfg.Logger.Debug("wasm module compiled", "plugin", pluginLabel(p), "sha256", hash,
			"bytes", len(bin), "duration", time.Since(start).Round(time.Millisecond), "ok", m.err == nil)
		close(m.ready)
	} else {
		select {
		case <-m.ready:
		case <-ctx.Done():
			r.release(m)
			return nil, ctxError(ctx, "while another Load compiled the module")
		}
	}
	if m.err != nil {
		r.mu.Lock()
		m.refs--
		if r.modules[hash] == m {
			delete(r.modules, hash) // a later Load tries again
		}
		r.mu.Unlock()
		return nil, m.err
	}
	r.evict()
	name := p.Name
	if name == "" {
		name = m.info.Name
	}
	return &instance{rt: r, mod: m, name: name}, nil
}

func (r *Runtime) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// release drops one reference to m.
func (r *Runtime) release(m *module) {
	r.mu.Lock()
	m.refs--
	r.mu.Unlock()
	r.evict()
}

// evict closes the least recently loaded unused modules beyond MaxModules.
func (r *Runtime) evict() {
	var drop []*module
	var idle []*warm
	r.mu.Lock()
	for len(r.modules) > r.cfg.MaxModules {
		var victim *module
		for _, m := range r.modules {
			select {
			case <-m.ready:
			default:
				continue // still compiling
			}
			if m.refs == 0 && (victim == nil || m.lastLoad < victim.lastLoad) {
				victim = m
			}
		}
		if victim == nil {
			break
		}
		delete(r.modules, victim.hash)
		drop = append(drop, victim)
		idle = append(idle, dropIdle(victim)...)
	}
	r.mu.Unlock()
	closeAll(idle) // before their compiled module
	for _, m := range drop {
		if m.compiled != nil {
			_ = m.compiled.Close(context.Background())
		}
	}
}

func pluginLabel(p guest.Plugin) string {
	switch {
	case p.Name != "":
		return p.Name
	case p.Path != "":
		return p.Path
	}
	return "(inline module)"
}

// readArtifact returns the module's bytes.
func (r *Runtime) readArtifact(p guest.Plugin) ([]byte, error) {
	max := r.cfg.MaxModuleBytes
	if p.Source != nil {
		if int64(len(p.Source)) > max {
			return nil, &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
				Message: fmt.Sprintf("plugin %s: module of %d bytes is larger than the %d-byte limit", pluginLabel(p), len(p.Source), max)}
		}
		return p.Source, nil
	}
	if p.Path == "" {
		return nil, guest.Errorf(guest.ErrPlugin, "plugin %q has neither a path nor module bytes", p.Name)
	}
	f, err := os.Open(p.Path)
	if err != nil {
		return nil, &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("read plugin %s: %v", p.Path, errors.Unwrap(err)), Hint: "check the plugin path"}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, guest.AsError(fmt.Errorf("read plugin %s: %w", p.Path, err), guest.ErrPlugin)
	}
	if st.Size() > max {
		return nil, &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: module of %d bytes is larger than the %d-byte limit", p.Path, st.Size(), max)}
	}
	// One allocation of the file's size (io.ReadAll would grow and copy a
	// 15 MB module a dozen times); a file that grew meanwhile is caught by
	// the limit.
	buf := bytes.NewBuffer(make([]byte, 0, st.Size()+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, max+1)); err != nil {
		return nil, guest.AsError(fmt.Errorf("read plugin %s: %w", p.Path, err), guest.ErrPlugin)
	}
	if int64(buf.Len()) > max {
		return nil, &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: module of more than %d bytes is larger than the limit", p.Path, max)}
	}
	return buf.Bytes(), nil
}

// compile compiles bin, checks it against the ABI and reads its Info.
func (r *Runtime) compile(ctx context.Context, m *module, bin []byte, p guest.Plugin) error {
	label := pluginLabel(p)
	if len(bin) < 8 || !bytes.Equal(bin[:4], []byte("\x00asm")) {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s is not a WebAssembly module (it does not start with \\0asm)", label),
			Hint:    "build the plugin with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o plugin.wasm"}
	}
	cm, err := r.wr.CompileModule(ctx, bin)
	if err != nil {
		kind := guest.ErrPlugin
		hint := "the module is not valid WebAssembly, or uses features wazero does not support"
		if strings.Contains(err.Error(), "memory") && strings.Contains(err.Error(), "limit") {
			kind, hint = guest.ErrResourceLimit, "the module asks for more initial memory than the WASM memory limit allows"
		}
		return &guest.Error{Kind: kind, ExitCode: -1, Err: err, Hint: hint,
			Message: fmt.Sprintf("compile plugin %s: %v", label, err)}
	}
	m.compiled = cm
	if err := checkModule(cm, label, r.cfg.MemoryLimitPages); err != nil {
		cm.Close(ctx)
		return err
	}
	_, m.hasInit = cm.ExportedFunctions()[abi.ExportInitialize]
	pctx, cancel := context.WithTimeout(ctx, r.cfg.LoadTimeout)
	info, err := r.probe(pctx, m, label)
	cancel()
	if err != nil {
		cm.Close(ctx)
		if errors.Is(err, guest.ErrTimeout) && ctx.Err() == nil {
			err = &guest.Error{Kind: guest.ErrTimeout, ExitCode: -1,
				Message: fmt.Sprintf("plugin %s did not finish _initialize and casparian_info within %s", label, r.cfg.LoadTimeout),
				Hint:    "the module's initialization loops or blocks; check its init functions and Info"}
		}
		return err
	}
	m.info = info
	return nil
}

// probe instantiates the module once, with no file system, to check its ABI
// version and read its Info.
func (r *Runtime) probe(ctx context.Context, m *module, label string) (abi.Info, error) {
	st := &runState{rt: r, label: label, tail: guestlog.NewTail(r.cfg.StderrTail), probe: true}
	st.stdout = &guestlog.Writer{Emit: func(l string) { r.cfg.Logger.Debug(l, "plugin", label, "stream", "stdout") }}
	st.stderr = &guestlog.Writer{Emit: func(l string) {
		st.stderrLine(l)
		r.cfg.Logger.Debug(l, "plugin", label, "stream", "stderr")
	}}
	w, err := r.newWarm(ctx, m, st, label)
	if err != nil {
		return abi.Info{}, err
	}
	mod := w.mod
	ok := false
	defer func() {
		st.flush()
		if ok && r.cfg.MaxRunsPerInstance > 1 {
			r.giveBack(m, w) // the first run finds it warm
		} else { // with 1, every run starts from a pristine instance
			w.detach()
			_ = mod.Close(context.WithoutCancel(ctx))
		}
	}()
	res, err := st.call(ctx, mod, abi.ExportInfo)
	if err != nil {
		return abi.Info{}, err
	}
	if uint32(res) != abi.StatusOK {
		return abi.Info{}, st.guestFailure("casparian_info", uint32(res))
	}
	if st.info == nil {
		return abi.Info{}, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: casparian_info returned 0 without calling casparian.set_info", label),
			Hint:    "casparian_info must pass the plugin's Info JSON to the set_info import (docs/WASM_ABI.md)"}
	}
	info, gerr := parseInfo(st.info, label)
	if gerr != nil {
		return abi.Info{}, gerr
	}
	ok = ctx.Err() == nil
	return info, nil
}

// instantiateHostModules makes WASI and the casparian imports available to
// every module of the runtime.
func (r *Runtime) instantiateHostModules(ctx context.Context) error {
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r.wr); err != nil {
		return fmt.Errorf("instantiate WASI: %w", err)
	}
	i32 := api.ValueTypeI32
	b := r.wr.NewHostModuleBuilder(abi.ImportModule)
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(hostEmit), []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}).
		WithParameterNames("topic_ptr", "topic_len", "ipc_ptr", "ipc_len").Export(abi.ImportEmit)
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(hostLog), []api.ValueType{i32, i32, i32}, nil).
		WithParameterNames("level", "msg_ptr", "msg_len").Export(abi.ImportLog)
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(hostSetInfo), []api.ValueType{i32, i32}, nil).
		WithParameterNames("json_ptr", "json_len").Export(abi.ImportSetInfo)
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(hostSetError), []api.ValueType{i32, i32}, nil).
		WithParameterNames("json_ptr", "json_len").Export(abi.ImportSetError)
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate the %s host module: %w", abi.ImportModule, err)
	}
	return nil
}
