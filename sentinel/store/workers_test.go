package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func workerByID(t *testing.T, s *Store, id string) WorkerRecord {
	t.Helper()
	ws, err := s.ListWorkers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.WorkerID == id {
			return w
		}
	}
	t.Fatalf("worker %q not listed in %+v", id, ws)
	return WorkerRecord{}
}

func workerRows(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT count(*) FROM cf_worker_node`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUpsertWorkerRoundTripAndHeartbeat(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	start := c.Now().Add(-time.Minute)
	w := WorkerRecord{
		WorkerID: "w-1", PID: 4242, Endpoint: "tcp://127.0.0.1:5555",
		Capabilities: []string{"csv_parser", "*"}, Slots: 4, BusySlots: 2, ActiveJobIDs: []int64{7, 9},
		StartedAt: start, LastHeartbeat: c.Now(),
	}
	if err := s.UpsertWorker(ctx, w); err != nil {
		t.Fatal(err)
	}
	got := workerByID(t, s, "w-1")
	want := w
	want.Hostname = "w-1" // "" → WorkerID
	want.Status = WorkerActive
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	var current sql.NullInt64
	var hb, host string
	if err := s.r.QueryRow(`SELECT current_job_id, CAST(last_heartbeat AS TEXT), ip_address FROM cf_worker_node WHERE worker_id='w-1'`).
		Scan(&current, &hb, &host); err != nil {
		t.Fatal(err)
	}
	if current.Int64 != 7 || hb != fmtTime(c.Now()) || host != "tcp://127.0.0.1:5555" {
		t.Errorf("current_job_id=%v last_heartbeat=%q ip_address=%q", current, hb, host)
	}

	// A heartbeat: same (hostname, pid), zero StartedAt and LastHeartbeat
	// keep started_at and stamp now; no job → current_job_id NULL.
	c.Add(5 * time.Second)
	w2 := WorkerRecord{WorkerID: "w-1", PID: 4242, Endpoint: w.Endpoint, Capabilities: w.Capabilities, Slots: 4}
	if err := s.UpsertWorker(ctx, w2); err != nil {
		t.Fatal(err)
	}
	if n := workerRows(t, s); n != 1 {
		t.Fatalf("%d rows after heartbeat, want 1", n)
	}
	got = workerByID(t, s, "w-1")
	if !got.StartedAt.Equal(start) || !got.LastHeartbeat.Equal(c.Now()) || got.BusySlots != 0 || got.ActiveJobIDs != nil {
		t.Errorf("after heartbeat: %+v", got)
	}
	if err := s.r.QueryRow(`SELECT current_job_id FROM cf_worker_node WHERE worker_id='w-1'`).Scan(&current); err != nil || current.Valid {
		t.Errorf("current_job_id = %v, %v; want NULL", current, err)
	}

	// A new row with zero StartedAt starts now; an explicit hostname is kept.
	if err := s.UpsertWorker(ctx, WorkerRecord{WorkerID: "w-2", Hostname: "box", PID: 1}); err != nil {
		t.Fatal(err)
	}
	got = workerByID(t, s, "w-2")
	if got.Hostname != "box" || !got.StartedAt.Equal(c.Now()) || !got.LastHeartbeat.Equal(c.Now()) || got.Capabilities != nil {
		t.Errorf("w-2 = %+v", got)
	}

	// An EVICTED or GONE record holds no jobs.
	if err := s.UpsertWorker(ctx, WorkerRecord{WorkerID: "w-3", PID: 3, Status: WorkerGone, BusySlots: 1, Slots: 1,
		ActiveJobIDs: []int64{5}, StatusReason: "bye"}); err != nil {
		t.Fatal(err)
	}
	if got := workerByID(t, s, "w-3"); got.BusySlots != 0 || got.ActiveJobIDs != nil || got.Status != WorkerGone || got.StatusReason != "bye" {
		t.Errorf("w-3 = %+v", got)
	}

	for _, bad := range []WorkerRecord{
		{},
		{WorkerID: "x", Status: "SLEEPY"},
		{WorkerID: "x", Slots: -1},
		{WorkerID: "x", BusySlots: -1},
	} {
		if err := s.UpsertWorker(ctx, bad); err == nil {
			t.Errorf("UpsertWorker(%+v) succeeded", bad)
		}
	}
}

func TestSetWorkerStatusAndMarkGone(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	// Two registrations share a worker id (e.g. the same id from two hosts).
	for _, w := range []WorkerRecord{
		{WorkerID: "a", Hostname: "h1", PID: 1, Slots: 2, BusySlots: 1, ActiveJobIDs: []int64{11}},
		{WorkerID: "a", Hostname: "h2", PID: 1, Slots: 2, BusySlots: 1, ActiveJobIDs: []int64{12}},
		{WorkerID: "b", PID: 2, Slots: 1, BusySlots: 1, ActiveJobIDs: []int64{13}},
		{WorkerID: "c", PID: 3, Slots: 1},
	} {
		if err := s.UpsertWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetWorkerStatus(ctx, "b", WorkerDraining, "shutting down"); err != nil {
		t.Fatal(err)
	}
	if got := workerByID(t, s, "b"); got.Status != WorkerDraining || got.StatusReason != "shutting down" ||
		!reflect.DeepEqual(got.ActiveJobIDs, []int64{13}) || got.BusySlots != 1 {
		t.Errorf("draining b = %+v (a draining worker keeps its jobs)", got)
	}
	if err := s.SetWorkerStatus(ctx, "a", WorkerEvicted, "silent for 31s"); err != nil {
		t.Fatal(err)
	}
	ws, err := s.ListWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evicted := 0
	for _, w := range ws {
		if w.WorkerID == "a" {
			evicted++
			if w.Status != WorkerEvicted || w.StatusReason != "silent for 31s" || w.ActiveJobIDs != nil || w.BusySlots != 0 {
				t.Errorf("evicted a = %+v", w)
			}
		}
	}
	if evicted != 2 {
		t.Errorf("%d rows of a evicted, want 2", evicted)
	}
	if err := s.SetWorkerStatus(ctx, "nobody", WorkerGone, ""); !errors.Is(err, ErrWorkerNotFound) {
		t.Errorf("unknown worker: %v, want ErrWorkerNotFound", err)
	}
	if err := s.SetWorkerStatus(ctx, "b", "ASLEEP", ""); err == nil {
		t.Error("unknown status accepted")
	}
	if err := s.SetWorkerStatus(ctx, "", WorkerGone, ""); err == nil {
		t.Error("empty worker id accepted")
	}

	// b (DRAINING) and c (ACTIVE) become GONE; the EVICTED rows stay.
	n, err := s.MarkWorkersGone(ctx, "sentinel restarted")
	if err != nil || n != 2 {
		t.Fatalf("MarkWorkersGone = %d, %v; want 2", n, err)
	}
	for _, id := range []string{"b", "c"} {
		if got := workerByID(t, s, id); got.Status != WorkerGone || got.StatusReason != "sentinel restarted" || got.ActiveJobIDs != nil || got.BusySlots != 0 {
			t.Errorf("%s after MarkWorkersGone = %+v", id, got)
		}
	}
	if got := workerByID(t, s, "a"); got.Status != WorkerEvicted {
		t.Errorf("a after MarkWorkersGone = %+v", got)
	}
	if n, err := s.MarkWorkersGone(ctx, "again"); err != nil || n != 0 {
		t.Errorf("second MarkWorkersGone = %d, %v", n, err)
	}
}

func TestListWorkersOrder(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	t0 := c.Now()
	for _, w := range []WorkerRecord{
		{WorkerID: "gone-new", PID: 1, Status: WorkerGone, LastHeartbeat: t0.Add(10 * time.Second)},
		{WorkerID: "active-old", PID: 2, LastHeartbeat: t0.Add(-time.Hour)},
		{WorkerID: "evicted-old", PID: 3, Status: WorkerEvicted, LastHeartbeat: t0.Add(-2 * time.Hour)},
		{WorkerID: "draining-new", PID: 4, Status: WorkerDraining, LastHeartbeat: t0},
		{WorkerID: "active-new", PID: 5, LastHeartbeat: t0},
	} {
		if err := s.UpsertWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	ws, err := s.ListWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, w := range ws {
		ids = append(ids, w.WorkerID)
	}
	want := []string{"active-new", "draining-new", "active-old", "gone-new", "evicted-old"}
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("order = %v, want %v", ids, want)
	}
	empty := openTest(t, Options{})
	if ws, err := empty.ListWorkers(ctx); err != nil || len(ws) != 0 {
		t.Errorf("empty list = %v, %v", ws, err)
	}
}

func TestPruneWorkers(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	s := openTest(t, Options{Now: c.Now})
	t0 := c.Now()
	for _, w := range []WorkerRecord{
		{WorkerID: "active-old", PID: 1, LastHeartbeat: t0.Add(-48 * time.Hour)},
		{WorkerID: "gone-old", PID: 2, Status: WorkerGone, LastHeartbeat: t0.Add(-48 * time.Hour)},
		{WorkerID: "evicted-old", PID: 3, Status: WorkerEvicted, LastHeartbeat: t0.Add(-25 * time.Hour)},
		{WorkerID: "draining-old", PID: 4, Status: WorkerDraining, LastHeartbeat: t0.Add(-25 * time.Hour)},
		{WorkerID: "gone-new", PID: 5, Status: WorkerGone, LastHeartbeat: t0.Add(-time.Hour)},
	} {
		if err := s.UpsertWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	// A GONE row in the original's naive format, older than the cut-off
	// (as text it would sort after ours for the same day).
	if _, err := s.w.Exec(`INSERT INTO cf_worker_node (hostname, pid, status, last_heartbeat)
		VALUES ('legacy', 9, 'GONE', ?)`, t0.Add(-30*time.Hour).Format("2006-01-02 15:04:05")); err != nil {
		t.Fatal(err)
	}
	n, err := s.PruneWorkers(ctx, t0.Add(-24*time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("PruneWorkers = %d, %v; want 4", n, err)
	}
	ws, err := s.ListWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, w := range ws {
		ids = append(ids, w.WorkerID)
	}
	if want := []string{"active-old", "gone-new"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("left = %v, want %v", ids, want)
	}
}

// legacyWorkerDDL is cf_worker_node as the original created it (SQLAlchemy,
// SQLite dialect), with rows in the formats it wrote.
const legacyWorkerDDL = `
CREATE TABLE cf_worker_node (
	hostname VARCHAR(100) NOT NULL,
	pid INTEGER NOT NULL,
	ip_address VARCHAR(50),
	env_signature VARCHAR(100),
	started_at DATETIME,
	last_heartbeat DATETIME,
	status VARCHAR(50),
	current_job_id INTEGER,
	PRIMARY KEY (hostname, pid)
);
INSERT INTO cf_worker_node VALUES ('old-box', 100, '10.0.0.5', 'py3.11', '2024-03-01 09:00:00', '2024-03-01 10:00:00', 'ACTIVE', 3);
INSERT INTO cf_worker_node VALUES ('old-box', 101, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO cf_worker_node VALUES ('older-box', 7, NULL, NULL, '2024-02-01T08:00:00Z', '2024-02-01 08:30:00.123456', 'OFFLINE', NULL);
`

func TestWorkersOnOriginalTable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "legacy.db")
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(legacyWorkerDDL); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	c := newClock()
	s, err := Open(ctx, "sqlite://"+path, Options{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, col := range []string{"worker_id", "capabilities", "slots", "busy_slots", "active_job_ids", "status_reason"} {
		var n int
		if err := s.r.QueryRow(`SELECT count(*) FROM pragma_table_info('cf_worker_node') WHERE name=?`, col).Scan(&n); err != nil || n != 1 {
			t.Errorf("column %s missing after migration (n=%d, err=%v)", col, n, err)
		}
	}
	var idx int
	if err := s.r.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type='index' AND name='ix_worker_node_worker_id'`).Scan(&idx); err != nil || idx != 1 {
		t.Errorf("worker_id index: n=%d err=%v", idx, err)
	}

	ws, err := s.ListWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 3 {
		t.Fatalf("listed %d legacy rows, want 3: %+v", len(ws), ws)
	}
	// ACTIVE (and NULL = ACTIVE) first, the one with a heartbeat before the one without.
	want0 := WorkerRecord{Hostname: "old-box", PID: 100, Endpoint: "10.0.0.5", ActiveJobIDs: []int64{3},
		Status: WorkerActive, StartedAt: time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC),
		LastHeartbeat: time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)}
	if !reflect.DeepEqual(ws[0], want0) {
		t.Errorf("legacy row 0:\n got %+v\nwant %+v", ws[0], want0)
	}
	if w := ws[1]; w.Hostname != "old-box" || w.PID != 101 || w.Status != WorkerActive || !w.LastHeartbeat.IsZero() || w.ActiveJobIDs != nil {
		t.Errorf("legacy row 1 = %+v", w)
	}
	if w := ws[2]; w.Hostname != "older-box" || w.Status != "OFFLINE" ||
		!w.LastHeartbeat.Equal(time.Date(2024, 2, 1, 8, 30, 0, 123456000, time.UTC)) {
		t.Errorf("legacy row 2 = %+v", w)
	}

	// The sentinel's start marks the original's live rows GONE.
	n, err := s.MarkWorkersGone(ctx, "sentinel started")
	if err != nil || n != 2 {
		t.Fatalf("MarkWorkersGone = %d, %v; want 2", n, err)
	}
	// Upserting onto a legacy key replaces it in place.
	if err := s.UpsertWorker(ctx, WorkerRecord{WorkerID: "w-new", Hostname: "old-box", PID: 100, Slots: 2,
		Capabilities: []string{"p"}}); err != nil {
		t.Fatal(err)
	}
	if n := workerRows(t, s); n != 3 {
		t.Errorf("%d rows after upsert onto a legacy key, want 3", n)
	}
	got := workerByID(t, s, "w-new")
	if got.Status != WorkerActive || got.Endpoint != "" || !got.StartedAt.Equal(time.Date(2024, 3, 1, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("upserted legacy key = %+v", got)
	}
	// Prune: the GONE row without heartbeat and the OFFLINE one go.
	if n, err := s.PruneWorkers(ctx, c.Now().Add(-time.Hour)); err != nil || n != 2 {
		t.Errorf("PruneWorkers = %d, %v; want 2", n, err)
	}
	if n := workerRows(t, s); n != 1 {
		t.Errorf("%d rows after prune, want 1", n)
	}
	s.Close()
	// Re-opening the migrated database is a no-op.
	s2, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestWorkerRowWithBadJSON(t *testing.T) {
	s := openTest(t, Options{})
	if _, err := s.w.Exec(`INSERT INTO cf_worker_node (hostname, pid, worker_id, capabilities, active_job_ids, current_job_id)
		VALUES ('h', 1, 'w', 'not json', '{', 4)`); err != nil {
		t.Fatal(err)
	}
	got := workerByID(t, s, "w")
	if got.Capabilities != nil || got.ActiveJobIDs != nil || got.Status != WorkerActive {
		t.Errorf("bad JSON row = %+v", got)
	}
}
