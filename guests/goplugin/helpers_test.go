package goplugin_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

// binDir holds the plugin built once per test binary.
var (
	binDir    string
	buildOnce sync.Once
	buildErr  error
	pluginBin string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperHostEnv) != "" {
		helperHost()
		return
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "cf-gp-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		code := m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
				return 1
			}
		}
		return code
	}()
	os.Exit(code)
}

// testPlugin builds testdata/testplugin once and returns its path.
func testPlugin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		pluginBin = filepath.Join(binDir, "testplugin")
		cmd := exec.Command("go", "build", "-o", pluginBin, "./testdata/testplugin")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build testplugin: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return pluginBin
}

type env struct {
	t   *testing.T
	rt  *goplugin.Runtime
	mem *memory.CheckedAllocator
	in  string // an input file
	dir string
}

// newEnv returns a runtime with short timeouts and a checked allocator; the
// runtime is closed, and the allocator checked, at the end of the test.
func newEnv(t *testing.T, mut func(*goplugin.Config)) *env {
	t.Helper()
	testPlugin(t)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	cfg := goplugin.Config{Allocator: mem, StartTimeout: 20 * time.Second, KillGrace: time.Second, LogLevel: slog.LevelDebug}
	if mut != nil {
		mut(&cfg)
	}
	rt, err := goplugin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "input é.csv")
	if err := os.WriteFile(in, []byte("a,b\n1,2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rt: rt, mem: mem, in: in, dir: dir}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		mem.AssertSize(t, 0)
	})
	return e
}

func (e *env) load(p guest.Plugin) guest.Instance {
	e.t.Helper()
	if p.Path == "" && p.Source == nil {
		p.Path = testPlugin(e.t)
	}
	if p.Name == "" {
		p.Name = "testplugin"
	}
	p.Kind = guest.KindGoPlugin
	inst, err := e.rt.Load(context.Background(), p)
	if err != nil {
		e.t.Fatal(err)
	}
	return inst
}

// run runs one job with the given config on inst.
func (e *env) run(ctx context.Context, inst guest.Instance, cfg map[string]any) (*testenv.Recorder, error) {
	rec := &testenv.Recorder{}
	e.t.Cleanup(rec.Release)
	err := inst.Run(ctx, guest.Input{JobID: 42, FileVersionID: 7, Path: e.in, Config: cfg}, rec)
	return rec, err
}

// mustRun runs a job that must succeed and returns its recorder and the pid
// of the process that ran it.
func (e *env) mustRun(inst guest.Instance, cfg map[string]any) (*testenv.Recorder, int) {
	e.t.Helper()
	rec, err := e.run(context.Background(), inst, cfg)
	if err != nil {
		e.t.Fatal(guest.JobError(42, err))
	}
	return rec, pidOf(e.t, rec)
}

// pidOf finds the pid the plugin logged in its "job started" record.
func pidOf(t testing.TB, rec *testenv.Recorder) int {
	t.Helper()
	return intAttr(t, rec, "job started", "pid")
}

func intAttr(t testing.TB, rec *testenv.Recorder, msg, key string) int {
	t.Helper()
	if v, ok := attr(rec, msg, key); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %s=%q", msg, key, v)
		}
		return n
	}
	t.Fatalf("no %q record with %s; logs:\n%s", msg, key, rec.LogText(""))
	return 0
}

func attr(rec *testenv.Recorder, msg, key string) (string, bool) {
	for _, l := range logs(rec) {
		if l.Message != msg {
			continue
		}
		for _, a := range l.Attrs {
			if a.Key == key {
				return a.Value.String(), true
			}
		}
	}
	return "", false
}

func logs(rec *testenv.Recorder) []guest.LogRecord {
	// The recorder's mutex is unexported; LogText takes it, so read after the run.
	return append([]guest.LogRecord(nil), rec.Logs...)
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
	t.Logf("as the user sees it:\n%s", guest.JobError(42, err))
	return ge
}

// waitGone waits until every pid is gone.
func waitGone(t *testing.T, d time.Duration, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, pid := range pids {
		for !testenv.ProcessGone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("process %d still runs %s later (orphan)", pid, d)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// assertGone checks that pids are gone now.
func assertGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if !testenv.ProcessGone(pid) {
			t.Fatalf("process %d still runs after Run returned", pid)
		}
	}
}
