package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/casparianflow/casparian/sentinel/store"
)

// runAdmin calls an admin command in-process.
func runAdmin(t *testing.T, cmd func(context.Context, []string, io.Writer, io.Writer) int, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := cmd(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), rc
}

// adminWriteFile writes a file, creating its directory.
func adminWriteFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// adminFixClock makes the tables' relative times deterministic.
func adminFixClock(t *testing.T, now time.Time) {
	t.Helper()
	old := adminNow
	adminNow = func() time.Time { return now }
	t.Cleanup(func() { adminNow = old })
}

func TestDatabaseFlag(t *testing.T) {
	parse := func(args ...string) string {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		db := databaseFlag(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return *db
	}
	t.Setenv(databaseEnv, "")
	if got := parse(); got != "sqlite://casparian_flow.db" {
		t.Errorf("default = %q", got)
	}
	t.Setenv(databaseEnv, "/var/lib/cf.db")
	if got := parse(); got != "/var/lib/cf.db" {
		t.Errorf("from env = %q", got)
	}
	if got := parse("--database", "sqlite:///x.db"); got != "sqlite:///x.db" {
		t.Errorf("flag over env = %q", got)
	}
}

func TestOpenStoreDSNForms(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t.Chdir(dir)
	for _, tc := range []struct{ dsn, file string }{
		{"sqlite://rel.db", filepath.Join(dir, "rel.db")},
		{"sqlite://" + filepath.Join(dir, "abs.db"), filepath.Join(dir, "abs.db")}, // sqlite:///abs
		{"plain.db", filepath.Join(dir, "plain.db")},
		{"sqlite://q.db?mode=rwc", filepath.Join(dir, "q.db")},
	} {
		s, err := openStore(ctx, tc.dsn)
		if err != nil {
			t.Fatalf("openStore(%q): %v", tc.dsn, err)
		}
		s.Close()
		if _, err := os.Stat(tc.file); err != nil {
			t.Errorf("openStore(%q) did not create %s: %v", tc.dsn, tc.file, err)
		}
	}
	if _, err := openStore(ctx, filepath.Join(dir, "nodir", "x.db")); err == nil || !strings.Contains(err.Error(), "nodir") {
		t.Errorf("missing directory: %v", err)
	}
}

func TestJobsAndWorkersDoNotCreateADatabase(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "missing.db")
	for name, cmd := range map[string]func(context.Context, []string, io.Writer, io.Writer) int{
		"jobs": cmdJobs, "workers": cmdWorkers,
	} {
		out, errs, rc := runAdmin(t, cmd, "--database", "sqlite://"+path)
		if rc != 1 || out != "" {
			t.Errorf("%s: rc=%d stdout=%q", name, rc, out)
		}
		want := "no database at " + path + "; start the sentinel with --database sqlite://" + path + " or run casparian enqueue first"
		if !strings.Contains(errs, want) {
			t.Errorf("%s: stderr = %q, want %q", name, errs, want)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s created %s (%v)", name, path, err)
		}
	}
	// The env var is honoured too.
	t.Setenv(databaseEnv, path)
	if _, errs, rc := runAdmin(t, cmdJobs); rc != 1 || !strings.Contains(errs, "no database at "+path) {
		t.Errorf("env: rc=%d stderr=%q", rc, errs)
	}
}

