package bridge

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// guardedReader is the ipc.MessageReader that ReadIPC gives arrow-go's
// stream reader in place of its own, for an untrusted stream.
//
// arrow-go sizes allocations from counts in the flatbuffer metadata before
// checking them against the buffer (a schema claiming 10^10 fields makes it
// allocate tens of GB: found by FuzzFrames; the class of apache/arrow-go
// #948, lengths used before validation), so every message's metadata is
// verified here first: every table, vector and string must lie inside the
// metadata buffer, nesting is bounded, every buffer lies inside the body,
// and compressed record batches (which carry their own uncompressed sizes)
// are refused.
//
// arrow-go's own message reader also allocates a message's whole announced
// body before reading it: on a streamed source (a socket, gRPC chunks) a
// guest that announces 200 MiB and sends 1 KiB makes the host take 200 MiB.
// Here metadata and bodies grow as their bytes arrive instead (bodies in
// steps of up to bodyStep, then four times larger), so an announced length
// costs at most what was sent plus one step.
type guardedReader struct {
	r     io.Reader
	limit int64 // largest metadata or body accepted
	mem   memory.Allocator
	refs  atomic.Int64
	msg   *ipc.Message // the current message (valid until the next one)
	done  bool         // end of stream seen
}

const (
	maxFieldDepth = 64
	maxFields     = 1 << 16 // fields in one schema, all levels

	// bodyStep is the body allocated before any of it arrives: a whole
	// body up to this size (the Python SDK's batches are 16 MiB), the first
	// step of a bigger one.
	bodyStep = 16 << 20
)

var _ ipc.MessageReader = (*guardedReader)(nil)

func newGuardedReader(r io.Reader, limit int64, mem memory.Allocator) *guardedReader {
	g := &guardedReader{r: r, limit: limit, mem: mem}
	g.refs.Add(1)
	return g
}

func (g *guardedReader) Retain() { g.refs.Add(1) }

func (g *guardedReader) Release() {
	if g.refs.Add(-1) == 0 && g.msg != nil {
		g.msg.Release()
		g.msg = nil
	}
}

// Message reads, verifies and returns the next message; io.EOF at the end
// of the stream (its end marker, or the end of the input between messages).
func (g *guardedReader) Message() (*ipc.Message, error) {
	if g.done {
		return nil, io.EOF
	}
	meta, bodyLen, err := g.metadata()
	if err != nil {
		if err == io.EOF {
			g.done = true
		}
		return nil, err
	}
	body, err := readBody(g.r, bodyLen, g.mem)
	if err != nil {
		return nil, err
	}
	if g.msg != nil {
		g.msg.Release()
		g.msg = nil
	}
	mb := memory.NewBufferBytes(meta)
	g.msg = ipc.NewMessage(mb, body) // retains both
	mb.Release()
	body.Release()
	return g.msg, nil
}

// metadata reads and verifies one message prefix and its metadata, and
// returns the metadata and the body length; io.EOF at the end of the stream.
func (g *guardedReader) metadata() ([]byte, int64, error) {
	var prefix [4]byte
	if _, err := io.ReadFull(g.r, prefix[:]); err != nil {
		if err == io.EOF {
			return nil, 0, io.EOF
		}
		return nil, 0, fmt.Errorf("%w: message prefix: %v", ErrInvalidArrow, err)
	}
	size := int32(binary.LittleEndian.Uint32(prefix[:]))
	if uint32(size) == 0xFFFFFFFF { // continuation marker, then the length
		if _, err := io.ReadFull(g.r, prefix[:]); err != nil {
			return nil, 0, fmt.Errorf("%w: message length: %v", ErrInvalidArrow, unexpected(err))
		}
		size = int32(binary.LittleEndian.Uint32(prefix[:]))
	}
	if size == 0 {
		return nil, 0, io.EOF
	}
	if size < 0 || int64(size) > g.limit {
		return nil, 0, fmt.Errorf("%w: message metadata of %d bytes (limit %d)", ErrInvalidArrow, size, g.limit)
	}
	mb := bytes.NewBuffer(make([]byte, 0, min(int(size), 64<<10)))
	if n, err := io.CopyN(mb, g.r, int64(size)); err != nil {
		return nil, 0, fmt.Errorf("%w: message metadata: %v after %d of %d bytes", ErrInvalidArrow, unexpected(err), n, size)
	}
	meta := mb.Bytes()
	bodyLen, err := verifyMessage(meta)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrInvalidArrow, err)
	}
	if bodyLen < 0 || bodyLen > g.limit {
		return nil, 0, fmt.Errorf("%w: message body of %d bytes (limit %d)", ErrInvalidArrow, bodyLen, g.limit)
	}
	return meta, bodyLen, nil
}

