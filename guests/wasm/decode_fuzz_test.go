package wasm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	"github.com/casparianflow/casparian/internal/ipctest"
)

// The fuzz targets of the WASM ABI decoders (decode.go). A module controls
// its whole linear memory and every pointer and length it passes, so each
// target takes the memory's bytes and the call's arguments. They check that
// nothing panics, that every refusal is a *guest.Error of a kind the ABI
// documents, and that what a decoder returns or allocates stays within its
// cap whatever length the module announces (the native fuzzer cannot record
// an input that gets the process killed for memory, golang/go #47572).

// fuzzMemSize is the linear memory the targets give a module: 2 MiB, so
// lengths around the 1 MiB document cap fit in it.
const fuzzMemSize = 2 << 20

// fakeMemory is a module's linear memory: the fuzz input, then zeros.
type fakeMemory struct{ b []byte }

func (m *fakeMemory) Read(off, n uint32) ([]byte, bool) {
	if uint64(off)+uint64(n) > uint64(len(m.b)) {
		return nil, false
	}
	return m.b[off : off+n : off+n], true
}

func (m *fakeMemory) Size() uint32 { return uint32(len(m.b)) }

var (
	memOnce  sync.Once
	memBuf   []byte
	memDirty int
)

// moduleMemory returns a memory holding data at offset 0. Fuzz functions
// run one at a time per process, so one buffer serves them all.
func moduleMemory(data []byte) *fakeMemory {
	memOnce.Do(func() { memBuf = make([]byte, fuzzMemSize) })
	clear(memBuf[:memDirty])
	memDirty = copy(memBuf, data)
	return &fakeMemory{b: memBuf}
}

var heapSample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

func heapAllocated() uint64 {
	metrics.Read(heapSample)
	return heapSample[0].Value.Uint64()
}

func checkKind(t *testing.T, gerr *guest.Error, allowed ...error) {
	t.Helper()
	for _, k := range allowed {
		if errors.Is(gerr, k) {
			return
		}
	}
	t.Fatalf("error of kind %v: %v", gerr.Kind, gerr)
}

// emitLayout is a memory image as a module lays it out for emit: the topic
// at 0, the IPC stream at 64.
func emitLayout(topic string, ipc []byte) []byte {
	b := make([]byte, 64+len(ipc))
	copy(b, topic)
	copy(b[64:], ipc)
	return b
}

