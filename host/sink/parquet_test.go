package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"

	"github.com/casparianflow/casparian/host/guest"
)

func TestParquetTypesRoundTrip(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	rec := buildRecord(t, mem, allTypes)
	defer rec.Release()

	w := mustOpen(t, Target{URI: "parquet://all.parquet", OutputDir: dir, JobID: 7, FileVersionID: 70, Topic: "all"}, Options{Allocator: mem})
	mustWrite(t, w, rec)
	mustWrite(t, w, rec) // two batches: values must concatenate in order
	art := mustCommit(t, w)
	if art.Rows != 2*rec.NumRows() {
		t.Fatalf("artifact rows %d, want %d", art.Rows, 2*rec.NumRows())
	}

	path := filepath.Join(dir, "all_7.parquet")
	tbl := readParquet(t, mem, path)
	defer tbl.Release()
	if got, want := tbl.Schema().NumFields(), len(allTypes)+2; got != want {
		t.Fatalf("read back %d columns, want %d", got, want)
	}
	for i, tc := range allTypes {
		t.Run(tc.name, func(t *testing.T) {
			f := tbl.Schema().Field(i)
			if tc.parquetAs != nil {
				// Parquet has no such type; the values come back in this one.
				tc.dt = tc.parquetAs
			}
			if !arrow.TypeEqual(f.Type, tc.dt) {
				t.Fatalf("type %s read back as %s", tc.dt, f.Type)
			}
			want := buildArray(t, mem, tc)
			defer want.Release()
			var got arrow.Array
			if tc.dt.ID() == arrow.DURATION {
				// pqarrow cannot read durations (pyarrow can, see
				// TestPyarrowReadsOurFiles); check the stored int64s.
				got = readRawInt64(t, mem, path, tc.name, tc.dt)
			} else {
				col := tbl.Column(tbl.Schema().FieldIndices(tc.name)[0])
				var err error
				if got, err = array.Concatenate(col.Data().Chunks(), mem); err != nil {
					t.Fatal(err)
				}
			}
			defer got.Release()
			if got.NullN() != 2 {
				t.Errorf("null count %d, want 2", got.NullN())
			}
			for half := 0; half < 2; half++ {
				part := array.NewSlice(got, int64(half*want.Len()), int64((half+1)*want.Len()))
				if !array.Equal(part, want) {
					t.Errorf("batch %d: got %v, want %v", half, part, want)
				}
				part.Release()
			}
		})
	}
}

// readRawInt64 reads a top-level, flat INT64 Parquet column and presents it
// as dt (a type with int64 layout).
func readRawInt64(t *testing.T, mem memory.Allocator, path, name string, dt arrow.DataType) arrow.Array {
	t.Helper()
	r := parquetMeta(t, path)
	leaf := r.MetaData().Schema.ColumnIndexByName(name)
	b := array.NewInt64Builder(mem)
	defer b.Release()
	for rg := 0; rg < r.NumRowGroups(); rg++ {
		cr, err := r.RowGroup(rg).Column(leaf)
		if err != nil {
			t.Fatal(err)
		}
		ir := cr.(*file.Int64ColumnChunkReader)
		n := r.MetaData().RowGroup(rg).NumRows()
		vals := make([]int64, n)
		defs := make([]int16, n)
		levels, _, err := ir.ReadBatch(n, vals, defs, nil)
		if err != nil {
			t.Fatal(err)
		}
		v := 0
		for _, d := range defs[:levels] {
			if d == 0 {
				b.AppendNull()
			} else {
				b.Append(vals[v])
				v++
			}
		}
	}
	arr := b.NewArray()
	defer arr.Release()
	return asLayout(arr, dt)
}

// asLayout reinterprets arr as dt, sharing buffers.
func asLayout(arr arrow.Array, dt arrow.DataType) arrow.Array {
	d := array.NewData(dt, arr.Len(), arr.Data().Buffers(), nil, arr.NullN(), arr.Data().Offset())
	defer d.Release()
	return array.MakeFromData(d)
}

