package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Worker statuses in cf_worker_node.status.
const (
	WorkerActive   = "ACTIVE"   // connected, heartbeating
	WorkerDraining = "DRAINING" // said it is shutting down; takes no new jobs
	WorkerEvicted  = "EVICTED"  // silent past the heartbeat timeout, or misbehaving
	WorkerGone     = "GONE"     // disconnected cleanly, or the sentinel restarted
)

// WorkerStatuses lists every worker status, live ones first.
var WorkerStatuses = []string{WorkerActive, WorkerDraining, WorkerEvicted, WorkerGone}

// ErrWorkerNotFound: no cf_worker_node row has that worker id.
var ErrWorkerNotFound = errors.New("worker not found")

// WorkerRecord is one row of cf_worker_node, the registry of workers the
// sentinel has seen. The table is the original's; the store adds worker_id,
// capabilities, slots, busy_slots, active_job_ids and status_reason.
//
// Rows written by the original have no worker id, capabilities or slots:
// they read back with WorkerID "", nil slices and zero counts, ActiveJobIDs
// taken from current_job_id, and a NULL status as WorkerActive (the
// column's default).
type WorkerRecord struct {
	WorkerID      string
	Hostname      string // "" → stored as WorkerID
	PID           int
	Endpoint      string // stored in ip_address (e.g. "tcp://127.0.0.1:5555" the worker connected to)
	Capabilities  []string
	Slots         int
	BusySlots     int
	ActiveJobIDs  []int64
	Status        string // "" → WorkerActive
	StatusReason  string
	StartedAt     time.Time // first IDENTIFY of this registration
	LastHeartbeat time.Time
}

func validWorkerStatus(s string) bool {
	for _, w := range WorkerStatuses {
		if s == w {
			return true
		}
	}
	return false
}

// workerHoldsJobs reports whether a worker in status s can hold jobs. An
// EVICTED or GONE worker's jobs have been (or are being) released, so its
// row keeps no job ids.
func workerHoldsJobs(s string) bool { return s == WorkerActive || s == WorkerDraining }

// UpsertWorker records w, keyed by (hostname, pid): it inserts the row or
// replaces every column of the existing one. Hostname "" is stored as
// WorkerID; Status "" as WorkerActive; a zero LastHeartbeat as now; a zero
// StartedAt keeps the stored started_at (now for a new row).
// current_job_id is the first active job id, or NULL. An EVICTED or GONE
// worker is stored with no busy slots and no job ids.
func (s *Store) UpsertWorker(ctx context.Context, w WorkerRecord) error {
	if w.Hostname == "" {
		w.Hostname = w.WorkerID
	}
	if w.Hostname == "" {
		return errors.New("upsert worker: worker id and hostname are both empty")
	}
	if w.Status == "" {
		w.Status = WorkerActive
	}
	if !validWorkerStatus(w.Status) {
		return fmt.Errorf("upsert worker %s: unknown status %q", w.WorkerID, w.Status)
	}
	if w.Slots < 0 || w.BusySlots < 0 {
		return fmt.Errorf("upsert worker %s: negative slots (%d busy of %d)", w.WorkerID, w.BusySlots, w.Slots)
	}
	if !workerHoldsJobs(w.Status) {
		w.BusySlots, w.ActiveJobIDs = 0, nil
	}
	caps := w.Capabilities
	if caps == nil {
		caps = []string{}
	}
	capsJSON, err := json.Marshal(caps)
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.WorkerID, err)
	}
	ids := w.ActiveJobIDs
	if ids == nil {
		ids = []int64{}
	}
	idsJSON, err := json.Marshal(ids)
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.WorkerID, err)
	}
	var current sql.NullInt64
	if len(w.ActiveJobIDs) > 0 {
		current = sql.NullInt64{Int64: w.ActiveJobIDs[0], Valid: true}
	}
	now := s.now()
	hb := w.LastHeartbeat
	if hb.IsZero() {
		hb = now
	}
	var started sql.NullString
	if !w.StartedAt.IsZero() {
		started = sql.NullString{String: fmtTime(w.StartedAt), Valid: true}
	}
	err = s.softWriteTx(ctx, func(tx *wtx) error {
		// UPDATE then INSERT rather than ON CONFLICT: a table created by the
		// original is used as is, whatever its constraints.
		res, err := tx.ExecContext(ctx, `UPDATE cf_worker_node SET worker_id = ?, ip_address = ?,
			capabilities = ?, slots = ?, busy_slots = ?, active_job_ids = ?, current_job_id = ?,
			status = ?, status_reason = ?, started_at = coalesce(?, started_at, ?), last_heartbeat = ?
			WHERE hostname = ? AND pid = ?`,
			nullStr(w.WorkerID), nullStr(w.Endpoint), string(capsJSON), w.Slots, w.BusySlots, string(idsJSON),
			current, w.Status, nullStr(w.StatusReason), started, fmtTime(now), fmtTime(hb), w.Hostname, w.PID)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil || n > 0 {
			return err
		}
		if !started.Valid {
			started = sql.NullString{String: fmtTime(now), Valid: true}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO cf_worker_node (hostname, pid, worker_id, ip_address,
			capabilities, slots, busy_slots, active_job_ids, current_job_id, status, status_reason,
			started_at, last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			w.Hostname, w.PID, nullStr(w.WorkerID), nullStr(w.Endpoint), string(capsJSON), w.Slots,
			w.BusySlots, string(idsJSON), current, w.Status, nullStr(w.StatusReason), started, fmtTime(hb))
		return err
	})
	if err != nil {
		return fmt.Errorf("upsert worker %s: %w", w.WorkerID, err)
	}
	return nil
}

