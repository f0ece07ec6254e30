package bridge

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/internal/ipctest"
)

// Every malformed stream the guest boundaries replay is refused with
// ErrInvalidArrow, and gives back every byte of Arrow memory: also those
// arrow-go leaves behind when it recovers a panic on corrupt buffers
// (string offsets past the data, row counts past the buffers: the
// apache/arrow-go #691 class), which ReadIPC frees itself.
func TestReadIPCMalformed(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	v := ipctest.Valid(8)
	n, err := ReadIPC(bytes.NewReader(v), int64(len(v)), mem, func(arrow.RecordBatch) error { return nil })
	if err != nil || n != 1 {
		t.Fatalf("valid stream: %d batches, %v", n, err)
	}
	for _, c := range ipctest.Malformed(8) {
		for _, limit := range []int64{int64(len(c.Data)), 256 << 20} {
			n, err := ReadIPC(bytes.NewReader(c.Data), limit, mem, func(arrow.RecordBatch) error { return nil })
			if err == nil {
				t.Errorf("%s (limit %d): accepted, %d batches", c.Name, limit, n)
				continue
			}
			if mem.CurrentAlloc() != 0 {
				t.Errorf("%s (limit %d): %d bytes of Arrow memory not released: %v", c.Name, limit, mem.CurrentAlloc(), err)
			}
			if limit == int64(len(c.Data)) {
				t.Logf("%s: %v", c.Name, err)
			}
		}
	}
}

// A length a streamed source announces and never sends costs the host next
// to nothing: metadata and bodies are buffered as they arrive (a body in
// steps of bodyStep, then four times larger), not allocated at their
// announced size.
func TestAnnouncedLengthsAreNotReserved(t *testing.T) {
	v := ipctest.Valid(8)
	b := ipctest.Messages(v)[1]
	meta := append(append([]byte(nil), v[:b.Start]...), 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0x0C) // 192 MiB of metadata
	body := append([]byte(nil), v[:b.Body]...)
	binary.LittleEndian.PutUint64(body[b.BodyLenAt:], 200<<20) // a 200 MiB body
	for _, c := range []struct {
		name, want string
		stream     []byte
	}{
		{"metadata", "after 1024 of 201326592 bytes", meta},
		{"body", "after 1024 of 209715200 bytes", body},
	} {
		stream := append(c.stream, make([]byte, 1024)...)
		mem := &peakAllocator{mem: memory.NewCheckedAllocator(memory.NewGoAllocator())}
		before := heapAllocated()
		_, err := ReadIPC(bytes.NewReader(stream), 256<<20, mem, func(arrow.RecordBatch) error { return nil })
		grew := heapAllocated() - before
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: err = %v", c.name, err)
		}
		if grew > 24<<20 || mem.peak > bodyStep+64<<10 {
			t.Errorf("%s: refusing 1 KiB of 200 MiB announced took %d MiB of Go heap, %d MiB of Arrow memory", c.name, grew>>20, mem.peak>>20)
		}
		mem.mem.AssertSize(t, 0)
	}
}

// A body bigger than bodyStep, arriving in small reads, is read whole
// (its buffer grown as it arrives) and decodes to the same values.
func TestLargeBodyGrows(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	const rows = 5 << 20 // 40 MiB of int64
	bld := array.NewInt64Builder(mem)
	bld.Resize(rows)
	for i := 0; i < rows; i++ {
		bld.UnsafeAppend(int64(i) * 3)
	}
	col := bld.NewArray()
	bld.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, rows)
	col.Release()
	stream, err := EncodeIPC(schema, rec)
	rec.Release()
	if err != nil {
		t.Fatal(err)
	}
	n, err := ReadIPC(&smallReads{b: stream, n: 100 << 10}, int64(len(stream)), mem, func(r arrow.RecordBatch) error {
		v := r.Column(0).(*array.Int64)
		if r.NumRows() != rows || v.Value(0) != 0 || v.Value(rows/2) != int64(rows/2)*3 || v.Value(rows-1) != int64(rows-1)*3 {
			t.Errorf("decoded %d rows, values %d, %d, %d", r.NumRows(), v.Value(0), v.Value(rows/2), v.Value(rows-1))
		}
		return nil
	})
	if err != nil || n != 1 {
		t.Fatalf("%d batches, %v", n, err)
	}
}

// smallReads returns at most n bytes per Read, like a socket.
type smallReads struct {
	b []byte
	n int
}

func (r *smallReads) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}
