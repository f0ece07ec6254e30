package sink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/host/guest"
)

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func queryInt(t *testing.T, db *sql.DB, q string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func TestSQLiteTypes(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	stage := t.TempDir()
	rec := buildRecord(t, mem, allTypes)
	defer rec.Release()
	w := mustOpen(t, Target{URI: "sqlite://out.db/all_types", OutputDir: dir, JobID: 11, FileVersionID: 110, Topic: "all"}, Options{Allocator: mem, TempDir: stage})
	mustWrite(t, w, rec)
	art := mustCommit(t, w)
	dbPath := filepath.Join(dir, "out.db")
	if want := "sqlite://" + dbPath + "/all_types"; art.URI != want || art.Rows != rec.NumRows() {
		t.Fatalf("artifact %+v, want URI %s rows %d", art, want, rec.NumRows())
	}
	if got := listDir(t, stage); len(got) != 0 {
		t.Errorf("staging files left after commit: %v", got)
	}

	db := openDB(t, dbPath)
	// Declared column types.
	rows, err := db.Query(`SELECT name, type, "notnull" FROM pragma_table_info('all_types')`)
	if err != nil {
		t.Fatal(err)
	}
	decl := map[string]string{}
	for rows.Next() {
		var name, typ string
		var notnull int
		if err := rows.Scan(&name, &typ, &notnull); err != nil {
			t.Fatal(err)
		}
		decl[name] = fmt.Sprintf("%s/%d", typ, notnull)
	}
	rows.Close()
	for _, tc := range allTypes {
		if want := tc.sqlDecl + "/0"; decl[tc.name] != want {
			t.Errorf("column %s declared %q, want %q", tc.name, decl[tc.name], want)
		}
	}
	for _, c := range []string{ColJobID, ColFileVersionID} {
		if decl[c] != "INTEGER/1" {
			t.Errorf("lineage column %s declared %q, want INTEGER NOT NULL", c, decl[c])
		}
	}

	// Values of rows 0 (all set) and 1 (all null), in insertion order.
	for _, tc := range allTypes {
		t.Run(tc.name, func(t *testing.T) {
			var got []any
			rs, err := db.Query(`SELECT ` + quoteIdent(tc.name) + ` FROM all_types ORDER BY rowid LIMIT 2`)
			if err != nil {
				t.Fatal(err)
			}
			defer rs.Close()
			for rs.Next() {
				var v any
				if err := rs.Scan(&v); err != nil {
					t.Fatal(err)
				}
				got = append(got, v)
			}
			if len(got) != 2 || !reflect.DeepEqual(got[0], tc.sqlRow0) || got[1] != nil {
				t.Fatalf("got %#v, want [%#v <nil>]", got, tc.sqlRow0)
			}
		})
	}
	if n := queryInt(t, db, `SELECT count(*) FROM all_types WHERE _job_id = 11 AND _file_version_id = 110`); n != rec.NumRows() {
		t.Errorf("%d rows carry the lineage, want %d", n, rec.NumRows())
	}
}

// TestSQLiteTwoJobsAppend commits two jobs into one table concurrently: both
// land, each in one transaction.
func TestSQLiteTwoJobsAppend(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	const perJob = 5000
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for j := range 2 {
		job := int64(100 + j)
		w := mustOpen(t, Target{URI: "sqlite://shared.db/events", OutputDir: dir, JobID: job, FileVersionID: job * 10, Topic: "events"},
			Options{Allocator: mem, TempDir: t.TempDir()})
		for off := 0; off < perJob; off += 1000 {
			rec := int64Record(mem, "v", 1000, func(i int) int64 { return int64(off + i) })
			mustWrite(t, w, rec)
			rec.Release()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[j] = w.Commit(context.Background())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	db := openDB(t, filepath.Join(dir, "shared.db"))
	for _, job := range []int64{100, 101} {
		if n := queryInt(t, db, `SELECT count(*) FROM events WHERE _job_id = ? AND _file_version_id = ?`, job, job*10); n != perJob {
			t.Errorf("job %d: %d rows, want %d", job, n, perJob)
		}
		// Rows keep their order within a job.
		if n := queryInt(t, db, `SELECT count(*) FROM (SELECT v, row_number() OVER (ORDER BY rowid) - 1 AS i FROM events WHERE _job_id = ?) WHERE v != i`, job); n != 0 {
			t.Errorf("job %d: %d rows out of order", job, n)
		}
	}
}

// TestSQLiteCommitIsOneTransaction makes the INSERT fail half way through (a
// trigger aborts on one row): none of the job's rows may remain.
func TestSQLiteCommitIsOneTransaction(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "t.db")
	tg := Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}

	w := mustOpen(t, tg, Options{Allocator: mem, TempDir: t.TempDir()})
	rec := int64Record(mem, "v", 1000, func(i int) int64 { return int64(i) })
	defer rec.Release()
	mustWrite(t, w, rec)
	mustCommit(t, w)

	db := openDB(t, dbPath)
	if _, err := db.Exec(`CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.v = 500 AND NEW._job_id = 2 BEGIN SELECT RAISE(ABORT, 'boom'); END`); err != nil {
		t.Fatal(err)
	}
	tg.JobID = 2
	stage := t.TempDir()
	w2 := mustOpen(t, tg, Options{Allocator: mem, TempDir: stage})
	mustWrite(t, w2, rec)
	_, err := w2.Commit(context.Background())
	ge := wantKind(t, err, guest.ErrSink)
	if !strings.Contains(ge.Error(), "boom") {
		t.Errorf("error lacks the cause: %v", ge)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM events WHERE _job_id = 2`); n != 0 {
		t.Fatalf("%d rows of the failed job are visible", n)
	}
	if n := queryInt(t, db, `SELECT count(*) FROM events WHERE _job_id = 1`); n != 1000 {
		t.Fatalf("the earlier job has %d rows, want 1000", n)
	}
	if got := listDir(t, stage); len(got) != 0 {
		t.Errorf("staging files left after a failed commit: %v", got)
	}
	// The target is not left locked or in a transaction.
	if _, err := db.Exec(`INSERT INTO events (v, _job_id, _file_version_id) VALUES (1, 3, 3)`); err != nil {
		t.Fatalf("target unusable after failed commit: %v", err)
	}
}

// TestSQLiteTargetNotLockedDuringJob: between the first Write and Commit,
// another connection can take an exclusive lock on the target.
func TestSQLiteTargetNotLockedDuringJob(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "t.db")
	db := openDB(t, dbPath)
	if _, err := db.Exec(`CREATE TABLE other (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
	rec := int64Record(mem, "v", 10, func(i int) int64 { return int64(i) })
	defer rec.Release()
	mustWrite(t, w, rec)

	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, q := range []string{`PRAGMA busy_timeout = 0`, `BEGIN EXCLUSIVE`, `INSERT INTO other VALUES (1)`, `COMMIT`} {
		if _, err := conn.ExecContext(context.Background(), q); err != nil {
			t.Fatalf("%s while the job runs: %v", q, err)
		}
	}
	mustWrite(t, w, rec)
	mustCommit(t, w)
	if n := queryInt(t, db, `SELECT count(*) FROM events`); n != 20 {
		t.Fatalf("%d rows, want 20", n)
	}
}

func TestSQLiteBusyTarget(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	db := openDB(t, filepath.Join(dir, "t.db"))
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"},
		Options{Allocator: mem, TempDir: t.TempDir(), SQLiteBusyTimeout: 100 * time.Millisecond})
	rec := int64Record(mem, "v", 10, func(i int) int64 { return int64(i) })
	defer rec.Release()
	mustWrite(t, w, rec)
	start := time.Now()
	_, err = w.Commit(context.Background())
	ge := wantKind(t, err, guest.ErrSink)
	if ge.Hint == "" || time.Since(start) < 100*time.Millisecond {
		t.Errorf("want a busy error after the timeout with a hint, got %v (hint %q) after %s", ge, ge.Hint, time.Since(start))
	}
	if _, err := conn.ExecContext(context.Background(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
}

func TestSQLiteExistingTable(t *testing.T) {
	cases := []struct {
		name, ddl string
		wantErr   string // "" = the append succeeds
	}{
		{"matching", `CREATE TABLE events (v INTEGER, _job_id INTEGER NOT NULL, _file_version_id INTEGER NOT NULL)`, ""},
		{"matching by affinity and case", `CREATE TABLE events (_FILE_VERSION_ID BIGINT, V INT, _job_id INTEGER)`, ""},
		{"other type", `CREATE TABLE events (v TEXT, _job_id INTEGER, _file_version_id INTEGER)`, `column "v" is TEXT, want INTEGER`},
		{"missing column", `CREATE TABLE events (w INTEGER, _job_id INTEGER, _file_version_id INTEGER)`, `missing column "v"`},
		{"extra column", `CREATE TABLE events (v INTEGER, w INTEGER, _job_id INTEGER, _file_version_id INTEGER)`, `unexpected column "w"`},
		{"no lineage", `CREATE TABLE events (v INTEGER)`, `missing column "_job_id"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			db := openDB(t, filepath.Join(dir, "t.db"))
			if _, err := db.Exec(tc.ddl); err != nil {
				t.Fatal(err)
			}
			w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
			rec := int64Record(mem, "v", 3, func(i int) int64 { return int64(i) })
			defer rec.Release()
			mustWrite(t, w, rec)
			_, err := w.Commit(context.Background())
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if n := queryInt(t, db, `SELECT count(*) FROM events WHERE _job_id = 1`); n != 3 {
					t.Fatalf("%d rows", n)
				}
				return
			}
			ge := wantKind(t, err, guest.ErrSchema)
			for _, s := range []string{tc.wantErr, "table columns:", "topic columns:", `"events"`} {
				if !strings.Contains(ge.Message, s) {
					t.Errorf("message lacks %q:\n%s", s, ge.Message)
				}
			}
			if n := queryInt(t, db, `SELECT count(*) FROM events`); n != 0 {
				t.Fatalf("%d rows inserted despite the mismatch", n)
			}
		})
	}
}

func TestSQLiteAbortLeavesNothing(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	stage := t.TempDir()
	w := mustOpen(t, Target{URI: "sqlite://sub/t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: stage})
	rec := int64Record(mem, "v", 100, func(i int) int64 { return int64(i) })
	defer rec.Release()
	mustWrite(t, w, rec)
	if got := listTree(t, stage); len(got) == 0 {
		t.Fatal("no staging file while the job runs")
	}
	if got := listTree(t, dir); len(got) != 0 {
		t.Fatalf("target touched before commit: %v", got)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("second abort: %v", err)
	}
	if got := listDir(t, stage); len(got) != 0 {
		t.Fatalf("staging left after abort: %v", got)
	}
	if got := listTree(t, dir); len(got) != 0 {
		t.Fatalf("target touched by an aborted job: %v", got)
	}
}

func TestSQLiteQuotesIdentifiers(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	names := []string{`a"b`, `select`, `x); DROP TABLE events; --`, `with space`}
	cols := make([]arrow.Array, len(names))
	fields := make([]arrow.Field, len(names))
	for i, n := range names {
		b := array.NewInt64Builder(mem)
		b.AppendValues([]int64{int64(i)}, nil)
		cols[i] = b.NewArray()
		b.Release()
		defer cols[i].Release()
		fields[i] = arrow.Field{Name: n, Type: arrow.PrimitiveTypes.Int64, Nullable: true}
	}
	rec := array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, 1)
	defer rec.Release()
	w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
	mustWrite(t, w, rec)
	mustCommit(t, w)
	db := openDB(t, filepath.Join(dir, "t.db"))
	var got []string
	rows, err := db.Query(`SELECT name FROM pragma_table_info('events')`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		rows.Scan(&n)
		got = append(got, n)
	}
	if want := append(slices.Clone(names), ColJobID, ColFileVersionID); !slices.Equal(got, want) {
		t.Fatalf("columns %q, want %q", got, want)
	}
}

func TestSQLiteRejects(t *testing.T) {
	mem := checkedMem(t)
	mk := func(names ...string) arrow.RecordBatch {
		fields := make([]arrow.Field, len(names))
		cols := make([]arrow.Array, len(names))
		for i, n := range names {
			fields[i] = arrow.Field{Name: n, Type: arrow.PrimitiveTypes.Int64, Nullable: true}
			cols[i] = array.MakeArrayOfNull(mem, arrow.PrimitiveTypes.Int64, 1)
			defer cols[i].Release()
		}
		return array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, 1)
	}
	for _, tc := range []struct {
		name string
		rec  arrow.RecordBatch
		want string
	}{
		{"case clash", mk("Name", "name"), "case-insensitive"},
		{"lineage case clash", mk("_JOB_ID"), "case-insensitive"},
		{"empty name", mk(""), "empty name"},
		{"no columns", mk(), "at least one column"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.rec.Release()
			w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: t.TempDir(), JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
			ge := wantKind(t, w.Write(context.Background(), tc.rec), guest.ErrSchema)
			if !strings.Contains(ge.Message, tc.want) {
				t.Errorf("message lacks %q: %s", tc.want, ge.Message)
			}
		})
	}
	t.Run("uint64 overflow", func(t *testing.T) {
		b := array.NewUint64Builder(mem)
		b.AppendValues([]uint64{1 << 63}, nil)
		arr := b.NewArray()
		b.Release()
		defer arr.Release()
		rec := array.NewRecordBatch(arrow.NewSchema([]arrow.Field{{Name: "u", Type: arrow.PrimitiveTypes.Uint64}}, nil), []arrow.Array{arr}, 1)
		defer rec.Release()
		w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: t.TempDir(), JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
		ge := wantKind(t, w.Write(context.Background(), rec), guest.ErrSink)
		if !strings.Contains(ge.Message, "9223372036854775808") {
			t.Errorf("message should show the value: %s", ge.Message)
		}
	})
}

func TestSQLiteCommitWithoutWrites(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	// No schema: nothing to do, the database is not created.
	w := mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events"}, Options{Allocator: mem, TempDir: t.TempDir()})
	if art := mustCommit(t, w); art.Rows != 0 {
		t.Fatalf("rows %d", art.Rows)
	}
	if got := listTree(t, dir); len(got) != 0 {
		t.Fatalf("files: %v", got)
	}
	// Declared schema: the table is created, empty.
	sc := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil)
	w = mustOpen(t, Target{URI: "sqlite://t.db/events", OutputDir: dir, JobID: 1, Topic: "events", Schema: sc}, Options{Allocator: mem, TempDir: t.TempDir()})
	mustCommit(t, w)
	if n := queryInt(t, openDB(t, filepath.Join(dir, "t.db")), `SELECT count(*) FROM events`); n != 0 {
		t.Fatalf("%d rows", n)
	}
}

func BenchmarkSQLiteWrite(b *testing.B) {
	rec := benchRecord(memory.NewGoAllocator(), 100_000)
	defer rec.Release()
	dir := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, err := Open(context.Background(), Target{URI: "sqlite://bench.db/t", OutputDir: dir, JobID: int64(i), Topic: "t"}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Write(context.Background(), rec); err != nil {
			b.Fatal(err)
		}
		if _, err := w.Commit(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100_000), "ns/row")
}
