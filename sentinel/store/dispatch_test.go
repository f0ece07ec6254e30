package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestJoinInRoot(t *testing.T) {
	for _, tc := range []struct {
		root, rel, want string
		err             error
	}{
		{"/data/in", "a/b.csv", "/data/in/a/b.csv", nil},
		{"/data/in/", "./a/../b.csv", "/data/in/b.csv", nil},
		{"/data/in", "/abs.csv", "/data/in/abs.csv", nil},
		{"/data/in", "../in2/x.csv", "", ErrPathEscapesRoot},
		{"/data/in", "a/../../etc/passwd", "", ErrPathEscapesRoot},
		{"/data/in", "..", "", ErrPathEscapesRoot},
		{"/data/in", "", "", ErrPathEscapesRoot},
		{"", "a.csv", "", ErrFileMissing},
	} {
		got, err := JoinInRoot(tc.root, tc.rel)
		if got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("JoinInRoot(%q, %q) = %q, %v; want %q, %v", tc.root, tc.rel, got, err, tc.want, tc.err)
		}
	}
}

func TestResolveDispatch(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := []byte("a,b\n1,2\n")
	if err := os.WriteFile(filepath.Join(root, "sub", "x.csv"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	fv, err := s.AddFile(ctx, FileSpec{Root: root, RelPath: "sub/x.csv"})
	if err != nil {
		t.Fatal(err)
	}
	// Same content again → same version.
	if fv2, err := s.AddFile(ctx, FileSpec{Root: root, RelPath: "sub/x.csv"}); err != nil || fv2 != fv {
		t.Errorf("re-add = %d %v, want %d", fv2, err, fv)
	}
	sum := sha256.Sum256(content)
	var hash string
	var size int64
	if err := s.r.QueryRowContext(ctx, `SELECT content_hash, size_bytes FROM cf_file_version WHERE id=?`, fv).Scan(&hash, &size); err != nil {
		t.Fatal(err)
	}
	if hash != hex.EncodeToString(sum[:]) || size != int64(len(content)) {
		t.Errorf("version hash=%s size=%d", hash, size)
	}

	m1, err := s.AddPlugin(ctx, PluginSpec{Name: "csvp", Version: "1", SourceCode: "v1", EnvHash: "env1", ArtifactHash: "art1"})
	if err != nil {
		t.Fatal(err)
	}
	c.Add(time.Second)
	m2, err := s.AddPlugin(ctx, PluginSpec{Name: "csvp", Version: "2", SourceCode: "v2", ArtifactHash: "art2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddPlugin(ctx, PluginSpec{Name: "other", Version: "1", SourceCode: "v2"}); err == nil {
		t.Error("identical source for another plugin accepted")
	}
	var st1 string
	if err := s.r.QueryRowContext(ctx, `SELECT status FROM cf_plugin_manifest WHERE id=?`, m1).Scan(&st1); err != nil || st1 != ManifestSuperseded {
		t.Errorf("old manifest status = %q %v", st1, err)
	}
	if err := s.AddSink(ctx, "csvp", Sink{Topic: "errors", URI: "parquet://errors.parquet"}); err != nil {
		t.Fatal(err)
	}

	id, err := s.Enqueue(ctx, fv, "csvp", 0, `{"k":"v"}`)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Resolve(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := Dispatch{JobID: id, PluginName: "csvp", FilePath: filepath.Join(root, "sub", "x.csv"),
		ManifestID: m2, Version: "2", SourceCode: "v2", EnvHash: "system", ArtifactHash: "art2",
		ConfigOverrides: `{"k":"v"}`}
	got := *d
	got.Sinks = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dispatch =\n%+v\nwant\n%+v", got, want)
	}
	wantSinks := []Sink{{Topic: "errors", URI: "parquet://errors.parquet", Mode: "append"}, DefaultSink("csvp")}
	if len(d.Sinks) != 2 || d.Sinks[0] != wantSinks[0] || d.Sinks[1] != wantSinks[1] {
		t.Errorf("sinks = %+v", d.Sinks)
	}
	if d.Sinks[1].URI != "parquet://csvp_output.parquet" {
		t.Errorf("default sink = %+v", d.Sinks[1])
	}

	// Re-activating v1 (identical source) makes it the newest ACTIVE.
	c.Add(time.Second)
	if m, err := s.AddPlugin(ctx, PluginSpec{Name: "csvp", Version: "1", SourceCode: "v1"}); err != nil || m != m1 {
		t.Fatalf("re-activate = %d %v", m, err)
	}
	// An explicit output topic replaces the default sink.
	if err := s.AddSink(ctx, "csvp", Sink{Topic: "output", URI: "parquet://mine.parquet", Mode: "overwrite"}); err != nil {
		t.Fatal(err)
	}
	d, err = s.Resolve(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if d.ManifestID != m1 || d.EnvHash != "env1" || d.SourceCode != "v1" {
		t.Errorf("after re-activation: %+v", d)
	}
	if len(d.Sinks) != 2 || d.Sinks[1] != (Sink{Topic: "output", URI: "parquet://mine.parquet", Mode: "overwrite"}) {
		t.Errorf("sinks with explicit output = %+v", d.Sinks)
	}

	// A rel_path that escapes the root is refused.
	if _, err := s.w.ExecContext(ctx, `UPDATE cf_file_location SET rel_path='../../etc/passwd'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve(ctx, id); !errors.Is(err, ErrPathEscapesRoot) {
		t.Errorf("escaping path err = %v", err)
	}
	if _, err := s.Resolve(ctx, 12345); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("unknown job err = %v", err)
	}
	if _, err := s.AddFile(ctx, FileSpec{Root: root, RelPath: "../x", ContentHash: "h", Size: 1}); !errors.Is(err, ErrPathEscapesRoot) {
		t.Errorf("AddFile escaping err = %v", err)
	}
}

// A job whose manifest or location is missing can be failed, never left RUNNING.
func TestUnresolvableJobIsFailable(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	fv, err := s.AddFile(ctx, FileSpec{Root: t.TempDir(), RelPath: "y.csv", ContentHash: "abc", Size: 3,
		ModTime: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	noManifest, _ := s.Enqueue(ctx, fv, "ghost", 1, "")
	noFile, _ := s.Enqueue(ctx, 999, "ghost", 0, "")

	for _, tc := range []struct {
		id   int64
		want error
	}{{noManifest, ErrNoActiveManifest}, {noFile, ErrFileMissing}} {
		cl, err := s.Claim(ctx, "w", []string{"*"}, time.Minute)
		if err != nil || cl == nil || cl.ID != tc.id {
			t.Fatalf("claim = %+v %v, want %d", cl, err, tc.id)
		}
		_, rerr := s.Resolve(ctx, cl.ID)
		if !errors.Is(rerr, tc.want) {
			t.Fatalf("resolve err = %v, want %v", rerr, tc.want)
		}
		tr, err := s.Conclude(ctx, cl.ID, cl.Attempt, Outcome{Status: ReceiptFailed, Error: rerr.Error()})
		if err != nil || tr.To != StatusFailed {
			t.Fatalf("conclude = %+v %v", tr, err)
		}
		j := mustGet(t, s, cl.ID)
		if j.Status != StatusFailed || !strings.Contains(j.ErrorMessage, tc.want.Error()) {
			t.Errorf("job = %+v", j)
		}
	}
	counts, err := s.Counts(ctx)
	if err != nil || counts[StatusFailed] != 2 || counts[StatusRunning] != 0 {
		t.Errorf("counts = %v %v", counts, err)
	}
}
