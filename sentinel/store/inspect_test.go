package store

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestRequeuePluginsAndFileFilter(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	root := t.TempDir()
	for _, n := range []string{"a.csv", "b.csv"} {
		if err := os.WriteFile(filepath.Join(root, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fa, err := s.AddFile(ctx, FileSpec{Root: root, RelPath: "a.csv"})
	if err != nil {
		t.Fatal(err)
	}
	fb, err := s.AddFile(ctx, FileSpec{Root: root, RelPath: "b.csv"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddPlugin(ctx, PluginSpec{Name: "p", Version: "1.0", SourceCode: "def parse(p): return []\n"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(ctx, "q", []string{"csv"}); err != nil {
		t.Fatal(err)
	}
	ids, err := s.EnqueueMany(ctx, []JobSpec{{FileVersionID: fa, PluginName: "p"}, {FileVersionID: fb, PluginName: "p"}})
	if err != nil {
		t.Fatal(err)
	}
	// Fail job 1 for good; leave job 2 queued.
	c, err := s.Claim(ctx, "w", []string{"*"}, time.Minute)
	if err != nil || c.ID != ids[0] {
		t.Fatalf("claim %+v %v", c, err)
	}
	if _, err := s.Conclude(ctx, c.ID, c.Attempt, Outcome{Status: ReceiptFailed, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	jobs, err := s.List(ctx, Filter{File: "b.csv"})
	if err != nil || len(jobs) != 1 || jobs[0].ID != ids[1] {
		t.Errorf("jobs of b.csv: %+v %v", jobs, err)
	}
	got, err := s.Requeue(ctx, "", nil)
	if err != nil || !slices.Equal(got, []int64{ids[0]}) {
		t.Fatalf("requeue: %v %v, want only the FAILED job", got, err)
	}
	j := mustGet(t, s, ids[0])
	if j.Status != StatusQueued || j.RetryCount != 0 || j.LastError != "boom" || j.ErrorMessage != "" {
		t.Errorf("requeued job %+v", j)
	}
	if got, _ := s.Requeue(ctx, "", []int64{ids[1]}); len(got) != 0 {
		t.Errorf("a QUEUED job was requeued: %v", got)
	}
	ps, err := s.Plugins(ctx)
	if err != nil || len(ps) != 2 {
		t.Fatalf("plugins %+v %v", ps, err)
	}
	if ps[0].Name != "p" || ps[0].Version != "1.0" || ps[0].Kind != "python" || ps[0].Versions != 1 {
		t.Errorf("plugin p: %+v", ps[0])
	}
	if ps[1].Name != "q" || ps[1].Version != "" || ps[1].Subscriptions != "csv" {
		t.Errorf("plugin q: %+v", ps[1])
	}
}