func TestEnqueue(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := "sqlite://" + filepath.Join(dir, "cf.db")
	data := filepath.Join(dir, "data")
	adminWriteFile(t, filepath.Join(data, "b.csv"), "b\n")
	adminWriteFile(t, filepath.Join(data, "sub", "a.csv"), "a\n")
	adminWriteFile(t, filepath.Join(data, ".hidden.csv"), "h\n")
	adminWriteFile(t, filepath.Join(data, ".git", "x"), "x\n")
	single := filepath.Join(dir, "other", "c.csv")
	adminWriteFile(t, single, "c\n")
	pluginPy := filepath.Join(dir, "csv_rows.py")
	adminWriteFile(t, pluginPy, "def parse(path):\n    pass\n")
	adminWriteFile(t, pluginPy+".txt", "not a plugin\n")

	// Without a manifest: an actionable error, and no job.
	out, errs, rc := runAdmin(t, cmdEnqueue, "--database", db, "--plugin", "csv_rows", data)
	if rc != 1 || !strings.Contains(errs, "plugin csv_rows has no active manifest: pass --plugin-file") {
		t.Fatalf("no manifest: rc=%d out=%q err=%q", rc, out, errs)
	}

	out, errs, rc = runAdmin(t, cmdEnqueue, "--database", db, "--plugin", "csv_rows", "--plugin-file", pluginPy,
		"--version", "1.2", "--priority", "3", "--sink", "rows=parquet:///tmp/rows.parquet", data, single)
	t.Logf("enqueue stdout:\n%s", out)
	if rc != 0 || errs != "" {
		t.Fatalf("enqueue: rc=%d err=%q", rc, errs)
	}
	for _, want := range []string{
		"plugin csv_rows: manifest 1 (version 1.2) from " + pluginPy + " is active",
		"plugin csv_rows: topic rows → parquet:///tmp/rows.parquet",
		"enqueued 3 jobs (ids 1–3) for plugin csv_rows",
		"run: casparian jobs --database " + db,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}

	s, err := store.Open(ctx, db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Sorted by path; a DIR's files keep their sub-directories; a FILE sits in its own directory.
	wantPaths := []string{filepath.Join(data, "b.csv"), filepath.Join(data, "sub", "a.csv"), single}
	for i, want := range wantPaths {
		d, err := s.Resolve(ctx, int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if d.FilePath != want || d.PluginName != "csv_rows" || d.Version != "1.2" || d.SourceCode != "def parse(path):\n    pass\n" {
			t.Errorf("job %d resolves to %+v, want path %s", i+1, d, want)
		}
		j, _ := s.Get(ctx, int64(i+1))
		if j.Priority != 3 || j.Status != store.StatusQueued {
			t.Errorf("job %d = %+v", i+1, j)
		}
	}
	var rel string
	if err := adminQueryRow(t, filepath.Join(dir, "cf.db"), `SELECT fl.rel_path FROM cf_file_location fl
		JOIN cf_source_root sr ON sr.id = fl.source_root_id WHERE sr.path = ? AND fl.filename = 'a.csv'`, data).Scan(&rel); err != nil || rel != "sub/a.csv" {
		t.Errorf("rel_path = %q, %v; want sub/a.csv under root %s", rel, err, data)
	}

	// Re-run: the manifest exists now, the same sink is not added twice, a
	// different URI for it is reported and ignored.
	out, errs, rc = runAdmin(t, cmdEnqueue, "--database", db, "--plugin", "csv_rows",
		"--sink", "rows=parquet:///tmp/rows.parquet", "--sink", "rows=parquet:///elsewhere.parquet", single)
	if rc != 0 || !strings.Contains(out, "enqueued 1 job (id 4) for plugin csv_rows") {
		t.Fatalf("re-run: rc=%d out=%q err=%q", rc, out, errs)
	}
	if strings.Contains(out, "topic rows") || !strings.Contains(errs, "already sends topic rows to parquet:///tmp/rows.parquet") {
		t.Errorf("re-run sinks: out=%q err=%q", out, errs)
	}
	ks, err := s.ConfiguredSinks(ctx, "csv_rows")
	if err != nil || len(ks) != 1 {
		t.Errorf("configured sinks = %+v, %v; want one", ks, err)
	}

	// The same source again keeps its stored manifest and version.
	out, errs, rc = runAdmin(t, cmdEnqueue, "--database", db, "--plugin-file", pluginPy, "--version", "9", single)
	if rc != 0 || !strings.Contains(out, "plugin csv_rows: manifest 1 (version 1.2)") ||
		!strings.Contains(errs, "already stored as version 1.2; --version 9 not recorded") {
		t.Errorf("same source: rc=%d out=%q err=%q", rc, out, errs)
	}

	// --plugin defaults to the plugin file's name.
	other := filepath.Join(dir, "other_plugin.py")
	adminWriteFile(t, other, "x = 1\n")
	out, errs, rc = runAdmin(t, cmdEnqueue, "--database", db, "--plugin-file", other, single)
	if rc != 0 || !strings.Contains(out, "enqueued 1 job (id 6) for plugin other_plugin") || !strings.Contains(out, "version 0.0.0") {
		t.Errorf("derived name: rc=%d out=%q err=%q", rc, out, errs)
	}

	// Usage errors exit 2, input errors 1; neither enqueues.
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		rc   int
		msg  string
	}{
		{[]string{single}, 2, "--plugin is required"},
		{[]string{"--plugin", "csv_rows"}, 2, "at least one FILE or DIR"},
		{[]string{"--plugin", "csv_rows", "--sink", "nouri", single}, 2, `--sink "nouri" is not TOPIC=URI`},
		{[]string{"--plugin", "csv_rows", "--version", "2", single}, 2, "--version applies to --plugin-file only"},
		{[]string{"--plugin-file", pluginPy + ".txt", single}, 1, "cannot tell its guest kind"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"--plugin", "csv_rows", filepath.Join(dir, "nope.csv")}, 1, "nope.csv: no such file or directory"},
		{[]string{"--plugin", "csv_rows", empty}, 1, "no input files found"},
		{[]string{"--plugin-file", filepath.Join(dir, "missing.py"), single}, 1, "missing.py"},
	} {
		_, errs, rc := runAdmin(t, cmdEnqueue, append([]string{"--database", db}, tc.args...)...)
		if rc != tc.rc || !strings.Contains(errs, tc.msg) {
			t.Errorf("enqueue %v: rc=%d (want %d) stderr=%q (want %q)", tc.args, rc, tc.rc, errs, tc.msg)
		}
	}
	if c, _ := s.Counts(ctx); c[store.StatusQueued] != 6 {
		t.Errorf("queued = %d, want 6", c[store.StatusQueued])
	}
	if _, _, rc := runAdmin(t, cmdEnqueue, "-h"); rc != 0 {
		t.Errorf("-h: rc=%d", rc)
	}
}

