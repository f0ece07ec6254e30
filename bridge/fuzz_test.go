package bridge

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// fuzzLimits keeps every allocation the decoder makes small, so an input
// that would make it allocate a lot fails the limit check instead.
var fuzzLimits = Limits{MaxBatchFrame: 1 << 20, MaxMessage: 64 << 10}

// FuzzFrames feeds arbitrary bytes to the frame reader and the Arrow decoder:
// they must return errors, never panic, never allocate past the limits.
func FuzzFrames(f *testing.F) {
	for _, name := range []string{"hello.bin", "log.bin", "error.bin", "end.bin", "batch_go.bin", "batch_py.bin", "session.bin"} {
		if b, err := os.ReadFile(goldenPath(name)); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{0x02, 0, 0, 0, 3, 0, 1, 'a'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		r := NewReader(bytes.NewReader(data), fuzzLimits)
		for i := 0; i < 64; i++ {
			fr, err := r.Next()
			if err != nil {
				break
			}
			if fr.Len > fuzzLimits.MaxBatchFrame {
				t.Fatalf("frame of %d bytes passed the limit", fr.Len)
			}
			switch fr.Type {
			case FrameBatch:
				// ReadIPC frees what arrow-go leaves behind when it recovers a
				// panic on corrupt buffers (allocTracker), so every input is
				// held to the leak check.
				_, _ = ReadIPC(fr.Body, int64(fr.Len), mem, func(rec arrow.RecordBatch) error { return nil })
				_, _ = io.Copy(io.Discard, fr.Body)
			default:
				var v map[string]any
				_ = fr.Decode(&v)
			}
		}
		if mem.CurrentAlloc() != 0 {
			t.Fatalf("leaked %d bytes of Arrow memory", mem.CurrentAlloc())
		}
	})
}
