package python_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t   *testing.T
	rt  *python.Runtime
	mem *memory.CheckedAllocator
	dir string
	in  string
}

func newEnv(t *testing.T, mut func(*python.Config)) *env {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	dir := t.TempDir()
	cfg := python.Config{Python: testenv.Python(t), Allocator: mem, ConnectTimeout: 20 * time.Second, IdleTimeout: 20 * time.Second, KillGrace: time.Second}
	// The plugins of these tests leave pid files in the test's directory.
	cfg.Sandbox.Writable = []string{dir}
	if mut != nil {
		mut(&cfg)
	}
	rt, err := python.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "input data é.csv")
	if err := os.WriteFile(in, []byte("a,b\n1,x\n2,y\n3,z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rt: rt, mem: mem, dir: dir, in: in}
	t.Cleanup(func() {
		rt.Close(context.Background())
		mem.AssertSize(t, 0)
	})
	return e
}

// run loads plugin source and runs it on the env's input.
func (e *env) run(ctx context.Context, src string) (*testenv.Recorder, error) {
	e.t.Helper()
	path := filepath.Join(e.dir, "plugin.py")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		e.t.Fatal(err)
	}
	inst, err := e.rt.Load(ctx, guest.Plugin{Name: "test_plugin", Kind: guest.KindPython, Path: path})
	if err != nil {
		e.t.Fatal(err)
	}
	defer inst.Close(ctx)
	rec := &testenv.Recorder{}
	e.t.Cleanup(rec.Release)
	err = inst.Run(ctx, guest.Input{JobID: 42, FileVersionID: 7, Path: e.in, Config: map[string]any{"dir": e.dir}}, rec)
	return rec, err
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
	return ge
}

