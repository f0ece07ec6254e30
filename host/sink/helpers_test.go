package sink

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/casparianflow/casparian/host/guest"
)

// checkedMem returns a checked allocator that fails the test if anything
// allocated through it is still live when the test ends.
func checkedMem(t *testing.T) *memory.CheckedAllocator {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return mem
}

// typeCase is one Arrow type with five values, row 1 always null, and the
// value row 0 reads back as from SQLite.
type typeCase struct {
	name    string
	dt      arrow.DataType
	json    string // for array.FromJSON; ignored when dict is set
	dict    [2]string
	sqlRow0 any
	sqlDecl string
	// parquetAs is the type a Parquet round trip yields when it is not dt.
	parquetAs arrow.DataType
}

var (
	tsUTC = &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}
	tsNY  = &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "America/New_York"}
)

// allTypes covers what pyarrow commonly emits.
var allTypes = []typeCase{
	{name: "i8", dt: arrow.PrimitiveTypes.Int8, json: `[1, null, -3, 4, 127]`, sqlRow0: int64(1), sqlDecl: "INTEGER"},
	{name: "i16", dt: arrow.PrimitiveTypes.Int16, json: `[-2, null, 3, 4, 32767]`, sqlRow0: int64(-2), sqlDecl: "INTEGER"},
	{name: "i32", dt: arrow.PrimitiveTypes.Int32, json: `[3, null, -3, 4, 2147483647]`, sqlRow0: int64(3), sqlDecl: "INTEGER"},
	{name: "i64", dt: arrow.PrimitiveTypes.Int64, json: `[-9223372036854775808, null, 0, 4, 9223372036854775807]`, sqlRow0: int64(-9223372036854775808), sqlDecl: "INTEGER"},
	{name: "u8", dt: arrow.PrimitiveTypes.Uint8, json: `[255, null, 0, 4, 5]`, sqlRow0: int64(255), sqlDecl: "INTEGER"},
	{name: "u16", dt: arrow.PrimitiveTypes.Uint16, json: `[65535, null, 0, 4, 5]`, sqlRow0: int64(65535), sqlDecl: "INTEGER"},
	{name: "u32", dt: arrow.PrimitiveTypes.Uint32, json: `[4294967295, null, 0, 4, 5]`, sqlRow0: int64(4294967295), sqlDecl: "INTEGER"},
	{name: "u64", dt: arrow.PrimitiveTypes.Uint64, json: `[9223372036854775807, null, 0, 4, 5]`, sqlRow0: int64(9223372036854775807), sqlDecl: "INTEGER"},
	{name: "f32", dt: arrow.PrimitiveTypes.Float32, json: `[1.5, null, -2.25, 0, 3.5]`, sqlRow0: 1.5, sqlDecl: "REAL"},
	{name: "f64", dt: arrow.PrimitiveTypes.Float64, json: `[0.1, null, -1e300, 0, 2.5]`, sqlRow0: 0.1, sqlDecl: "REAL"},
	{name: "dec", dt: &arrow.Decimal128Type{Precision: 10, Scale: 2}, json: `["1.23", null, "-4.56", "0.00", "99999999.99"]`, sqlRow0: "1.23", sqlDecl: "TEXT"},
	{name: "str", dt: arrow.BinaryTypes.String, json: `["a", null, "", "héllo", "z"]`, sqlRow0: "a", sqlDecl: "TEXT"},
	{name: "lstr", dt: arrow.BinaryTypes.LargeString, json: `["big", null, "", "x", "y"]`, sqlRow0: "big", sqlDecl: "TEXT"},
	{name: "bin", dt: arrow.BinaryTypes.Binary, json: `["AAE=", null, "", "YQ==", "/w=="]`, sqlRow0: []byte{0, 1}, sqlDecl: "BLOB"},
	{name: "lbin", dt: arrow.BinaryTypes.LargeBinary, json: `["/w==", null, "", "YQ==", "AAE="]`, sqlRow0: []byte{0xff}, sqlDecl: "BLOB"},
	{name: "flag", dt: arrow.FixedWidthTypes.Boolean, json: `[true, null, false, true, false]`, sqlRow0: int64(1), sqlDecl: "INTEGER"},
	{name: "day", dt: arrow.FixedWidthTypes.Date32, json: `["2024-01-02", null, "1970-01-01", "1969-12-31", "2262-04-11"]`, sqlRow0: "2024-01-02", sqlDecl: "TEXT"},
	{name: "ts_naive", dt: &arrow.TimestampType{Unit: arrow.Microsecond}, json: `["2024-01-02T03:04:05.123456", null, "1970-01-01T00:00:00", "1969-12-31T23:59:59.5", "2100-01-01T00:00:00"]`, sqlRow0: "2024-01-02T03:04:05.123456", sqlDecl: "TEXT"},
	{name: "ts_utc", dt: tsUTC, json: `["2024-01-02T03:04:05.123456Z", null, "1970-01-01T00:00:00Z", "2000-02-29T12:00:00Z", "2100-01-01T00:00:00Z"]`, sqlRow0: "2024-01-02T03:04:05.123456Z", sqlDecl: "TEXT"},
	{name: "ts_ny_ns", dt: tsNY, json: `["2024-07-01T12:00:00.000000001Z", null, "1970-01-01T00:00:00Z", "2000-02-29T12:00:00Z", "2100-01-01T00:00:00Z"]`, sqlRow0: "2024-07-01T12:00:00.000000001Z", sqlDecl: "TEXT"},
	{name: "ts_s", dt: &arrow.TimestampType{Unit: arrow.Second, TimeZone: "UTC"}, json: `["2024-01-02T03:04:05Z", null, "1970-01-01T00:00:00Z", "2000-02-29T12:00:00Z", "2100-01-01T00:00:00Z"]`, sqlRow0: "2024-01-02T03:04:05Z", sqlDecl: "TEXT",
		parquetAs: &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}},
	{name: "dur_ms", dt: arrow.FixedWidthTypes.Duration_ms, json: `[1500, null, 0, -1, 86400000]`, sqlRow0: int64(1500), sqlDecl: "INTEGER"},
	{name: "dur_us", dt: arrow.FixedWidthTypes.Duration_us, json: `[7, null, 0, -1, 86400000000]`, sqlRow0: int64(7), sqlDecl: "INTEGER"},
	{name: "tod", dt: arrow.FixedWidthTypes.Time64us, json: `["03:04:05.123456", null, "00:00:00", "23:59:59.999999", "12:00:00"]`, sqlRow0: "03:04:05.123456", sqlDecl: "TEXT"},
	{name: "list_i32", dt: arrow.ListOf(arrow.PrimitiveTypes.Int32), json: `[[1, 2], null, [], [null, 3], [4]]`, sqlRow0: "[1,2]", sqlDecl: "TEXT"},
	{name: "llist_str", dt: arrow.LargeListOf(arrow.BinaryTypes.String), json: `[["a", "b"], null, [], ["c", null], ["d"]]`, sqlRow0: `["a","b"]`, sqlDecl: "TEXT"},
	{name: "rec", dt: arrow.StructOf(arrow.Field{Name: "a", Type: arrow.PrimitiveTypes.Int32, Nullable: true}, arrow.Field{Name: "b", Type: arrow.BinaryTypes.String, Nullable: true}),
		json: `[{"a": 1, "b": "x"}, null, {"a": null, "b": "y"}, {"a": 3, "b": null}, {"a": 4, "b": "z"}]`, sqlRow0: `{"a":1,"b":"x"}`, sqlDecl: "TEXT"},
	{name: "kv", dt: arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int32),
		json: `[[{"key": "a", "value": 1}], null, [], [{"key": "b", "value": null}, {"key": "c", "value": 3}], [{"key": "d", "value": 4}]]`, sqlRow0: `[{"key":"a","value":1}]`, sqlDecl: "TEXT"},
	{name: "cat", dt: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String},
		dict: [2]string{`[0, null, 1, 0, 2]`, `["x", "y", "z"]`}, sqlRow0: "x", sqlDecl: "TEXT"},
}

