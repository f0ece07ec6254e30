// Package store is the sentinel's SQLite state: the cf_* schema of the
// original Casparian Flow (so an existing database opens as is), the job
// queue with leases, fencing tokens and bounded retries, and the look-ups the
// dispatcher needs to build a DISPATCH.
//
// # Connections
//
// A Store holds two *sql.DB on the same file:
//
//   - a writer with exactly one connection (SetMaxOpenConns(1)) whose
//     transactions start with BEGIN IMMEDIATE. Every write of the process goes
//     through it, so writers inside the process queue on Go's pool instead of
//     fighting over SQLite's lock, and SQLITE_BUSY can only come from another
//     process (busy_timeout, then a bounded retry of the whole transaction
//     while ctx lasts). BEGIN IMMEDIATE takes the write lock
//     up front, so a transaction never fails half-way when it upgrades from
//     read to write (the classic SQLITE_BUSY-despite-busy_timeout trap).
//   - a read pool (query_only) for listings, counts and dispatch look-ups.
//     In WAL mode readers never block the writer nor each other.
//
// PRAGMAs: journal_mode=WAL, synchronous=FULL by default (a committed claim
// or conclusion survives power loss; Options.Synchronous), busy_timeout (Options.BusyTimeout).
// Foreign keys are declared in the schema, as in the original, but NOT
// enforced (PRAGMA foreign_keys stays off), because databases written by the
// original may hold dangling references that must not make Open or writes
// fail.
//
// # Timestamps
//
// Every timestamp this package writes is UTC text in TimeFormat: RFC 3339
// with exactly nine fractional digits ("2026-01-02T15:04:05.000000000Z").
// It parses with time.RFC3339Nano, and because it is fixed-width, text
// comparison in SQL equals time order (lease_expires_at <= now). Rows
// written by the original may hold "YYYY-MM-DD HH:MM:SS" or naive local
// times; they are read as UTC.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"modernc.org/sqlite" // registers driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// TimeFormat is the layout of every timestamp the store writes.
const TimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// Errors callers branch on with errors.Is.
var (
	// ErrStaleAttempt: the (id, attempt) pair no longer owns the job: it was
	// reaped, released, concluded, or re-claimed by a newer attempt. Nothing
	// was changed. Callers log it and drop the message.
	ErrStaleAttempt = errors.New("stale attempt")
	// ErrJobNotFound: no job has that id.
	ErrJobNotFound = errors.New("job not found")
	// ErrJobIDExhausted: the next job id would exceed Options.MaxJobID.
	ErrJobIDExhausted = errors.New("job id space exhausted")
	// ErrNoActiveManifest: the plugin has no ACTIVE manifest.
	ErrNoActiveManifest = errors.New("no active manifest")
	// ErrFileMissing: the job's file version, location or source root row is missing.
	ErrFileMissing = errors.New("file location missing")
	// ErrPathEscapesRoot: rel_path resolves outside its source root.
	ErrPathEscapesRoot = errors.New("path escapes source root")
)