func TestTwoTopicsAndDefaultTopic(t *testing.T) {
	e := newEnv(t, nil)
	rec, err := e.run(context.Background(), `
import pandas as pd
import pyarrow as pa
from casparian_flow.sdk import BasePlugin, PluginMetadata

MANIFEST = PluginMetadata(pattern="*.csv", topic="rows")

class Handler(BasePlugin):
    def consume(self, event):
        df = pd.read_csv(event.path)
        self.publish("summary", pa.table({"file_id": [event.file_id], "n": [len(df)]}))
        self.log.info("read %d rows", len(df))
        return df
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if got := rec.Rows("rows"); got != 3 {
		t.Errorf("rows topic: %d rows, want 3", got)
	}
	if got := rec.Rows("summary"); got != 1 {
		t.Fatalf("summary topic: %d rows, want 1", got)
	}
	s := rec.Batches["summary"][0]
	if fid := s.Column(0).(*array.Int64).Value(0); fid != 7 {
		t.Errorf("event.file_id = %d, want 7", fid)
	}
	b := rec.Batches["rows"][0]
	if b.Schema().Field(1).Name != "b" || b.Column(1).ValueStr(2) != "z" {
		t.Errorf("unexpected rows batch: %v", b)
	}
	if !strings.Contains(rec.LogText("sdk"), "read 3 rows") {
		t.Errorf("SDK log not forwarded; logs:\n%s", rec.LogText(""))
	}
}

// The original's canonical plugin shape (csv_processor) and its E2E plugin
// run unchanged.
func TestOriginalPluginShapes(t *testing.T) {
	e := newEnv(t, nil)
	rec, err := e.run(context.Background(), `
from casparian_flow.sdk import BasePlugin, PluginMetadata
import pandas as pd
import pyarrow as pa

MANIFEST = PluginMetadata(pattern="*.csv", topic="processed_output", subscriptions=[])

class Handler(BasePlugin):
    def consume(self, event):
        df = pd.read_csv(event.path)
        df["processed"] = True
        df["row_count"] = len(df)
        self.publish("processed_output", pa.Table.from_pandas(df))
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("processed_output") != 3 {
		t.Fatalf("processed_output rows = %d", rec.Rows("processed_output"))
	}

	rec, err = e.run(context.Background(), `
import pyarrow as pa

class Handler:
    def execute(self, file_path):
        yield pa.RecordBatch.from_arrays([pa.array([1, 2], pa.int64()), pa.array([0.5, 1.5])], names=["id", "value"])
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("output") != 2 {
		t.Fatalf("legacy execute plugin: output rows = %d, want 2", rec.Rows("output"))
	}
	v := rec.Batches["output"][0].Column(1).(*array.Float64).Value(1)
	if v != 1.5 {
		t.Errorf("value = %v", v)
	}
}

func TestPluginRaises(t *testing.T) {
	e := newEnv(t, nil)
	_, err := e.run(context.Background(), `
class Handler:
    def execute(self, path):
        raise ValueError("bad row 17 in " + path)
`)
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if !strings.Contains(ge.Message, "ValueError") || !strings.Contains(ge.Message, "bad row 17") {
		t.Errorf("message %q", ge.Message)
	}
	if !strings.Contains(ge.Traceback, "line 4") || !strings.Contains(ge.Traceback, "execute") {
		t.Errorf("traceback does not point at the plugin line:\n%s", ge.Traceback)
	}
	if msg := guest.JobError(42, err); !strings.HasPrefix(msg, "[Job 42] PLUGIN_ERROR: ValueError: bad row 17") {
		t.Errorf("job error = %q", msg)
	}
}

func TestSyntaxError(t *testing.T) {
	e := newEnv(t, nil)
	_, err := e.run(context.Background(), "class Handler:\n    def execute(self, path)\n        return None\n")
	ge := mustGuestError(t, err, guest.ErrPlugin)
	if !strings.Contains(ge.Detail(), "SyntaxError") || !strings.Contains(ge.Detail(), "line 2") {
		t.Errorf("syntax error without its line:\n%s", ge.Detail())
	}
}

func TestCrashes(t *testing.T) {
	cases := []struct {
		name   string
		src    string
		exit   int
		signal string
	}{
		{"exit 3", "import os, sys\nprint('about to exit', file=sys.stderr, flush=True)\nos._exit(3)\n", 3, ""},
		{"segfault", "import sys, ctypes\nprint('about to crash', file=sys.stderr, flush=True)\nctypes.string_at(0)\n", -1, "segmentation fault"},
		{"killed", "import os, signal, sys\nprint('about to die', file=sys.stderr, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n", -1, "killed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, nil)
			_, err := e.run(context.Background(), "class Handler:\n    def execute(self, path):\n"+indent(c.src))
			ge := mustGuestError(t, err, guest.ErrCrashed)
			if ge.ExitCode != c.exit || ge.Signal != c.signal {
				t.Errorf("exit %d signal %q, want %d %q (%s)", ge.ExitCode, ge.Signal, c.exit, c.signal, ge.Message)
			}
			if !strings.Contains(ge.Stderr, "about to") {
				t.Errorf("last stderr lines missing from the error:\n%s", ge.Detail())
			}
		})
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("        " + l + "\n")
	}
	return b.String()
}

// fakeInterpreter writes an executable that stands in for python: it runs a
// fault-injecting guest (script) with the real interpreter, passing job.json.
func fakeInterpreter(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	py := filepath.Join(dir, "guest.py")
	if err := os.WriteFile(py, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	sh := filepath.Join(dir, "python")
	body := fmt.Sprintf("#!/bin/sh\n# argv: -I -c BOOTSTRAP SDK_DIR JOB_JSON\nexec %q %q \"$5\"\n", testenv.Python(t), py)
	if err := os.WriteFile(sh, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return sh
}

const fakeGuestPrelude = `
import json, socket, struct, sys, time, os
spec = json.load(open(sys.argv[1]))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(spec["socket"])
def frame(t, body):
    s.sendall(struct.pack(">BI", t, len(body)) + body)
def hello():
    frame(1, json.dumps({"magic": "casparian-bridge", "version": 1}).encode())
`

func TestProtocolViolations(t *testing.T) {
	cases := []struct {
		name   string
		script string
		kind   error
		want   string
	}{
		{"junk on the socket", `s.sendall(b"GARBAGE GARBAGE GARBAGE"); time.sleep(30)`, guest.ErrProtocol, "not speaking the bridge protocol"},
		{"frame over the cap", `hello(); s.sendall(struct.pack(">BI", 2, 0x7fffffff)); time.sleep(30)`, guest.ErrResourceLimit, "limit"},
		{"message over the cap", `hello(); s.sendall(struct.pack(">BI", 3, 5 << 20)); time.sleep(30)`, guest.ErrResourceLimit, "limit"},
		{"invalid arrow", `hello(); topic=b"t"; frame(2, struct.pack(">H", 1) + topic + b"\xff" * 200); time.sleep(30)`, guest.ErrProtocol, "invalid Arrow"},
		{"no end of stream", `hello(); s.close(); sys.exit(0)`, guest.ErrProtocol, "without an end-of-stream"},
		{"wrong version", `frame(1, json.dumps({"magic": "casparian-bridge", "version": 99}).encode()); time.sleep(30)`, guest.ErrProtocol, "protocol 99"},
		{"bad topic", `hello(); frame(2, struct.pack(">H", 4) + b"../x" + b"\x00"); time.sleep(30)`, guest.ErrProtocol, "invalid topic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake := fakeInterpreter(t, fakeGuestPrelude+c.script+"\n")
			e := newEnv(t, func(cfg *python.Config) { cfg.Python = fake })
			start := time.Now()
			_, err := e.run(context.Background(), "class Handler: pass\n")
			ge := mustGuestError(t, err, c.kind)
			if !strings.Contains(ge.Error(), c.want) {
				t.Errorf("error %q does not say %q", ge.Error(), c.want)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("took %s: the host waited instead of failing fast", d)
			}
		})
	}
}

func TestNeverConnects(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	sh := filepath.Join(dir, "python")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\necho $$ > "+pidFile+"\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(cfg *python.Config) {
		cfg.Python = sh
		cfg.ConnectTimeout = 500 * time.Millisecond
		cfg.Sandbox.Writable = append(cfg.Sandbox.Writable, dir)
	})
	_, err := e.run(context.Background(), "class Handler: pass\n")
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, "did not connect") {
		t.Errorf("message %q", ge.Message)
	}
	assertGone(t, readPid(t, pidFile))
}

func TestExitBeforeConnecting(t *testing.T) {
	dir := t.TempDir()
	sh := filepath.Join(dir, "python")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\necho 'ModuleNotFoundError: No module named pyarrow_x' >&2\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(cfg *python.Config) { cfg.Python = sh })
	start := time.Now()
	_, err := e.run(context.Background(), "class Handler: pass\n")
	ge := mustGuestError(t, err, guest.ErrCrashed)
	if ge.ExitCode != 4 || !strings.Contains(ge.Stderr, "pyarrow_x") {
		t.Errorf("exit %d stderr %q", ge.ExitCode, ge.Stderr)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("waited for the connect timeout although the process had exited")
	}
}

func TestIdleTimeoutMidStream(t *testing.T) {
	// Long enough for Python to start and import pyarrow on a loaded machine
	// (the idle clock runs from the connection), short next to the sleep.
	e := newEnv(t, func(cfg *python.Config) { cfg.IdleTimeout = 4 * time.Second })
	start := time.Now()
	rec, err := e.run(context.Background(), `
import time, pyarrow as pa
class Handler:
    def execute(self, path):
        yield pa.table({"x": [1]})
        time.sleep(120)
`)
	ge := mustGuestError(t, err, guest.ErrTimeout)
	if !strings.Contains(ge.Message, "no data from the plugin") {
		t.Errorf("message %q", ge.Message)
	}
	if rec.Rows("output") != 1 {
		t.Errorf("the batch before the hang was not streamed (rows %d)", rec.Rows("output"))
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestCancellation(t *testing.T) {
	for _, ignoreTerm := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignore SIGTERM=%v", ignoreTerm), func(t *testing.T) {
			e := newEnv(t, func(cfg *python.Config) { cfg.KillGrace = 500 * time.Millisecond })
			ctx, cancel := context.WithCancel(context.Background())
			pidFile := filepath.Join(e.dir, "child.pid")
			go func() {
				for i := 0; i < 200; i++ {
					if _, err := os.Stat(pidFile); err == nil {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				cancel()
			}()
			src := fmt.Sprintf(`
import os, signal, time
class Handler:
    def execute(self, path):
        if %v:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(%q, "w").write(str(os.getpid()))
        time.sleep(120)
`, map[bool]string{true: "True", false: "False"}[ignoreTerm], pidFile)
			start := time.Now()
			_, err := e.run(ctx, src)
			mustGuestError(t, err, guest.ErrCancelled)
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("cancel took %s", d)
			}
			assertGone(t, readPid(t, pidFile))
		})
	}
}

func TestDeadline(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := e.run(ctx, "import time\nclass Handler:\n    def execute(self, path):\n        time.sleep(120)\n")
	mustGuestError(t, err, guest.ErrTimeout)
}

// No process the plugin started survives, whatever the outcome.
func TestNoOrphans(t *testing.T) {
	for _, outcome := range []string{"success", "raise", "exit"} {
		t.Run(outcome, func(t *testing.T) {
			e := newEnv(t, nil)
			pidFile := filepath.Join(e.dir, "grandchild.pid")
			_, err := e.run(context.Background(), fmt.Sprintf(`
import os, subprocess, pyarrow as pa
class Handler:
    def execute(self, path):
        p = subprocess.Popen(["sleep", "300"])
        open(%q, "w").write(str(p.pid))
        if %q == "raise":
            raise RuntimeError("after forking")
        if %q == "exit":
            os._exit(9)
        return pa.table({"x": [1]})
`, pidFile, outcome, outcome))
			if outcome == "success" && err != nil {
				t.Fatal(err)
			}
			if outcome != "success" && err == nil {
				t.Fatal("expected failure")
			}
			assertGone(t, readPid(t, pidFile))
		})
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !testenv.ProcessGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d is still running after the job ended (orphan)", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStdoutFloodStillWorks(t *testing.T) {
	e := newEnv(t, nil)
	rec, err := e.run(context.Background(), `
import sys, pyarrow as pa
class Handler:
    def execute(self, path):
        line = "x" * 99
        for i in range(50000):
            print(i, line)
        for i in range(2000):
            print("err", i, line, file=sys.stderr)
        return pa.table({"x": list(range(10))})
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("output") != 10 {
		t.Fatalf("rows %d", rec.Rows("output"))
	}
	out := rec.LogText("stdout")
	if n := strings.Count(out, "\n"); n != 50000 {
		t.Errorf("forwarded %d stdout lines, want 50000", n)
	}
	if !strings.Contains(out, "49999 xxx") {
		t.Errorf("last stdout line missing")
	}
	if n := strings.Count(rec.LogText("stderr"), "\n"); n != 2000 {
		t.Errorf("forwarded %d stderr lines, want 2000", n)
	}
}

func TestEmitErrorStopsThePlugin(t *testing.T) {
	e := newEnv(t, nil)
	path := filepath.Join(e.dir, "plugin.py")
	os.WriteFile(path, []byte(`
import pyarrow as pa
class Handler:
    def execute(self, path):
        for i in range(1000):
            yield pa.table({"x": [i]})
`), 0o644)
	inst, err := e.rt.Load(context.Background(), guest.Plugin{Name: "p", Kind: guest.KindPython, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	rec := &testenv.Recorder{EmitHook: func(topic string, r arrow.RecordBatch) error {
		return guest.Errorf(guest.ErrSchema, "topic %q: schema changed", topic)
	}}
	defer rec.Release()
	err = inst.Run(context.Background(), guest.Input{JobID: 1, Path: e.in}, rec)
	mustGuestError(t, err, guest.ErrSchema)
}

// Plugin source travels by file: a source far above the original's ~96 KiB
// environment-variable limit runs.
func TestLargePluginSource(t *testing.T) {
	e := newEnv(t, nil)
	pad := strings.Repeat("# padding padding padding padding padding padding padding padding padding\n", 4000)
	rec, err := e.run(context.Background(), pad+"import pyarrow as pa\nclass Handler:\n    def execute(self, path):\n        return pa.table({'x': [1, 2]})\n")
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	if rec.Rows("output") != 2 {
		t.Fatalf("rows %d", rec.Rows("output"))
	}
}

// The guest sees only the allow-listed environment.
func TestEnvironmentIsReduced(t *testing.T) {
	t.Setenv("CASPARIAN_TEST_SECRET", "hunter2")
	e := newEnv(t, func(cfg *python.Config) { cfg.Env = []string{"EXTRA_FOR_GUEST=1"} })
	rec, err := e.run(context.Background(), `
import os, sys, pyarrow as pa
class Handler:
    def execute(self, path):
        return pa.table({"key": sorted(os.environ), "cwd": [os.getcwd()] * len(os.environ)})
`)
	if err != nil {
		t.Fatal(guest.JobError(42, err))
	}
	keys := map[string]bool{}
	for _, b := range rec.Batches["output"] {
		col := b.Column(0)
		for i := 0; i < col.Len(); i++ {
			keys[col.ValueStr(i)] = true
		}
	}
	if keys["CASPARIAN_TEST_SECRET"] {
		t.Error("the host's environment leaked into the guest")
	}
	if !keys["EXTRA_FOR_GUEST"] || !keys["TMPDIR"] {
		t.Errorf("expected EXTRA_FOR_GUEST and TMPDIR in %v", keys)
	}
}

func TestBridgeConstantsMatchSDK(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "sdk", "python", "BOOTSTRAP.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != python.Bootstrap {
		t.Fatalf("sdk/python/BOOTSTRAP.txt and python.Bootstrap differ:\n%s\n%s", b, python.Bootstrap)
	}
	_ = bridge.ProtocolVersion
}

// Cancellation reaches a plugin that streams without pause (no idle read to
// interrupt), and the batches in flight are released (checked allocator).
func TestCancelWhileStreaming(t *testing.T) {
	e := newEnv(t, func(cfg *python.Config) { cfg.KillGrace = 500 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(e.dir, "plugin.py")
	os.WriteFile(path, []byte(`
import pyarrow as pa
class Handler:
    def execute(self, path):
        t = pa.Table.from_arrays([pa.array(range(10000))], names=["x"])
        while True:
            yield t
`), 0o644)
	inst, err := e.rt.Load(ctx, guest.Plugin{Name: "p", Kind: guest.KindPython, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	rec := &testenv.Recorder{EmitHook: func(string, arrow.RecordBatch) error {
		if n++; n == 50 {
			cancel()
		}
		return nil
	}}
	defer rec.Release()
	start := time.Now()
	err = inst.Run(ctx, guest.Input{JobID: 1, Path: e.in}, rec)
	mustGuestError(t, err, guest.ErrCancelled)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("cancel took %s", d)
	}
}

func TestPreflight(t *testing.T) {
	e := newEnv(t, nil)
	v, err := e.rt.Preflight(context.Background())
	if err != nil || !strings.Contains(v, "pyarrow ") {
		t.Fatalf("preflight with the project venv: %q, %v", v, err)
	}
	dir := t.TempDir()
	sh := filepath.Join(dir, "python")
	os.WriteFile(sh, []byte("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'pyarrow'\" >&2\nexit 1\n"), 0o755)
	bad := newEnv(t, func(cfg *python.Config) { cfg.Python = sh })
	_, err = bad.rt.Preflight(context.Background())
	if err == nil || !strings.Contains(err.Error(), "No module named 'pyarrow'") || !strings.Contains(err.Error(), "make venv") {
		t.Fatalf("preflight error = %v", err)
	}
}
