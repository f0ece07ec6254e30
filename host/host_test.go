package host_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/sink"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	t   *testing.T
	h   *host.Host
	out string
	dir string
	mem *memory.CheckedAllocator
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	rt, err := python.New(python.Config{Python: testenv.Python(t), Allocator: mem, IdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	h, err := host.New(host.Config{Runtimes: map[guest.Kind]guest.Runtime{guest.KindPython: rt}, OutputDir: out,
		Sink: sink.Options{Allocator: mem}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rt.Close(context.Background())
		mem.AssertSize(t, 0)
	})
	return &fixture{t: t, h: h, out: out, dir: t.TempDir(), mem: mem}
}

func (f *fixture) plugin(src string) guest.Plugin {
	p := filepath.Join(f.dir, "plugin.py")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return guest.Plugin{Name: "plug", Version: "1.2.3", Kind: guest.KindPython, Path: p}
}

func (f *fixture) input(name, content string) string {
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// files lists every file under the output dir, temp files included.
func (f *fixture) files() []string {
	var out []string
	filepath.WalkDir(f.out, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(f.out, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

const twoTopics = `
import pyarrow as pa
from casparian_flow.sdk import BasePlugin, PluginMetadata
MANIFEST = PluginMetadata(topic="lines")
class Handler(BasePlugin):
    def consume(self, event):
        lines = open(event.path).read().splitlines()
        self.publish("stats", pa.table({"n_lines": [len(lines)]}))
        yield pa.table({"line": lines, "len": [len(l) for l in lines]})
`

func TestRunCommitsEachTopic(t *testing.T) {
	f := newFixture(t)
	in := f.input("a.txt", "alpha\nbeta\ngamma\n")
	rc := f.h.Run(context.Background(), host.Job{ID: 5, FileVersionID: 50, InputPath: in, Plugin: f.plugin(twoTopics)})
	if rc.Err != nil {
		t.Fatal(rc.Err)
	}
	if rc.Status != host.StatusSuccess || rc.Rows["lines"] != 3 || rc.Rows["stats"] != 1 || len(rc.Artifacts) != 2 {
		t.Fatalf("receipt %+v", rc)
	}
	want := []string{"lines/data_5.parquet", "stats/data_5.parquet"}
	if got := f.files(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("files %v, want %v", got, want)
	}
	// Read back: values, lineage columns, provenance.
	rdr, err := file.OpenParquetFile(filepath.Join(f.out, "lines", "data_5.parquet"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer rdr.Close()
	kv := rdr.MetaData().KeyValueMetadata()
	if h := kv.FindValue("casparian.plugin_hash"); h == nil || len(*h) != 64 {
		t.Errorf("provenance casparian.plugin_hash = %v, want the plugin's SHA-256", h)
	}
	for k, v := range map[string]string{"casparian.plugin": "plug", "casparian.plugin_version": "1.2.3", "casparian.job_id": "5", "casparian.input_path": in} {
		if got := kv.FindValue(k); got == nil || *got != v {
			t.Errorf("provenance %s = %v, want %q", k, got, v)
		}
	}
	fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{}, f.mem)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Release()
	names := []string{}
	for _, fl := range tbl.Schema().Fields() {
		names = append(names, fl.Name)
	}
	if strings.Join(names, ",") != "line,len,_job_id,_file_version_id" {
		t.Errorf("columns %v", names)
	}
	if tbl.NumRows() != 3 {
		t.Errorf("rows %d", tbl.NumRows())
	}
	if v := tbl.Column(2).Data().Chunk(0).ValueStr(2); v != "5" {
		t.Errorf("_job_id = %s", v)
	}
	if v := tbl.Column(3).Data().Chunk(0).ValueStr(0); v != "50" {
		t.Errorf("_file_version_id = %s", v)
	}
	if v := tbl.Column(0).Data().Chunk(0).ValueStr(1); v != "beta" {
		t.Errorf("line[1] = %s", v)
	}
}

func TestMissingInputFile(t *testing.T) {
	f := newFixture(t)
	rc := f.h.Run(context.Background(), host.Job{ID: 9, InputPath: filepath.Join(f.dir, "nope.csv"), Plugin: f.plugin(twoTopics)})
	if !errors.Is(rc.Err, guest.ErrInput) {
		t.Fatalf("got %v", rc.Err)
	}
	if msg := rc.Err.Error(); !strings.HasPrefix(msg, "[Job 9] INPUT: input file ") || !strings.Contains(msg, "nope.csv") {
		t.Errorf("message %q", msg)
	}
	if len(f.files()) != 0 {
		t.Errorf("output written: %v", f.files())
	}
}

func TestSchemaChangeWithinTopicFailsAndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	in := f.input("a.txt", "x\n")
	rc := f.h.Run(context.Background(), host.Job{ID: 3, InputPath: in, Plugin: f.plugin(`
import pyarrow as pa
class Handler:
    def execute(self, path):
        yield pa.table({"a": [1]})
        yield pa.table({"a": ["now a string"]})
`)})
	if !errors.Is(rc.Err, guest.ErrSchema) {
		t.Fatalf("got %v", rc.Err)
	}
	msg := rc.Err.Error()
	if !strings.HasPrefix(msg, "[Job 3] SCHEMA") || !strings.Contains(msg, `"output"`) {
		t.Errorf("message does not name the job and topic: %q", msg)
	}
	if len(f.files()) != 0 {
		t.Errorf("a failed job left files: %v", f.files())
	}
}

func TestFailedPluginLeavesNoOutput(t *testing.T) {
	f := newFixture(t)
	in := f.input("a.txt", "x\n")
	rc := f.h.Run(context.Background(), host.Job{ID: 4, InputPath: in, Plugin: f.plugin(`
import pyarrow as pa
class Handler:
    def execute(self, path):
        yield pa.table({"a": list(range(100000))})
        raise RuntimeError("late failure")
`)})
	if !errors.Is(rc.Err, guest.ErrPlugin) || !strings.Contains(rc.Err.Error(), "late failure") {
		t.Fatalf("got %v", rc.Err)
	}
	if rc.Status != host.StatusFailed {
		t.Errorf("status %s", rc.Status)
	}
	if len(f.files()) != 0 {
		t.Errorf("a failed job left files: %v", f.files())
	}
}

func TestCancelledJobIsAborted(t *testing.T) {
	f := newFixture(t)
	in := f.input("a.txt", "x\n")
	cctx, ccancel := context.WithCancel(context.Background())
	time.AfterFunc(1500*time.Millisecond, ccancel)
	rc := f.h.Run(cctx, host.Job{ID: 6, InputPath: in, Plugin: f.plugin(`
import time, pyarrow as pa
class Handler:
    def execute(self, path):
        yield pa.table({"a": [1]})
        time.sleep(60)
`)})
	if rc.Status != host.StatusAborted || !errors.Is(rc.Err, guest.ErrCancelled) {
		t.Fatalf("status %s err %v", rc.Status, rc.Err)
	}
	if len(f.files()) != 0 {
		t.Errorf("a cancelled job left files: %v", f.files())
	}
}

func TestEmptyOutputSucceeds(t *testing.T) {
	f := newFixture(t)
	in := f.input("a.txt", "x\n")
	rc := f.h.Run(context.Background(), host.Job{ID: 8, InputPath: in, Plugin: f.plugin("class Handler:\n    def execute(self, path):\n        return None\n")})
	if rc.Err != nil || rc.Status != host.StatusSuccess || len(rc.Artifacts) != 0 {
		t.Fatalf("receipt %+v", rc)
	}
}

func TestSQLiteSink(t *testing.T) {
	f := newFixture(t)
	db := filepath.Join(f.out, "lines.db")
	for id := int64(1); id <= 2; id++ {
		in := f.input("a.txt", "alpha\nbeta\n")
		rc := f.h.Run(context.Background(), host.Job{ID: id, InputPath: in, Plugin: f.plugin(twoTopics),
			Sinks: []host.SinkConfig{{Topic: "lines", URI: "sqlite:///" + db + "/lines"}}})
		if rc.Err != nil {
			t.Fatal(rc.Err)
		}
		if len(rc.Artifacts) != 2 || rc.Rows["lines"] != 2 {
			t.Fatalf("receipt %+v", rc)
		}
	}
	n := testenv.SQLiteCount(t, db, "lines")
	if n != 4 {
		t.Fatalf("sqlite rows = %d, want 4 (two jobs appended)", n)
	}
}

// captureHandler records slog records with their attributes flattened.
type captureHandler struct {
	mu    *sync.Mutex
	attrs []slog.Attr
	recs  *[]map[string]string
}

func (h captureHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h captureHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return captureHandler{mu: h.mu, attrs: append(append([]slog.Attr{}, h.attrs...), as...), recs: h.recs}
}
func (h captureHandler) WithGroup(string) slog.Handler { return h }
func (h captureHandler) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	*h.recs = append(*h.recs, m)
	h.mu.Unlock()
	return nil
}

// Plugin output (print, stderr, logging) reaches the host's logger as
// structured records carrying the job id, plugin and guest kind.
func TestPluginLogsAreStructured(t *testing.T) {
	var recs []map[string]string
	mu := &sync.Mutex{}
	logger := slog.New(captureHandler{mu: mu, recs: &recs})
	rt, err := python.New(python.Config{Python: testenv.Python(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(context.Background())
	h, err := host.New(host.Config{Runtimes: map[guest.Kind]guest.Runtime{guest.KindPython: rt}, OutputDir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plugin := filepath.Join(dir, "chatty.py")
	os.WriteFile(plugin, []byte(`
import logging, sys
class Handler:
    def execute(self, path):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("chatty").warning("via logging")
`), 0o644)
	in := filepath.Join(dir, "in.txt")
	os.WriteFile(in, []byte("x"), 0o644)
	rc := h.Run(context.Background(), host.Job{ID: 77, InputPath: in, Plugin: guest.Plugin{Name: "chatty", Kind: guest.KindPython, Path: plugin}})
	if rc.Err != nil {
		t.Fatal(rc.Err)
	}
	want := map[string]string{"to stdout": "stdout", "to stderr": "stderr", "via logging": "sdk"}
	mu.Lock()
	defer mu.Unlock()
	for msg, stream := range want {
		found := false
		for _, r := range recs {
			if r["msg"] == msg {
				found = true
				if r["job_id"] != "77" || r["plugin"] != "chatty" || r["guest"] != "python" || r["stream"] != stream {
					t.Errorf("record %v lacks job_id=77 plugin=chatty guest=python stream=%s", r, stream)
				}
			}
		}
		if !found {
			t.Errorf("no log record %q among %v", msg, recs)
		}
	}
}
