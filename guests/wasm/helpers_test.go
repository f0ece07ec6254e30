package wasm_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

// workDir holds the test binary's built module and its compilation cache.
var workDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cf-wasm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	code := m.Run()
	if shared.rt != nil {
		shared.rt.Close(context.Background())
	}
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
	coldLoad  time.Duration // the first Load: compiling into the shared cache
)

// testPlugin builds testdata/plugin as a WASM reactor module, once per test
// binary, compiles it into the shared compilation cache, and returns its path.
//
// The compile runs in a separate process (testdata/precompile) built without
// the race detector: under -race wazero's compiler takes minutes for the
// 15 MB module, without it seconds. That process must file the compiled code
// under the wazero version this test binary reports ("dev": test binaries
// carry no module versions), hence the -X flag.
func testPlugin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out := filepath.Join(workDir, "plugin.wasm")
		start := time.Now()
		cmd := exec.Command("go", "build", "-tags", "arrow_json_stdlib", "-buildmode=c-shared", "-o", out, "./testdata/plugin")
		cmd.Env = append(toolEnv(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build the test plugin: %v\n%s", err, b)
			return
		}
		built := time.Since(start)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd = exec.CommandContext(ctx, "go", "run", "-ldflags=-X=github.com/tetratelabs/wazero/internal/version.version="+wazeroVersion(),
			"./testdata/precompile", out, sharedCache())
		cmd.Env = toolEnv()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			buildErr = fmt.Errorf("precompile the test plugin: %v\n%s", err, stderr.Bytes())
			return
		}
		if coldLoad, err = time.ParseDuration(strings.TrimSpace(string(b))); err != nil {
			buildErr = fmt.Errorf("precompile printed %q", b)
			return
		}
		builtPath = out
		fmt.Fprintf(os.Stderr, "test plugin: built for wasip1 in %s, compiled by wazero in %s\n",
			built.Round(time.Millisecond), coldLoad.Round(time.Millisecond))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtPath
}

// toolEnv is the environment for go build and go run: without -race, which
// wasip1 does not support and which would slow the precompile down.
func toolEnv() []string {
	env := os.Environ()
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GOFLAGS="); ok {
			var keep []string
			for _, f := range strings.Fields(v) {
				if f != "-race" && f != "-race=true" {
					keep = append(keep, f)
				}
			}
			env[i] = "GOFLAGS=" + strings.Join(keep, " ")
		}
	}
	return env
}

// wazeroVersion is the version wazero finds for itself in this binary, as
// its internal/version package computes it.
func wazeroVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, d := range info.Deps {
			if d.Path == "github.com/tetratelabs/wazero" && d.Version != "" && d.Version != "(devel)" {
				return d.Version
			}
		}
	}
	return "dev"
}

// sharedCache is the compilation cache directory of all tests.
func sharedCache() string { return filepath.Join(workDir, "cache") }

// shared is the runtime of the tests that need no special configuration, so
// the test module is loaded from the disk cache once.
var shared struct {
	once sync.Once
	rt   *wasm.Runtime
	mem  *memory.CheckedAllocator
	err  error
}

// writeInput writes a small CSV input file.
func writeInput(t testing.TB) string {
	t.Helper()
	in := filepath.Join(t.TempDir(), "input data é.csv")
	if err := os.WriteFile(in, []byte("a,b\n1,x\n2,y\n3,z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return in
}

type env struct {
	t   *testing.T
	rt  *wasm.Runtime
	mem *memory.CheckedAllocator
	dir string
	in  string
}

// newEnv returns the shared runtime when mut is nil, else a runtime of its
// own configured by mut. Either way the test ends checking that every Arrow
// buffer the runtime allocated was released.
func newEnv(t *testing.T, mut func(*wasm.Config)) *env {
	t.Helper()
	var rt *wasm.Runtime
	var mem *memory.CheckedAllocator
	if mut == nil {
		shared.once.Do(func() {
			shared.mem = memory.NewCheckedAllocator(memory.NewGoAllocator())
			shared.rt, shared.err = wasm.New(wasm.Config{CacheDir: sharedCache(), Allocator: shared.mem})
		})
		if shared.err != nil {
			t.Fatal(shared.err)
		}
		rt, mem = shared.rt, shared.mem
		t.Cleanup(func() { mem.AssertSize(t, 0) })
	} else {
		mem = memory.NewCheckedAllocator(memory.NewGoAllocator())
		cfg := wasm.Config{CacheDir: sharedCache(), Allocator: mem}
		mut(&cfg)
		var err error
		if rt, err = wasm.New(cfg); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := rt.Close(context.Background()); err != nil {
				t.Errorf("close runtime: %v", err)
			}
			mem.AssertSize(t, 0)
		})
	}
	in := writeInput(t)
	return &env{t: t, rt: rt, mem: mem, dir: filepath.Dir(in), in: in}
}