// Options configures a Store. The zero value is valid.
type Options struct {
	// MaxRetries is how many times a job is put back in the queue after a
	// retriable failure, a lost lease, a worker eviction or a REJECTED
	// receipt, before it becomes terminally FAILED. Zero means 5; a negative
	// value means no retries.
	MaxRetries int
	// BackoffBase is the delay before the first retry. Zero means 2s.
	BackoffBase time.Duration
	// BackoffMax caps the exponential backoff. Zero means 5m.
	BackoffMax time.Duration
	// MaxJobID is the largest job id Enqueue may create. Zero means
	// math.MaxInt64 (2^63-1: fits int64 and the v4 wire's u64 below 2^63).
	MaxJobID int64
	// BusyTimeout is SQLite's busy_timeout, the wait for a lock held by
	// another process. Zero means 5s.
	BusyTimeout time.Duration
	// Synchronous is PRAGMA synchronous: "FULL" (the zero value: every
	// commit is fsynced, durable across power loss), "NORMAL" (WAL is synced
	// only at checkpoints: safe across a process crash, the last commits may
	// be lost on power loss), "EXTRA" or "OFF".
	Synchronous string
	// ReadConns is the size of the read pool. Zero means 4.
	ReadConns int
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.MaxRetries == 0 {
		o.MaxRetries = 5
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = 2 * time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Minute
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = o.BackoffBase
	}
	if o.MaxJobID <= 0 {
		o.MaxJobID = math.MaxInt64
	}
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = 5 * time.Second
	}
	if o.Synchronous == "" {
		o.Synchronous = "FULL"
	}
	o.Synchronous = strings.ToUpper(o.Synchronous)
	if o.ReadConns <= 0 {
		o.ReadConns = 4
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Store is the sentinel's database. It is safe for concurrent use.
type Store struct {
	w *sql.DB // single writer connection, BEGIN IMMEDIATE
	r *sql.DB // read pool, query_only
	// Prepared statements of each pool, by SQL text.
	wstmts, rstmts *stmtCache
	opts           Options
	path           string
	// curSync is the writer connection's PRAGMA synchronous; only touched
	// while holding that (single) connection.
	curSync string
}

// Open opens (creating if needed) the database named by dsn, which is
// "sqlite://relative/path", "sqlite:///abs/path" or a plain file path. A
// query string on a sqlite:// URL (e.g. the original's "?mode=rwc") is
// ignored. It creates the missing cf_* tables and indexes and adds the
// columns this package needs to tables created by the original system.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	path, err := ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	opts = opts.withDefaults()
	switch opts.Synchronous {
	case "OFF", "NORMAL", "FULL", "EXTRA":
	default:
		return nil, fmt.Errorf("open store: invalid synchronous %q", opts.Synchronous)
	}
	busy := opts.BusyTimeout.Milliseconds()
	// A new queue is readable and writable by its owner only (SQLite
	// gives its -wal and -shm files the same mode): enqueueing is writing
	// this file, and it holds the plugins' source.
	if f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		_ = f.Close()
	}

	w, err := sql.Open("sqlite", fmt.Sprintf(
		"%s?_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)&_pragma=synchronous(%s)&_txlock=immediate",
		path, busy, opts.Synchronous))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	s := &Store{w: w, opts: opts, path: path, curSync: opts.Synchronous, wstmts: newStmtCache(w)}
	if err := w.PingContext(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.migrate(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", fmt.Sprintf(
		"%s?_pragma=busy_timeout(%d)&_pragma=query_only(1)", path, busy))
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	r.SetMaxOpenConns(opts.ReadConns)
	r.SetMaxIdleConns(opts.ReadConns)
	if err := r.PingContext(ctx); err != nil {
		_ = w.Close()
		_ = r.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.r = r
	s.rstmts = newStmtCache(r)
	return s, nil
}

// ParseDSN returns the file path named by a "sqlite://" URL or plain path.
func ParseDSN(dsn string) (string, error) {
	p := dsn
	if rest, ok := strings.CutPrefix(dsn, "sqlite://"); ok {
		p, _, _ = strings.Cut(rest, "?")
	} else if strings.Contains(p, "?") {
		return "", fmt.Errorf("parse dsn %q: a plain path may not contain '?'", dsn)
	}
	if p == "" {
		return "", fmt.Errorf("parse dsn %q: empty path", dsn)
	}
	if p == ":memory:" || strings.HasPrefix(p, "file:") {
		return "", fmt.Errorf("parse dsn %q: need a file path (the store opens it twice)", dsn)
	}
	return p, nil
}

// Path is the database file path.
func (s *Store) Path() string { return s.path }

