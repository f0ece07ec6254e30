package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Job statuses (cf_processing_queue.status). See docs/JOB_STATES.md.
const (
	StatusPending   = "PENDING"   // never dispatched (held); Enqueue does not write it
	StatusQueued    = "QUEUED"    // waiting; claimable once next_attempt_at is due
	StatusRunning   = "RUNNING"   // claimed under a lease by lease_owner at attempt
	StatusCompleted = "COMPLETED" // terminal: SUCCESS receipt
	StatusFailed    = "FAILED"    // terminal: non-retriable failure or retries exhausted
	StatusSkipped   = "SKIPPED"   // unused, kept for the original's enum
)

// Statuses lists every job status, in lifecycle order.
var Statuses = []string{StatusPending, StatusQueued, StatusRunning, StatusCompleted, StatusFailed, StatusSkipped}

// ReceiptStatus is a worker's verdict on one attempt (JobReceipt.status).
type ReceiptStatus string

// Receipt statuses.
const (
	ReceiptSuccess  ReceiptStatus = "SUCCESS"
	ReceiptFailed   ReceiptStatus = "FAILED"
	ReceiptRejected ReceiptStatus = "REJECTED"
	ReceiptAborted  ReceiptStatus = "ABORTED"
)

// Outcome is what Conclude records for an attempt.
type Outcome struct {
	Status ReceiptStatus
	// Retriable: for FAILED, requeue with backoff (until MaxRetries) instead
	// of failing terminally.
	Retriable bool
	// Requeue: for ABORTED, requeue with backoff (until MaxRetries) instead
	// of failing terminally.
	Requeue bool
	// Error is the failure message (ignored for SUCCESS).
	Error string
	// Metrics and Artifacts of a SUCCESS are stored as JSON in result_json.
	Metrics   map[string]int64
	Artifacts []map[string]string
}

// Claimed is a job handed to a worker by Claim.
type Claimed struct {
	ID              int64
	Attempt         int64 // fencing token: pass it back to ExtendLease and Conclude
	FileVersionID   int64
	PluginName      string
	Priority        int64
	ConfigOverrides string // JSON text, "" when NULL
	RetryCount      int64  // requeues so far
	LeaseOwner      string
	LeaseExpiresAt  time.Time
}

// Transition describes one status change made by Conclude, ReapExpired or
// ReleaseWorker.
type Transition struct {
	ID            int64
	Attempt       int64  // the attempt that ended
	Owner         string // lease owner of that attempt
	From, To      string // statuses
	RetryCount    int64  // after the change
	NextAttemptAt time.Time
	Error         string // error recorded (last_error, or error_message when terminal)
}

// Backoff is the delay before retry n (n >= 1): d = min(max, base*2^(n-1)),
// result = d/2 + jitter*d/2 with jitter in [0,1), so it lies in [d/2, d).
func Backoff(n int, base, max time.Duration, jitter float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max || d <= 0 {
		d = max
	}
	return d/2 + time.Duration(jitter*float64(d/2))
}

