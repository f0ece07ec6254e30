package sink

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/casparianflow/casparian/host/guest"
)

func TestResolveURI(t *testing.T) {
	root := t.TempDir()
	cases := []struct {
		name string
		t    Target
		want string
	}{
		{"relative file", Target{URI: "parquet://x.parquet", JobID: 42}, "parquet://" + root + "/x_42.parquet"},
		{"relative nested file", Target{URI: "parquet://a/b/x.parquet", JobID: 1}, "parquet://" + root + "/a/b/x_1.parquet"},
		{"relative dir", Target{URI: "parquet://out", JobID: 42}, "parquet://" + root + "/out/data_42.parquet"},
		{"dir with slash", Target{URI: "parquet://out.parquet/", JobID: 42}, "parquet://" + root + "/out.parquet/data_42.parquet"},
		{"dir with stem", Target{URI: "parquet://out", JobID: 42, FileStem: "input_2024"}, "parquet://" + root + "/out/input_2024.parquet"},
		{"stem ignored for file form", Target{URI: "parquet://x.parquet", JobID: 42, FileStem: "s"}, "parquet://" + root + "/x_42.parquet"},
		{"non-parquet ext is a dir", Target{URI: "parquet://x.csv", JobID: 3}, "parquet://" + root + "/x.csv/data_3.parquet"},
		{"absolute", Target{URI: "parquet:///var/data/x.parquet", JobID: 1}, "parquet:///var/data/x_1.parquet"},
		{"dot-dot inside root", Target{URI: "parquet://a/../x.parquet", JobID: 1}, "parquet://" + root + "/x_1.parquet"},
		{"query", Target{URI: "parquet://x.parquet?compression=zstd", JobID: 1}, "parquet://" + root + "/x_1.parquet"},
		{"sqlite absolute", Target{URI: "sqlite:///var/db/out.db/orders"}, "sqlite:///var/db/out.db/orders"},
		{"sqlite relative", Target{URI: "sqlite://dbs/out.db/orders"}, "sqlite://" + root + "/dbs/out.db/orders"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.t.OutputDir = root
			got, err := ResolveURI(tc.t)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestResolveURIRejects(t *testing.T) {
	root := t.TempDir()
	cases := []struct {
		name, uri, stem, outDir, want string
	}{
		{"unknown scheme", "s3://bucket/x", "", root, "parquet://, sqlite://"},
		{"no scheme", "x.parquet", "", root, "parquet://, sqlite://"},
		{"escape", "parquet://../x.parquet", "", root, "escapes"},
		{"escape nested", "parquet://a/../../x.parquet", "", root, "escapes"},
		{"escape dir", "parquet://..", "", root, "escapes"},
		{"sqlite escape", "sqlite://../x.db/t", "", root, "escapes"},
		{"relative without root", "parquet://x.parquet", "", "", "output directory"},
		{"empty path", "parquet://", "", root, "empty path"},
		{"bad stem", "parquet://out", "../evil", root, "file stem"},
		{"bad query", "parquet://x.parquet?mode=append", "", root, "mode"},
		{"bad codec in query", "parquet://x.parquet?compression=lzo", "", root, "lzo"},
		{"nul", "parquet://x\x00.parquet", "", root, "NUL"},
		{"sqlite no table", "sqlite://x.db", "", root, "want sqlite"},
		{"sqlite empty table", "sqlite://x.db/", "", root, "invalid table name"},
		{"sqlite dash", "sqlite://x.db/bad-name", "", root, "invalid table name"},
		{"sqlite digit", "sqlite://x.db/1abc", "", root, "invalid table name"},
		{"sqlite space", "sqlite://x.db/a b", "", root, "invalid table name"},
		{"sqlite injection", `sqlite://x.db/t"; DROP TABLE t; --`, "", root, "invalid table name"},
		{"sqlite reserved", "sqlite://x.db/sqlite_master", "", root, "reserved"},
		{"sqlite query", "sqlite://x.db?mode=ro/t", "", root, "'?'"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tg := Target{URI: tc.uri, OutputDir: tc.outDir, FileStem: tc.stem, JobID: 1, Topic: "t"}
			_, err := ResolveURI(tg)
			ge := wantKind(t, err, guest.ErrSink)
			if !strings.Contains(ge.Message, tc.want) {
				t.Fatalf("message %q lacks %q", ge.Message, tc.want)
			}
			// Open refuses the same targets and creates nothing.
			w, err := Open(context.Background(), tg, Options{TempDir: t.TempDir()})
			if err == nil {
				w.Abort()
				t.Fatal("Open accepted it")
			}
			wantKind(t, err, guest.ErrSink)
		})
	}
	if got := listTree(t, root); len(got) != 0 {
		t.Fatalf("rejected targets created files: %v", got)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(root), "x.parquet")); err == nil {
		t.Fatal("escape created a file")
	}
}

func TestOptionsValidated(t *testing.T) {
	for _, o := range []Options{{MaxRowGroupRows: -1}, {MaxRowGroupBytes: -1}, {SQLiteBusyTimeout: -1}, {Compression: "lzo"}} {
		_, err := Open(context.Background(), Target{URI: "parquet://x.parquet", OutputDir: t.TempDir(), Topic: "t"}, o)
		wantKind(t, err, guest.ErrSink)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Open(ctx, Target{URI: "parquet://x.parquet", OutputDir: t.TempDir(), Topic: "t"}, Options{})
	wantKind(t, err, guest.ErrCancelled)
}
