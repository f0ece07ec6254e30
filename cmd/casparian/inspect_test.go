package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

func TestPluginsJobsFileAndRequeue(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := filepath.Join(dir, "q.db")
	st, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	adminWriteFile(t, filepath.Join(dir, "in", "jan.csv"), "a\n")
	adminWriteFile(t, filepath.Join(dir, "in", "feb.csv"), "b\n")
	jan, _ := st.AddFile(ctx, store.FileSpec{Root: filepath.Join(dir, "in"), RelPath: "jan.csv"})
	feb, _ := st.AddFile(ctx, store.FileSpec{Root: filepath.Join(dir, "in"), RelPath: "feb.csv"})
	if _, err := st.AddPlugin(ctx, store.PluginSpec{Name: "orders", Version: "2.1", SourceCode: "def parse(p): return []\n"}); err != nil {
		t.Fatal(err)
	}
	_, err = st.EnqueueMany(ctx, []store.JobSpec{{FileVersionID: jan, PluginName: "orders"}, {FileVersionID: feb, PluginName: "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := st.Claim(ctx, "w", []string{"*"}, time.Minute)
	if _, err := st.Conclude(ctx, c.ID, c.Attempt, store.Outcome{Status: store.ReceiptFailed, Error: "bad row"}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	out, _, rc := runAdmin(t, cmdPlugins, "--database", db)
	if rc != 0 || !strings.Contains(out, "orders") || !strings.Contains(out, "2.1") || !strings.Contains(out, "python") {
		t.Errorf("plugins (rc %d):\n%s", rc, out)
	}
	out, _, rc = runAdmin(t, cmdJobs, "--database", db, "--file", "feb.csv")
	if rc != 0 || !strings.Contains(out, "QUEUED") || strings.Contains(out, "FAILED  ") {
		t.Errorf("jobs --file feb.csv (rc %d):\n%s", rc, out)
	}
	out, errOut, rc := runAdmin(t, cmdRequeue, "--database", db, "1", "2")
	if rc != 0 || !strings.Contains(out, "requeued 1 job(s): id 1") || !strings.Contains(errOut, "1 of the given jobs were not FAILED") {
		t.Errorf("requeue (rc %d):\n%s%s", rc, out, errOut)
	}
	if out, _, _ := runAdmin(t, cmdRequeue, "--database", db, "--all-failed"); !strings.Contains(out, "no FAILED job") {
		t.Errorf("second requeue:\n%s", out)
	}
	if _, _, rc := runAdmin(t, cmdRequeue, "--database", db, "x"); rc != 2 {
		t.Errorf("requeue x: rc %d, want 2", rc)
	}

}