// buildArray builds one test column.
func buildArray(t *testing.T, mem memory.Allocator, tc typeCase) arrow.Array {
	t.Helper()
	if dt, ok := tc.dt.(*arrow.DictionaryType); ok {
		arr, err := array.DictArrayFromJSON(mem, dt, tc.dict[0], tc.dict[1])
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		return arr
	}
	arr, _, err := array.FromJSON(mem, tc.dt, strings.NewReader(tc.json))
	if err != nil {
		t.Fatalf("%s: %v", tc.name, err)
	}
	return arr
}

// buildRecord builds a record of the given cases; the caller releases it.
func buildRecord(t *testing.T, mem memory.Allocator, cases []typeCase) arrow.RecordBatch {
	t.Helper()
	fields := make([]arrow.Field, len(cases))
	cols := make([]arrow.Array, len(cases))
	for i, tc := range cases {
		fields[i] = arrow.Field{Name: tc.name, Type: tc.dt, Nullable: true}
		cols[i] = buildArray(t, mem, tc)
		defer cols[i].Release()
	}
	return array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, int64(cols[0].Len()))
}

// int64Record builds a one-column int64 record with values from f.
func int64Record(mem memory.Allocator, name string, n int, f func(i int) int64) arrow.RecordBatch {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	b.Reserve(n)
	for i := 0; i < n; i++ {
		b.UnsafeAppend(f(i))
	}
	arr := b.NewArray()
	defer arr.Release()
	sc := arrow.NewSchema([]arrow.Field{{Name: name, Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil)
	return array.NewRecordBatch(sc, []arrow.Array{arr}, int64(n))
}

// readParquet reads a whole file back, except duration columns, which
// pqarrow cannot read: their fields stay in the schema, all null.
// The caller releases the table.
func readParquet(t *testing.T, mem memory.Allocator, path string) arrow.Table {
	t.Helper()
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1 << 16}, mem)
	if err != nil {
		t.Fatalf("read back %s: %v", path, err)
	}
	sc, err := fr.Schema()
	if err != nil {
		t.Fatal(err)
	}
	var leaves, readable, rowGroups []int
	for i, f := range sc.Fields() {
		if f.Type.ID() != arrow.DURATION {
			readable = append(readable, i)
			leaves = appendLeaves(leaves, fr.Manifest.Fields[i])
		}
	}
	for rg := 0; rg < pf.NumRowGroups(); rg++ {
		rowGroups = append(rowGroups, rg)
	}
	part, err := fr.ReadRowGroups(context.Background(), leaves, rowGroups)
	if err != nil {
		t.Fatalf("read back %s: %v", path, err)
	}
	defer part.Release()
	cols := make([]arrow.Column, sc.NumFields())
	for j, i := range readable {
		cols[i] = *part.Column(j)
		cols[i].Retain()
	}
	for i, f := range sc.Fields() {
		if f.Type.ID() == arrow.DURATION {
			nulls := array.MakeArrayOfNull(mem, f.Type, int(part.NumRows()))
			ch := arrow.NewChunked(f.Type, []arrow.Array{nulls})
			cols[i] = *arrow.NewColumn(f, ch)
			ch.Release()
			nulls.Release()
		}
	}
	tbl := array.NewTable(sc, cols, -1)
	for i := range cols {
		cols[i].Release()
	}
	return tbl
}

// parquetMeta opens a file's metadata.
func parquetMeta(t *testing.T, path string) *file.Reader {
	t.Helper()
	r, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// listDir returns the names in dir, sorted (hidden files included).
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// listTree returns every file under dir, relative, sorted.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// wantKind fails unless err is a *guest.Error of the given kind.
func wantKind(t *testing.T, err, kind error) *guest.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", kind)
	}
	var ge *guest.Error
	if !errors.As(err, &ge) {
		t.Fatalf("got %T %v, want *guest.Error", err, err)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("got kind %v (%v), want %v", ge.Kind, err, kind)
	}
	return ge
}

// mustOpen opens a writer or fails the test; it aborts the writer at cleanup.
func mustOpen(t *testing.T, tg Target, o Options) Writer {
	t.Helper()
	w, err := Open(context.Background(), tg, o)
	if err != nil {
		t.Fatalf("open %s: %v", tg.URI, err)
	}
	t.Cleanup(func() { _ = w.Abort() })
	return w
}

func mustWrite(t *testing.T, w Writer, rec arrow.RecordBatch) {
	t.Helper()
	if err := w.Write(context.Background(), rec); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func mustCommit(t *testing.T, w Writer) Artifact {
	t.Helper()
	art, err := w.Commit(context.Background())
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	return art
}

func appendLeaves(out []int, f pqarrow.SchemaField) []int {
	if len(f.Children) == 0 {
		return append(out, f.ColIndex)
	}
	for _, c := range f.Children {
		out = appendLeaves(out, c)
	}
	return out
}