// SetWorkerStatus sets status and status_reason of every row with that
// worker id. Moving to EVICTED or GONE also clears busy_slots,
// active_job_ids and current_job_id (the caller releases the jobs). It
// returns ErrWorkerNotFound when no row has that id.
func (s *Store) SetWorkerStatus(ctx context.Context, workerID, status, reason string) error {
	if workerID == "" {
		return errors.New("set worker status: empty worker id")
	}
	if !validWorkerStatus(status) {
		return fmt.Errorf("set worker %s status: unknown status %q", workerID, status)
	}
	q := `UPDATE cf_worker_node SET status = ?, status_reason = ? WHERE worker_id = ?`
	if !workerHoldsJobs(status) {
		q = `UPDATE cf_worker_node SET status = ?, status_reason = ?, busy_slots = 0,
			active_job_ids = '[]', current_job_id = NULL WHERE worker_id = ?`
	}
	var n int64
	err := s.softWriteTx(ctx, func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, q, status, nullStr(reason), workerID)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("set worker %s status %s: %w", workerID, status, err)
	}
	if n == 0 {
		return fmt.Errorf("set worker %s status %s: %w", workerID, status, ErrWorkerNotFound)
	}
	return nil
}

// MarkWorkersGone sets every ACTIVE or DRAINING row (and every row with a
// NULL status, which the original's default makes ACTIVE) to GONE with
// reason, clearing its jobs, and returns how many rows changed. The
// sentinel calls it when it starts (no worker is connected to a process
// that just started) and when it stops cleanly.
func (s *Store) MarkWorkersGone(ctx context.Context, reason string) (int64, error) {
	var n int64
	err := s.softWriteTx(ctx, func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, `UPDATE cf_worker_node SET status = 'GONE', status_reason = ?,
			busy_slots = 0, active_job_ids = '[]', current_job_id = NULL
			WHERE status IS NULL OR status IN ('ACTIVE', 'DRAINING')`, nullStr(reason))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("mark workers gone: %w", err)
	}
	return n, nil
}

const workerCols = `coalesce(worker_id, ''), hostname, coalesce(pid, 0), coalesce(ip_address, ''),
	coalesce(capabilities, ''), coalesce(slots, 0), coalesce(busy_slots, 0), coalesce(active_job_ids, ''),
	current_job_id, coalesce(status, ''), coalesce(status_reason, ''), started_at, last_heartbeat`

