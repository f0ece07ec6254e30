package bridge

import (
	"bytes"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
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
// to nothing: metadata is buffered as it arrives. (A record batch body is
// different: arrow-go allocates the announced body, up to the limit, before
// reading it; the Go allocator does not touch those pages until they are
// written, so the resident set does not grow, but the allocator sees the
// request.)
func TestAnnouncedMetadataIsNotReserved(t *testing.T) {
	v := ipctest.Valid(8)
	b := ipctest.Messages(v)[1]
	stream := append(append([]byte(nil), v[:b.Start]...), 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0x0C) // 200 MiB of metadata
	stream = append(stream, make([]byte, 1024)...)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	before := heapAllocated()
	_, err := ReadIPC(bytes.NewReader(stream), 256<<20, mem, func(arrow.RecordBatch) error { return nil })
	grew := heapAllocated() - before
	if err == nil || !strings.Contains(err.Error(), "after 1024 of 201326592 bytes") {
		t.Fatalf("err = %v", err)
	}
	if grew > 8<<20 {
		t.Errorf("refusing 1 KiB of a 200 MiB announced metadata allocated %d MiB", grew>>20)
	}
	mem.AssertSize(t, 0)
}
