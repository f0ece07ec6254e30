package sink

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/parquet"
)

// dictTestRecord has columns with known cardinality.
func dictTestRecord(t *testing.T, n int) arrow.RecordBatch {
	mem := checkedMem(t)
	rng := rand.New(rand.NewPCG(3, 4))
	ids := array.NewInt64Builder(mem)
	few := array.NewInt64Builder(mem)
	floats := array.NewFloat64Builder(mem)
	uniq := array.NewStringBuilder(mem)
	words := array.NewStringBuilder(mem)
	day := array.NewDate32Builder(mem)
	sparse := array.NewInt64Builder(mem) // 95% null, 50 distinct values
	for i := 0; i < n; i++ {
		ids.Append(int64(i))
		few.Append(int64(rng.IntN(100)))
		floats.Append(rng.Float64())
		uniq.Append(fmt.Sprintf("user-%016x", rng.Uint64()))
		words.Append(fmt.Sprintf("w%d", rng.IntN(5000)))
		day.Append(arrow.Date32(rng.IntN(3650)))
		if i%20 == 0 {
			sparse.Append(int64(i / 20 % 50))
		} else {
			sparse.AppendNull()
		}
	}
	names := []string{"id", "few", "x", "uuid", "word", "day", "sparse"}
	bs := []array.Builder{ids, few, floats, uniq, words, day, sparse}
	fields := make([]arrow.Field, len(bs))
	cols := make([]arrow.Array, len(bs))
	for i, b := range bs {
		cols[i] = b.NewArray()
		b.Release()
		defer cols[i].Release()
		fields[i] = arrow.Field{Name: names[i], Type: cols[i].DataType(), Nullable: true}
	}
	return array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, int64(n))
}

func TestPlainColumns(t *testing.T) {
	for _, tc := range []struct {
		rows int
		want []string
	}{
		{100_000, []string{"id", "x", "uuid"}},
		{500, nil}, // sample too small to judge: keep dictionaries
		// 2,000 distinct int64s imply ~100k: 800 KB, fits a dictionary page;
		// 2,000 distinct 21-byte strings imply ~2.5 MB: it would not.
		{2_000, []string{"uuid"}},
	} {
		t.Run(fmt.Sprint(tc.rows), func(t *testing.T) {
			rec := dictTestRecord(t, tc.rows)
			defer rec.Release()
			got := plainColumns(rec, parquet.DefaultDictionaryPageSizeLimit)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("plain columns %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDictionarySamplingInFile checks the encodings that land in the file,
// with sampling on and off.
func TestDictionarySamplingInFile(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoDictionarySampling=%v", off), func(t *testing.T) {
			mem := checkedMem(t)
			dir := t.TempDir()
			rec := dictTestRecord(t, 50_000)
			defer rec.Release()
			w := mustOpen(t, Target{URI: "parquet://d.parquet", OutputDir: dir, JobID: 1, Topic: "t"}, Options{Allocator: mem, NoDictionarySampling: off})
			mustWrite(t, w, rec)
			mustCommit(t, w)
			md := parquetMeta(t, filepath.Join(dir, "d_1.parquet")).MetaData()
			rg := md.RowGroup(0)
			dict := map[string]bool{}
			for c := 0; c < rg.NumColumns(); c++ {
				cc, err := rg.ColumnChunk(c)
				if err != nil {
					t.Fatal(err)
				}
				dict[cc.PathInSchema().String()] = cc.HasDictionaryPage()
			}
			for _, name := range []string{"few", "word", "day", "sparse"} {
				if !dict[name] {
					t.Errorf("%s: repetitive column written without a dictionary", name)
				}
			}
			for _, name := range []string{"id", "x", "uuid"} {
				if dict[name] == !off {
					t.Errorf("%s: dictionary page %v, want %v", name, dict[name], off)
				}
			}
			if dict[ColJobID] || dict[ColFileVersionID] {
				t.Error("lineage columns should be delta-encoded, not dictionary-encoded")
			}
			tbl := readParquet(t, mem, filepath.Join(dir, "d_1.parquet"))
			defer tbl.Release()
			for i := 0; i < int(rec.NumCols()); i++ {
				got, err := array.Concatenate(tbl.Column(i).Data().Chunks(), mem)
				if err != nil {
					t.Fatal(err)
				}
				if !array.Equal(got, rec.Column(i)) {
					t.Errorf("column %s differs after the round trip", rec.ColumnName(i))
				}
				got.Release()
			}
		})
	}
}