// FuzzABIEmit drives casparian.emit's decoding: the topic and stream
// arguments (decodeEmit) and the Arrow IPC stream (decodeBatches).
func FuzzABIEmit(f *testing.F) {
	const maxBatch = 256 << 10
	add := func(ipc []byte) {
		f.Add(emitLayout("rows", ipc), uint32(0), uint32(4), uint32(64), uint32(len(ipc)), false)
		f.Add(emitLayout("rows", ipc), uint32(0), uint32(4), uint32(64), uint32(len(ipc)), true)
	}
	add(ipctest.Valid(0))
	add(ipctest.Valid(8))
	for _, c := range ipctest.Malformed(8) {
		add(c.Data)
	}
	for _, name := range []string{"batch_go.bin", "batch_py.bin"} {
		if frame, err := os.ReadFile(filepath.Join("..", "..", "bridge", "testdata", "golden", name)); err == nil {
			tl := int(binary.BigEndian.Uint16(frame[bridge.HeaderSize:]))
			add(frame[bridge.HeaderSize+2+tl:])
		}
	}
	v := ipctest.Valid(4)
	f.Add(emitLayout("other", v), uint32(0), uint32(5), uint32(64), uint32(len(v)), true)          // undeclared
	f.Add(emitLayout("../x", v), uint32(0), uint32(4), uint32(64), uint32(len(v)), false)          // invalid topic
	f.Add(emitLayout("rows", v), uint32(0), uint32(4), uint32(64), uint32(0xFFFFFFFF), false)      // 4 GiB batch
	f.Add(emitLayout("rows", v), uint32(0), uint32(0xFFFFFFFF), uint32(64), uint32(len(v)), false) // 4 GiB topic
	f.Add(emitLayout("rows", v), uint32(0xFFFFFFF0), uint32(4), uint32(64), uint32(len(v)), false) // topic outside memory
	f.Add(emitLayout("rows", v), uint32(0), uint32(4), uint32(fuzzMemSize-8), uint32(64), false)   // stream past the end
	f.Fuzz(func(t *testing.T, image []byte, tp, tl, dp, dl uint32, declared bool) {
		if len(image) > fuzzMemSize {
			return
		}
		mem := moduleMemory(image)
		var topics map[string]bool
		if declared {
			topics = map[string]bool{"rows": true}
		}
		before := heapAllocated()
		topic, data, gerr := decodeEmit(mem, "fuzz", topics, maxBatch, tp, tl, dp, dl)
		if gerr != nil {
			checkKind(t, gerr, guest.ErrProtocol, guest.ErrSchema, guest.ErrResourceLimit)
			return
		}
		if len(topic) > bridge.MaxTopicLen || bridge.ValidateTopic(topic) != nil || (declared && topic != "rows") {
			t.Fatalf("topic %q accepted", topic)
		}
		if len(data) > maxBatch || len(data) != int(dl) {
			t.Fatalf("stream of %d bytes accepted (length %d, cap %d)", len(data), dl, maxBatch)
		}
		alloc := &peakAllocator{mem: memory.NewCheckedAllocator(memory.NewGoAllocator())}
		var rows int64
		gerr = decodeBatches(data, alloc, "fuzz", topic, func(rec arrow.RecordBatch) error {
			rows += rec.NumRows()
			if rows > 1 && rows%7 == 0 {
				return errors.New("sink refused") // the sink's error path too
			}
			return nil
		})
		if gerr != nil {
			checkKind(t, gerr, guest.ErrProtocol, guest.ErrSink)
		}
		if alloc.peak > 2*len(data)+64<<10 || alloc.big > len(data)+64<<10 {
			t.Fatalf("%d-byte stream: Arrow memory peaked at %d bytes (largest request %d)", len(data), alloc.peak, alloc.big)
		}
		if grew := heapAllocated() - before; grew > uint64(64<<20+64*len(data)) {
			t.Fatalf("%d-byte stream: decoding allocated %d bytes of Go heap", len(data), grew)
		}
		if n := alloc.mem.CurrentAlloc(); n != 0 {
			t.Fatalf("%d bytes of Arrow memory not released (%v)", n, gerr)
		}
	})
}

// smallLine is the line cap the targets use besides the real one
// (guestlog.DefaultMaxLine), so that short inputs, which the fuzzer mutates and
// minimizes quickly, reach the cut too.
const smallLine = 48

// FuzzABILog drives casparian.log's decoding.
func FuzzABILog(f *testing.F) {
	f.Add([]byte("hello from the module"), int32(0), uint32(0), uint32(21))
	f.Add([]byte("warn \xff\xfe invalid UTF-8"), int32(4), uint32(0), uint32(24))
	f.Add([]byte("x"), int32(-4), uint32(0), uint32(0xFFFFFFFF))                 // 4 GiB message: cut
	f.Add([]byte("x"), int32(8), uint32(fuzzMemSize-10), uint32(1<<20))          // runs past the memory
	f.Add([]byte("x"), int32(8), uint32(0xFFFFFFFF), uint32(2))                  // pointer past the memory
	f.Add(bytes.Repeat([]byte{0xff, 'a'}, 40), int32(99), uint32(0), uint32(80)) // cut, every other byte invalid
	f.Add([]byte("é is two bytes"), int32(0), uint32(0), uint32(1))              // a rune cut
	f.Fuzz(func(t *testing.T, image []byte, level int32, p, n uint32) {
		if len(image) > fuzzMemSize {
			return
		}
		mem := moduleMemory(image)
		for _, maxLine := range []uint32{smallLine, guestlog.DefaultMaxLine} {
			lvl, msg, gerr := decodeLog(mem, "fuzz", maxLine, level, p, n)
			read := min(n, maxLine)
			if gerr != nil {
				checkKind(t, gerr, guest.ErrProtocol)
				if uint64(p)+uint64(read) <= fuzzMemSize {
					t.Fatalf("in-range message (pointer %d, length %d) refused: %v", p, n, gerr)
				}
				continue
			}
			if int32(lvl) != level {
				t.Fatalf("level %d decoded as %d", level, lvl)
			}
			// Each invalid byte may become a 3-byte U+FFFD; the cut adds "…".
			if len(msg) > 3*int(maxLine)+len("…") || !utf8.ValidString(msg) {
				t.Fatalf("message of %d bytes (valid UTF-8: %v) from length %d, cap %d", len(msg), utf8.ValidString(msg), n, maxLine)
			}
			if want := strings.ToValidUTF8(string(memBuf[p:p+read]), "\uFFFD"); !strings.HasPrefix(msg, want) {
				t.Fatalf("message differs from memory")
			}
		}
	})
}

// FuzzABIDocuments drives the decoding of set_info and set_error: the
// pointer and length, then the Info and Error JSON documents.
func FuzzABIDocuments(f *testing.F) {
	docs := []string{
		`{"name":"testplugin","version":"1.2.3","topics":[{"name":"rows"},{"name":"summary"}],"sdk":"casparian-go/1"}`,
		`{"name":"x","topics":[{"name":"../etc"}]}`,
		`{"kind":"INPUT","type":"IOError","message":"cannot parse line 3","traceback":"at main.go:12"}`,
		`{"kind":"CANCELLED","message":"a module cannot claim a host's kind"}`,
		`{"kind":"RESOURCE_LIMIT","message":"too big"}`,
		`{"message":""}`,
		`not json at all`,
		"{\"message\":\"\xff\xfe\"}",
		`{"topics":[` + strings.Repeat(`{"name":"t"},`, 1000) + `{"name":"t"}]}`,
	}
	for _, d := range docs {
		f.Add([]byte(d), uint32(0), uint32(len(d)))
	}
	f.Add([]byte("{}"), uint32(0), uint32(maxDocBytes+1))  // over the cap
	f.Add([]byte("{}"), uint32(0), uint32(0xFFFFFFFF))     // 4 GiB
	f.Add([]byte("{}"), uint32(0xFFFFFFFF), uint32(2))     // outside memory
	f.Add([]byte(`{"message":"x"}`), uint32(0), uint32(0)) // empty document
	f.Fuzz(func(t *testing.T, image []byte, p, n uint32) {
		if len(image) > fuzzMemSize {
			return
		}
		mem := moduleMemory(image)
		before := heapAllocated()
		if doc, gerr := decodeInfoDoc(mem, "fuzz", p, n); gerr != nil {
			checkKind(t, gerr, guest.ErrProtocol)
		} else {
			if len(doc) > maxDocBytes || len(doc) != int(n) {
				t.Fatalf("Info document of %d bytes (length %d)", len(doc), n)
			}
			if info, gerr := parseInfo(doc, "fuzz"); gerr != nil {
				checkKind(t, gerr, guest.ErrProtocol, guest.ErrSchema)
			} else {
				for _, tp := range info.Topics {
					if bridge.ValidateTopic(tp.Name) != nil {
						t.Fatalf("invalid topic %q accepted", tp.Name)
					}
				}
			}
		}
		doc, gerr := decodeErrorDoc(mem, "fuzz", p, n)
		if gerr != nil {
			checkKind(t, gerr, guest.ErrProtocol)
			return
		}
		if len(doc) > maxDocBytes || len(doc) != int(min(n, maxDocBytes)) {
			t.Fatalf("Error document of %d bytes (length %d)", len(doc), n)
		}
		e := parseFailure(doc, "fuzz", "casparian_process", 1)
		checkKind(t, e, guest.ErrPlugin, guest.ErrInput, guest.ErrSchema, guest.ErrResourceLimit)
		if len(e.Message)+len(e.Traceback) > 3*maxDocBytes+100 {
			t.Fatalf("failure of %d bytes from a %d-byte document", len(e.Message)+len(e.Traceback), len(doc))
		}
		if grew := heapAllocated() - before; grew > uint64(64<<20) {
			t.Fatalf("decoding a %d-byte document allocated %d bytes of Go heap", len(doc), grew)
		}
	})
}

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
