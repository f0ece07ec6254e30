package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func openTest(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "cf.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func enqueueN(t *testing.T, s *Store, plugin string, prios ...int64) []int64 {
	t.Helper()
	var ids []int64
	for _, p := range prios {
		id, err := s.Enqueue(context.Background(), 1, plugin, p, "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func mustGet(t *testing.T, s *Store, id int64) *Job {
	t.Helper()
	j, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

var coreTables = []string{"cf_source_root", "cf_ignore_rule", "cf_file_location", "cf_file_hash_registry",
	"cf_file_version", "cf_file_tag", "cf_routing_rule", "cf_plugin_config", "cf_plugin_subscription",
	"cf_topic_config", "cf_processing_queue", "cf_worker_node", "cf_publisher", "cf_plugin_environment",
	"cf_plugin_manifest", "cf_library_whitelist"}

func TestParseDSN(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"sqlite://casparian_flow.db", "casparian_flow.db"},
		{"sqlite://casparian_flow.db?mode=rwc", "casparian_flow.db"},
		{"sqlite:///var/lib/cf.db", "/var/lib/cf.db"},
		{"/tmp/x.db", "/tmp/x.db"},
		{"rel/x.db", "rel/x.db"},
	} {
		got, err := ParseDSN(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDSN(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "sqlite://", ":memory:", "sqlite://:memory:", "a?b", "file:x.db"} {
		if _, err := ParseDSN(bad); err == nil {
			t.Errorf("ParseDSN(%q) succeeded, want error", bad)
		}
	}
}

func TestOpenCreatesSchemaAndReopens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cf.db")
	s, err := Open(ctx, "sqlite://"+path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tbl := range coreTables {
		var n int
		if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name=?`, tbl).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: n=%d err=%v", tbl, n, err)
		}
	}
	var idx string
	if err := s.r.QueryRowContext(ctx, `SELECT sql FROM sqlite_master WHERE name='ix_queue_pop'`).Scan(&idx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(idx, "(status, priority, id)") {
		t.Errorf("ix_queue_pop = %q", idx)
	}
	var mode string
	if err := s.r.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	var sync int
	if err := s.w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil || sync != 2 {
		t.Errorf("synchronous = %d (want 2 = FULL), %v", sync, err)
	}
	if _, err := Open(ctx, path, Options{Synchronous: "sometimes"}); err == nil {
		t.Error("invalid synchronous accepted")
	}
	// The read pool is query_only.
	if _, err := s.r.ExecContext(ctx, `DELETE FROM cf_processing_queue`); err == nil {
		t.Error("read pool accepted a write")
	}
	id, err := s.Enqueue(ctx, 7, "p", 3, `{"a":1}`)
	if err != nil || id != 1 {
		t.Fatalf("enqueue = %d, %v", id, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	j := mustGet(t, s2, 1)
	if j.Status != StatusQueued || j.PluginName != "p" || j.Priority != 3 || j.FileVersionID != 7 || j.ConfigOverrides != `{"a":1}` {
		t.Errorf("reopened job = %+v", j)
	}
}

func TestOpenMigratesOriginalSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "legacy.db")
	script, err := os.ReadFile("testdata/original_schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(string(script)); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	c := newClock()
	s, err := Open(ctx, "sqlite://"+path, Options{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, col := range []string{"attempt", "lease_owner", "lease_expires_at", "next_attempt_at", "last_error", "result_json"} {
		var n int
		if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info('cf_processing_queue') WHERE name=?`, col).Scan(&n); err != nil || n != 1 {
			t.Errorf("column %s missing after migration (n=%d, err=%v)", col, n, err)
		}
	}
	// Tables the legacy DB lacked were created.
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type='table' AND name LIKE 'cf_%'`).Scan(&n); err != nil || n != len(coreTables) {
		t.Errorf("cf_ tables = %d, want %d (%v)", n, len(coreTables), err)
	}
	// Legacy timestamps parse.
	if j := mustGet(t, s, 3); !j.EndTime.Equal(time.Date(2024, 3, 1, 10, 0, 5, 0, time.UTC)) || j.ResultSummary != "Success" {
		t.Errorf("legacy completed job = %+v", j)
	}
	// Counts see the legacy rows.
	counts, err := s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"PENDING": 1, "QUEUED": 1, "RUNNING": 1, "COMPLETED": 1, "FAILED": 0, "SKIPPED": 0}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("counts[%s] = %d, want %d", k, counts[k], v)
		}
	}
	// The stuck RUNNING job without a lease is reaped and requeued.
	trs, err := s.ReapExpired(ctx, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(trs) != 1 || trs[0].ID != 2 || trs[0].To != StatusQueued || trs[0].RetryCount != 1 {
		t.Fatalf("reap = %+v", trs)
	}
	// The QUEUED legacy job is claimable (PENDING id 4 with higher priority is not) and resolves.
	cl, err := s.Claim(ctx, "w1", []string{"*"}, time.Minute)
	if err != nil || cl == nil {
		t.Fatalf("claim = %+v, %v", cl, err)
	}
	if cl.ID != 1 || cl.Attempt != 1 {
		t.Errorf("claimed %+v, want job 1 attempt 1", cl)
	}
	d, err := s.Resolve(ctx, cl.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d.FilePath != filepath.Join("/data/in", "sub", "a.csv") || d.ManifestID != 2 || d.SourceCode != "new code" || d.EnvHash != "system" {
		t.Errorf("resolve = %+v", d)
	}
	if len(d.Sinks) != 1 || d.Sinks[0] != (Sink{Topic: "output", URI: "parquet://legacy.parquet", Mode: "append"}) {
		t.Errorf("sinks = %+v", d.Sinks)
	}
	if _, err := s.Conclude(ctx, cl.ID, cl.Attempt, Outcome{Status: ReceiptSuccess}); err != nil {
		t.Fatal(err)
	}
	if j := mustGet(t, s, 4); j.Status != StatusPending {
		t.Errorf("PENDING job became %s", j.Status)
	}
	// Re-opening an already migrated database is a no-op.
	s.Close()
	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestClaimOrderPriorityThenID(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	ids := enqueueN(t, s, "p", 0, 5, 5, 1, 0)
	want := []int64{ids[1], ids[2], ids[3], ids[0], ids[4]}
	for i, w := range want {
		c, err := s.Claim(ctx, "w", []string{"p"}, time.Minute)
		if err != nil || c == nil {
			t.Fatalf("claim %d: %+v %v", i, c, err)
		}
		if c.ID != w || c.Attempt != 1 || c.PluginName != "p" || c.LeaseOwner != "w" {
			t.Errorf("claim %d = %+v, want id %d", i, c, w)
		}
		j := mustGet(t, s, c.ID)
		if j.Status != StatusRunning || j.LeaseOwner != "w" || j.Attempt != 1 || j.ClaimTime.IsZero() || !j.LeaseExpiresAt.Equal(c.LeaseExpiresAt) {
			t.Errorf("row after claim = %+v", j)
		}
	}
	if c, err := s.Claim(ctx, "w", []string{"p"}, time.Minute); c != nil || err != nil {
		t.Errorf("claim on empty queue = %+v, %v", c, err)
	}
}

func TestClaimCapabilitiesNoHeadOfLineBlocking(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	blocker, _ := s.Enqueue(ctx, 1, "unrunnable", 100, "")
	a, _ := s.Enqueue(ctx, 1, "alpha", 0, "")
	b, _ := s.Enqueue(ctx, 1, "beta", 0, "")

	c, err := s.Claim(ctx, "w1", []string{"beta"}, time.Minute)
	if err != nil || c == nil || c.ID != b {
		t.Fatalf("beta worker claimed %+v, %v; want %d", c, err, b)
	}
	c, err = s.Claim(ctx, "w2", []string{"alpha", "beta", "alpha"}, time.Minute)
	if err != nil || c == nil || c.ID != a {
		t.Fatalf("alpha worker claimed %+v, %v; want %d", c, err, a)
	}
	if c, err := s.Claim(ctx, "w3", []string{"alpha"}, time.Minute); c != nil || err != nil {
		t.Errorf("nothing left for alpha, got %+v %v", c, err)
	}
	if c, err := s.Claim(ctx, "w3", nil, time.Minute); c != nil || err != nil {
		t.Errorf("no capabilities claimed %+v %v", c, err)
	}
	if j := mustGet(t, s, blocker); j.Status != StatusQueued {
		t.Errorf("blocker status %s", j.Status)
	}
	c, err = s.Claim(ctx, "w4", []string{"*"}, time.Minute)
	if err != nil || c == nil || c.ID != blocker {
		t.Fatalf("wildcard worker claimed %+v, %v; want %d", c, err, blocker)
	}
}

func TestConcurrentClaimsExactlyOnce(t *testing.T) {
	ctx := context.Background()
	// NORMAL: no fsync per commit; the locking under test is the same.
	s := openTest(t, Options{Synchronous: "normal"})
	// A second Store on the same file stands for another process: its
	// writer competes for SQLite's lock, which BEGIN IMMEDIATE plus
	// busy_timeout must absorb without surfacing SQLITE_BUSY.
	other, err := Open(ctx, s.Path(), Options{Synchronous: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	const workers, perWorker = 8, 200
	const total = workers * perWorker
	prios := make([]int64, total)
	for i := range prios {
		prios[i] = int64(i % 3)
	}
	enqueueN(t, s, "p", prios...)

	var mu sync.Mutex
	seen := map[int64]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				st := s
				if w%2 == 1 {
					st = other
				}
				c, err := st.Claim(ctx, "w"+string(rune('A'+w)), []string{"p"}, time.Minute)
				if err != nil {
					errs <- err
					return
				}
				if c == nil {
					return
				}
				mu.Lock()
				seen[c.ID]++
				mu.Unlock()
				// Also read concurrently, as the dispatcher would.
				if j, err := st.Get(ctx, c.ID); err != nil || j.Status != StatusRunning || j.LeaseOwner != "w"+string(rune('A'+w)) {
					if err == nil {
						err = fmt.Errorf("job %d after claim: %+v", c.ID, j)
					}
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("claim error: %v", err)
	}
	if len(seen) != total {
		t.Fatalf("claimed %d distinct jobs, want %d", len(seen), total)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("job %d claimed %d times", id, n)
		}
	}
	counts, err := s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[StatusRunning] != total || counts[StatusQueued] != 0 {
		t.Errorf("counts = %v", counts)
	}
}

func TestFencingStaleAttemptAfterReap(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now, BackoffBase: time.Second, BackoffMax: time.Second})
	id := enqueueN(t, s, "p", 0)[0]
	first, err := s.Claim(ctx, "old", []string{"p"}, 10*time.Second)
	if err != nil || first == nil {
		t.Fatal(err)
	}
	c.Add(11 * time.Second)
	trs, err := s.ReapExpired(ctx, c.Now())
	if err != nil || len(trs) != 1 || trs[0].Attempt != 1 || trs[0].Owner != "old" {
		t.Fatalf("reap = %+v %v", trs, err)
	}
	before := mustGet(t, s, id)
	// The old attempt concludes late: rejected, nothing changes.
	_, err = s.Conclude(ctx, id, first.Attempt, Outcome{Status: ReceiptSuccess})
	if !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("late conclude err = %v, want ErrStaleAttempt", err)
	}
	if _, err := s.ExtendLease(ctx, id, first.Attempt, "old", time.Minute); !errors.Is(err, ErrStaleAttempt) {
		t.Errorf("late heartbeat err = %v", err)
	}
	if after := mustGet(t, s, id); *after != *before {
		t.Errorf("stale conclude changed the row:\n%+v\n%+v", before, after)
	}
	c.Add(2 * time.Second)
	second, err := s.Claim(ctx, "new", []string{"p"}, time.Minute)
	if err != nil || second == nil || second.ID != id || second.Attempt != 2 {
		t.Fatalf("reclaim = %+v %v", second, err)
	}
	if _, err := s.Conclude(ctx, id, first.Attempt, Outcome{Status: ReceiptFailed, Error: "late"}); !errors.Is(err, ErrStaleAttempt) {
		t.Fatalf("old attempt vs running new attempt: %v", err)
	}
	tr, err := s.Conclude(ctx, id, second.Attempt, Outcome{Status: ReceiptSuccess,
		Metrics: map[string]int64{"rows": 42}, Artifacts: []map[string]string{{"uri": "out.parquet"}}})
	if err != nil || tr.To != StatusCompleted {
		t.Fatalf("conclude = %+v %v", tr, err)
	}
	j := mustGet(t, s, id)
	if j.Status != StatusCompleted || j.ResultSummary != "Success" || j.EndTime.IsZero() ||
		j.ResultJSON != `{"metrics":{"rows":42},"artifacts":[{"uri":"out.parquet"}]}` {
		t.Errorf("completed row = %+v", j)
	}
	// A duplicate CONCLUDE of the winning attempt is also stale.
	if _, err := s.Conclude(ctx, id, second.Attempt, Outcome{Status: ReceiptFailed}); !errors.Is(err, ErrStaleAttempt) {
		t.Errorf("duplicate conclude err = %v", err)
	}
	if _, err := s.Conclude(ctx, 999, 1, Outcome{Status: ReceiptSuccess}); !errors.Is(err, ErrJobNotFound) {
		t.Errorf("unknown job err = %v", err)
	}
}

func TestRetriesWithBackoffThenFailed(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	base, max := time.Second, 8*time.Second
	s := openTest(t, Options{Now: c.Now, BackoffBase: base, BackoffMax: max})
	id := enqueueN(t, s, "p", 0)[0]
	for attempt := int64(1); attempt <= 6; attempt++ {
		cl, err := s.Claim(ctx, "w", []string{"p"}, time.Minute)
		if err != nil || cl == nil || cl.ID != id || cl.Attempt != attempt {
			t.Fatalf("attempt %d: claim = %+v %v", attempt, cl, err)
		}
		msg := "boom " + string(rune('0'+attempt))
		tr, err := s.Conclude(ctx, id, attempt, Outcome{Status: ReceiptFailed, Retriable: true, Error: msg})
		if err != nil {
			t.Fatal(err)
		}
		if attempt == 6 {
			want := "gave up after 6 attempts (5 retries): boom 6"
			if tr.To != StatusFailed || tr.Error != want {
				t.Fatalf("final transition = %+v", tr)
			}
			j := mustGet(t, s, id)
			if j.Status != StatusFailed || j.ErrorMessage != want || j.LastError != want || j.EndTime.IsZero() || j.RetryCount != 5 {
				t.Errorf("final row = %+v", j)
			}
			break
		}
		// Backoff window for retry n is [d/2, d), d = min(max, base*2^(n-1)).
		d := base << (attempt - 1)
		if d > max {
			d = max
		}
		wait := tr.NextAttemptAt.Sub(c.Now())
		if tr.To != StatusQueued || tr.RetryCount != attempt || wait < d/2 || wait >= d {
			t.Fatalf("attempt %d: transition %+v, wait %v not in [%v,%v)", attempt, tr, wait, d/2, d)
		}
		j := mustGet(t, s, id)
		if j.Status != StatusQueued || j.LastError != msg || j.LeaseOwner != "" || !j.ClaimTime.IsZero() {
			t.Errorf("requeued row = %+v", j)
		}
		// Not due yet.
		if cl, err := s.Claim(ctx, "w", []string{"p"}, time.Minute); cl != nil || err != nil {
			t.Fatalf("claimed before backoff elapsed: %+v %v", cl, err)
		}
		c.Add(wait)
	}
	if cl, _ := s.Claim(ctx, "w", []string{"*"}, time.Minute); cl != nil {
		t.Errorf("failed job claimed again: %+v", cl)
	}
}

func TestConcludeOutcomes(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now, MaxRetries: 1, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond})
	claim := func() *Claimed {
		t.Helper()
		c.Add(time.Second)
		cl, err := s.Claim(ctx, "w", []string{"*"}, time.Minute)
		if err != nil || cl == nil {
			t.Fatalf("claim = %+v %v", cl, err)
		}
		return cl
	}
	for _, tc := range []struct {
		name     string
		outs     []Outcome
		want     string
		wantErrs string
	}{
		{"failed not retriable", []Outcome{{Status: ReceiptFailed, Error: "bad input"}}, StatusFailed, "bad input"},
		{"rejected twice", []Outcome{{Status: ReceiptRejected}, {Status: ReceiptRejected}}, StatusFailed,
			"gave up after 2 attempts (1 retries): rejected by worker"},
		{"aborted", []Outcome{{Status: ReceiptAborted}}, StatusFailed, "aborted"},
		{"aborted requeue", []Outcome{{Status: ReceiptAborted, Requeue: true, Error: "shutdown"}}, StatusQueued, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := enqueueN(t, s, "p", 0)[0]
			var tr Transition
			for _, o := range tc.outs {
				cl := claim()
				if cl.ID != id {
					t.Fatalf("claimed %d, want %d", cl.ID, id)
				}
				var err error
				if tr, err = s.Conclude(ctx, cl.ID, cl.Attempt, o); err != nil {
					t.Fatal(err)
				}
			}
			j := mustGet(t, s, id)
			if j.Status != tc.want || tr.To != tc.want || j.ErrorMessage != tc.wantErrs {
				t.Errorf("row = %+v, transition = %+v", j, tr)
			}
			if tc.want == StatusQueued {
				if j.LastError != "shutdown" || j.RetryCount != 1 {
					t.Errorf("requeued row = %+v", j)
				}
				cl := claim()
				if _, err := s.Conclude(ctx, cl.ID, cl.Attempt, Outcome{Status: ReceiptSuccess}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	if _, err := s.Conclude(ctx, 1, 1, Outcome{Status: "WEIRD"}); err == nil {
		t.Error("unknown receipt status accepted")
	}
}

func TestReaperAndExtendLease(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now, MaxRetries: 1})
	ids := enqueueN(t, s, "p", 0, 0, 0)
	a, _ := s.Claim(ctx, "wa", []string{"p"}, 10*time.Second)
	b, _ := s.Claim(ctx, "wb", []string{"p"}, 10*time.Second)
	c.Add(5 * time.Second)
	exp, err := s.ExtendLease(ctx, b.ID, b.Attempt, "wb", 30*time.Second)
	if err != nil || !exp.Equal(c.Now().Add(30*time.Second)) {
		t.Fatalf("extend = %v %v", exp, err)
	}
	if _, err := s.ExtendLease(ctx, b.ID, b.Attempt, "wa", time.Minute); !errors.Is(err, ErrStaleAttempt) {
		t.Errorf("extend by wrong owner err = %v", err)
	}
	c.Add(6 * time.Second) // a expired (10s), b extended to 35s
	if trs, err := s.ReapExpired(ctx, c.Now().Add(-2*time.Second)); err != nil || len(trs) != 0 {
		t.Fatalf("reap before expiry = %+v %v", trs, err)
	}
	trs, err := s.ReapExpired(ctx, c.Now())
	if err != nil || len(trs) != 1 {
		t.Fatalf("reap = %+v %v", trs, err)
	}
	if trs[0].ID != a.ID || trs[0].To != StatusQueued || trs[0].Owner != "wa" ||
		trs[0].Error != `lease expired: worker "wa" did not conclude attempt 1` {
		t.Errorf("reap transition = %+v", trs[0])
	}
	if j := mustGet(t, s, b.ID); j.Status != StatusRunning {
		t.Errorf("extended job reaped: %+v", j)
	}
	if j := mustGet(t, s, ids[2]); j.Status != StatusQueued || j.Attempt != 0 {
		t.Errorf("untouched job = %+v", j)
	}
	// Lost again past the retry limit → FAILED with the last error.
	c.Add(time.Hour)
	a2, _ := s.Claim(ctx, "wa", []string{"p"}, time.Second)
	if a2 == nil || a2.ID != a.ID || a2.Attempt != 2 {
		t.Fatalf("reclaim = %+v", a2)
	}
	c.Add(2 * time.Second)
	trs, err = s.ReapExpired(ctx, c.Now())
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]Transition{}
	for _, tr := range trs {
		got[tr.ID] = tr
	}
	if tr := got[a.ID]; tr.To != StatusFailed ||
		tr.Error != `gave up after 2 attempts (1 retries): lease expired: worker "wa" did not conclude attempt 2` {
		t.Errorf("final reap = %+v", tr)
	}
	if tr := got[b.ID]; tr.To != StatusQueued {
		t.Errorf("b reap = %+v", tr)
	}
}

func TestReleaseWorker(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	enqueueN(t, s, "p", 0, 0, 0)
	x1, _ := s.Claim(ctx, "x", []string{"p"}, time.Minute)
	y1, _ := s.Claim(ctx, "y", []string{"p"}, time.Minute)
	x2, _ := s.Claim(ctx, "x", []string{"p"}, time.Minute)
	trs, err := s.ReleaseWorker(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, tr := range trs {
		if tr.To != StatusQueued || tr.Owner != "x" {
			t.Errorf("transition %+v", tr)
		}
		ids = append(ids, tr.ID)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	if len(ids) != 2 || ids[0] != x1.ID || ids[1] != x2.ID {
		t.Fatalf("released %v, want [%d %d]", ids, x1.ID, x2.ID)
	}
	if j := mustGet(t, s, y1.ID); j.Status != StatusRunning || j.LeaseOwner != "y" {
		t.Errorf("other worker's job = %+v", j)
	}
	if _, err := s.Conclude(ctx, x1.ID, x1.Attempt, Outcome{Status: ReceiptSuccess}); !errors.Is(err, ErrStaleAttempt) {
		t.Errorf("evicted worker conclude err = %v", err)
	}
	if trs, err := s.ReleaseWorker(ctx, "nobody"); err != nil || len(trs) != 0 {
		t.Errorf("release unknown = %+v %v", trs, err)
	}
}

func TestJobIDOverflow(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxJobID: 3})
	ids := enqueueN(t, s, "p", 0, 0, 0)
	if ids[2] != 3 {
		t.Fatalf("ids = %v", ids)
	}
	if _, err := s.Enqueue(ctx, 1, "p", 0, ""); !errors.Is(err, ErrJobIDExhausted) {
		t.Fatalf("4th enqueue err = %v", err)
	}

	s2 := openTest(t, Options{})
	if _, err := s2.w.ExecContext(ctx, `INSERT INTO cf_processing_queue (id, file_version_id, plugin_name, status)
		VALUES (9223372036854775807, 1, 'p', 'COMPLETED')`); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Enqueue(ctx, 1, "p", 0, ""); !errors.Is(err, ErrJobIDExhausted) {
		t.Fatalf("enqueue past 2^63-1 err = %v", err)
	}
	var n int
	if err := s2.r.QueryRowContext(ctx, `SELECT count(*) FROM cf_processing_queue`).Scan(&n); err != nil || n != 1 {
		t.Errorf("rows = %d %v (no random rowid fallback)", n, err)
	}
	if _, err := s2.Enqueue(ctx, 1, "p", 0, "{not json"); err == nil {
		t.Error("invalid overrides accepted")
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n      int
		jitter float64
		want   time.Duration
	}{
		{1, 0, 500 * time.Millisecond},
		{1, 0.5, 750 * time.Millisecond},
		{2, 0, time.Second},
		{3, 0, 2 * time.Second},
		{10, 0, 30 * time.Second},
		{100, 0.999, 30*time.Second + time.Duration(0.999*float64(30*time.Second))},
		{0, 0, 500 * time.Millisecond},
	} {
		if got := Backoff(tc.n, time.Second, time.Minute, tc.jitter); got != tc.want {
			t.Errorf("Backoff(%d, %v) = %v, want %v", tc.n, tc.jitter, got, tc.want)
		}
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	enqueueN(t, s, "a", 0, 0)
	enqueueN(t, s, "b", 0)
	if _, err := s.Claim(ctx, "w", []string{"a"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	all, err := s.List(ctx, Filter{})
	if err != nil || len(all) != 3 || all[0].ID != 3 || all[2].ID != 1 {
		t.Fatalf("list all = %+v %v", all, err)
	}
	run, err := s.List(ctx, Filter{Statuses: []string{StatusRunning}})
	if err != nil || len(run) != 1 || run[0].ID != 1 || run[0].LeaseOwner != "w" {
		t.Fatalf("list running = %+v %v", run, err)
	}
	page, err := s.List(ctx, Filter{Plugin: "a", BeforeID: 3, Limit: 1})
	if err != nil || len(page) != 1 || page[0].ID != 2 {
		t.Fatalf("list page = %+v %v", page, err)
	}
}

func TestTimeFormat(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	got := fmtTime(ts)
	if got != "2026-01-02T02:04:05.000000000Z" {
		t.Errorf("fmtTime = %q", got)
	}
	back, err := time.Parse(time.RFC3339Nano, got)
	if err != nil || !back.Equal(ts) {
		t.Errorf("RFC3339Nano parse = %v %v", back, err)
	}
	// Fixed width: text order is time order.
	if !(fmtTime(ts) < fmtTime(ts.Add(time.Nanosecond))) || !(fmtTime(ts.Add(100*time.Millisecond)) < fmtTime(ts.Add(time.Second))) {
		t.Error("text order differs from time order")
	}
	for in, want := range map[string]time.Time{
		"2024-03-01 10:00:05":        time.Date(2024, 3, 1, 10, 0, 5, 0, time.UTC),
		"2024-03-01 10:00:05.250000": time.Date(2024, 3, 1, 10, 0, 5, 250e6, time.UTC),
		"2024-03-01T10:00:05+02:00":  time.Date(2024, 3, 1, 8, 0, 5, 0, time.UTC),
	} {
		if got, err := ParseTime(in); err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v %v", in, got, err)
		}
	}
}

// Another process holding the write lock longer than busy_timeout delays a
// write instead of failing it; the caller's ctx still bounds the wait.
func TestWriteRetriesWhileAnotherProcessHoldsTheLock(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{BusyTimeout: 20 * time.Millisecond})
	raw, err := sql.Open("sqlite", s.Path()+"?_pragma=busy_timeout(1000)")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hold := func() *sql.Conn {
		conn, err := raw.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			t.Fatal(err)
		}
		return conn
	}
	release := func(conn *sql.Conn) {
		if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
			t.Error(err)
		}
		conn.Close()
	}

	conn := hold()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		release(conn)
	}()
	id, err := s.Enqueue(ctx, 1, "p", 0, "")
	<-done
	if err != nil || id != 1 {
		t.Fatalf("enqueue under foreign lock = %d, %v", id, err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("enqueue returned after %v, before the lock was released", waited)
	}

	conn = hold()
	defer release(conn)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, err = s.Enqueue(short, 1, "p", 0, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enqueue with short ctx err = %v", err)
	}
}

func TestEnqueueMany(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{MaxJobID: 5})
	ids, err := s.EnqueueMany(ctx, []JobSpec{{FileVersionID: 1, PluginName: "a"}, {FileVersionID: 2, PluginName: "b", Priority: 3,
		ConfigOverrides: `{"k":1}`}})
	if err != nil || len(ids) != 2 || ids[0] != 1 || ids[1] != 2 {
		t.Fatalf("ids %v err %v, want [1 2]", ids, err)
	}
	if j := mustGet(t, s, 2); j.PluginName != "b" || j.Priority != 3 || j.FileVersionID != 2 || j.Status != StatusQueued {
		t.Errorf("job 2 = %+v", j)
	}
	// All or none: one bad job enqueues nothing.
	if _, err := s.EnqueueMany(ctx, []JobSpec{{FileVersionID: 1, PluginName: "a"}, {FileVersionID: 1, PluginName: "a",
		ConfigOverrides: "{bad"}}); err == nil || !strings.Contains(err.Error(), "job 2 of 2") {
		t.Errorf("invalid overrides: err %v", err)
	}
	// Four more do not fit under MaxJobID 5: none is added.
	if _, err := s.EnqueueMany(ctx, make4(t)); !errors.Is(err, ErrJobIDExhausted) {
		t.Errorf("past MaxJobID: err %v", err)
	}
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM cf_processing_queue`).Scan(&n); err != nil || n != 2 {
		t.Errorf("rows = %d %v, want 2", n, err)
	}
	// Three still fit.
	if ids, err := s.EnqueueMany(ctx, make4(t)[:3]); err != nil || ids[2] != 5 {
		t.Errorf("ids %v err %v, want up to 5", ids, err)
	}
}

func make4(*testing.T) []JobSpec {
	return []JobSpec{{FileVersionID: 1, PluginName: "p"}, {FileVersionID: 1, PluginName: "p"},
		{FileVersionID: 1, PluginName: "p"}, {FileVersionID: 1, PluginName: "p"}}
}

// A new queue file (and its WAL) is private to its owner: enqueueing is
// writing it. An existing file keeps its mode.
func TestNewDatabaseIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Counts(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), st.Mode().Perm())
		}
	}
	shared := filepath.Join(t.TempDir(), "shared.db")
	if err := os.WriteFile(shared, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(context.Background(), shared, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if st, _ := os.Stat(shared); st.Mode().Perm() != 0o640 {
		t.Errorf("existing file's mode changed to %v", st.Mode().Perm())
	}
}
