package sink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver

	"github.com/casparianflow/casparian/host/guest"
)

var _ Writer = (*sqliteWriter)(nil)

// maxSQLVars stays under SQLite's default SQLITE_MAX_VARIABLE_NUMBER (32766).
const (
	maxSQLVars      = 32000
	maxRowsPerStmt  = 500
	stageTableAlias = "stg"
)

// sqliteWriter stages a job's rows in a private SQLite file and appends them
// to the target table in one transaction on Commit, so the target database
// is locked only for the INSERT ... SELECT, never for the whole job.
type sqliteWriter struct {
	mu        sync.Mutex
	t         Target
	o         Options
	dbPath    string // absolute target database
	table     string // validated target table
	stageDir  string
	stagePath string
	stage     *sql.DB

	inSchema *arrow.Schema
	cols     []sqlColumn // the topic's columns, without lineage
	stmtRows int         // rows per prepared multi-row INSERT
	insert   *sql.Stmt   // INSERT of stmtRows rows into the staging table
	args     []any       // reused bind arguments
	rows     int64
	state    writerState
}

type sqlColumn struct {
	name string // as in the Arrow schema
	decl string // INTEGER, REAL, TEXT or BLOB
}

// quoteIdent quotes an SQLite identifier. Every identifier the sink puts in
// SQL goes through it; table names are also validated against tableNameRE.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func openSQLite(ctx context.Context, t Target, o Options, loc location) (*sqliteWriter, error) {
	if err := os.MkdirAll(o.TempDir, 0o700); err != nil {
		return nil, ioErr(t, "open sqlite sink: staging directory", err)
	}
	dir, err := os.MkdirTemp(o.TempDir, fmt.Sprintf("casparian-stage-%d-*", t.JobID))
	if err != nil {
		return nil, ioErr(t, "open sqlite sink: staging directory", err)
	}
	w := &sqliteWriter{
		t:         t,
		o:         o,
		dbPath:    loc.path,
		table:     loc.table,
		stageDir:  dir,
		stagePath: filepath.Join(dir, "stage.db"),
	}
	if err := w.openStage(ctx); err != nil {
		w.discard()
		return nil, err
	}
	if t.Schema != nil {
		if err := w.start(ctx, t.Schema); err != nil {
			w.discard()
			return nil, err
		}
	}
	return w, nil
}

func (w *sqliteWriter) openStage(ctx context.Context) error {
	db, err := sql.Open("sqlite", w.stagePath)
	if err != nil {
		return ioErr(w.t, "open sqlite staging database", err)
	}
	db.SetMaxOpenConns(1)
	w.stage = db
	// The staging file is private and thrown away on failure: no journal,
	// no fsync.
	for _, p := range []string{"PRAGMA journal_mode=OFF", "PRAGMA synchronous=OFF", "PRAGMA locking_mode=NORMAL"} {
		if _, err := db.ExecContext(ctx, p); err != nil {
			return ioErr(w.t, "open sqlite staging database", err)
		}
	}
	return nil
}

// start fixes the topic's schema and creates the staging table.
func (w *sqliteWriter) start(ctx context.Context, sc *arrow.Schema) error {
	if err := checkLineageFree(w.t, sc); err != nil {
		return err
	}
	if sc.NumFields() == 0 {
		return schemaErr(fmt.Errorf("write topic %q: a SQLite table needs at least one column", w.t.Topic))
	}
	seen := map[string]string{strings.ToLower(ColJobID): ColJobID, strings.ToLower(ColFileVersionID): ColFileVersionID}
	cols := make([]sqlColumn, sc.NumFields())
	for i, f := range sc.Fields() {
		if f.Name == "" {
			return schemaErr(fmt.Errorf("write topic %q: column %d has an empty name", w.t.Topic, i))
		}
		if prev, dup := seen[strings.ToLower(f.Name)]; dup {
			return schemaErr(fmt.Errorf("write topic %q: columns %q and %q clash in SQLite (names are case-insensitive)", w.t.Topic, prev, f.Name))
		}
		seen[strings.ToLower(f.Name)] = f.Name
		decl, err := sqlDecl(f.Type)
		if err != nil {
			return schemaErr(fmt.Errorf("write topic %q: column %q: %w", w.t.Topic, f.Name, err))
		}
		cols[i] = sqlColumn{name: f.Name, decl: decl}
	}
	if _, err := w.stage.ExecContext(ctx, "CREATE TABLE "+quoteIdent(w.table)+" ("+columnDefs(cols, false)+")"); err != nil {
		return ioErr(w.t, "create sqlite staging table", err)
	}
	w.stmtRows = max(1, min(maxRowsPerStmt, maxSQLVars/len(cols)))
	stmt, err := w.stage.PrepareContext(ctx, insertSQL(w.table, cols, w.stmtRows))
	if err != nil {
		return ioErr(w.t, "prepare sqlite staging insert", err)
	}
	w.inSchema, w.cols, w.insert = sc, cols, stmt
	w.args = make([]any, w.stmtRows*len(cols))
	return nil
}