// load loads the test plugin.
func (e *env) load(ctx context.Context) guest.Instance {
	e.t.Helper()
	inst, err := e.rt.Load(ctx, guest.Plugin{Name: "testplugin", Kind: guest.KindWASM, Path: testPlugin(e.t)})
	if err != nil {
		e.t.Fatal(guest.JobError(0, err))
	}
	e.t.Cleanup(func() { inst.Close(context.Background()) })
	return inst
}

// run runs inst on the env's input with the given config.
func (e *env) run(ctx context.Context, inst guest.Instance, cfg map[string]any) (*testenv.Recorder, error) {
	e.t.Helper()
	rec := &testenv.Recorder{}
	e.t.Cleanup(rec.Release)
	err := inst.Run(ctx, guest.Input{JobID: 42, FileVersionID: 7, Path: e.in, Config: cfg}, rec)
	return rec, err
}

// loadBytes loads a module given as bytes.
func (e *env) loadBytes(bin []byte) (guest.Instance, error) {
	inst, err := e.rt.Load(context.Background(), guest.Plugin{Name: "handmade", Kind: guest.KindWASM, Source: bin})
	if err == nil {
		e.t.Cleanup(func() { inst.Close(context.Background()) })
	}
	return inst, err
}

func mustGuestError(t *testing.T, err error, kind error) *guest.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("expected a %v error, got success", kind)
	}
	var ge *guest.Error
	if !errors.As(err, &ge) {
		t.Fatalf("expected *guest.Error, got %T: %v", err, err)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("expected kind %v, got %v\n%s", kind, ge.Kind, ge.Detail())
	}
	t.Logf("%s", guest.JobError(42, err))
	if testing.Verbose() && ge.Stderr != "" {
		t.Logf("stderr tail:\n%s", ge.Stderr)
	}
	return ge
}

func goroutines() int { return runtime.NumGoroutine() }

// A tiny WebAssembly assembler for hand-made modules: bad modules the Go
// toolchain would never produce.

type wfunc struct {
	export          string
	params, results []byte // value types: 0x7f i32, 0x7e i64
	body            []byte // instructions, without the final end
}

type wimport struct {
	module, name    string
	params, results []byte
}

type wdata struct {
	offset uint32
	bytes  []byte
}

type wmodule struct {
	imports     []wimport
	funcs       []wfunc
	pages       uint32 // 0: no memory
	noMemExport bool
	data        []wdata
}

const (
	tI32 = 0x7f

	opUnreachable = 0x00
	opCall        = 0x10
	opDrop        = 0x1a
	opLocalGet    = 0x20
	opI32Const    = 0x41
	opEnd         = 0x0b
)

func uleb(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func i32c(v int64) []byte { return append([]byte{opI32Const}, sleb(v)...) }
func call(idx int) []byte { return append([]byte{opCall}, uleb(uint64(idx))...) }

func vec(items ...[]byte) []byte {
	b := uleb(uint64(len(items)))
	for _, it := range items {
		b = append(b, it...)
	}
	return b
}

func name(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func section(id byte, content []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(content)))...), content...)
}

func functype(params, results []byte) []byte {
	return append(append([]byte{0x60}, append(uleb(uint64(len(params))), params...)...), append(uleb(uint64(len(results))), results...)...)
}

