package sink

import (
	"hash/maphash"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// Dictionary planning.
//
// Parquet writers (arrow-go and pyarrow alike) start every column
// dictionary-encoded and fall back to plain encoding once the column's
// dictionary outgrows the dictionary page limit (1 MiB). For a column of
// (nearly) unique values -- ids, timestamps, measurements -- that means
// hashing the first ~130k values into a dictionary that is then thrown away:
// the output is the same as plain encoding, only slower. In arrow-go that
// hashing was about a third of the sink's time on the benchmark table.
//
// So on the first batch the sink samples each flat column: when at least
// 99% of the first sampleRows non-null values are distinct and the
// dictionary those values imply would exceed the page limit, the column is
// written plain from the start. 99% distinct in a sample of m values means
// (for values drawn uniformly) at least about 50*m distinct values overall,
// so the dictionary would overflow and fall back anyway. Columns that repeat
// values keep dictionary encoding, as in pyarrow. The rare column that is
// unique at first and repetitive later loses dictionary encoding; set
// Options.NoDictionarySampling to keep pyarrow's behaviour exactly.

const (
	sampleRows        = 16384
	minSampleRows     = 1024
	distinctThreshold = 0.99
	// impliedDistinctFactor: 99% distinct in a sample of m implies ≳ 50·m
	// distinct values (1-e^-x)/x = 0.99 at x ≈ 0.02).
	impliedDistinctFactor = 50
)

var sampleSeed = maphash.MakeSeed()

// plainColumns returns the top-level columns of rec that should skip
// dictionary encoding, given the dictionary page limit in bytes.
func plainColumns(rec arrow.RecordBatch, dictLimit int64) []string {
	var out []string
	for i, f := range rec.Schema().Fields() {
		keys, width := sampleKeys(rec.Column(i))
		m := len(keys)
		if m < minSampleRows {
			continue
		}
		slices.Sort(keys)
		distinct := len(slices.Compact(keys))
		if float64(distinct) >= distinctThreshold*float64(m) &&
			float64(impliedDistinctFactor)*float64(m)*width > float64(dictLimit) {
			out = append(out, f.Name)
		}
	}
	return out
}

// sampleKeys returns up to sampleRows keys (the value, or a hash of it) of
// the first non-null values of a flat column, and the average encoded width
// of a value in bytes. Columns the sink does not plan for return nil.
func sampleKeys(arr arrow.Array) ([]uint64, float64) {
	n := arr.Len()
	keys := make([]uint64, 0, min(n, sampleRows))
	add := func(get func(i int) uint64) {
		for i := 0; i < n && len(keys) < sampleRows; i++ {
			if arr.IsValid(i) {
				keys = append(keys, get(i))
			}
		}
	}
	switch a := arr.(type) {
	case *array.Int32:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 4
	case *array.Uint32:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 4
	case *array.Date32:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 4
	case *array.Time32:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 4
	case *array.Float32:
		vals := arrow.Uint32Traits.CastFromBytes(a.Data().Buffers()[1].Bytes())[a.Data().Offset():]
		add(func(i int) uint64 { return uint64(vals[i]) })
		return keys, 4
	case *array.Int64:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 8
	case *array.Uint64:
		add(func(i int) uint64 { return a.Value(i) })
		return keys, 8
	case *array.Float64:
		vals := arrow.Uint64Traits.CastFromBytes(a.Data().Buffers()[1].Bytes())[a.Data().Offset():]
		add(func(i int) uint64 { return vals[i] })
		return keys, 8
	case *array.Timestamp:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 8
	case *array.Date64:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 8
	case *array.Time64:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 8
	case *array.Duration:
		add(func(i int) uint64 { return uint64(a.Value(i)) })
		return keys, 8
	case *array.String:
		return sampleBinary(arr, func(i int) (uint64, int) { v := a.Value(i); return maphash.String(sampleSeed, v), len(v) })
	case *array.LargeString:
		return sampleBinary(arr, func(i int) (uint64, int) { v := a.Value(i); return maphash.String(sampleSeed, v), len(v) })
	case *array.Binary:
		return sampleBinary(arr, func(i int) (uint64, int) { v := a.Value(i); return maphash.Bytes(sampleSeed, v), len(v) })
	case *array.LargeBinary:
		return sampleBinary(arr, func(i int) (uint64, int) { v := a.Value(i); return maphash.Bytes(sampleSeed, v), len(v) })
	}
	return nil, 0
}

// sampleBinary samples a variable-width column; key returns a value's hash
// and length.
func sampleBinary(arr arrow.Array, key func(i int) (uint64, int)) ([]uint64, float64) {
	n := arr.Len()
	keys := make([]uint64, 0, min(n, sampleRows))
	var bytes int
	for i := 0; i < n && len(keys) < sampleRows; i++ {
		if arr.IsValid(i) {
			h, l := key(i)
			bytes += l
			keys = append(keys, h)
		}
	}
	if len(keys) == 0 {
		return nil, 0
	}
	// A dictionary entry is the value plus its 4-byte length.
	return keys, float64(bytes)/float64(len(keys)) + 4
}