// readBody reads a message body of n bytes into a buffer of mem that grows
// as the bytes arrive.
func readBody(r io.Reader, n int64, mem memory.Allocator) (*memory.Buffer, error) {
	buf := memory.NewResizableBuffer(mem)
	var got int64
	for size := min(n, bodyStep); ; size = min(n, 4*size) {
		buf.Resize(int(size))
		k, err := io.ReadFull(r, buf.Bytes()[got:size])
		got += int64(k)
		if err != nil {
			buf.Release()
			return nil, fmt.Errorf("%w: message body: %v after %d of %d bytes", ErrInvalidArrow, unexpected(err), got, n)
		}
		if got == n {
			return buf, nil
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// fb is a bounds-checked view of one flatbuffer.
type fb struct {
	b      []byte
	fields int
}

func (f *fb) u32(off int) (uint32, error) {
	if off < 0 || off+4 > len(f.b) {
		return 0, fmt.Errorf("flatbuffer offset %d out of range", off)
	}
	return binary.LittleEndian.Uint32(f.b[off:]), nil
}

// table returns the position of the table at uoffset position off.
func (f *fb) deref(off int) (int, error) {
	v, err := f.u32(off)
	if err != nil {
		return 0, err
	}
	t := off + int(v)
	if v == 0 || t < 0 || t+4 > len(f.b) {
		return 0, fmt.Errorf("flatbuffer reference %d out of range", t)
	}
	return t, nil
}

// field returns the absolute position of vtable slot i of the table at t,
// or 0 when the field is absent.
func (f *fb) field(t, slot int) (int, error) {
	soff, err := f.u32(t)
	if err != nil {
		return 0, err
	}
	vt := t - int(int32(soff))
	if vt < 0 || vt+4 > len(f.b) {
		return 0, fmt.Errorf("flatbuffer vtable %d out of range", vt)
	}
	vtLen := int(binary.LittleEndian.Uint16(f.b[vt:]))
	if vtLen < 4 || vtLen%2 != 0 || vt+vtLen > len(f.b) {
		return 0, fmt.Errorf("flatbuffer vtable of %d bytes out of range", vtLen)
	}
	pos := 4 + 2*slot
	if pos+2 > vtLen {
		return 0, nil
	}
	o := int(binary.LittleEndian.Uint16(f.b[vt+pos:]))
	if o == 0 {
		return 0, nil
	}
	if t+o >= len(f.b) {
		return 0, fmt.Errorf("flatbuffer field out of range")
	}
	return t + o, nil
}

// vector checks the vector referenced at field position p and returns its
// element start and length.
func (f *fb) vector(p, elemSize int) (start, n int, err error) {
	v, err := f.deref(p)
	if err != nil {
		return 0, 0, err
	}
	ln, err := f.u32(v)
	if err != nil {
		return 0, 0, err
	}
	start = v + 4
	if int64(ln)*int64(elemSize) > int64(len(f.b)-start) {
		return 0, 0, fmt.Errorf("flatbuffer vector of %d elements does not fit in %d bytes", ln, len(f.b)-start)
	}
	return start, int(ln), nil
}

// tableVector checks a vector of tables and calls fn for each table.
func (f *fb) tableVector(t, slot int, fn func(tbl int) error) error {
	p, err := f.field(t, slot)
	if err != nil || p == 0 {
		return err
	}
	start, n, err := f.vector(p, 4)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		tbl, err := f.deref(start + 4*i)
		if err != nil {
			return err
		}
		if fn != nil {
			if err := fn(tbl); err != nil {
				return err
			}
		}
	}
	return nil
}

// optVector checks an optional vector (string, bytes, structs) in a table slot.
func (f *fb) optVector(t, slot, elemSize int) error {
	p, err := f.field(t, slot)
	if err != nil || p == 0 {
		return err
	}
	_, _, err = f.vector(p, elemSize)
	return err
}

// optTable checks an optional sub-table in a table slot and returns it (0 if absent).
func (f *fb) optTable(t, slot int) (int, error) {
	p, err := f.field(t, slot)
	if err != nil || p == 0 {
		return 0, err
	}
	return f.deref(p)
}

func (f *fb) keyValues(t, slot int) error {
	return f.tableVector(t, slot, func(kv int) error {
		if err := f.optVector(kv, 0, 1); err != nil {
			return err
		}
		return f.optVector(kv, 1, 1)
	})
}

// verifyField checks a Field table: name, type table, dictionary, children, metadata.
func (f *fb) verifyField(t, depth int) error {
	if depth > maxFieldDepth {
		return fmt.Errorf("schema nested deeper than %d levels", maxFieldDepth)
	}
	f.fields++
	if f.fields > maxFields {
		return fmt.Errorf("schema with more than %d fields", maxFields)
	}
	if err := f.optVector(t, 0, 1); err != nil { // name
		return err
	}
	if _, err := f.optTable(t, 3); err != nil { // type
		return err
	}
	if d, err := f.optTable(t, 4); err != nil { // dictionary encoding
		return err
	} else if d != 0 {
		if _, err := f.optTable(d, 1); err != nil { // index type
			return err
		}
	}
	if err := f.tableVector(t, 5, func(c int) error { return f.verifyField(c, depth+1) }); err != nil {
		return err
	}
	return f.keyValues(t, 6)
}

// int64Pairs checks the optional vector of {int64, int64} structs in a table
// slot and calls fn for each element.
func (f *fb) int64Pairs(t, slot int, fn func(i int, a, b int64) error) error {
	p, err := f.field(t, slot)
	if err != nil || p == 0 {
		return err
	}
	start, n, err := f.vector(p, 16)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		a := int64(binary.LittleEndian.Uint64(f.b[start+16*i:]))
		b := int64(binary.LittleEndian.Uint64(f.b[start+16*i+8:]))
		if err := fn(i, a, b); err != nil {
			return err
		}
	}
	return nil
}

// verifyRecordBatch checks a RecordBatch table: node counts are not
// negative, every buffer lies inside the body, and compressed batches are
// refused.
func (f *fb) verifyRecordBatch(t int, bodyLen int64) error {
	if p, err := f.field(t, 0); err != nil {
		return err
	} else if p != 0 {
		if p+8 > len(f.b) || int64(binary.LittleEndian.Uint64(f.b[p:])) < 0 {
			return fmt.Errorf("record batch length out of range")
		}
	}
	// nodes: {length, null_count int64}
	if err := f.int64Pairs(t, 1, func(i int, ln, nulls int64) error {
		if ln < 0 || nulls < 0 || nulls > ln {
			return fmt.Errorf("field node %d: length %d, null count %d", i, ln, nulls)
		}
		return nil
	}); err != nil {
		return err
	}
	// buffers: {offset, length int64}
	if err := f.int64Pairs(t, 2, func(i int, off, ln int64) error {
		if off < 0 || ln < 0 || off > bodyLen || ln > bodyLen-off {
			return fmt.Errorf("buffer %d (offset %d, length %d) outside the %d-byte body", i, off, ln, bodyLen)
		}
		return nil
	}); err != nil {
		return err
	}
	if c, err := f.optTable(t, 3); err != nil {
		return err
	} else if c != 0 {
		return fmt.Errorf("compressed record batches are not accepted on the bridge")
	}
	return f.optVector(t, 4, 8) // variadic buffer counts
}

// verifyMessage checks an IPC Message flatbuffer and returns its body length.
func verifyMessage(b []byte) (int64, error) {
	f := &fb{b: b}
	msg, err := f.deref(0)
	if err != nil {
		return 0, err
	}
	var headerType byte
	if p, err := f.field(msg, 1); err != nil {
		return 0, err
	} else if p != 0 {
		headerType = b[p]
	}
	var bodyLen int64
	if p, err := f.field(msg, 3); err != nil {
		return 0, err
	} else if p != 0 {
		if p+8 > len(b) {
			return 0, fmt.Errorf("message bodyLength out of range")
		}
		bodyLen = int64(binary.LittleEndian.Uint64(b[p:]))
	}
	if err := f.keyValues(msg, 4); err != nil {
		return 0, err
	}
	hdr, err := f.optTable(msg, 2)
	if err != nil {
		return 0, err
	}
	switch headerType {
	case 1: // Schema
		if hdr == 0 {
			return 0, fmt.Errorf("schema message without a schema")
		}
		if err := f.tableVector(hdr, 1, func(t int) error { return f.verifyField(t, 0) }); err != nil {
			return 0, err
		}
		if err := f.keyValues(hdr, 2); err != nil {
			return 0, err
		}
		if err := f.optVector(hdr, 3, 8); err != nil {
			return 0, err
		}
	case 2: // DictionaryBatch
		if hdr == 0 {
			return 0, fmt.Errorf("dictionary message without a header")
		}
		rb, err := f.optTable(hdr, 1)
		if err != nil {
			return 0, err
		}
		if rb != 0 {
			if err := f.verifyRecordBatch(rb, bodyLen); err != nil {
				return 0, err
			}
		}
	case 3: // RecordBatch
		if hdr == 0 {
			return 0, fmt.Errorf("record batch message without a header")
		}
		if err := f.verifyRecordBatch(hdr, bodyLen); err != nil {
			return 0, err
		}
	default:
		return 0, fmt.Errorf("unexpected IPC message type %d", headerType)
	}
	return bodyLen, nil
}