func (m wmodule) bytes() []byte {
	var types, imports, funcs, exports, codes, datas [][]byte
	for _, im := range m.imports {
		imports = append(imports, append(append(name(im.module), name(im.name)...), 0x00, byte(len(types))))
		types = append(types, functype(im.params, im.results))
	}
	for i, f := range m.funcs {
		funcs = append(funcs, uleb(uint64(len(types))))
		types = append(types, functype(f.params, f.results))
		if f.export != "" {
			exports = append(exports, append(name(f.export), append([]byte{0x00}, uleb(uint64(len(m.imports)+i))...)...))
		}
		body := append([]byte{0x00}, f.body...) // no locals
		body = append(body, opEnd)
		codes = append(codes, append(uleb(uint64(len(body))), body...))
	}
	if m.pages > 0 && !m.noMemExport {
		exports = append(exports, append(name("memory"), 0x02, 0x00))
	}
	for _, d := range m.data {
		seg := append([]byte{0x00}, i32c(int64(d.offset))...)
		seg = append(seg, opEnd)
		seg = append(seg, name(string(d.bytes))...)
		datas = append(datas, seg)
	}
	var b bytes.Buffer
	b.Write([]byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00})
	b.Write(section(1, vec(types...)))
	if len(imports) > 0 {
		b.Write(section(2, vec(imports...)))
	}
	b.Write(section(3, vec(funcs...)))
	if m.pages > 0 {
		b.Write(section(5, vec(append([]byte{0x00}, uleb(uint64(m.pages))...))))
	}
	b.Write(section(7, vec(exports...)))
	b.Write(section(10, vec(codes...)))
	if len(datas) > 0 {
		b.Write(section(11, vec(datas...)))
	}
	return b.Bytes()
}

// Function indices of abiModule's imports.
const (
	fnEmit = iota
	fnLog
	fnSetInfo
	fnSetError
)

// Where abiModule puts its data.
const (
	offTopic = 0    // "rows"
	offOther = 16   // "other"
	offInfo  = 256  // the Info JSON
	offError = 1024 // an error JSON, if any
	offJunk  = 2048 // 64 bytes that are not Arrow
	offIPC   = 4096 // an Arrow IPC stream, if any
	offAlloc = 32768
)

// abiModule is a complete ABI v1 module in 1 page of memory whose
// casparian_abi_version returns version and whose casparian_process runs
// process (it must leave an i32 status on the stack).
func abiModule(version int64, process []byte, errJSON string) []byte {
	return handmade{version: version, process: process, errJSON: errJSON}.bytes()
}

// handmade describes an ABI v1 module written without any SDK.
type handmade struct {
	version int64
	process []byte
	errJSON string
	info    string // default: no topics
	ipc     []byte // an Arrow IPC stream at offIPC
	init    []byte // the body of an exported _initialize, if not nil
}

func (h handmade) bytes() []byte {
	info := h.info
	if info == "" {
		info = `{"name":"handmade","version":"0.0.1","sdk":"wat/1"}`
	}
	m := wmodule{
		imports: []wimport{
			{"casparian", "emit", []byte{tI32, tI32, tI32, tI32}, []byte{tI32}},
			{"casparian", "log", []byte{tI32, tI32, tI32}, nil},
			{"casparian", "set_info", []byte{tI32, tI32}, nil},
			{"casparian", "set_error", []byte{tI32, tI32}, nil},
		},
		funcs: []wfunc{
			{export: "casparian_abi_version", results: []byte{tI32}, body: i32c(h.version)},
			{export: "casparian_alloc", params: []byte{tI32}, results: []byte{tI32}, body: i32c(offAlloc)},
			{export: "casparian_free", params: []byte{tI32, tI32}},
			{export: "casparian_info", results: []byte{tI32},
				body: cat(i32c(offInfo), i32c(int64(len(info))), call(fnSetInfo), i32c(0))},
			{export: "casparian_process", params: []byte{tI32, tI32}, results: []byte{tI32}, body: h.process},
		},
		pages: 1,
		data: []wdata{
			{offTopic, []byte("rows")},
			{offOther, []byte("other")},
			{offInfo, []byte(info)},
			{offError, []byte(h.errJSON)},
			{offJunk, bytes.Repeat([]byte{0xAB}, 64)},
			{offIPC, h.ipc},
		},
	}
	if h.init != nil {
		m.funcs = append(m.funcs, wfunc{export: "_initialize", body: h.init})
	}
	return m.bytes()
}

// loopForever is an endless loop without calls.
var loopForever = []byte{0x03, 0x40, 0x0c, 0x00, opEnd} // loop, br 0, end

// emitCall is casparian.emit(topic, data) leaving its status on the stack.
func emitCall(topicOff, topicLen, dataOff, dataLen int64) []byte {
	return cat(i32c(topicOff), i32c(topicLen), i32c(dataOff), i32c(dataLen), call(fnEmit))
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}
