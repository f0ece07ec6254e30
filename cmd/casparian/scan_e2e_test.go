package main_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/internal/testenv"
	"github.com/casparianflow/casparian/sentinel/store"
)

// A watched folder becomes Parquet on its own: source root, routing rule
// and subscription set up with the CLI, the real sentinel rescanning every
// 500 ms and a real worker; a dropped-in file and a modified file each make
// one new job, unchanged rescans make none, and unrouted or ignored files
// make none.
func TestScanDrivenPipeline(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	src, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "cluster", "slow_plugin.py"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.st.AddPlugin(ctx, store.PluginSpec{Name: "slow", SourceCode: string(src)}); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(c.dir, "landing zone ✓")
	for name, content := range map[string]string{
		"a.csv": "0 4", "sub/b.csv": "0 6", "notes.txt": "0 2", ".partial.csv": "0 2", "tmp/x.csv": "0 2",
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cli := func(args ...string) string {
		t.Helper()
		n := 1 // flags go after the command ("source add", "route list": after both words)
		if args[0] == "source" || args[0] == "route" {
			n = 2
		}
		full := append(append(append([]string{}, args[:n]...), "--database", c.db), args[n:]...)
		out, errOut, rc := runCLI(t, buildCLI(t), full...)
		if rc != 0 {
			t.Fatalf("casparian %v: exit %d\n%s%s", args, rc, out, errOut)
		}
		return out
	}
	cli("source", "add", "--ignore", "/tmp/", root)
	cli("route", "add", "*.csv", "csv")
	cli("subscribe", "slow", "csv")
	if out := cli("route", "list"); !strings.Contains(out, "*.csv") || !strings.Contains(out, "slow") {
		t.Errorf("route list:\n%s", out)
	}

	c.startSentinel("--scan-interval", "500ms")
	c.startWorker("w1", c.tcp)
	c.waitDone(2, 2*time.Minute)        // a.csv and sub/b.csv
	time.Sleep(1500 * time.Millisecond) // three more scans: nothing new
	if m := c.counts(); total(m) != 2 {
		t.Fatalf("after unchanged rescans: %v, want exactly 2 jobs", m)
	}

	// A file dropped into the watched folder, and a modified one.
	if err := os.WriteFile(filepath.Join(root, "sub", "dropped.csv"), []byte("0 8"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "a.csv"), []byte("0 10"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitDone(4, time.Minute)
	time.Sleep(1500 * time.Millisecond)
	if m := c.counts(); total(m) != 4 {
		t.Fatalf("after a drop-in and a change: %v, want exactly 4 jobs", m)
	}
	jobs, err := c.st.List(ctx, store.Filter{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	var files []string
	for _, j := range jobs {
		ids = append(ids, j.ID)
		p, err := c.st.FilePath(ctx, j.FileVersionID)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		files = append(files, rel)
	}
	slices.Sort(files)
	if want := []string{"a.csv", "a.csv", "sub/b.csv", "sub/dropped.csv"}; !slices.Equal(files, want) {
		t.Errorf("jobs ran on %v, want %v", files, want)
	}
	c.expectOnePerJob("", ids)
	out := cli("files")
	for _, want := range []string{"a.csv", "notes.txt", "dropped.csv"} {
		if !strings.Contains(out, want) {
			t.Errorf("casparian files does not list %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, ".partial.csv") || strings.Contains(out, "tmp/x.csv") {
		t.Errorf("casparian files lists an ignored file:\n%s", out)
	}
}

func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