// Enqueue inserts a QUEUED job, due immediately, and returns its id.
// configOverrides is JSON text or "" (NULL). Ids are max(id)+1 and never
// exceed Options.MaxJobID (ErrJobIDExhausted); SQLite's random rowid
// fallback at 2^63-1 is never reached.
func (s *Store) Enqueue(ctx context.Context, fileVersionID int64, pluginName string, priority int64, configOverrides string) (int64, error) {
	ids, err := s.EnqueueMany(ctx, []JobSpec{{FileVersionID: fileVersionID, PluginName: pluginName,
		Priority: priority, ConfigOverrides: configOverrides}})
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// JobSpec is one job for EnqueueMany.
type JobSpec struct {
	FileVersionID   int64
	PluginName      string
	Priority        int64
	ConfigOverrides string // JSON text, or "" for none
}

// EnqueueMany inserts jobs as Enqueue does, all in one transaction (one
// commit, so one fsync for any number of jobs): either every job is
// enqueued or none is. It returns their ids, in order.
func (s *Store) EnqueueMany(ctx context.Context, jobs []JobSpec) ([]int64, error) {
	if len(jobs) == 0 {
		return nil, nil
	}
	for i, j := range jobs {
		if j.PluginName == "" {
			return nil, fmt.Errorf("enqueue: job %d of %d: empty plugin name", i+1, len(jobs))
		}
		if j.ConfigOverrides != "" && !json.Valid([]byte(j.ConfigOverrides)) {
			return nil, fmt.Errorf("enqueue: job %d of %d: config overrides are not valid JSON", i+1, len(jobs))
		}
	}
	ids := make([]int64, len(jobs))
	err := s.writeTx(ctx, func(tx *wtx) error {
		var maxID sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT max(id) FROM cf_processing_queue`).Scan(&maxID); err != nil {
			return err
		}
		if maxID.Int64 > s.opts.MaxJobID-int64(len(jobs)) {
			return fmt.Errorf("%w: last id %d, max %d, %d jobs to add", ErrJobIDExhausted, maxID.Int64, s.opts.MaxJobID, len(jobs))
		}
		for i, j := range jobs {
			ids[i] = maxID.Int64 + 1 + int64(i)
			if _, err := tx.ExecContext(ctx, `INSERT INTO cf_processing_queue
				(id, file_version_id, plugin_name, config_overrides, status, priority, retry_count, attempt)
				VALUES (?, ?, ?, ?, 'QUEUED', ?, 0, 0)`,
				ids[i], j.FileVersionID, j.PluginName, nullStr(j.ConfigOverrides), j.Priority); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue: %w", err)
	}
	return ids, nil
}

// Claim atomically takes the QUEUED job with the highest priority, then the
// lowest id, whose next_attempt_at is due and whose plugin is in
// capabilities ("*" matches every plugin). A job no capability matches is
// skipped, not waited on, so it cannot block the queue. The job becomes
// RUNNING with attempt+1, claim_time, lease_owner=workerID and
// lease_expires_at=now+lease, in one BEGIN IMMEDIATE transaction. It
// returns (nil, nil) when nothing is claimable.
func (s *Store) Claim(ctx context.Context, workerID string, capabilities []string, lease time.Duration) (*Claimed, error) {
	cs, err := s.ClaimN(ctx, workerID, capabilities, lease, 1)
	if err != nil || len(cs) == 0 {
		return nil, err
	}
	return cs[0], nil
}

// ClaimN claims up to n due jobs for workerID in one transaction, in claim
// order (highest priority, then lowest id), each under its own lease and
// attempt. It returns none when no job the capabilities allow is due.
func (s *Store) ClaimN(ctx context.Context, workerID string, capabilities []string, lease time.Duration, n int) ([]*Claimed, error) {
	return s.ClaimNExcept(ctx, workerID, capabilities, nil, lease, n)
}

// ClaimNExcept is ClaimN that never claims a job of the plugins in except
// (e.g. plugins whose environment the worker does not have yet).
func (s *Store) ClaimNExcept(ctx context.Context, workerID string, capabilities, except []string, lease time.Duration, n int) ([]*Claimed, error) {
	if workerID == "" {
		return nil, errors.New("claim: empty worker id")
	}
	if lease <= 0 {
		return nil, fmt.Errorf("claim: lease must be positive, got %v", lease)
	}
	if n <= 0 {
		return nil, nil
	}
	all := false
	var names []string
	seen := map[string]bool{}
	for _, c := range capabilities {
		if c == "*" {
			all = true
		}
		if c != "" && !seen[c] {
			seen[c] = true
			names = append(names, c)
		}
	}
	if !all && len(names) == 0 {
		return nil, nil
	}
	now := s.now()
	nowS := fmtTime(now)
	exp := now.Add(lease)
	args := []any{nowS, workerID, fmtTime(exp), truncate(workerID, 100), nowS}
	filter := ""
	if !all {
		filter = " AND plugin_name IN (?" + strings.Repeat(",?", len(names)-1) + ")"
		for _, n := range names {
			args = append(args, n)
		}
	}
	if len(except) > 0 {
		filter += " AND plugin_name NOT IN (?" + strings.Repeat(",?", len(except)-1) + ")"
		for _, e := range except {
			args = append(args, e)
		}
	}
	args = append(args, n)
	q := `UPDATE cf_processing_queue SET status = 'RUNNING', claim_time = ?, attempt = attempt + 1,
		lease_owner = ?, lease_expires_at = ?, worker_host = ?, end_time = NULL
		WHERE id IN (SELECT id FROM cf_processing_queue
			WHERE status = 'QUEUED' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)` + filter + `
			ORDER BY priority DESC, id ASC LIMIT ?)
		AND status = 'QUEUED'
		RETURNING id, attempt, file_version_id, plugin_name, coalesce(priority, 0),
			coalesce(config_overrides, ''), coalesce(retry_count, 0)`
	var out []*Claimed
	err := s.softWriteTx(ctx, func(tx *wtx) error {
		out = out[:0] // fn may be retried
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			c := &Claimed{LeaseOwner: workerID, LeaseExpiresAt: exp}
			if err := rows.Scan(&c.ID, &c.Attempt, &c.FileVersionID, &c.PluginName, &c.Priority,
				&c.ConfigOverrides, &c.RetryCount); err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	slices.SortFunc(out, func(a, b *Claimed) int {
		if a.Priority != b.Priority {
			return cmp.Compare(b.Priority, a.Priority)
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out, nil
}

// ExtendLease moves the lease of a RUNNING attempt to now+lease (a
// heartbeat). It returns ErrStaleAttempt when (id, attempt, workerID) no
// longer owns the job.
func (s *Store) ExtendLease(ctx context.Context, id, attempt int64, workerID string, lease time.Duration) (time.Time, error) {
	if lease <= 0 {
		return time.Time{}, fmt.Errorf("extend lease of job %d: lease must be positive, got %v", id, lease)
	}
	exp := s.now().Add(lease)
	var n int64
	err := s.softWriteTx(ctx, func(tx *wtx) error {
		res, err := tx.ExecContext(ctx, `UPDATE cf_processing_queue SET lease_expires_at = ?
			WHERE id = ? AND status = 'RUNNING' AND attempt = ? AND lease_owner = ?`,
			fmtTime(exp), id, attempt, workerID)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("extend lease of job %d: %w", id, err)
	}
	if n == 0 {
		return time.Time{}, fmt.Errorf("extend lease of job %d attempt %d by %s: %w", id, attempt, workerID, ErrStaleAttempt)
	}
	return exp, nil
}

// Conclude records the outcome of attempt `attempt` of job id. It is
// fenced: it applies only while the job is RUNNING at that attempt;
// otherwise it returns ErrStaleAttempt (or ErrJobNotFound) and changes
// nothing.
//
//   - SUCCESS → COMPLETED (end_time, result_summary "Success", result_json).
//   - FAILED, retriable → QUEUED with backoff, or FAILED once retries are exhausted.
//   - FAILED, not retriable → FAILED.
//   - REJECTED → QUEUED with backoff, or FAILED once retries are exhausted.
//   - ABORTED → FAILED, or like a retriable failure when Outcome.Requeue.
func (s *Store) Conclude(ctx context.Context, id, attempt int64, out Outcome) (Transition, error) {
	var tr Transition
	err := s.writeTx(ctx, func(tx *wtx) error {
		var err error
		tr, err = s.concludeTx(ctx, tx, id, attempt, out)
		return err
	})
	if err != nil {
		return Transition{}, fmt.Errorf("conclude job %d attempt %d: %w", id, attempt, err)
	}
	return tr, nil
}

// Conclusion is one CONCLUDE for ConcludeMany.
type Conclusion struct {
	ID, Attempt int64
	Outcome     Outcome
}

// ConcludeMany records several conclusions in one transaction (one fsync).
// It returns one Transition and one error per conclusion, in order; a
// stale or unknown job (ErrStaleAttempt, ErrJobNotFound) fails only its own
// entry. Any other error fails the whole batch: then every entry carries it
// and nothing was written.
func (s *Store) ConcludeMany(ctx context.Context, cs []Conclusion) ([]Transition, []error) {
	trs := make([]Transition, len(cs))
	errs := make([]error, len(cs))
	err := s.writeTx(ctx, func(tx *wtx) error {
		for i, c := range cs {
			tr, err := s.concludeTx(ctx, tx, c.ID, c.Attempt, c.Outcome)
			switch {
			case err == nil:
				trs[i], errs[i] = tr, nil
			case errors.Is(err, ErrStaleAttempt), errors.Is(err, ErrJobNotFound):
				trs[i], errs[i] = Transition{}, fmt.Errorf("conclude job %d attempt %d: %w", c.ID, c.Attempt, err)
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		for i, c := range cs {
			trs[i], errs[i] = Transition{}, fmt.Errorf("conclude job %d attempt %d: %w", c.ID, c.Attempt, err)
		}
	}
	return trs, errs
}

// concludeTx applies one conclusion inside tx. A stale attempt is detected
// before anything is written.
func (s *Store) concludeTx(ctx context.Context, tx *wtx, id, attempt int64, out Outcome) (Transition, error) {
	var status, owner sql.NullString
	var cur, retries sql.NullInt64
	err := tx.QueryRowContext(ctx, `SELECT status, attempt, coalesce(retry_count, 0), lease_owner
		FROM cf_processing_queue WHERE id = ?`, id).Scan(&status, &cur, &retries, &owner)
	if errors.Is(err, sql.ErrNoRows) {
		return Transition{}, ErrJobNotFound
	}
	if err != nil {
		return Transition{}, err
	}
	if status.String != StatusRunning || cur.Int64 != attempt {
		return Transition{}, fmt.Errorf("%w: job is %s at attempt %d", ErrStaleAttempt, status.String, cur.Int64)
	}
	now := s.now()
	j := running{id: id, attempt: attempt, owner: owner.String, retries: retries.Int64}
	switch out.Status {
	case ReceiptSuccess:
		return s.complete(ctx, tx, j, out, now)
	case ReceiptFailed:
		if out.Retriable {
			return s.retryOrFail(ctx, tx, j, errText(out.Error, "failed"), now)
		}
		return s.fail(ctx, tx, j, errText(out.Error, "failed"), now)
	case ReceiptRejected:
		return s.retryOrFail(ctx, tx, j, errText(out.Error, "rejected by worker"), now)
	case ReceiptAborted:
		if out.Requeue {
			return s.retryOrFail(ctx, tx, j, errText(out.Error, "aborted"), now)
		}
		return s.fail(ctx, tx, j, errText(out.Error, "aborted"), now)
	}
	return Transition{}, fmt.Errorf("unknown receipt status %q", out.Status)
}

// ReapExpired requeues (or, past MaxRetries, fails) every RUNNING job whose
// lease expired at or before now. RUNNING rows without a lease (left by the
// original system, which never reaped) count as expired.
func (s *Store) ReapExpired(ctx context.Context, now time.Time) ([]Transition, error) {
	var out []Transition
	err := s.writeTx(ctx, func(tx *wtx) error {
		out = nil // fn may be retried
		jobs, err := runningJobs(ctx, tx, `(lease_expires_at IS NULL OR lease_expires_at <= ?)`, fmtTime(now))
		if err != nil {
			return err
		}
		for _, j := range jobs {
			msg := fmt.Sprintf("lease expired: worker %q did not conclude attempt %d", j.owner, j.attempt)
			tr, err := s.retryOrFail(ctx, tx, j, msg, now.UTC())
			if err != nil {
				return err
			}
			out = append(out, tr)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reap expired: %w", err)
	}
	return out, nil
}

// ReleaseWorker requeues (or, past MaxRetries, fails) every RUNNING job
// leased by workerID, e.g. when the worker is evicted. Late conclusions
// from that worker then fail with ErrStaleAttempt.
func (s *Store) ReleaseWorker(ctx context.Context, workerID string) ([]Transition, error) {
	var out []Transition
	err := s.writeTx(ctx, func(tx *wtx) error {
		out = nil // fn may be retried
		jobs, err := runningJobs(ctx, tx, `lease_owner = ?`, workerID)
		if err != nil {
			return err
		}
		now := s.now()
		for _, j := range jobs {
			msg := fmt.Sprintf("worker %q released during attempt %d", workerID, j.attempt)
			tr, err := s.retryOrFail(ctx, tx, j, msg, now)
			if err != nil {
				return err
			}
			out = append(out, tr)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("release worker %s: %w", workerID, err)
	}
	return out, nil
}

type running struct {
	id, attempt, retries int64
	owner                string
}

func runningJobs(ctx context.Context, tx *wtx, cond string, arg any) ([]running, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, attempt, coalesce(retry_count, 0), coalesce(lease_owner, '')
		FROM cf_processing_queue WHERE status = 'RUNNING' AND `+cond+` ORDER BY id`, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []running
	for rows.Next() {
		var j running
		if err := rows.Scan(&j.id, &j.attempt, &j.retries, &j.owner); err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

func (s *Store) complete(ctx context.Context, tx *wtx, j running, out Outcome, now time.Time) (Transition, error) {
	var result sql.NullString
	if out.Metrics != nil || out.Artifacts != nil {
		b, err := json.Marshal(struct {
			Metrics   map[string]int64    `json:"metrics"`
			Artifacts []map[string]string `json:"artifacts"`
		}{out.Metrics, out.Artifacts})
		if err != nil {
			return Transition{}, err
		}
		result = sql.NullString{String: string(b), Valid: true}
	}
	err := fencedUpdate(ctx, tx, j, `status = 'COMPLETED', end_time = ?, result_summary = 'Success',
		result_json = ?, error_message = NULL, lease_expires_at = NULL`, fmtTime(now), result)
	return Transition{ID: j.id, Attempt: j.attempt, Owner: j.owner, From: StatusRunning,
		To: StatusCompleted, RetryCount: j.retries}, err
}

func (s *Store) fail(ctx context.Context, tx *wtx, j running, msg string, now time.Time) (Transition, error) {
	err := fencedUpdate(ctx, tx, j, `status = 'FAILED', end_time = ?, error_message = ?, last_error = ?,
		lease_expires_at = NULL`, fmtTime(now), msg, msg)
	return Transition{ID: j.id, Attempt: j.attempt, Owner: j.owner, From: StatusRunning,
		To: StatusFailed, RetryCount: j.retries, Error: msg}, err
}

// retryOrFail requeues j with backoff, or fails it once retries are used up.
func (s *Store) retryOrFail(ctx context.Context, tx *wtx, j running, msg string, now time.Time) (Transition, error) {
	if j.retries >= int64(s.opts.MaxRetries) {
		final := fmt.Sprintf("gave up after %d attempts (%d retries): %s", j.attempt, j.retries, msg)
		return s.fail(ctx, tx, j, final, now)
	}
	n := j.retries + 1
	next := now.Add(Backoff(int(n), s.opts.BackoffBase, s.opts.BackoffMax, rand.Float64()))
	err := fencedUpdate(ctx, tx, j, `status = 'QUEUED', claim_time = NULL, lease_owner = NULL,
		lease_expires_at = NULL, retry_count = ?, next_attempt_at = ?, last_error = ?`,
		n, fmtTime(next), msg)
	return Transition{ID: j.id, Attempt: j.attempt, Owner: j.owner, From: StatusRunning,
		To: StatusQueued, RetryCount: n, NextAttemptAt: next, Error: msg}, err
}

// fencedUpdate applies set to j only while it is RUNNING at j.attempt.
func fencedUpdate(ctx context.Context, tx *wtx, j running, set string, args ...any) error {
	args = append(args, j.id, j.attempt)
	res, err := tx.ExecContext(ctx, `UPDATE cf_processing_queue SET `+set+`
		WHERE id = ? AND status = 'RUNNING' AND attempt = ?`, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != 1 {
		return ErrStaleAttempt
	}
	return nil
}

func errText(msg, def string) string {
	if msg == "" {
		return def
	}
	return msg
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Counts returns the number of jobs per status; every status in Statuses is
// present (zero when none), plus any unknown status found in the table.
func (s *Store) Counts(ctx context.Context) (map[string]int64, error) {
	out := make(map[string]int64, len(Statuses))
	for _, st := range Statuses {
		out[st] = 0
	}
	rows, err := s.readQuery(ctx, `SELECT coalesce(status, ''), count(*) FROM cf_processing_queue GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count jobs: %w", err)
		}
		out[st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	return out, nil
}

// Job is one row of cf_processing_queue. Zero times mean NULL.
type Job struct {
	ID              int64
	FileVersionID   int64
	PluginName      string
	Status          string
	Priority        int64
	ConfigOverrides string
	Attempt         int64
	RetryCount      int64
	LeaseOwner      string
	LeaseExpiresAt  time.Time
	NextAttemptAt   time.Time
	ClaimTime       time.Time
	EndTime         time.Time
	ResultSummary   string
	ResultJSON      string
	ErrorMessage    string // set when terminally FAILED
	LastError       string // error of the latest failed attempt
}

// Filter selects jobs for List. The zero value lists the newest 100 jobs.
type Filter struct {
	Statuses []string // empty: all
	Plugin   string   // empty: all
	BeforeID int64    // only ids below it (paging); zero: no bound
	Limit    int      // zero: 100
	// File keeps the jobs whose input path (source root + relative path)
	// contains it; empty: all.
	File string
}

const jobCols = `id, file_version_id, plugin_name, coalesce(status, ''), coalesce(priority, 0),
	coalesce(config_overrides, ''), coalesce(attempt, 0), coalesce(retry_count, 0), coalesce(lease_owner, ''),
	lease_expires_at, next_attempt_at, claim_time, end_time, coalesce(result_summary, ''),
	coalesce(result_json, ''), coalesce(error_message, ''), coalesce(last_error, '')`

func scanJob(sc interface{ Scan(...any) error }) (Job, error) {
	var j Job
	var lease, next, claim, end dbTime
	err := sc.Scan(&j.ID, &j.FileVersionID, &j.PluginName, &j.Status, &j.Priority, &j.ConfigOverrides,
		&j.Attempt, &j.RetryCount, &j.LeaseOwner, &lease, &next, &claim, &end, &j.ResultSummary,
		&j.ResultJSON, &j.ErrorMessage, &j.LastError)
	j.LeaseExpiresAt, j.NextAttemptAt, j.ClaimTime, j.EndTime = lease.T, next.T, claim.T, end.T
	return j, err
}

// Get returns one job, or ErrJobNotFound.
func (s *Store) Get(ctx context.Context, id int64) (*Job, error) {
	j, err := scanJob(s.readRow(ctx, `SELECT `+jobCols+` FROM cf_processing_queue WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get job %d: %w", id, ErrJobNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get job %d: %w", id, err)
	}
	return &j, nil
}

// List returns jobs matching f, newest (highest id) first.
func (s *Store) List(ctx context.Context, f Filter) ([]Job, error) {
	var conds []string
	var args []any
	if len(f.Statuses) > 0 {
		conds = append(conds, "status IN (?"+strings.Repeat(",?", len(f.Statuses)-1)+")")
		for _, st := range f.Statuses {
			args = append(args, st)
		}
	}
	if f.Plugin != "" {
		conds = append(conds, "plugin_name = ?")
		args = append(args, f.Plugin)
	}
	if f.BeforeID > 0 {
		conds = append(conds, "id < ?")
		args = append(args, f.BeforeID)
	}
	if f.File != "" {
		conds = append(conds, `file_version_id IN (SELECT fv.id FROM cf_file_version fv
			JOIN cf_file_location fl ON fl.id = fv.location_id JOIN cf_source_root sr ON sr.id = fl.source_root_id
			WHERE instr(sr.path || '/' || fl.rel_path, ?) > 0)`)
		args = append(args, f.File)
	}
	q := `SELECT ` + jobCols + ` FROM cf_processing_queue`
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.readQuery(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("list jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// Requeue puts FAILED jobs back to QUEUED for a fresh run: retries start
// over from zero and the job is due at once; the last error is kept in
// last_error. With ids it requeues those (a job that is not FAILED is left
// alone); without, every FAILED job of plugin ("" = all plugins). It
// returns the ids requeued.
func (s *Store) Requeue(ctx context.Context, plugin string, ids []int64) ([]int64, error) {
	q := `UPDATE cf_processing_queue SET status = 'QUEUED', retry_count = 0, next_attempt_at = NULL,
		lease_owner = NULL, lease_expires_at = NULL, end_time = NULL,
		last_error = coalesce(error_message, last_error), error_message = NULL
		WHERE status = 'FAILED'`
	var args []any
	if len(ids) > 0 {
		q += " AND id IN (?" + strings.Repeat(",?", len(ids)-1) + ")"
		for _, id := range ids {
			args = append(args, id)
		}
	} else if plugin != "" {
		q += " AND plugin_name = ?"
		args = append(args, plugin)
	}
	out, err := s.updateReturningIDs(ctx, q+" RETURNING id", args...)
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	return out, nil
}

// updateReturningIDs runs an UPDATE … RETURNING id in a write transaction
// and returns the ids, sorted.
func (s *Store) updateReturningIDs(ctx context.Context, q string, args ...any) ([]int64, error) {
	var out []int64
	err := s.writeTx(ctx, func(tx *wtx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out = append(out, id)
		}
		return rows.Err()
	})
	slices.Sort(out)
	return out, err
}

// PluginRow is one line of `casparian plugins`.
type PluginRow struct {
	Name          string
	Version       string // of the ACTIVE manifest, "" when none
	ManifestID    int64
	Kind          string // python, goplugin or wasm
	Versions      int    // manifests stored
	DeployedAt    string
	Subscriptions string
}

// Plugins lists every plugin with a manifest or a subscription.
func (s *Store) Plugins(ctx context.Context) ([]PluginRow, error) {
	rows, err := s.readQuery(ctx, `WITH names AS (SELECT plugin_name FROM cf_plugin_manifest UNION SELECT plugin_name FROM cf_plugin_config)
		SELECT n.plugin_name,
			coalesce((SELECT version FROM cf_plugin_manifest m WHERE m.plugin_name = n.plugin_name AND m.status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1), ''),
			coalesce((SELECT id FROM cf_plugin_manifest m WHERE m.plugin_name = n.plugin_name AND m.status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1), 0),
			coalesce((SELECT source_code FROM cf_plugin_manifest m WHERE m.plugin_name = n.plugin_name AND m.status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1), ''),
			(SELECT count(*) FROM cf_plugin_manifest m WHERE m.plugin_name = n.plugin_name),
			coalesce((SELECT deployed_at FROM cf_plugin_manifest m WHERE m.plugin_name = n.plugin_name AND m.status = 'ACTIVE' ORDER BY created_at DESC, id DESC LIMIT 1), ''),
			coalesce((SELECT subscription_tags FROM cf_plugin_config c WHERE c.plugin_name = n.plugin_name), '')
		FROM names n ORDER BY n.plugin_name`)
	if err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	defer rows.Close()
	var out []PluginRow
	for rows.Next() {
		var p PluginRow
		var src string
		if err := rows.Scan(&p.Name, &p.Version, &p.ManifestID, &src, &p.Versions, &p.DeployedAt, &p.Subscriptions); err != nil {
			return nil, err
		}
		p.Kind = pluginKind(src)
		out = append(out, p)
	}
	return out, rows.Err()
}

// pluginKind reads the guest kind of a stored plugin source.
func pluginKind(src string) string {
	t := strings.TrimSpace(src)
	if t == "" {
		return ""
	}
	if strings.HasPrefix(t, "{") {
		var m struct {
			Kind string `json:"kind"`
		}
		if json.Unmarshal([]byte(t), &m) == nil && m.Kind != "" {
			return m.Kind
		}
	}
	return "python"
}