// columnDefs renders "a" INTEGER, "b" TEXT[, lineage columns].
func columnDefs(cols []sqlColumn, lineage bool) string {
	var b strings.Builder
	for i, c := range cols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(quoteIdent(c.name) + " " + c.decl)
	}
	if lineage {
		b.WriteString(", " + quoteIdent(ColJobID) + " INTEGER NOT NULL, " + quoteIdent(ColFileVersionID) + " INTEGER NOT NULL")
	}
	return b.String()
}

func columnList(cols []sqlColumn) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = quoteIdent(c.name)
	}
	return strings.Join(names, ", ")
}

func insertSQL(table string, cols []sqlColumn, rows int) string {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	var b strings.Builder
	b.WriteString("INSERT INTO " + quoteIdent(table) + " (" + columnList(cols) + ") VALUES ")
	for r := 0; r < rows; r++ {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteString(one)
	}
	return b.String()
}

func (w *sqliteWriter) Rows() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rows
}

func (w *sqliteWriter) usable(op string) error {
	switch w.state {
	case stateOpen:
		return nil
	case stateCommitted:
		return sinkErr(fmt.Errorf("%s sqlite: topic %q: writer already committed", op, w.t.Topic))
	case stateAborted:
		return sinkErr(fmt.Errorf("%s sqlite: topic %q: writer aborted", op, w.t.Topic))
	}
	return sinkErr(fmt.Errorf("%s sqlite: topic %q: writer failed earlier; abort it", op, w.t.Topic))
}

func (w *sqliteWriter) Write(ctx context.Context, rec arrow.RecordBatch) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable("write"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return cancelled("write sqlite", w.t, err)
	}
	if w.inSchema == nil {
		if err := w.start(ctx, rec.Schema()); err != nil {
			w.state = stateFailed
			return err
		}
	} else if !rec.Schema().Equal(w.inSchema) {
		return schemaMismatch(w.t, w.inSchema, rec.Schema())
	}
	if rec.NumRows() == 0 {
		return nil
	}
	if err := w.stageBatch(ctx, rec); err != nil {
		w.state = stateFailed
		if ctx.Err() != nil {
			return cancelled("write sqlite", w.t, ctx.Err())
		}
		return err
	}
	w.rows += rec.NumRows()
	return nil
}