func scanWorker(sc interface{ Scan(...any) error }) (WorkerRecord, error) {
	var w WorkerRecord
	var host sql.NullString
	var caps, ids string
	var current sql.NullInt64
	var started, hb dbTime
	var slots, busy, pid int64
	if err := sc.Scan(&w.WorkerID, &host, &pid, &w.Endpoint, &caps, &slots, &busy, &ids, &current,
		&w.Status, &w.StatusReason, &started, &hb); err != nil {
		return w, err
	}
	w.Hostname, w.PID, w.Slots, w.BusySlots = host.String, int(pid), int(slots), int(busy)
	w.StartedAt, w.LastHeartbeat = started.T, hb.T
	if w.Status == "" {
		w.Status = WorkerActive
	}
	// Unparsable JSON (hand-edited rows) reads as empty rather than failing
	// the whole listing.
	if caps != "" {
		_ = json.Unmarshal([]byte(caps), &w.Capabilities)
	}
	if ids != "" {
		_ = json.Unmarshal([]byte(ids), &w.ActiveJobIDs)
	} else if current.Valid {
		w.ActiveJobIDs = []int64{current.Int64}
	}
	if len(w.Capabilities) == 0 {
		w.Capabilities = nil
	}
	if len(w.ActiveJobIDs) == 0 {
		w.ActiveJobIDs = nil
	}
	return w, nil
}

// ListWorkers returns every cf_worker_node row: ACTIVE and DRAINING first,
// then by last_heartbeat, newest first (rows without one last), then by
// worker id, hostname and pid.
func (s *Store) ListWorkers(ctx context.Context) ([]WorkerRecord, error) {
	rows, err := s.readQuery(ctx, `SELECT `+workerCols+` FROM cf_worker_node`)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	defer rows.Close()
	var out []WorkerRecord
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			return nil, fmt.Errorf("list workers: %w", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	// Sorted here, not in SQL: the original wrote last_heartbeat in other
	// formats, which do not compare as text with ours.
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if la, lb := workerHoldsJobs(a.Status), workerHoldsJobs(b.Status); la != lb {
			return la
		}
		if !a.LastHeartbeat.Equal(b.LastHeartbeat) {
			return a.LastHeartbeat.After(b.LastHeartbeat)
		}
		if c := strings.Compare(a.WorkerID, b.WorkerID); c != 0 {
			return c < 0
		}
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c < 0
		}
		return a.PID < b.PID
	})
	return out, nil
}

// PruneWorkers deletes the rows whose status is not ACTIVE (NULL counts as
// ACTIVE) and whose last_heartbeat is before olderThan, and returns how
// many it deleted. A non-ACTIVE row without a readable last_heartbeat is
// deleted too.
func (s *Store) PruneWorkers(ctx context.Context, olderThan time.Time) (int64, error) {
	var n int64
	err := s.softWriteTx(ctx, func(tx *wtx) error {
		n = 0 // fn may be retried
		// The comparison is done in Go: legacy timestamps do not compare as text.
		rows, err := tx.QueryContext(ctx, `SELECT hostname, pid, last_heartbeat FROM cf_worker_node
			WHERE status IS NOT NULL AND status <> 'ACTIVE'`)
		if err != nil {
			return err
		}
		type key struct {
			host sql.NullString
			pid  sql.NullInt64
		}
		var stale []key
		for rows.Next() {
			var k key
			var hb dbTime
			if err := rows.Scan(&k.host, &k.pid, &hb); err != nil {
				rows.Close()
				return err
			}
			if hb.T.Before(olderThan) {
				stale = append(stale, k)
			}
		}
		if err := rows.Err(); err != nil {
			rows.Close()
			return err
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, k := range stale {
			res, err := tx.ExecContext(ctx, `DELETE FROM cf_worker_node WHERE hostname IS ? AND pid IS ?
				AND status IS NOT NULL AND status <> 'ACTIVE'`, k.host, k.pid)
			if err != nil {
				return err
			}
			d, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += d
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune workers: %w", err)
	}
	return n, nil
}