func TestParquetLineageAndProvenance(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	prov := map[string]string{
		"casparian.plugin":       "demo",
		"casparian.input_sha256": strings.Repeat("ab", 32),
		"casparian.job_id":       "42",
	}
	w := mustOpen(t, Target{URI: "parquet://out", OutputDir: dir, JobID: 42, FileVersionID: 9001, Topic: "t", Provenance: prov}, Options{Allocator: mem})
	// Batches of different lengths exercise the cached lineage buffers:
	// grow, shrink (slice), grow again.
	var total int64
	for _, n := range []int{3, 1000, 10, 1000, 5000} {
		rec := int64Record(mem, "v", n, func(i int) int64 { return int64(i) })
		mustWrite(t, w, rec)
		total += int64(n)
		rec.Release()
	}
	art := mustCommit(t, w)
	path := filepath.Join(dir, "out", "data_42.parquet")
	if want := "parquet://" + path; art.URI != want {
		t.Errorf("artifact URI %q, want %q", art.URI, want)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != art.Bytes {
		t.Errorf("artifact bytes %d, file %v %v", art.Bytes, st, err)
	}

	tbl := readParquet(t, mem, path)
	defer tbl.Release()
	if tbl.NumRows() != total {
		t.Fatalf("rows %d, want %d", tbl.NumRows(), total)
	}
	sc := tbl.Schema()
	for name, want := range map[string]int64{ColJobID: 42, ColFileVersionID: 9001} {
		idx := sc.FieldIndices(name)
		if len(idx) != 1 {
			t.Fatalf("lineage column %s missing from %s", name, sc)
		}
		f := sc.Field(idx[0])
		if f.Type.ID() != arrow.INT64 || f.Nullable {
			t.Errorf("lineage column %s is %s nullable=%v, want non-null int64", name, f.Type, f.Nullable)
		}
		for _, chunk := range tbl.Column(idx[0]).Data().Chunks() {
			vals := chunk.(*array.Int64)
			if vals.NullN() != 0 {
				t.Errorf("%s has nulls", name)
			}
			for i := 0; i < vals.Len(); i++ {
				if vals.Value(i) != want {
					t.Fatalf("%s[%d] = %d, want %d", name, i, vals.Value(i), want)
				}
			}
		}
	}

	kv := parquetMeta(t, path).MetaData().KeyValueMetadata()
	for k, v := range prov {
		if got := kv.FindValue(k); got == nil || *got != v {
			t.Errorf("metadata %s = %v, want %q", k, got, v)
		}
	}
	if kv.FindValue("ARROW:schema") == nil {
		t.Error("ARROW:schema not stored")
	}
}

func TestParquetSchemaChangeRejected(t *testing.T) {
	i64 := arrow.Field{Name: "a", Type: arrow.PrimitiveTypes.Int64, Nullable: true}
	cases := []struct {
		name   string
		second []arrow.Field
		want   string // must appear in the message
	}{
		{"type", []arrow.Field{{Name: "a", Type: arrow.BinaryTypes.String, Nullable: true}}, "a: utf8"},
		{"extra column", []arrow.Field{i64, {Name: "b", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, "b: int64"},
		{"renamed", []arrow.Field{{Name: "A", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, "A: int64"},
		{"nullability", []arrow.Field{{Name: "a", Type: arrow.PrimitiveTypes.Int64}}, "a: int64 not null"},
		{"timezone", []arrow.Field{{Name: "a", Type: tsUTC, Nullable: true}}, `tz=UTC`},
	}
	for _, scheme := range []string{"parquet://x.parquet", "sqlite://x.db/t"} {
		for _, tc := range cases {
			t.Run(strings.Split(scheme, ":")[0]+"/"+tc.name, func(t *testing.T) {
				mem := checkedMem(t)
				w := mustOpen(t, Target{URI: scheme, OutputDir: t.TempDir(), JobID: 1, Topic: "orders"}, Options{Allocator: mem, TempDir: t.TempDir()})
				first := int64Record(mem, "a", 2, func(i int) int64 { return int64(i) })
				defer first.Release()
				mustWrite(t, w, first)

				cols := make([]arrow.Array, len(tc.second))
				for i, f := range tc.second {
					cols[i] = array.MakeArrayOfNull(mem, f.Type, 2)
					defer cols[i].Release()
				}
				second := array.NewRecordBatch(arrow.NewSchema(tc.second, nil), cols, 2)
				defer second.Release()
				err := w.Write(context.Background(), second)
				ge := wantKind(t, err, guest.ErrSchema)
				for _, s := range []string{`"orders"`, "a: int64", tc.want} {
					if !strings.Contains(ge.Message, s) {
						t.Errorf("message lacks %q:\n%s", s, ge.Message)
					}
				}
				// The first schema still stands: a matching batch is accepted.
				mustWrite(t, w, first)
				if w.Rows() != 4 {
					t.Errorf("rows %d, want 4", w.Rows())
				}
			})
		}
	}
}

func TestLineageColumnClashRejected(t *testing.T) {
	for _, scheme := range []string{"parquet://x.parquet", "sqlite://x.db/t"} {
		for _, col := range []string{ColJobID, ColFileVersionID} {
			t.Run(strings.Split(scheme, ":")[0]+"/"+col, func(t *testing.T) {
				mem := checkedMem(t)
				dir := t.TempDir()
				w := mustOpen(t, Target{URI: scheme, OutputDir: dir, JobID: 1, Topic: "t"}, Options{Allocator: mem, TempDir: t.TempDir()})
				rec := int64Record(mem, col, 1, func(int) int64 { return 1 })
				defer rec.Release()
				ge := wantKind(t, w.Write(context.Background(), rec), guest.ErrSchema)
				if !strings.Contains(ge.Message, col) {
					t.Errorf("message lacks %q: %s", col, ge.Message)
				}
				if err := w.Abort(); err != nil {
					t.Fatal(err)
				}
				if got := listTree(t, dir); len(got) != 0 {
					t.Errorf("files left after abort: %v", got)
				}
			})
		}
	}
}

func TestParquetAtomicCommit(t *testing.T) {
	for _, end := range []string{"commit", "abort", "cancelled commit", "abort after commit"} {
		t.Run(end, func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			w := mustOpen(t, Target{URI: "parquet://sub/dir", OutputDir: dir, JobID: 5, Topic: "t"}, Options{Allocator: mem})
			rec := int64Record(mem, "v", 100, func(i int) int64 { return int64(i) })
			defer rec.Release()
			mustWrite(t, w, rec)

			out := filepath.Join(dir, "sub", "dir")
			before := listDir(t, out)
			if len(before) != 1 || !strings.HasPrefix(before[0], ".data_5.parquet.tmp-5-") {
				t.Fatalf("before commit the directory holds %v, want one hidden temp file", before)
			}
			switch end {
			case "commit", "abort after commit":
				mustCommit(t, w)
				if got := listDir(t, out); !slices.Equal(got, []string{"data_5.parquet"}) {
					t.Fatalf("after commit: %v", got)
				}
				if end == "abort after commit" {
					if err := w.Abort(); err != nil {
						t.Fatal(err)
					}
					if got := listDir(t, out); !slices.Equal(got, []string{"data_5.parquet"}) {
						t.Fatalf("abort after commit removed output: %v", got)
					}
				}
				return
			case "abort":
				if err := w.Abort(); err != nil {
					t.Fatal(err)
				}
				if err := w.Abort(); err != nil {
					t.Fatalf("second abort: %v", err)
				}
			case "cancelled commit":
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				_, err := w.Commit(ctx)
				wantKind(t, err, guest.ErrCancelled)
			}
			if got := listDir(t, out); len(got) != 0 {
				t.Fatalf("after %s the directory holds %v", end, got)
			}
			wantKind(t, w.Write(context.Background(), rec), guest.ErrSink)
		})
	}
}

func TestParquetRerunReplacesOutput(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	tg := Target{URI: "parquet://x.parquet", OutputDir: dir, JobID: 3, Topic: "t"}
	for _, n := range []int{10, 4} {
		w := mustOpen(t, tg, Options{Allocator: mem})
		rec := int64Record(mem, "v", n, func(i int) int64 { return int64(i) })
		mustWrite(t, w, rec)
		rec.Release()
		mustCommit(t, w)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{"x_3.parquet"}) {
		t.Fatalf("directory holds %v", got)
	}
	tbl := readParquet(t, mem, filepath.Join(dir, "x_3.parquet"))
	defer tbl.Release()
	if tbl.NumRows() != 4 {
		t.Fatalf("rows %d, want the second run's 4", tbl.NumRows())
	}
}

func TestParquetCommitWithoutWrites(t *testing.T) {
	declared := arrow.NewSchema([]arrow.Field{{Name: "a", Type: arrow.BinaryTypes.String, Nullable: true}}, nil)
	for _, tc := range []struct {
		name   string
		schema *arrow.Schema
		want   []string
	}{
		{"no schema", nil, []string{ColJobID, ColFileVersionID}},
		{"declared schema", declared, []string{"a", ColJobID, ColFileVersionID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			w := mustOpen(t, Target{URI: "parquet://e.parquet", OutputDir: dir, JobID: 1, Topic: "t", Schema: tc.schema}, Options{Allocator: mem})
			art := mustCommit(t, w)
			if art.Rows != 0 {
				t.Errorf("rows %d", art.Rows)
			}
			tbl := readParquet(t, mem, filepath.Join(dir, "e_1.parquet"))
			defer tbl.Release()
			var names []string
			for _, f := range tbl.Schema().Fields() {
				names = append(names, f.Name)
			}
			if tbl.NumRows() != 0 || !slices.Equal(names, tc.want) {
				t.Fatalf("got %d rows, columns %v; want 0 rows, %v", tbl.NumRows(), names, tc.want)
			}
		})
	}
}

func TestParquetRowGroupsBoundedByRows(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 3M rows")
	}
	mem := checkedMem(t)
	dir := t.TempDir()
	const total, batch = 3_000_000, 65_536 // batches straddle row-group edges
	w := mustOpen(t, Target{URI: "parquet://r.parquet", OutputDir: dir, JobID: 1, Topic: "t"},
		Options{Allocator: mem, MaxRowGroupRows: 1_000_000})
	for off := 0; off < total; off += batch {
		n := min(batch, total-off)
		rec := int64Record(mem, "v", n, func(i int) int64 { return int64((off + i) % 7) })
		mustWrite(t, w, rec)
		rec.Release()
	}
	mustCommit(t, w)
	md := parquetMeta(t, filepath.Join(dir, "r_1.parquet")).MetaData()
	if md.NumRows != total {
		t.Fatalf("rows %d", md.NumRows)
	}
	if md.NumRowGroups() < 3 {
		t.Fatalf("%d row groups, want at least 3", md.NumRowGroups())
	}
	for i := 0; i < md.NumRowGroups(); i++ {
		if n := md.RowGroup(i).NumRows(); n > 1_000_000 || n == 0 {
			t.Errorf("row group %d has %d rows", i, n)
		}
	}
}

func TestParquetRowGroupsBoundedByBytes(t *testing.T) {
	const bound = 1 << 20
	for _, tc := range []struct {
		name  string
		batch int
	}{
		{"small batches", 10_000},
		{"one huge batch", 1_000_000}, // split inside the sink
	} {
		t.Run(tc.name, func(t *testing.T) {
			sinkMem := checkedMem(t)
			dataMem := checkedMem(t)
			dir := t.TempDir()
			w := mustOpen(t, Target{URI: "parquet://b.parquet", OutputDir: dir, JobID: 1, Topic: "t"},
				Options{Allocator: sinkMem, MaxRowGroupBytes: bound})
			rng := rand.New(rand.NewPCG(1, 2))
			const total = 1_000_000 // 8 MB of incompressible int64
			var peak int
			for off := 0; off < total; off += tc.batch {
				rec := int64Record(dataMem, "v", tc.batch, func(int) int64 { return rng.Int64() })
				mustWrite(t, w, rec)
				rec.Release()
				peak = max(peak, sinkMem.CurrentAlloc())
			}
			mustCommit(t, w)
			md := parquetMeta(t, filepath.Join(dir, "b_1.parquet")).MetaData()
			if md.NumRowGroups() < 4 {
				t.Fatalf("%d row groups for 8 MB with a 1 MiB bound", md.NumRowGroups())
			}
			for i := 0; i < md.NumRowGroups(); i++ {
				if sz := md.RowGroup(i).TotalCompressedSize(); sz > 2*bound {
					t.Errorf("row group %d holds %d bytes, bound %d", i, sz, bound)
				}
			}
			// Memory held by the sink stays near the bound, far below the data.
			if peak > 8*bound {
				t.Errorf("sink allocator peaked at %d bytes, bound %d", peak, bound)
			}
			t.Logf("%d row groups, sink allocator peak %d bytes", md.NumRowGroups(), peak)
		})
	}
}

func TestParquetCompression(t *testing.T) {
	cases := []struct {
		opt, uri string
		want     compress.Compression
	}{
		{"", "parquet://c.parquet", compress.Codecs.Snappy},
		{"zstd", "parquet://c.parquet", compress.Codecs.Zstd},
		{"gzip", "parquet://c.parquet", compress.Codecs.Gzip},
		{"none", "parquet://c.parquet", compress.Codecs.Uncompressed},
		{"", "parquet://c.parquet?compression=zstd", compress.Codecs.Zstd},
	}
	for _, tc := range cases {
		t.Run(tc.opt+tc.uri, func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			rec := buildRecord(t, mem, allTypes)
			defer rec.Release()
			w := mustOpen(t, Target{URI: tc.uri, OutputDir: dir, JobID: 2, Topic: "t"}, Options{Allocator: mem, Compression: tc.opt})
			mustWrite(t, w, rec)
			mustCommit(t, w)
			path := filepath.Join(dir, "c_2.parquet")
			md := parquetMeta(t, path).MetaData()
			rg := md.RowGroup(0)
			for c := 0; c < rg.NumColumns(); c++ {
				cc, err := rg.ColumnChunk(c)
				if err != nil {
					t.Fatal(err)
				}
				if cc.Compression() != tc.want {
					t.Fatalf("column %d compressed with %v, want %v", c, cc.Compression(), tc.want)
				}
			}
			tbl := readParquet(t, mem, path)
			defer tbl.Release()
			if tbl.NumRows() != rec.NumRows() {
				t.Fatalf("rows %d", tbl.NumRows())
			}
		})
	}
	_, err := Open(context.Background(), Target{URI: "parquet:///tmp/x.parquet", Topic: "t"}, Options{Compression: "lzo"})
	ge := wantKind(t, err, guest.ErrSink)
	if !strings.Contains(ge.Message, "zstd") {
		t.Errorf("unknown codec message should list the supported ones: %s", ge.Message)
	}
}

// failingWriter fails every write, like a full disk.
type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

func TestParquetDiskErrorsAreSinkErrors(t *testing.T) {
	t.Run("directory under a file", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "blocker"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(context.Background(), Target{URI: "parquet://blocker/sub/x.parquet", OutputDir: dir, JobID: 1, Topic: "t"}, Options{})
		wantKind(t, err, guest.ErrSink)
	})
	t.Run("read-only directory", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root ignores directory permissions; covered by the other cases")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(dir, 0o700)
		_, err := Open(context.Background(), Target{URI: "parquet://x.parquet", OutputDir: dir, JobID: 1, Topic: "t"}, Options{})
		ge := wantKind(t, err, guest.ErrSink)
		if ge.Hint == "" {
			t.Error("permission error without a hint")
		}
	})
	t.Run("disk full while writing", func(t *testing.T) {
		mem := checkedMem(t)
		dir := t.TempDir()
		w := mustOpen(t, Target{URI: "parquet://x.parquet", OutputDir: dir, JobID: 1, Topic: "t"}, Options{Allocator: mem, MaxRowGroupBytes: 64 << 10})
		// Swap the file for a device that is full.
		w.(*parquetWriter).out.w = failingWriter{syscall.ENOSPC}
		var err error
		for i := 0; i < 50 && err == nil; i++ {
			rec := int64Record(mem, "v", 10_000, func(j int) int64 { return int64(i*10_000 + j) })
			err = w.Write(context.Background(), rec)
			rec.Release()
		}
		if err == nil {
			_, err = w.Commit(context.Background())
		}
		ge := wantKind(t, err, guest.ErrSink)
		if !errors.Is(err, syscall.ENOSPC) || ge.Hint == "" {
			t.Errorf("want ENOSPC with a hint, got %v (hint %q)", err, ge.Hint)
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if got := listDir(t, dir); len(got) != 0 {
			t.Fatalf("files left: %v", got)
		}
	})
}

func TestWriteCancelled(t *testing.T) {
	for _, uri := range []string{"parquet://x.parquet", "sqlite://x.db/t"} {
		t.Run(uri, func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			w := mustOpen(t, Target{URI: uri, OutputDir: dir, JobID: 1, Topic: "t"}, Options{Allocator: mem, TempDir: t.TempDir()})
			rec := int64Record(mem, "v", 3, func(i int) int64 { return int64(i) })
			defer rec.Release()
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			wantKind(t, w.Write(ctx, rec), guest.ErrCancelled)
			if err := w.Abort(); err != nil {
				t.Fatal(err)
			}
			if got := listTree(t, dir); len(got) != 0 {
				t.Fatalf("files left: %v", got)
			}
		})
	}
}