// stageBatch inserts one batch into the staging table in one transaction,
// stmtRows rows per statement.
func (w *sqliteWriter) stageBatch(ctx context.Context, rec arrow.RecordBatch) (err error) {
	vals := make([]valueFunc, len(w.cols))
	for c := range w.cols {
		if vals[c], err = sqlValues(rec.Column(c)); err != nil {
			return schemaErr(fmt.Errorf("write topic %q: column %q: %w", w.t.Topic, w.cols[c].name, err))
		}
	}
	tx, err := w.stage.BeginTx(ctx, nil)
	if err != nil {
		return ioErr(w.t, "write sqlite staging", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	full := tx.StmtContext(ctx, w.insert)
	defer full.Close()
	n := int(rec.NumRows())
	ncols := len(w.cols)
	for start := 0; start < n; start += w.stmtRows {
		rows := min(w.stmtRows, n-start)
		args := w.args[:rows*ncols]
		for r := 0; r < rows; r++ {
			for c, v := range vals {
				if args[r*ncols+c], err = v(start + r); err != nil {
					return sinkErr(fmt.Errorf("write topic %q: row %d, column %q: %w", w.t.Topic, w.rows+int64(start+r), w.cols[c].name, err))
				}
			}
		}
		if rows == w.stmtRows {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, insertSQL(w.table, w.cols, rows), args...)
		}
		if err != nil {
			return ioErr(w.t, "write sqlite staging", err)
		}
	}
	clear(w.args) // drop references into the caller's batch
	if err = tx.Commit(); err != nil {
		return ioErr(w.t, "write sqlite staging", err)
	}
	return nil
}

func (w *sqliteWriter) Commit(ctx context.Context) (Artifact, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable("commit"); err != nil {
		return Artifact{}, err
	}
	art, err := w.commit(ctx)
	w.discard()
	if err != nil {
		w.state = stateFailed
		if ctx.Err() != nil && !errors.Is(err, guest.ErrSchema) {
			return Artifact{}, cancelled("commit sqlite", w.t, ctx.Err())
		}
		return Artifact{}, err
	}
	w.state = stateCommitted
	return art, nil
}

func (w *sqliteWriter) commit(ctx context.Context) (art Artifact, err error) {
	if err := ctx.Err(); err != nil {
		return Artifact{}, cancelled("commit sqlite", w.t, err)
	}
	art = Artifact{Topic: w.t.Topic, URI: location{scheme: schemeSQLite, path: w.dbPath, table: w.table}.uri(), Rows: w.rows}
	if w.inSchema == nil {
		// Nothing was written and no schema is known: nothing to append.
		return art, nil
	}
	if err := w.closeStage(); err != nil {
		return Artifact{}, ioErr(w.t, "commit sqlite: close staging database", err)
	}
	if st, err := os.Stat(w.stagePath); err == nil {
		art.Bytes = st.Size()
	}
	if err := os.MkdirAll(filepath.Dir(w.dbPath), 0o755); err != nil {
		return Artifact{}, ioErr(w.t, "commit sqlite: create directory", err)
	}
	db, err := sql.Open("sqlite", w.dbPath)
	if err != nil {
		return Artifact{}, ioErr(w.t, "commit sqlite: open", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return Artifact{}, w.targetErr("commit sqlite: open", err)
	}
	defer conn.Close()
	exec := func(q string, args ...any) error {
		_, err := conn.ExecContext(ctx, q, args...)
		return err
	}
	if err := exec(fmt.Sprintf("PRAGMA busy_timeout = %d", w.o.SQLiteBusyTimeout.Milliseconds())); err != nil {
		return Artifact{}, w.targetErr("commit sqlite: open", err)
	}
	if err := exec("ATTACH DATABASE ? AS "+stageTableAlias, w.stagePath); err != nil {
		return Artifact{}, w.targetErr("commit sqlite: attach staging database", err)
	}
	defer conn.ExecContext(context.Background(), "DETACH DATABASE "+stageTableAlias) //nolint:errcheck // best effort; the connection closes next
	if err := exec("BEGIN IMMEDIATE"); err != nil {
		return Artifact{}, w.targetErr("commit sqlite: begin", err)
	}
	defer func() {
		if err != nil {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	target := "main." + quoteIdent(w.table)
	existing, err := tableColumns(ctx, conn, w.table)
	if err != nil {
		return Artifact{}, w.targetErr("commit sqlite: read table", err)
	}
	if len(existing) == 0 {
		if err := exec("CREATE TABLE " + target + " (" + columnDefs(w.cols, true) + ")"); err != nil {
			return Artifact{}, w.targetErr("commit sqlite: create table", err)
		}
	} else if err := w.checkColumns(existing); err != nil {
		return Artifact{}, err
	}
	cols := columnList(w.cols)
	q := "INSERT INTO " + target + " (" + cols + ", " + quoteIdent(ColJobID) + ", " + quoteIdent(ColFileVersionID) + ")" +
		" SELECT " + cols + ", ?, ? FROM " + stageTableAlias + "." + quoteIdent(w.table) + " ORDER BY rowid"
	if err := exec(q, w.t.JobID, w.t.FileVersionID); err != nil {
		return Artifact{}, w.targetErr("commit sqlite: insert", err)
	}
	if err := exec("COMMIT"); err != nil {
		return Artifact{}, w.targetErr("commit sqlite", err)
	}
	return art, nil
}

// tableColumns lists main.table's columns (none when it does not exist).
func tableColumns(ctx context.Context, conn *sql.Conn, table string) ([]sqlColumn, error) {
	rows, err := conn.QueryContext(ctx, "PRAGMA main.table_info("+quoteIdent(table)+")")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cols []sqlColumn
	for rows.Next() {
		var (
			cid, notnull, pk int
			name, decl       string
			dflt             sql.NullString
		)
		if err := rows.Scan(&cid, &name, &decl, &notnull, &dflt, &pk); err != nil {
			return nil, err
		}
		cols = append(cols, sqlColumn{name: name, decl: decl})
	}
	return cols, rows.Err()
}

// checkColumns compares an existing table with the topic's columns plus
// lineage: the same names (case-insensitive, any order) with the same type
// affinity.
func (w *sqliteWriter) checkColumns(existing []sqlColumn) error {
	want := append(append([]sqlColumn(nil), w.cols...),
		sqlColumn{name: ColJobID, decl: "INTEGER"}, sqlColumn{name: ColFileVersionID, decl: "INTEGER"})
	have := make(map[string]sqlColumn, len(existing))
	for _, c := range existing {
		have[strings.ToLower(c.name)] = c
	}
	var problems []string
	for _, c := range want {
		h, ok := have[strings.ToLower(c.name)]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("missing column %q", c.name))
		case affinity(h.decl) != affinity(c.decl):
			problems = append(problems, fmt.Sprintf("column %q is %s, want %s", c.name, h.decl, c.decl))
		}
		delete(have, strings.ToLower(c.name))
	}
	for _, c := range existing {
		if _, extra := have[strings.ToLower(c.name)]; extra {
			problems = append(problems, fmt.Sprintf("unexpected column %q", c.name))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &guest.Error{
		Kind: guest.ErrSchema,
		Message: fmt.Sprintf("commit sqlite: topic %q: table %s in %s does not match the topic's columns: %s\ntable columns: %s\ntopic columns: %s",
			w.t.Topic, w.table, w.dbPath, strings.Join(problems, "; "), renderColumns(existing), renderColumns(want)),
		Hint:     "write to another table, or migrate the existing table to the topic's columns",
		ExitCode: -1,
	}
}

func renderColumns(cols []sqlColumn) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = c.name + " " + c.decl
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// affinity applies SQLite's column affinity rules (section 3.1 of
// https://sqlite.org/datatype3.html) to a declared type.
func affinity(decl string) string {
	d := strings.ToUpper(decl)
	switch {
	case strings.Contains(d, "INT"):
		return "INTEGER"
	case strings.Contains(d, "CHAR"), strings.Contains(d, "CLOB"), strings.Contains(d, "TEXT"):
		return "TEXT"
	case strings.Contains(d, "BLOB"), d == "":
		return "BLOB"
	case strings.Contains(d, "REAL"), strings.Contains(d, "FLOA"), strings.Contains(d, "DOUB"):
		return "REAL"
	}
	return "NUMERIC"
}

// targetErr wraps a failure on the target database as guest.ErrSink.
func (w *sqliteWriter) targetErr(op string, err error) error {
	e := ioErr(w.t, fmt.Sprintf("%s %s", op, w.dbPath), err)
	if strings.Contains(err.Error(), "SQLITE_BUSY") || strings.Contains(err.Error(), "database is locked") {
		e.Hint = fmt.Sprintf("another connection held a write lock on the database longer than the busy timeout (%s)", w.o.SQLiteBusyTimeout)
	}
	return e
}

func (w *sqliteWriter) closeStage() error {
	var err error
	if w.insert != nil {
		err = w.insert.Close()
		w.insert = nil
	}
	if w.stage != nil {
		err = errors.Join(err, w.stage.Close())
		w.stage = nil
	}
	return err
}

func (w *sqliteWriter) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case stateCommitted, stateAborted:
		return nil
	}
	w.state = stateAborted
	return w.discard()
}

// discard closes and deletes the staging database. Idempotent.
func (w *sqliteWriter) discard() error {
	err := w.closeStage()
	if rerr := os.RemoveAll(w.stageDir); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return ioErr(w.t, "abort sqlite", err)
	}
	return nil
}