// adminQueryRow reads the database file directly.
func adminQueryRow(t *testing.T, path, q string, args ...any) *sql.Row {
	t.Helper()
	db, err := sql.Open("sqlite", path) // driver registered by package store
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db.QueryRow(q, args...)
}

// adminSeedQueue builds a queue with one job in each interesting state, through
// the store's own API, with a fixed clock. It returns the database DSN.
func adminSeedQueue(t *testing.T, now time.Time) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db := "sqlite://" + filepath.Join(dir, "cf.db")
	clock := now.Add(-10 * time.Minute)
	// A 2ns backoff is always 1ns: the retry time is deterministic.
	s, err := store.Open(ctx, db, store.Options{Now: func() time.Time { return clock }, BackoffBase: 2, BackoffMax: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	adminWriteFile(t, filepath.Join(dir, "in", "x.csv"), "x\n")
	fv, err := s.AddFile(ctx, store.FileSpec{Root: filepath.Join(dir, "in"), RelPath: "x.csv"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"csv_rows", "csv_rows", "csv_rows", "csv_rows", "csv_rows", "json_events"} {
		if _, err := s.Enqueue(ctx, fv, p, 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	claim := func(worker string) *store.Claimed {
		c, err := s.Claim(ctx, worker, []string{"*"}, time.Hour)
		if err != nil || c == nil {
			t.Fatalf("claim: %+v %v", c, err)
		}
		return c
	}
	// 1: completed 9m ago; 2: failed 5m ago with a long traceback; 3: running on w-7f3a
	// since 30s ago; 4: requeued after a lost attempt, retry due in 20s; 5, 6: queued.
	clock = now.Add(-9 * time.Minute)
	c := claim("w-1c2d")
	if _, err := s.Conclude(ctx, c.ID, c.Attempt, store.Outcome{Status: store.ReceiptSuccess}); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(-5 * time.Minute)
	c = claim("w-1c2d")
	longErr := "ValueError: could not convert string to float: 'n/a' in column 'amount' at row 1234 of the input file\nTraceback (most recent call last):\n  File \"plugin.py\", line 3"
	if _, err := s.Conclude(ctx, c.ID, c.Attempt, store.Outcome{Status: store.ReceiptFailed, Error: longErr}); err != nil {
		t.Fatal(err)
	}
	clock = now.Add(-30 * time.Second)
	claim("w-7f3a")
	clock = now.Add(-40 * time.Second)
	c = claim("w-dead")
	clock = now.Add(20*time.Second - 1)
	if _, err := s.Conclude(ctx, c.ID, c.Attempt, store.Outcome{Status: store.ReceiptFailed, Retriable: true,
		Error: "worker \x1b[31mlost\x1b[0m the file"}); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestJobsTable(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	db := adminSeedQueue(t, now)
	adminFixClock(t, now)

	out, errs, rc := runAdmin(t, cmdJobs, "--database", db)
	t.Logf("casparian jobs:\n%s", out)
	if rc != 0 || errs != "" {
		t.Fatalf("rc=%d stderr=%q", rc, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if lines[0] != "queue: 3 QUEUED · 1 RUNNING · 1 COMPLETED · 1 FAILED" {
		t.Errorf("counts line = %q", lines[0])
	}
	if !regexp.MustCompile(`^ID +STATUS +PLUGIN +ATTEMPT +WORKER +UPDATED +ERROR$`).MatchString(lines[2]) {
		t.Errorf("header = %q", lines[2])
	}
	rows := map[string]string{}
	for _, l := range lines[3:] {
		f := strings.Fields(l)
		rows[f[0]] = l
	}
	check := func(id, re string) {
		t.Helper()
		if !regexp.MustCompile(re).MatchString(rows[id]) {
			t.Errorf("row %s = %q, want match %s", id, rows[id], re)
		}
	}
	check("6", `^6 +QUEUED +json_events +0 +- +- +-$`)
	check("4", `^4 +QUEUED +csv_rows +1 +- +retry in 20s +worker \?\[31mlost\?\[0m the file$`)
	check("3", `^3 +RUNNING +csv_rows +1 +w-7f3a +30s ago +-$`)
	check("2", `^2 +FAILED +csv_rows +1 +- +5m ago +ValueError: could not convert string to float: 'n/a' in col…$`)
	check("1", `^1 +COMPLETED +csv_rows +1 +- +9m ago +-$`)
	if strings.Contains(out, "\x1b") {
		t.Error("terminal escape reached the table")
	}
	if strings.Contains(out, "Traceback") {
		t.Error("more than the error's first line shown")
	}

	// Filters and limit.
	out, _, rc = runAdmin(t, cmdJobs, "--database", db, "--status", "queued,running", "--plugin", "csv_rows", "--limit", "2")
	if rc != 0 {
		t.Fatalf("filtered rc=%d", rc)
	}
	var ids []string
	for _, l := range strings.Split(out, "\n")[3:] {
		if f := strings.Fields(l); len(f) > 0 && regexp.MustCompile(`^\d+$`).MatchString(f[0]) {
			ids = append(ids, f[0])
		}
	}
	if strings.Join(ids, ",") != "5,4" || !strings.Contains(out, "(the newest 2 shown; --limit shows more)") {
		t.Errorf("filtered ids = %v, output:\n%s", ids, out)
	}
	out, _, rc = runAdmin(t, cmdJobs, "--database", db, "--status", "SKIPPED")
	if rc != 0 || !strings.Contains(out, "no jobs match the filter") {
		t.Errorf("empty filter: rc=%d out=%q", rc, out)
	}
	for _, bad := range [][]string{{"--status", "DONE"}, {"--limit", "0"}, {"extra"}} {
		if _, errs, rc := runAdmin(t, cmdJobs, append([]string{"--database", db}, bad...)...); rc != 2 || errs == "" {
			t.Errorf("jobs %v: rc=%d stderr=%q", bad, rc, errs)
		}
	}

	// JSON.
	out, _, rc = runAdmin(t, cmdJobs, "--database", db, "--json", "--status", "RUNNING,FAILED")
	if rc != 0 {
		t.Fatalf("json rc=%d", rc)
	}
	var js []map[string]any
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if len(js) != 2 || js[0]["id"] != float64(3) || js[0]["status"] != "RUNNING" || js[0]["lease_owner"] != "w-7f3a" ||
		js[0]["plugin_name"] != "csv_rows" || js[0]["end_time"] != nil || js[0]["claim_time"] != "2026-03-04T11:59:30Z" {
		t.Errorf("json[0] = %v", js[0])
	}
	if js[1]["id"] != float64(2) || !strings.HasPrefix(js[1]["error_message"].(string), "ValueError") || js[1]["result"] != nil {
		t.Errorf("json[1] = %v", js[1])
	}
	if out, _, _ := runAdmin(t, cmdJobs, "--database", db, "--json", "--status", "SKIPPED"); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty json = %q", out)
	}
}

func TestJobsEmptyQueue(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "cf.db")
	s, err := openStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	out, _, rc := runAdmin(t, cmdJobs, "--database", db)
	if rc != 0 || !strings.HasPrefix(out, "queue: empty\n") || !strings.Contains(out, "casparian enqueue --database "+db) {
		t.Errorf("empty: rc=%d out=%q", rc, out)
	}
}

func TestWorkersTable(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	adminFixClock(t, now)
	path := filepath.Join(t.TempDir(), "cf.db")
	s, err := store.Open(ctx, path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	out, _, rc := runAdmin(t, cmdWorkers, "--database", path)
	if rc != 0 || out != "no workers registered in "+path+"\nstart one with: casparian worker --connect tcp://127.0.0.1:5555 --output DIR\n" {
		t.Errorf("no workers: rc=%d out=%q", rc, out)
	}
	if out, _, _ := runAdmin(t, cmdWorkers, "--database", path, "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("no workers json = %q", out)
	}

	for _, w := range []store.WorkerRecord{
		{WorkerID: "w-7f3a", Hostname: "build-01", PID: 4242, Endpoint: "tcp://127.0.0.1:5555",
			Capabilities: []string{"csv_rows", "json_events"}, Slots: 4, BusySlots: 2, ActiveJobIDs: []int64{3, 9},
			StartedAt: now.Add(-time.Hour), LastHeartbeat: now.Add(-3 * time.Second)},
		{WorkerID: "w-1c2d", Hostname: "build-02", PID: 977, Capabilities: []string{"*"}, Slots: 8, BusySlots: 1,
			ActiveJobIDs: []int64{12}, Status: store.WorkerDraining, StatusReason: "shutting down",
			LastHeartbeat: now.Add(-1 * time.Second)},
		{WorkerID: "w-dead", Hostname: "build-03", PID: 31, Capabilities: []string{"csv_rows"}, Slots: 2,
			Status: store.WorkerEvicted, StatusReason: "silent for 31s", LastHeartbeat: now.Add(-2 * time.Minute)},
		{WorkerID: "w-busy", Hostname: "build-04", PID: 5, Capabilities: []string{"*"}, Slots: 8, BusySlots: 7,
			ActiveJobIDs: []int64{20, 21, 22, 23, 24, 25, 26}, LastHeartbeat: now.Add(-4 * time.Second)},
	} {
		if err := s.UpsertWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	out, errs, rc := runAdmin(t, cmdWorkers, "--database", path)
	t.Logf("casparian workers:\n%s", out)
	if rc != 0 || errs != "" {
		t.Fatalf("rc=%d stderr=%q", rc, errs)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	want := []string{
		`^workers: 2 ACTIVE · 1 DRAINING · 1 EVICTED$`,
		`^$`,
		`^WORKER +HOST +PID +STATUS +SLOTS +JOBS +CAPABILITIES +LAST SEEN$`,
		`^w-1c2d +build-02 +977 +DRAINING \(shutting down\) +1/8 +12 +\* +1s ago$`,
		`^w-7f3a +build-01 +4242 +ACTIVE +2/4 +3,9 +csv_rows,json_events +3s ago$`,
		`^w-busy +build-04 +5 +ACTIVE +7/8 +20,21,22,23,24,\+2 +\* +4s ago$`,
		`^w-dead +build-03 +31 +EVICTED \(silent for 31s\) +0/2 +- +csv_rows +2m ago$`,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, re := range want {
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("line %d = %q, want match %s", i, lines[i], re)
		}
	}

	out, _, rc = runAdmin(t, cmdWorkers, "--database", path, "--json")
	var js []map[string]any
	if err := json.Unmarshal([]byte(out), &js); rc != 0 || err != nil {
		t.Fatalf("json: rc=%d %v\n%s", rc, err, out)
	}
	if len(js) != 4 || js[1]["worker_id"] != "w-7f3a" || js[1]["endpoint"] != "tcp://127.0.0.1:5555" ||
		js[1]["busy_slots"] != float64(2) || js[1]["last_heartbeat"] != "2026-03-04T11:59:57Z" ||
		len(js[1]["active_job_ids"].([]any)) != 2 || len(js[3]["active_job_ids"].([]any)) != 0 {
		t.Errorf("json = %v", js)
	}
	if _, errs, rc := runAdmin(t, cmdWorkers, "--database", path, "x"); rc != 2 || errs == "" {
		t.Errorf("extra arg: rc=%d", rc)
	}
}

func TestTableHelpers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"longer than ten", 10, "longer th…"},
		{"a\tb\nc\x1b[0m\u202e", 20, "a b c?[0m?"},
		{"ééééé", 3, "éé…"},
	} {
		if got := tableCell(tc.in, tc.max); got != tc.want {
			t.Errorf("tableCell(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Time{}, "-"},
		{now.Add(-300 * time.Millisecond), "now"},
		{now.Add(-3 * time.Second), "3s ago"},
		{now.Add(4 * time.Second), "in 4s"},
		{now.Add(-5*time.Minute - 10*time.Second), "5m ago"},
		{now.Add(-30 * time.Hour), "30h ago"},
		{now.Add(-3 * 24 * time.Hour), "3d ago"},
		{time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC), "2024-03-01"},
	} {
		if got := relTime(now, tc.t); got != tc.want {
			t.Errorf("relTime(%v) = %q, want %q", tc.t, got, tc.want)
		}
	}
	for _, tc := range []struct {
		ids  []int64
		want string
	}{
		{[]int64{7}, "id 7"},
		{[]int64{7, 8, 9}, "ids 7–9"},
		{[]int64{3, 5, 6}, "ids 3, 5–6"},
		{[]int64{1, 3, 5, 7, 9, 11}, "ids 1, 3, 5, …, 11"},
	} {
		if got := idRange(tc.ids); got != tc.want {
			t.Errorf("idRange(%v) = %q, want %q", tc.ids, got, tc.want)
		}
	}
	if got := shellQuote("sqlite:///var/lib/cf.db"); got != "sqlite:///var/lib/cf.db" {
		t.Errorf("shellQuote plain = %q", got)
	}
	if got := shellQuote("/tmp/my db's.db"); got != `'/tmp/my db'\''s.db'` {
		t.Errorf("shellQuote spaced = %q", got)
	}
	counts := map[string]int64{"QUEUED": 3, "RUNNING": 1, "COMPLETED": 190, "FAILED": 6, "PENDING": 0, "WEIRD": 2}
	if got := countsLine(counts, store.Statuses, "empty"); got != "3 QUEUED · 1 RUNNING · 190 COMPLETED · 6 FAILED · 2 WEIRD" {
		t.Errorf("countsLine = %q", got)
	}
}