func TestUnsupportedTypeIsSchemaError(t *testing.T) {
	mem := checkedMem(t)
	dt := arrow.RunEndEncodedOf(arrow.PrimitiveTypes.Int32, arrow.PrimitiveTypes.Int64)
	arr := array.MakeArrayOfNull(mem, dt, 1)
	defer arr.Release()
	rec := array.NewRecordBatch(arrow.NewSchema([]arrow.Field{{Name: "ree", Type: dt, Nullable: true}}, nil), []arrow.Array{arr}, 1)
	defer rec.Release()
	for _, uri := range []string{"parquet://x.parquet", "sqlite://x.db/t"} {
		t.Run(uri, func(t *testing.T) {
			w := mustOpen(t, Target{URI: uri, OutputDir: t.TempDir(), JobID: 1, Topic: "t"}, Options{Allocator: mem, TempDir: t.TempDir()})
			ge := wantKind(t, w.Write(context.Background(), rec), guest.ErrSchema)
			if !strings.Contains(ge.Message, "ree") {
				t.Errorf("message should name the column: %s", ge.Message)
			}
			// A declared schema is checked at Open.
			_, err := Open(context.Background(), Target{URI: uri, OutputDir: t.TempDir(), JobID: 1, Topic: "t", Schema: rec.Schema()}, Options{Allocator: mem, TempDir: t.TempDir()})
			wantKind(t, err, guest.ErrSchema)
		})
	}
}