// Close closes both pools. It is safe to call more than once.
func (s *Store) Close() error {
	var errs []error
	if s.rstmts != nil {
		s.rstmts.close()
	}
	if s.wstmts != nil {
		s.wstmts.close()
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	return errors.Join(errs...)
}

// writeTx runs fn in one BEGIN IMMEDIATE transaction on the writer.
//
// Inside the process the single writer connection serialises writers. Another
// process (e.g. `casparian enqueue` while the sentinel runs) can still hold
// SQLite's write lock; SQLite's busy handler waits up to busy_timeout but is
// not fair, so under sustained contention BEGIN can still fail with
// SQLITE_BUSY. Such a transaction has done nothing, so it is retried (with a
// short jittered pause) until it succeeds, ctx ends, or maxBusyRetries is
// reached. fn may therefore run more than once and must reset whatever it
// collects.
func (s *Store) writeTx(ctx context.Context, fn func(tx *wtx) error) error {
	return s.writeTxSync(ctx, s.opts.Synchronous, fn)
}

// softWriteTx is writeTx for soft state (claims, lease extensions, the
// worker registry): it commits at synchronous=NORMAL, without an fsync.
// Such a commit survives a process crash; only a power loss or OS crash can
// drop it, and then the job is simply dispatched again (outputs are keyed by
// job id, conclusions fenced). Enqueue and Conclude keep Options.Synchronous.
func (s *Store) softWriteTx(ctx context.Context, fn func(tx *wtx) error) error {
	mode := "NORMAL"
	if s.opts.Synchronous == "OFF" {
		mode = "OFF"
	}
	return s.writeTxSync(ctx, mode, fn)
}

func (s *Store) writeTxSync(ctx context.Context, mode string, fn func(tx *wtx) error) error {
	defer s.wstmts.preparePending(context.WithoutCancel(ctx))
	for try := 0; ; try++ {
		err := s.writeTxOnce(ctx, mode, fn)
		if err == nil || !isBusy(err) || try >= maxBusyRetries {
			return err
		}
		t := time.NewTimer(time.Millisecond + rand.N(10*time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
	}
}

// maxBusyRetries bounds writeTx's retries after SQLITE_BUSY.
const maxBusyRetries = 100

// errCommit marks a failed COMMIT, which is never retried.
type errCommit struct{ err error }

func (e errCommit) Error() string { return "commit: " + e.err.Error() }
func (e errCommit) Unwrap() error { return e.err }

func (s *Store) writeTxOnce(ctx context.Context, mode string, fn func(tx *wtx) error) error {
	// The pool has exactly one connection, so holding it serializes writers
	// and makes curSync safe to touch.
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if s.curSync != mode {
		if _, err := conn.ExecContext(ctx, "PRAGMA synchronous = "+mode); err != nil {
			return err
		}
		s.curSync = mode
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(&wtx{Tx: tx, c: s.wstmts}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return errCommit{err}
	}
	return nil
}

// isBusy reports SQLITE_BUSY (any extended code) outside COMMIT.
func isBusy(err error) bool {
	var c errCommit
	if errors.As(err, &c) {
		return false
	}
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

func (s *Store) now() time.Time { return s.opts.Now().UTC() }

// fmtTime formats t in TimeFormat (UTC).
func fmtTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// legacyLayouts are the formats found in databases written by the original.
var legacyLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02",
}

// ParseTime parses a timestamp written by this package or by the original
// system; zone-less values are taken as UTC.
func ParseTime(v string) (time.Time, error) {
	v = strings.TrimSpace(v)
	for _, l := range legacyLayouts {
		if t, err := time.Parse(l, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("parse time %q: unknown format", v)
}

// dbTime scans a timestamp column whatever the driver hands back (NULL,
// text, or time.Time for columns declared DATETIME). Unparsable text yields
// the zero time.
type dbTime struct{ T time.Time }

func (d *dbTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		d.T = time.Time{}
	case time.Time:
		d.T = v.UTC()
	case string:
		d.T, _ = ParseTime(v)
	case []byte:
		d.T, _ = ParseTime(string(v))
	case int64:
		d.T = time.Unix(v, 0).UTC()
	case float64:
		d.T = time.Unix(0, int64(v*1e9)).UTC()
	default:
		return fmt.Errorf("scan time: unsupported type %T", src)
	}
	return nil
}

func nullStr(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }
