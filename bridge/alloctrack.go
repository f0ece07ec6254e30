package bridge

import (
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// allocTracker wraps the allocator of one ReadIPC call and remembers which
// step of the reader (generation) made each live allocation.
//
// arrow-go's stream reader turns a panic while it builds a record batch from
// corrupt buffers into an error (the apache/arrow-go #691 class: string
// offsets past the data, node lengths past their buffers), but the arrays it
// had built by then keep their references to the message body, so the body
// is never given back to the allocator. With the Go allocator the garbage
// collector reclaims it; with any other allocator (a CheckedAllocator, an
// allocator with a budget) every malformed batch leaks its body. After such
// a step failed and the reader was released, nothing references what that
// step allocated, so ReadIPC frees it here.
type allocTracker struct {
	mem  memory.Allocator
	mu   sync.Mutex
	gen  int
	live map[*byte]tracked
}

type tracked struct {
	b   []byte
	gen int
}

func newAllocTracker(mem memory.Allocator) *allocTracker {
	return &allocTracker{mem: mem, live: map[*byte]tracked{}}
}

func (a *allocTracker) Allocate(size int) []byte {
	b := a.mem.Allocate(size)
	a.add(b)
	return b
}

func (a *allocTracker) Reallocate(size int, b []byte) []byte {
	a.remove(b)
	nb := a.mem.Reallocate(size, b)
	a.add(nb)
	return nb
}

func (a *allocTracker) Free(b []byte) {
	a.remove(b)
	a.mem.Free(b)
}

func (a *allocTracker) add(b []byte) {
	if cap(b) == 0 {
		return
	}
	a.mu.Lock()
	a.live[unsafe.SliceData(b)] = tracked{b: b, gen: a.gen}
	a.mu.Unlock()
}

func (a *allocTracker) remove(b []byte) {
	if cap(b) == 0 {
		return
	}
	a.mu.Lock()
	delete(a.live, unsafe.SliceData(b))
	a.mu.Unlock()
}

// step starts a new generation (before each call to the reader's Next).
func (a *allocTracker) step() {
	a.mu.Lock()
	a.gen++
	a.mu.Unlock()
}

// freeStep frees what the current generation allocated and still holds.
// Only for a step that produced no record, after the reader was released.
func (a *allocTracker) freeStep() {
	a.mu.Lock()
	var leaked [][]byte
	for p, t := range a.live {
		if t.gen == a.gen {
			leaked = append(leaked, t.b)
			delete(a.live, p)
		}
	}
	a.mu.Unlock()
	for _, b := range leaked {
		a.mem.Free(b)
	}
}