func TestConstInt64(t *testing.T) {
	mem := checkedMem(t)
	c := constInt64{mem: mem, val: -5}
	defer c.release()
	for _, n := range []int{0, 1, 7, 1024, 3, 5000, 5000, 1} {
		arr := c.get(n).(*array.Int64)
		if arr.Len() != n || arr.NullN() != 0 {
			t.Fatalf("len %d nulls %d, want %d 0", arr.Len(), arr.NullN(), n)
		}
		if want := slices.Repeat([]int64{-5}, n); !reflect.DeepEqual(arr.Int64Values(), want) && n > 0 {
			t.Fatalf("n=%d: got %v", n, arr.Int64Values()[:min(n, 10)])
		}
		arr.Release()
	}
}

// BenchmarkParquetWrite measures the sink on a table like the one in
// bench/sink_bench.py (use bench/ for the pyarrow comparison):
//
//	go test -run '^$' -bench ParquetWrite -cpuprofile cpu.out ./host/sink/
func BenchmarkParquetWrite(b *testing.B) {
	mem := memory.NewGoAllocator()
	rec := benchRecord(mem, 1_000_000)
	defer rec.Release()
	dir := b.TempDir()
	b.SetBytes(recordBytes(rec))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w, err := Open(context.Background(), Target{URI: "parquet://bench.parquet", OutputDir: dir, JobID: int64(i), Topic: "t"}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := w.Write(context.Background(), rec); err != nil {
			b.Fatal(err)
		}
		if _, err := w.Commit(context.Background()); err != nil {
			b.Fatal(err)
		}
		os.Remove(filepath.Join(dir, fmt.Sprintf("bench_%d.parquet", i)))
	}
}

