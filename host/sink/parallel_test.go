package sink

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// flatRecord builds n rows of every flat type in allTypes (each column its
// five test values repeated, shifted by shift so batches differ) plus a
// column with scattered nulls, a non-nullable one and an all-null one.
func flatRecord(t *testing.T, mem memory.Allocator, n, shift int) arrow.RecordBatch {
	t.Helper()
	var fields []arrow.Field
	var cols []arrow.Array
	add := func(f arrow.Field, arr arrow.Array) {
		fields = append(fields, f)
		cols = append(cols, arr)
	}
	for _, tc := range allTypes {
		if !flatType(tc.dt) {
			continue
		}
		if shift%2 == 1 && tc.dict[1] != "" {
			tc.dict[1] = `["y", "x", "w"]` // a different dictionary every other batch
		}
		base := buildArray(t, mem, tc)
		parts := make([]arrow.Array, 0, n/5+2)
		for len(parts)*5 < n+5 {
			parts = append(parts, base)
		}
		long, err := array.Concatenate(parts, mem)
		base.Release()
		if err != nil {
			t.Fatal(err)
		}
		s := shift % 5
		add(arrow.Field{Name: tc.name, Type: tc.dt, Nullable: true}, array.NewSlice(long, int64(s), int64(s+n)))
		long.Release()
	}
	ib := array.NewInt64Builder(mem)
	fb := array.NewFloat64Builder(mem)
	sb := array.NewStringBuilder(mem)
	for i := 0; i < n; i++ {
		v := int64(i+shift) * 2654435761 % 1000003
		if v%10 == 0 {
			ib.AppendNull()
		} else {
			ib.Append(v)
		}
		fb.Append(float64(v) / 7)
		if v%3 == 0 {
			sb.AppendNull()
		} else {
			sb.Append(strings.Repeat("x", int(v%5)) + string(rune('a'+v%26)))
		}
	}
	add(arrow.Field{Name: "sparse", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, ib.NewArray())
	add(arrow.Field{Name: "required", Type: arrow.PrimitiveTypes.Float64, Nullable: false}, fb.NewArray())
	add(arrow.Field{Name: "words", Type: arrow.BinaryTypes.String, Nullable: true}, sb.NewArray())
	ib.Release()
	fb.Release()
	sb.Release()
	add(arrow.Field{Name: "nothing", Type: arrow.PrimitiveTypes.Int32, Nullable: true}, array.MakeArrayOfNull(mem, arrow.PrimitiveTypes.Int32, n))
	md := arrow.NewMetadata([]string{"origin"}, []string{"test"})
	rec := array.NewRecordBatch(arrow.NewSchema(fields, &md), cols, int64(n))
	for _, c := range cols {
		c.Release()
	}
	return rec
}

// TestParallelColumnsMatchSequential writes the same multi-batch table
// through the parallel (flat) path and pqarrow.FileWriter and checks that the
// files are the same, byte for byte, and read back the same in Go and pyarrow.
func TestParallelColumnsMatchSequential(t *testing.T) {
	mem := checkedMem(t)
	var batches []arrow.RecordBatch
	for i, n := range []int{20_000, 35_000, 3, 17_000, 30_000} {
		rec := flatRecord(t, mem, n+7, i)
		// a slice with an offset, so validity bitmaps do not start at bit 0
		batches = append(batches, rec.NewSlice(7, int64(n+7)))
		rec.Release()
	}
	defer func() {
		for _, b := range batches {
			b.Release()
		}
	}()
	// Random int64 columns fill pages, so the byte bound starts row groups.
	var random []arrow.RecordBatch
	rng := rand.New(rand.NewPCG(3, 4))
	for range 6 {
		var fields []arrow.Field
		var cols []arrow.Array
		for c := range 5 {
			b := array.NewInt64Builder(mem)
			for range 50_000 {
				if c == 0 && rng.IntN(10) == 0 {
					b.AppendNull()
				} else {
					b.Append(rng.Int64())
				}
			}
			fields = append(fields, arrow.Field{Name: fmt.Sprintf("c%d", c), Type: arrow.PrimitiveTypes.Int64, Nullable: c != 1})
			cols = append(cols, b.NewArray())
			b.Release()
		}
		random = append(random, array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, 50_000))
		for _, c := range cols {
			c.Release()
		}
	}
	defer func() {
		for _, b := range random {
			b.Release()
		}
	}()
	// Encode every piece of at least 1024 rows in parallel, whatever the
	// default threshold.
	defer func(n int64) { parallelMinRows = n }(parallelMinRows)
	parallelMinRows = 1024

	for _, tc := range []struct {
		name    string
		o       Options
		batches []arrow.RecordBatch
	}{
		{"rows", Options{MaxRowGroupRows: 25_000}, batches},
		{"bytes", Options{MaxRowGroupBytes: 1 << 20}, random},
		{"zstd", Options{Compression: "zstd", MaxRowGroupRows: 40_000}, batches},
		{"no-sampling", Options{NoDictionarySampling: true, MaxRowGroupRows: 18_000}, batches},
	} {
		t.Run(tc.name, func(t *testing.T) {
			batches := tc.batches
			dir := t.TempDir()
			paths := map[bool]string{}
			for _, seq := range []bool{false, true} {
				o := tc.o
				o.Allocator = mem
				o.sequentialColumns = seq
				name := "par"
				if seq {
					name = "seq"
				}
				w := mustOpen(t, Target{URI: "parquet://" + name + ".parquet", OutputDir: dir, JobID: 3, FileVersionID: 30, Topic: name,
					Provenance: map[string]string{"casparian.plugin": "p"}}, o)
				for _, b := range batches {
					mustWrite(t, w, b)
				}
				if _, ok := w.(*parquetWriter).fw.(*flatFileWriter); ok == seq {
					t.Fatalf("sequential=%v uses %T", seq, w.(*parquetWriter).fw)
				}
				paths[seq] = filepath.Join(dir, name+"_3.parquet")
				mustCommit(t, w)
			}
			par, seq := paths[false], paths[true]

			rp, rs := parquetMeta(t, par), parquetMeta(t, seq)
			t.Logf("%d row groups", rp.NumRowGroups())
			if rp.NumRowGroups() < 3 || rp.NumRowGroups() != rs.NumRowGroups() {
				t.Fatalf("row groups: parallel %d, sequential %d", rp.NumRowGroups(), rs.NumRowGroups())
			}
			for i := 0; i < rp.NumRowGroups(); i++ {
				if a, b := rp.MetaData().RowGroup(i).NumRows(), rs.MetaData().RowGroup(i).NumRows(); a != b {
					t.Errorf("row group %d: %d rows parallel, %d sequential", i, a, b)
				}
			}
			kp, ks := rp.MetaData().KeyValueMetadata(), rs.MetaData().KeyValueMetadata()
			if !equalStrings(kp.Keys(), ks.Keys()) || !equalStrings(kp.Values(), ks.Values()) {
				t.Errorf("key-value metadata differs:\nparallel   %v\nsequential %v", kp, ks)
			}

			tp, ts := readParquet(t, mem, par), readParquet(t, mem, seq)
			defer tp.Release()
			defer ts.Release()
			if !tp.Schema().Equal(ts.Schema()) {
				t.Fatalf("schemas differ:\nparallel   %s\nsequential %s", tp.Schema(), ts.Schema())
			}
			if tc.name != "bytes" {
				if got := tp.Schema().Field(tp.Schema().FieldIndices("ts_ny_ns")[0]).Type; !arrow.TypeEqual(got, tsNY) {
					t.Errorf("ts_ny_ns reads back as %s", got)
				}
				if got := tp.Schema().Field(tp.Schema().FieldIndices("cat")[0]).Type; got.ID() != arrow.DICTIONARY {
					t.Errorf("cat reads back as %s", got)
				}
			}
			if !array.TableEqual(tp, ts) {
				t.Errorf("tables differ")
			}
			var want int64
			for _, b := range batches {
				want += b.NumRows()
			}
			if tp.NumRows() != want {
				t.Errorf("rows %d, want %d", tp.NumRows(), want)
			}

			bp, err := os.ReadFile(par)
			if err != nil {
				t.Fatal(err)
			}
			bs, err := os.ReadFile(seq)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bp, bs) {
				t.Errorf("files differ: parallel %d bytes, sequential %d", len(bp), len(bs))
			}

			if tc.name == "rows" {
				pyCompare(t, par, seq)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

const pyCompareScript = `
import sys
import pyarrow.parquet as pq
a, b = pq.read_table(sys.argv[1]), pq.read_table(sys.argv[2])
assert a.schema.equals(b.schema, check_metadata=True), (a.schema, b.schema)
assert str(a.schema.field("ts_ny_ns").type) == "timestamp[ns, tz=America/New_York]", a.schema
assert str(a.schema.field("dur_ms").type) == "duration[ms]", a.schema
assert str(a.schema.field("cat").type).startswith("dictionary<values=string"), a.schema
assert a.equals(b), "tables differ"
print(a.num_rows, a.column("sparse").null_count)
`

// pyCompare checks that pyarrow reads the two files as equal tables.
func pyCompare(t *testing.T, a, b string) {
	t.Helper()
	py := pythonWithPyarrow(t)
	script := filepath.Join(t.TempDir(), "cmp.py")
	if err := os.WriteFile(script, []byte(pyCompareScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(context.Background(), py, script, a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("pyarrow: %v\n%s", err, out)
	}
	t.Logf("pyarrow: %s", bytes.TrimSpace(out))
}

// TestParallelColumnsEncodeError checks that an error from one column's
// encoder (here a dictionary holding a null, which pqarrow refuses) fails the
// write, and that Abort then frees everything.
func TestParallelColumnsEncodeError(t *testing.T) {
	for _, seq := range []bool{false, true} {
		mem := checkedMem(t)
		dir := t.TempDir()
		n := 50_000
		dt := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}
		idx := make([]string, n)
		for i := range idx {
			idx[i] = fmt.Sprint(i % 2)
		}
		bad, err := array.DictArrayFromJSON(mem, dt, "["+strings.Join(idx, ",")+"]", `["a", null]`)
		if err != nil {
			t.Fatal(err)
		}
		good := int64Record(mem, "v", n, func(i int) int64 { return int64(i) })
		sc := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64, Nullable: true}, {Name: "d", Type: dt, Nullable: true}}, nil)
		rec := array.NewRecordBatch(sc, []arrow.Array{good.Column(0), bad}, int64(n))
		good.Release()
		bad.Release()
		w := mustOpen(t, Target{URI: "parquet://e.parquet", OutputDir: dir, JobID: 1, Topic: "e"}, Options{Allocator: mem, sequentialColumns: seq})
		err = w.Write(context.Background(), rec)
		rec.Release()
		if err == nil || !strings.Contains(err.Error(), "null encoded in dictionary") {
			t.Errorf("sequential=%v: write error %v", seq, err)
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if names := listDir(t, dir); len(names) != 0 {
			t.Errorf("left behind %v", names)
		}
	}
}
