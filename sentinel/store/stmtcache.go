package store

import (
	"context"
	"database/sql"
	"sync"
)

// maxCachedStmts bounds each statement cache. Queries are built from a
// fixed set of texts (a claim's capability filter varies with the number
// of plugin names), so the bound is only a guard.
const maxCachedStmts = 256

// stmtCache keeps prepared statements by SQL text. modernc.org/sqlite, like
// database/sql, prepares a statement on every call that passes SQL text:
// parsing and planning were a third of the sentinel's CPU per job.
type stmtCache struct {
	db      *sql.DB
	mu      sync.Mutex
	m       map[string]*sql.Stmt
	pending map[string]bool // seen in a transaction, to prepare after it
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, m: map[string]*sql.Stmt{}, pending: map[string]bool{}}
}

func (c *stmtCache) get(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[q]
}

// want notes q for preparePending: inside a transaction the writer's only
// connection is busy, and preparing on the pool would wait for it forever.
func (c *stmtCache) want(q string) {
	c.mu.Lock()
	if len(c.m)+len(c.pending) < maxCachedStmts {
		c.pending[q] = true
	}
	c.mu.Unlock()
}

// preparePending prepares the statements noted by want. It is called with
// no connection of the pool held. A statement that fails to prepare is
// left out; its callers keep running it unprepared, and report its error.
func (c *stmtCache) preparePending(ctx context.Context) {
	c.mu.Lock()
	if len(c.pending) == 0 {
		c.mu.Unlock()
		return
	}
	qs := make([]string, 0, len(c.pending))
	for q := range c.pending {
		qs = append(qs, q)
	}
	clear(c.pending)
	c.mu.Unlock()
	for _, q := range qs {
		st, err := c.db.PrepareContext(ctx, q)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if c.m[q] == nil {
			c.m[q] = st
			st = nil
		}
		c.mu.Unlock()
		if st != nil {
			_ = st.Close()
		}
	}
}

// prepared returns the cached statement for q, preparing it on the pool
// when it is new (for pools used outside transactions).
func (c *stmtCache) prepared(ctx context.Context, q string) *sql.Stmt {
	if st := c.get(q); st != nil {
		return st
	}
	c.mu.Lock()
	full := len(c.m) >= maxCachedStmts
	c.mu.Unlock()
	if full {
		return nil
	}
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[q]; old != nil {
		_ = st.Close()
		return old
	}
	c.m[q] = st
	return st
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.m {
		_ = st.Close()
		delete(c.m, q)
	}
}

// wtx is a write transaction that runs its SQL through the writer's
// statement cache.
type wtx struct {
	*sql.Tx
	c *stmtCache
}

func (t *wtx) stmt(ctx context.Context, q string) *sql.Stmt {
	if st := t.c.get(q); st != nil {
		return t.Tx.StmtContext(ctx, st)
	}
	t.c.want(q)
	return nil
}

func (t *wtx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := t.stmt(ctx, q); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, q, args...)
}

func (t *wtx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := t.stmt(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, q, args...)
}

func (t *wtx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := t.stmt(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, q, args...)
}

// readQuery and readRow run a query on the read pool through its cache.
func (s *Store) readQuery(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := s.rstmts.prepared(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return s.r.QueryContext(ctx, q, args...)
}

func (s *Store) readRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st := s.rstmts.prepared(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return s.r.QueryRowContext(ctx, q, args...)
}
