package envs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/array"
	"go.uber.org/goleak"

	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const sixLock = "six==1.16.0\n"

// installers returns the Config.UV values to test: pip always, uv when it is
// on PATH.
func installers(t *testing.T) map[string]string {
	out := map[string]string{"pip": "-"}
	if uv, err := exec.LookPath("uv"); err == nil {
		out["uv"] = uv
	} else {
		t.Log("uv is not on PATH: only the pip installer is tested")
	}
	return out
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newManager opens a Manager on dir and counts its builds.
func newManager(t *testing.T, dir string, mut func(*Config)) (*Manager, *atomic.Int32) {
	t.Helper()
	cfg := Config{Dir: dir, BasePython: testenv.Python(t), UV: "-",
		Logger: slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mut != nil {
		mut(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	builds := new(atomic.Int32)
	m.onBuild = func(string) { builds.Add(1) }
	return m, builds
}

func ensure(t *testing.T, m *Manager, lock string) (string, func()) {
	t.Helper()
	start := time.Now()
	py, release, err := m.Ensure(context.Background(), Hash(lock), lock)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Ensure(%s) took %s", Hash(lock)[:12], time.Since(start).Round(time.Millisecond))
	return py, release
}

// noLeftovers fails if a build or deletion directory remains under dir.
func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasPrefix(e.Name(), trashPrefix) {
			t.Errorf("leftover %s under %s", e.Name(), dir)
		}
	}
}

func readMetaFile(t *testing.T, dir, h string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, h, MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s is not valid JSON: %v\n%s", MetaFile, err, b)
	}
	return v
}

func metaTime(t *testing.T, v map[string]any, key string) time.Time {
	t.Helper()
	s, ok := v[key].(string)
	if !ok {
		t.Fatalf("%s: %q is %T, want an RFC 3339 string", MetaFile, key, v[key])
	}
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("%s: %q = %q is not RFC 3339: %v", MetaFile, key, s, err)
	}
	return tm
}

func TestBuildReuseAndRun(t *testing.T) {
	t.Parallel()
	for name, uv := range installers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			m, builds := newManager(t, dir, func(c *Config) { c.UV = uv })
			h := Hash(sixLock)
			if m.Has(h) {
				t.Fatal("Has before any build")
			}

			py, release := ensure(t, m, sixLock)
			if want := filepath.Join(dir, h, "bin", "python"); py != want {
				t.Errorf("python = %s, want %s", py, want)
			}
			if !m.Has(h) || m.InUse(h) != 1 || builds.Load() != 1 {
				t.Fatalf("after build: Has=%v InUse=%d builds=%d", m.Has(h), m.InUse(h), builds.Load())
			}
			noLeftovers(t, dir)

			// The declared package comes from the env, pyarrow from the base;
			// -I as the Python guest runs it.
			out, err := exec.Command(py, "-I", "-c", "import six, pyarrow; print(six.__version__); print(six.__file__); print(pyarrow.__file__)").CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 3 || lines[0] != "1.16.0" {
				t.Fatalf("six/pyarrow probe printed %q", out)
			}
			if !strings.HasPrefix(lines[1], filepath.Join(dir, h)+"/") {
				t.Errorf("six imported from %s, want inside the env", lines[1])
			}
			if strings.HasPrefix(lines[2], dir) {
				t.Errorf("pyarrow imported from %s: it should come from the base interpreter", lines[2])
			}

			// Metadata.
			v := readMetaFile(t, dir, h)
			created, lastUsed := metaTime(t, v, "created"), metaTime(t, v, "last_used")
			if size, ok := v["size_bytes"].(float64); !ok || size <= 0 {
				t.Errorf("size_bytes = %v", v["size_bytes"])
			}
			if v["hash"] != h {
				t.Errorf("hash = %v", v["hash"])
			}
			if b, err := os.ReadFile(filepath.Join(dir, h, LockfileName)); err != nil || string(b) != sixLock {
				t.Errorf("lockfile copy: %q, %v", b, err)
			}
			// Built in a temporary directory: no trace of its path remains in
			// the files that name the env's own path.
			for _, f := range append(globFiles(t, filepath.Join(dir, h, "bin", "*")), filepath.Join(dir, h, "pyvenv.cfg")) {
				if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), tmpPrefix) {
					t.Errorf("%s still names the build directory", f)
				}
			}

			release()
			release() // idempotent
			if n := m.InUse(h); n != 0 {
				t.Fatalf("InUse after release = %d", n)
			}

			// Reuse: no rebuild, created unchanged, last_used moved.
			start := time.Now()
			py2, release2 := ensure(t, m, sixLock)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("second Ensure took %s: it should reuse the env", d)
			}
			release2()
			if py2 != py || builds.Load() != 1 {
				t.Fatalf("second Ensure: python %s, builds %d", py2, builds.Load())
			}
			v2 := readMetaFile(t, dir, h)
			if c2 := metaTime(t, v2, "created"); !c2.Equal(created) {
				t.Errorf("created changed: %s -> %s", created, c2)
			}
			if l2 := metaTime(t, v2, "last_used"); !l2.After(lastUsed) {
				t.Errorf("last_used did not move: %s -> %s", lastUsed, l2)
			}
			envs, err := m.List()
			if err != nil || len(envs) != 1 || envs[0].Hash != h || envs[0].Python != py || !envs[0].Created.Equal(created) || envs[0].SizeBytes <= 0 {
				t.Fatalf("List = %+v, %v", envs, err)
			}

			// A new Manager on the same directory reuses it too.
			m.Close()
			m2, builds2 := newManager(t, dir, func(c *Config) { c.UV = uv })
			py3, release3 := ensure(t, m2, sixLock)
			defer release3()
			if py3 != py || builds2.Load() != 0 {
				t.Fatalf("after reopening: python %s, builds %d", py3, builds2.Load())
			}

			// The Python guest runs a plugin with the env's interpreter.
			runPlugin(t, py3)
		})
	}
}