// benchRecord builds the bench table's 8 columns in Go.
func benchRecord(mem memory.Allocator, n int) arrow.RecordBatch {
	rng := rand.New(rand.NewPCG(42, 42))
	words := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"}
	i64 := array.NewInt64Builder(mem)
	f64 := array.NewFloat64Builder(mem)
	str := array.NewStringBuilder(mem)
	bl := array.NewBooleanBuilder(mem)
	ts := array.NewTimestampBuilder(mem, tsUTC)
	d32 := array.NewDate32Builder(mem)
	ni := array.NewInt64Builder(mem)
	cat := array.NewDictionaryBuilder(mem, &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}).(*array.BinaryDictionaryBuilder)
	for i := 0; i < n; i++ {
		i64.Append(int64(i))
		f64.Append(rng.Float64())
		str.Append(words[rng.IntN(len(words))] + fmt.Sprint(rng.IntN(1000)))
		bl.Append(rng.IntN(2) == 0)
		ts.Append(arrow.Timestamp(1_700_000_000_000_000 + int64(i)*1_000_000))
		d32.Append(arrow.Date32(19000 + i%3650))
		if rng.IntN(10) == 0 {
			ni.AppendNull()
		} else {
			ni.Append(rng.Int64N(1 << 40))
		}
		_ = cat.AppendString(words[rng.IntN(5)])
	}
	bs := []array.Builder{i64, f64, str, bl, ts, d32, ni, cat}
	names := []string{"id", "x", "word", "flag", "ts", "day", "maybe", "cat"}
	cols := make([]arrow.Array, len(bs))
	fields := make([]arrow.Field, len(bs))
	for i, b := range bs {
		cols[i] = b.NewArray()
		defer cols[i].Release()
		defer b.Release()
		fields[i] = arrow.Field{Name: names[i], Type: cols[i].DataType(), Nullable: true}
	}
	return array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, int64(n))
}

// A temp file left by a crashed earlier attempt of the same job is removed
// when the job writes the same output again; other jobs' files are not.
func TestParquetStaleTempsRemoved(t *testing.T) {
	mem := checkedMem(t)
	dir := t.TempDir()
	stale := []string{".x_3.parquet.tmp-3-0123456789ab", ".x_3.parquet.tmp-3-ba9876543210"}
	other := ".x_4.parquet.tmp-4-0123456789ab"
	for _, n := range append(stale, other) {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w := mustOpen(t, Target{URI: "parquet://x.parquet", OutputDir: dir, JobID: 3, Topic: "t"}, Options{Allocator: mem})
	rec := int64Record(mem, "v", 5, func(i int) int64 { return int64(i) })
	mustWrite(t, w, rec)
	rec.Release()
	mustCommit(t, w)
	if got := listDir(t, dir); !slices.Equal(got, []string{other, "x_3.parquet"}) {
		t.Fatalf("directory holds %v", got)
	}
}
