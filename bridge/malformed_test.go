package bridge

import (
	"bytes"
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
