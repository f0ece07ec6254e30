package scan

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

func newStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "q.db"), store.Options{Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func jobsFor(t *testing.T, st *store.Store) map[string][]string {
	t.Helper()
	jobs, err := st.List(context.Background(), store.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, j := range jobs {
		path, err := st.FilePath(context.Background(), j.FileVersionID)
		if err != nil {
			t.Fatal(err)
		}
		out[j.PluginName] = append(out[j.PluginName], filepath.Base(path))
	}
	for _, v := range out {
		slices.Sort(v)
	}
	return out
}

func TestScanRoutesNewAndChangedFiles(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	root := t.TempDir()
	write(t, filepath.Join(root, "sales", "jan 2026.csv"), "a,b\n1,2\n")
	write(t, filepath.Join(root, "sales", "fév.csv"), "a,b\n3,4\n")
	write(t, filepath.Join(root, "logs", "app.log"), "line\n")
	write(t, filepath.Join(root, "notes.txt"), "not routed\n")
	write(t, filepath.Join(root, ".hidden.csv"), "ignored by default\n")
	write(t, filepath.Join(root, "__pycache__", "x.csv"), "ignored by default\n")
	write(t, filepath.Join(root, "tmp", "scratch.csv"), "ignored by a rule\n")
	r, err := st.AddSourceRoot(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	must(t, st.AddIgnoreRule(ctx, r.ID, "/tmp/"))
	must(t, st.AddRoutingRule(ctx, "*.csv", "csv", 10))
	must(t, st.AddRoutingRule(ctx, "logs/**", "logs", 0))
	must(t, st.Subscribe(ctx, "csvparser", []string{"csv"}))
	must(t, st.Subscribe(ctx, "logparser", []string{"logs"}))
	must(t, st.Subscribe(ctx, "everything", []string{"csv", "logs"}))

	rep, err := Scan(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files != 4 || rep.NewVersions != 4 || rep.Hashed != 4 {
		t.Errorf("first scan: %+v, want 4 files, 4 versions", rep)
	}
	if rep.Ignored != 3 {
		t.Errorf("ignored %d paths, want 3 (.hidden.csv, __pycache__/, tmp/)", rep.Ignored)
	}
	want := map[string][]string{
		"csvparser":  {"fév.csv", "jan 2026.csv"},
		"logparser":  {"app.log"},
		"everything": {"app.log", "fév.csv", "jan 2026.csv"},
	}
	if got := jobsFor(t, st); !equalJobs(got, want) {
		t.Errorf("jobs %v, want %v", got, want)
	}

	// An unchanged rescan creates nothing and reads nothing.
	rep, err = Scan(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hashed != 0 || rep.NewVersions != 0 || len(rep.Jobs) != 0 || rep.Unchanged != 4 {
		t.Errorf("unchanged rescan: %+v", rep)
	}
	// touch: read again, but the same content creates nothing.
	later := time.Now().Add(time.Minute)
	must(t, os.Chtimes(filepath.Join(root, "logs", "app.log"), later, later))
	rep, err = Scan(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hashed != 1 || rep.NewVersions != 0 || len(rep.Jobs) != 0 {
		t.Errorf("after a touch: %+v, want 1 hashed, nothing new", rep)
	}
	// A modified file: a new version and a job per subscribed plugin.
	write(t, filepath.Join(root, "sales", "fév.csv"), "a,b\n3,4\n5,6\n")
	write(t, filepath.Join(root, "sales", "new.csv"), "a,b\n")
	rep, err = Scan(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NewVersions != 2 || len(rep.Jobs) != 4 {
		t.Errorf("after a change and a new file: %+v, want 2 versions, 4 jobs", rep)
	}
	files, err := st.Files(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.RelPath == "sales/fév.csv" && (f.Versions != 2 || f.Tags != "csv") {
			t.Errorf("fév.csv: %+v, want 2 versions tagged csv", f)
		}
		if f.RelPath == "notes.txt" && (f.Versions != 1 || f.Tags != "") {
			t.Errorf("notes.txt: %+v, want 1 untagged version", f)
		}
	}
}

func equalJobs(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Symlinks (loops included) are not followed; special and unreadable
// files are skipped with a warning; a vanished root is reported and the
// others are still scanned.
func TestScanHostileTrees(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	root := t.TempDir()
	write(t, filepath.Join(root, "a", "ok.csv"), "x\n")
	write(t, filepath.Join(root, "a", "locked.csv"), "secret\n")
	must(t, os.Symlink(filepath.Join(root, "a"), filepath.Join(root, "a", "loop")))
	must(t, os.Symlink("/etc/passwd", filepath.Join(root, "passwd")))
	must(t, syscall.Mkfifo(filepath.Join(root, "a", "pipe"), 0o644))
	gone := filepath.Join(t.TempDir(), "gone")
	must(t, os.MkdirAll(gone, 0o755))
	for _, r := range []string{root, gone} {
		if _, err := st.AddSourceRoot(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.RemoveAll(gone))
	// Root can read any file, so the unreadable one is simulated.
	open := func(p string) (io.ReadCloser, error) {
		if strings.HasSuffix(p, "locked.csv") {
			return nil, &os.PathError{Op: "open", Path: p, Err: errors.New("permission denied")}
		}
		return os.Open(p)
	}
	rep, err := Scan(ctx, st, Options{open: open})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Roots != 1 || rep.NewVersions != 1 || rep.Hashed != 1 {
		t.Errorf("report %+v, want 1 root scanned and only ok.csv recorded", rep)
	}
	text := strings.Join(rep.Warnings, "\n")
	for _, want := range []string{"loop is a symbolic link", "passwd is a symbolic link", "pipe is not a regular file",
		"locked.csv: cannot be read (open", "source root " + gone + " cannot be scanned"} {
		if !strings.Contains(text, want) {
			t.Errorf("no warning containing %q in:\n%s", want, text)
		}
	}
}

// A file that changes while it is hashed is not recorded (the next scan
// picks it up).
func TestScanFileChangingWhileHashed(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	root := t.TempDir()
	path := filepath.Join(root, "growing.csv")
	write(t, path, "first\n")
	if _, err := st.AddSourceRoot(ctx, root); err != nil {
		t.Fatal(err)
	}
	open := func(p string) (io.ReadCloser, error) {
		f, err := os.Open(p)
		if err == nil {
			// Another process appends while we read.
			if err := os.WriteFile(p, []byte("first\nsecond\n"), 0o644); err != nil {
				t.Error(err)
			}
		}
		return f, err
	}
	rep, err := Scan(ctx, st, Options{open: open})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NewVersions != 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), "changed while it was being hashed") {
		t.Errorf("report %+v", rep)
	}
	rep, err = Scan(ctx, st, Options{})
	if err != nil || rep.NewVersions != 1 {
		t.Errorf("the next scan: %+v %v, want the file recorded", rep, err)
	}
}

func TestIgnorePatterns(t *testing.T) {
	ig, err := NewIgnore(DefaultIgnore, []string{"/build/", "*.bak", "logs/*.gz", "!keep.bak", "# comment", "**/raw/*.bin"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rel   string
		dir   bool
		match bool
	}{
		{".git", true, true}, {"a/.DS_Store", false, true}, {"x.tmp", false, true}, {"a/__pycache__", true, true},
		{"build", true, true}, {"sub/build", true, false}, {"build", false, false},
		{"a/b/c.bak", false, true}, {"a/keep.bak", false, false},
		{"logs/x.gz", false, true}, {"old/logs/x.gz", false, false},
		{"data/raw/x.bin", false, true}, {"raw/x.bin", false, true}, {"data/x.bin", false, false},
		{"data/report.csv", false, false},
	} {
		if got := ig.Match(c.rel, c.dir); got != c.match {
			t.Errorf("Match(%q, dir=%v) = %v, want %v", c.rel, c.dir, got, c.match)
		}
	}
	if _, err := NewIgnore([]string{"a[b"}); err == nil {
		t.Error("an invalid pattern was accepted")
	}
}