func globFiles(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func runPlugin(t *testing.T, py string) {
	t.Helper()
	ctx := context.Background()
	rt, err := python.New(python.Config{Python: py, KillGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	if desc, err := rt.Preflight(ctx); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("preflight: %s", desc)
	}
	work := t.TempDir()
	in := filepath.Join(work, "in.csv")
	if err := os.WriteFile(in, []byte("a\n1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	inst, err := rt.Load(ctx, guest.Plugin{Name: "uses_six", Kind: guest.KindPython, Source: []byte(`
import pyarrow as pa
import six
from casparian_flow.sdk import BasePlugin, PluginMetadata

MANIFEST = PluginMetadata(pattern="*.csv", topic="out")

class Handler(BasePlugin):
    def consume(self, event):
        return pa.table({"six": [six.__version__]})
`)})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close(ctx)
	rec := &testenv.Recorder{}
	defer rec.Release()
	if err := inst.Run(ctx, guest.Input{JobID: 1, Path: in}, rec); err != nil {
		t.Fatal(guest.JobError(1, err))
	}
	b := rec.Batches["out"]
	if len(b) != 1 || b[0].NumRows() != 1 {
		t.Fatalf("plugin emitted %v", rec.Order)
	}
	if got := b[0].Column(0).(*array.String).Value(0); got != "1.16.0" {
		t.Errorf("plugin saw six %s, want 1.16.0", got)
	}
}

func TestInstallError(t *testing.T) {
	t.Parallel()
	for name, uv := range installers(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			m, _ := newManager(t, dir, func(c *Config) { c.UV = uv })
			lock := "casparian-no-such-package-xyz==1.0\n"
			h := Hash(lock)
			start := time.Now()
			_, _, err := m.Ensure(context.Background(), h, lock)
			t.Logf("failed install took %s", time.Since(start).Round(time.Millisecond))
			var ie *InstallError
			if !errors.As(err, &ie) {
				t.Fatalf("want *InstallError, got %T: %v", err, err)
			}
			t.Logf("error:\n%v", err)
			if !strings.Contains(ie.Output, "casparian-no-such-package-xyz") ||
				!(strings.Contains(ie.Output, "No matching distribution") || strings.Contains(ie.Output, "not found in the package registry") || strings.Contains(ie.Output, "was not found")) {
				t.Errorf("Output lacks the installer's explanation:\n%s", ie.Output)
			}
			if !strings.Contains(ie.Command, "install") || !strings.Contains(ie.Command, LockfileName) {
				t.Errorf("Command = %q", ie.Command)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Errorf("Err = %T, want *exec.ExitError", ie.Err)
			}
			if msg := err.Error(); !strings.Contains(msg, "requirement names and versions") || !strings.Contains(msg, "reachable") ||
				!strings.Contains(msg, "casparian-no-such-package-xyz") {
				t.Errorf("Error() does not say what to do:\n%s", msg)
			}
			if _, err := os.Lstat(filepath.Join(dir, h)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Dir/<hash> exists after a failed build: %v", err)
			}
			noLeftovers(t, dir)
			if m.Has(h) || m.InUse(h) != 0 {
				t.Error("failed env is reported present or in use")
			}
		})
	}
}

func TestHashRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, builds := newManager(t, dir, nil)
	for _, h := range []string{Hash("other\n"), strings.ToUpper(Hash(sixLock)), "../../etc", ""} {
		if _, _, err := m.Ensure(context.Background(), h, sixLock); err == nil {
			t.Errorf("Ensure with env hash %q succeeded", h)
		} else {
			t.Logf("%q: %v", h, err)
		}
	}
	if builds.Load() != 0 || m.Has("../../etc") {
		t.Fatal("something was built")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 { // .lock
		t.Errorf("Dir holds %d entries", len(entries))
	}
	if got := Hash(sixLock); got != "0da178fba21a6debdac12539bf4943dc2cac92493381edfeeb9f5bbea8a14b7e" { // printf 'six==1.16.0\n' | sha256sum
		t.Errorf("Hash = %s", got)
	}
}

// TestConcurrentEnsureBuildsOnce: 4 callers of a new env share one build; a
// waiter whose ctx ends stops waiting without disturbing the build.
func TestConcurrentEnsureBuildsOnce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, builds := newManager(t, dir, nil)
	started, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	m.onBuild = func(string) {
		builds.Add(1)
		once.Do(func() { close(started) })
		<-proceed
	}
	lock := "six==1.16.0\n# concurrent\n"
	h := Hash(lock)

	type result struct {
		py      string
		release func()
		err     error
	}
	results := make(chan result, 4)
	for range 4 {
		go func() {
			py, rel, err := m.Ensure(context.Background(), h, lock)
			results <- result{py, rel, err}
		}()
	}
	<-started
	// A waiter that gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := m.Ensure(ctx, h, lock); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("impatient waiter: %v, want DeadlineExceeded", err)
	}
	time.Sleep(50 * time.Millisecond) // let the other callers queue up
	close(proceed)
	var pys []string
	for range 4 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		pys = append(pys, r.py)
		defer r.release()
	}
	if n := builds.Load(); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}
	for _, p := range pys {
		if p != pys[0] {
			t.Errorf("different interpreters: %v", pys)
		}
	}
	if n := m.InUse(h); n != 4 {
		t.Errorf("InUse = %d, want 4", n)
	}
}

// TestBuilderCanceled: when the builder's ctx ends its build, nothing is left
// behind and a waiter builds instead.
func TestBuilderCanceled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, builds := newManager(t, dir, nil)
	lock := "six==1.16.0\n# canceled\n"
	h := Hash(lock)
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan struct{})
	var once sync.Once
	m.onBuild = func(string) {
		builds.Add(1)
		once.Do(func() { close(first) })
	}
	builderErr := make(chan error, 1)
	go func() {
		_, _, err := m.Ensure(ctx, h, lock)
		builderErr <- err
	}()
	<-first
	waiter := make(chan error, 1)
	go func() {
		_, rel, err := m.Ensure(context.Background(), h, lock)
		if err == nil {
			rel()
		}
		waiter <- err
	}()
	time.Sleep(200 * time.Millisecond) // the build is under way, the waiter waits
	cancel()
	if err := <-builderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled builder: %v, want context.Canceled", err)
	}
	if err := <-waiter; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if n := builds.Load(); n != 2 || !m.Has(h) {
		t.Fatalf("builds = %d (want 2), Has = %v", n, m.Has(h))
	}
	noLeftovers(t, dir)
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, _ := newManager(t, dir, func(c *Config) { c.Timeout = 300 * time.Millisecond })
	lock := "six==1.16.0\n# timeout\n"
	_, _, err := m.Ensure(context.Background(), Hash(lock), lock)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "Timeout") {
		t.Fatalf("want a timeout error, got %v", err)
	}
	t.Logf("error: %v", err)
	if _, err := os.Lstat(filepath.Join(dir, Hash(lock))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir/<hash> exists after a timed-out build")
	}
	noLeftovers(t, dir)
}

func TestEviction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lock := func(name string) string { return "six==1.16.0\n# env " + name + "\n" } // same size for all
	a, b, c, d := lock("A"), lock("B"), lock("C"), lock("D")

	m, _ := newManager(t, dir, nil)
	_, rel := ensure(t, m, a)
	rel()
	envs, err := m.List()
	if err != nil || len(envs) != 1 {
		t.Fatal(envs, err)
	}
	size := envs[0].SizeBytes
	t.Logf("one env: %d bytes", size)
	m.Close()

	// Room for two and a half envs.
	m, _ = newManager(t, dir, func(c *Config) { c.MaxBytes = size*5/2 + 1 })
	if !m.Has(Hash(a)) {
		t.Fatal("New evicted an env within budget")
	}
	_, rel = ensure(t, m, b)
	rel()
	time.Sleep(10 * time.Millisecond)
	_, rel = ensure(t, m, a) // A is now more recently used than B
	rel()

	_, relC := ensure(t, m, c) // three envs: the LRU one not in use goes
	defer relC()
	if !m.Has(Hash(a)) || m.Has(Hash(b)) || !m.Has(Hash(c)) {
		t.Fatalf("after C: A=%v B=%v C=%v, want B (least recently used) evicted", m.Has(Hash(a)), m.Has(Hash(b)), m.Has(Hash(c)))
	}
	noLeftovers(t, dir)

	_, relA := ensure(t, m, a) // hold A; C is still held
	defer relA()
	_, relD := ensure(t, m, d)
	defer relD()
	if !m.Has(Hash(a)) || !m.Has(Hash(c)) || !m.Has(Hash(d)) {
		t.Fatalf("after D: A=%v C=%v D=%v, want all kept (all in use)", m.Has(Hash(a)), m.Has(Hash(c)), m.Has(Hash(d)))
	}
	envs, err = m.List()
	if err != nil || len(envs) != 3 || envs[0].Hash != Hash(d) || envs[1].Hash != Hash(a) || envs[2].Hash != Hash(c) {
		t.Fatalf("List (most recent first) = %+v, %v", envs, err)
	}

	// Once released, the next eviction (here: a new Manager) trims to budget,
	// least recently used first.
	relA()
	relC()
	relD()
	m.Close()
	m, _ = newManager(t, dir, func(c *Config) { c.MaxBytes = size*3/2 + 1 })
	if m.Has(Hash(c)) || m.Has(Hash(a)) || !m.Has(Hash(d)) {
		t.Fatalf("after trim: A=%v C=%v D=%v, want only D (released last)", m.Has(Hash(a)), m.Has(Hash(c)), m.Has(Hash(d)))
	}
	noLeftovers(t, dir)
}

func TestNewRemovesLeftoversAndLocksDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// What a crash mid-build and mid-deletion leave behind.
	for _, p := range []string{
		filepath.Join(dir, ".tmp-0123456789ab-42", "env", "bin", "python"),
		filepath.Join(dir, ".tmp-0123456789ab-42", "env", "lib", "python3.11", "site-packages", "six.py"),
		filepath.Join(dir, ".trash-7", Hash("x"), "pyvenv.cfg"),
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A directory named like an env but incomplete (no metadata) is not an env.
	if err := os.MkdirAll(filepath.Join(dir, Hash(sixLock), "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := newManager(t, dir, nil)
	noLeftovers(t, dir)
	if m.Has(Hash(sixLock)) {
		t.Error("an env without metadata is reported present")
	}
	if envs, err := m.List(); err != nil || len(envs) != 0 {
		t.Errorf("List = %v, %v", envs, err)
	}

	// A second Manager on the same directory is refused while the first lives.
	if m2, err := New(Config{Dir: dir, BasePython: testenv.Python(t), UV: "-"}); err == nil {
		m2.Close()
		t.Fatal("a second Manager opened the same directory")
	} else {
		t.Log(err)
	}
	m.Close()
	m3, err := New(Config{Dir: dir, BasePython: testenv.Python(t), UV: "-"})
	if err != nil {
		t.Fatal(err)
	}
	m3.Close()
	if _, _, err := m3.Ensure(context.Background(), Hash(sixLock), sixLock); err == nil {
		t.Error("Ensure after Close succeeded")
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []Config{
		{BasePython: "python3"},
		{Dir: t.TempDir()},
		{Dir: t.TempDir(), BasePython: "/nonexistent/python"},
		{Dir: t.TempDir(), BasePython: testenv.Python(t), UV: "/nonexistent/uv"},
	} {
		if m, err := New(c); err == nil {
			m.Close()
			t.Errorf("New(%+v) succeeded", c)
		} else {
			t.Log(err)
		}
	}
}

func TestHelpers(t *testing.T) {
	if got := shellJoin([]string{"/a/python", "-m", "pip", "it's", "a b", ""}); got != `/a/python -m pip 'it'\''s' 'a b' ''` {
		t.Errorf("shellJoin = %s", got)
	}
	tb := &tailBuffer{max: 10}
	for i := range 100 {
		fmt.Fprintf(tb, "line %d\n", i)
	}
	if got := tb.String(); got != "line 99\n" {
		t.Errorf("tail = %q", got)
	}
	if got := lastLines("a\n\nb\nc\n\n", 2, 100); got != "b\nc" {
		t.Errorf("lastLines = %q", got)
	}
	env := childEnv([]string{"PATH=/bin", "PYTHONPATH=/x", "PIP_USER=1", "PIP_INDEX_URL=http://i"})
	if strings.Join(env, " ") != "PATH=/bin PIP_INDEX_URL=http://i PYTHONNOUSERSITE=1" {
		t.Errorf("childEnv = %v", env)
	}
}

// TestSystemBaseWithSeededPip covers the other shape of base interpreter: a
// system one (not a venv), whose packages the env sees through
// --system-site-packages, with pip seeded into the env by ensurepip (the
// path taken when the base cannot import pip): the plain
// `python -m venv --system-site-packages` recipe.
func TestSystemBaseWithSeededPip(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(testenv.Python(t), "-I", "-c", "import sys; print(sys._base_executable)").Output()
	if err != nil {
		t.Fatal(err)
	}
	sysPython := strings.TrimSpace(string(out))
	dir := t.TempDir()
	m, builds := newManager(t, dir, func(c *Config) { c.BasePython = sysPython })
	if m.base.IsVenv || !m.base.SystemSite || len(m.base.VenvSites) != 0 {
		t.Fatalf("%s probed as %+v, want a system interpreter", sysPython, m.base)
	}
	if !m.base.Ensurepip {
		t.Fatalf("%s has no ensurepip", sysPython)
	}
	m.base.Pip = false // force seeding pip with ensurepip
	py, release := ensure(t, m, sixLock)
	defer release()
	out, err = exec.Command(py, "-I", "-c", "import six, pip, sys; print(six.__version__); print(pip.__file__); print(sys.flags.no_user_site)").CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || lines[0] != "1.16.0" || !strings.HasPrefix(lines[1], filepath.Join(dir, Hash(sixLock))+"/") {
		t.Fatalf("probe printed %q: want six 1.16.0 and pip from the env", out)
	}
	// The base's site-packages are on the env's sys.path.
	out, err = exec.Command(sysPython, "-I", "-c", "import site, os; print(site.getsitepackages()[0])").Output()
	if err != nil {
		t.Fatal(err)
	}
	sysSite := strings.TrimSpace(string(out))
	out, err = exec.Command(py, "-I", "-c", "import sys; print('\\n'.join(sys.path))").Output()
	if err != nil || !strings.Contains(string(out), sysSite) {
		t.Fatalf("the env's sys.path lacks the base's site-packages %s:\n%s", sysSite, out)
	}
	if builds.Load() != 1 {
		t.Fatalf("builds = %d", builds.Load())
	}
	// The seeded console script was written with the build directory in its
	// shebang and rewritten before the rename: it runs.
	if out, err := exec.Command(filepath.Join(dir, Hash(sixLock), "bin", "pip"), "--version").CombinedOutput(); err != nil {
		t.Errorf("bin/pip does not run: %v\n%s", err, out)
	}
}
