package bridge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"runtime/metrics"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/internal/ipctest"
)

// peakAllocator records the most Arrow memory a decode held at once and its
// largest single request.
type peakAllocator struct {
	mem  *memory.CheckedAllocator
	mu   sync.Mutex
	peak int
	big  int
}

func (a *peakAllocator) note(size int) {
	a.mu.Lock()
	a.big = max(a.big, size)
	a.peak = max(a.peak, a.mem.CurrentAlloc())
	a.mu.Unlock()
}

func (a *peakAllocator) Allocate(size int) []byte {
	b := a.mem.Allocate(size)
	a.note(size)
	return b
}

func (a *peakAllocator) Reallocate(size int, b []byte) []byte {
	nb := a.mem.Reallocate(size, b)
	a.note(size)
	return nb
}

func (a *peakAllocator) Free(b []byte) { a.mem.Free(b) }

var heapSample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// heapAllocated is the bytes the Go heap has allocated so far (cumulative).
func heapAllocated() uint64 {
	metrics.Read(heapSample)
	return heapSample[0].Value.Uint64()
}

// ipcSeeds are valid streams of many column types (nulls, nesting,
// dictionaries, empty) and the hand-made malformed variants.
func ipcSeeds(t testing.TB) [][]byte {
	mem := memory.NewGoAllocator()
	var seeds [][]byte
	add := func(schema *arrow.Schema, recs ...arrow.RecordBatch) {
		b, err := EncodeIPC(schema, recs...)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
		for _, r := range recs {
			r.Release()
		}
	}
	seeds = append(seeds, ipctest.Valid(0), ipctest.Valid(1), ipctest.Valid(8))
	for _, c := range ipctest.Malformed(8) {
		seeds = append(seeds, c.Data)
	}
	people := peopleRecord(mem)
	add(people.Schema(), people)

	nested := arrow.NewSchema([]arrow.Field{
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
		{Name: "pt", Type: arrow.StructOf(arrow.Field{Name: "x", Type: arrow.PrimitiveTypes.Float64}, arrow.Field{Name: "ok", Type: arrow.FixedWidthTypes.Boolean, Nullable: true})},
		{Name: "code", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}},
		{Name: "blob", Type: &arrow.FixedSizeBinaryType{ByteWidth: 3}, Nullable: true},
		{Name: "ts", Type: arrow.FixedWidthTypes.Timestamp_us},
		{Name: "big", Type: arrow.BinaryTypes.LargeString},
	}, nil)
	b := array.NewRecordBuilder(mem, nested)
	for i := 0; i < 5; i++ {
		lb := b.Field(0).(*array.ListBuilder)
		if i == 3 {
			lb.AppendNull()
		} else {
			lb.Append(true)
			for j := 0; j < i; j++ {
				lb.ValueBuilder().(*array.StringBuilder).Append("t")
			}
		}
		sb := b.Field(1).(*array.StructBuilder)
		sb.Append(true)
		sb.FieldBuilder(0).(*array.Float64Builder).Append(float64(i) / 3)
		if i%2 == 0 {
			sb.FieldBuilder(1).(*array.BooleanBuilder).Append(i == 2)
		} else {
			sb.FieldBuilder(1).(*array.BooleanBuilder).AppendNull()
		}
		if err := b.Field(2).(*array.BinaryDictionaryBuilder).AppendString([]string{"a", "bb", "a", "ccc", "bb"}[i]); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			b.Field(3).(*array.FixedSizeBinaryBuilder).AppendNull()
		} else {
			b.Field(3).(*array.FixedSizeBinaryBuilder).Append([]byte{byte(i), 1, 2})
		}
		b.Field(4).(*array.TimestampBuilder).Append(arrow.Timestamp(1_700_000_000_000_000 + i))
		b.Field(5).(*array.LargeStringBuilder).Append("large")
	}
	r1 := b.NewRecordBatch()
	b.Release()
	r2 := r1.NewSlice(1, 4)
	add(nested, r1, r2)

	for _, name := range []string{"batch_go.bin", "batch_py.bin"} {
		frame, err := os.ReadFile(goldenPath(name))
		if err != nil {
			t.Fatal(err)
		}
		tl := int(binary.BigEndian.Uint16(frame[HeaderSize:]))
		seeds = append(seeds, frame[HeaderSize+2+tl:])
	}
	return seeds
}

// FuzzReadIPC feeds arbitrary bytes to the Arrow IPC ingest every guest uses
// (ReadIPC), once with the stream's own length as the cap (the Python and
// WASM guests) and once with a fixed cap (the go-plugin guest, which streams).
// It must return ErrInvalidArrow, never panic, never leak Arrow memory, and
// never allocate beyond what the cap allows: announced lengths are refused
// before anything is allocated (apache/arrow-go #948), and the Go runtime
// cannot report an out-of-memory input as a crasher (golang/go #47572), so
// the allocation bound is checked here explicitly.
func FuzzReadIPC(f *testing.F) {
	for _, s := range ipcSeeds(f) {
		f.Add(s)
	}
	const fixedCap = 1 << 20
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, limit := range []int64{int64(len(data)), fixedCap} {
			mem := &peakAllocator{mem: memory.NewCheckedAllocator(memory.NewGoAllocator())}
			before := heapAllocated()
			n, err := ReadIPC(bytes.NewReader(data), limit, mem, func(rec arrow.RecordBatch) error {
				if rec.NumCols() != int64(rec.Schema().NumFields()) {
					t.Fatalf("record of %d columns, schema of %d fields", rec.NumCols(), rec.Schema().NumFields())
				}
				return nil
			})
			grew := heapAllocated() - before
			if err != nil && !errors.Is(err, ErrInvalidArrow) {
				t.Fatalf("limit %d: error outside ErrInvalidArrow: %v", limit, err)
			}
			if err == nil && n == 0 {
				t.Fatalf("limit %d: success without a batch", limit)
			}
			// One message body (at most limit) and the arrays sliced from
			// it; a few buffers of slack for the reader's own.
			if capBytes := 2*limit + 64<<10; int64(mem.peak) > capBytes || int64(mem.big) > limit+64<<10 {
				t.Fatalf("limit %d, %d input bytes: Arrow memory peaked at %d bytes (largest request %d), cap %d",
					limit, len(data), mem.peak, mem.big, capBytes)
			}
			// The metadata, the schema and record objects: proportional to
			// the input, whatever lengths it announces.
			if heapCap := uint64(64<<20 + 64*len(data)); grew > heapCap {
				t.Fatalf("limit %d, %d input bytes: decoding allocated %d bytes of Go heap (cap %d)", limit, len(data), grew, heapCap)
			}
			if a := mem.mem.CurrentAlloc(); a != 0 {
				t.Fatalf("limit %d: %d bytes of Arrow memory not released (err %v)", limit, a, err)
			}
		}
	})
}
