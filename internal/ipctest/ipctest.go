// Package ipctest makes Arrow IPC streams for tests of the hosts' ingest
// paths: a valid one, and the malformed variants a hostile or broken plugin
// can send (truncated streams, bogus metadata and body lengths, buffers at
// wrong offsets, garbage after a valid schema). Every guest boundary replays
// the same variants (guests/*/malformed_test.go), and the decoders' fuzz
// targets start from them.
package ipctest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Schema is the schema of Valid's stream: an int64 and a string column,
// neither with nulls, so the batch's buffers are, in order: id validity
// (empty), id values, name validity (empty), name offsets, name data.
var Schema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String},
}, nil)

// Buffer indexes of Valid's record batch.
const (
	BufIDValues    = 1
	BufNameOffsets = 3
	BufNameData    = 4
)

// Valid returns one Arrow IPC stream (schema, one record batch of rows rows,
// end-of-stream marker) of Schema.
func Valid(rows int) []byte {
	mem := memory.NewGoAllocator()
	b := array.NewRecordBuilder(mem, Schema)
	defer b.Release()
	for i := 0; i < rows; i++ {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("row-%d", i))
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(Schema), ipc.WithAllocator(mem))
	if err := w.Write(rec); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// Message is where one encapsulated IPC message lies in a stream.
type Message struct {
	Start   int   // its first byte (the continuation marker)
	Meta    int   // the first byte of its flatbuffer metadata
	MetaLen int   // metadata length, padding included
	Body    int   // the first byte of its body
	BodyLen int64 // body length (Message.bodyLength)
	// BodyLenAt is the position of Message.bodyLength in the stream (0
	// when the field is absent).
	BodyLenAt int
	// Buffers is the position of each {offset, length int64} buffer
	// entry of a record batch, in order (nil for other messages).
	Buffers []int
	// Nodes is the position of each {length, null_count int64} field node
	// of a record batch.
	Nodes []int
	// LengthAt is the position of a record batch's row count
	// (RecordBatch.length).
	LengthAt int
	// FieldsLenAt is the position of a schema's fields vector length.
	FieldsLenAt int
}

// Messages splits a well-formed stream into its messages (the end-of-stream
// marker excluded). It panics on a malformed stream: it is for building test
// input from Valid, not for decoding.
func Messages(s []byte) []Message {
	var out []Message
	for pos := 0; pos+8 <= len(s); {
		if binary.LittleEndian.Uint32(s[pos:]) != 0xFFFFFFFF {
			panic("ipctest: no continuation marker")
		}
		n := int(binary.LittleEndian.Uint32(s[pos+4:]))
		if n == 0 {
			break
		}
		m := Message{Start: pos, Meta: pos + 8, MetaLen: n}
		fb := flat(s[m.Meta : m.Meta+n])
		msg := fb.root()
		if p := fb.field(msg, 3); p != 0 {
			m.BodyLenAt = m.Meta + p
			m.BodyLen = int64(binary.LittleEndian.Uint64(s[m.BodyLenAt:]))
		}
		hdr := fb.ref(fb.field(msg, 2))
		switch s[m.Meta+fb.field(msg, 1)] {
		case 1: // Schema
			m.FieldsLenAt = m.Meta + fb.ref(fb.field(hdr, 1))
		case 3: // RecordBatch
			m.LengthAt = m.Meta + fb.field(hdr, 0)
			nodes := fb.ref(fb.field(hdr, 1))
			for i := 0; i < fb.u32(nodes); i++ {
				m.Nodes = append(m.Nodes, m.Meta+nodes+4+16*i)
			}
			bufs := fb.ref(fb.field(hdr, 2))
			for i := 0; i < fb.u32(bufs); i++ {
				m.Buffers = append(m.Buffers, m.Meta+bufs+4+16*i)
			}
		}
		m.Body = m.Meta + n
		out = append(out, m)
		pos = m.Body + int(m.BodyLen)
	}
	return out
}

// flat reads a trusted flatbuffer.
type flat []byte

func (f flat) u32(p int) int { return int(binary.LittleEndian.Uint32(f[p:])) }
func (f flat) root() int     { return f.u32(0) }
func (f flat) ref(p int) int { return p + f.u32(p) }
func (f flat) field(t, slot int) int {
	vt := t - int(int32(binary.LittleEndian.Uint32(f[t:])))
	if 4+2*slot >= int(binary.LittleEndian.Uint16(f[vt:])) {
		return 0
	}
	o := int(binary.LittleEndian.Uint16(f[vt+4+2*slot:]))
	if o == 0 {
		return 0
	}
	return t + o
}

// Case is one malformed stream.
type Case struct {
	Name string
	Data []byte
	// Announces is the largest size the stream claims (a length in a
	// header or its metadata), for the record.
	Announces int64
}

func put64(b []byte, at int, v int64) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint64(c[at:], uint64(v))
	return c
}

// Malformed returns the malformed variants of Valid(rows) (rows >= 4).
func Malformed(rows int) []Case {
	v := Valid(rows)
	ms := Messages(v)
	schema, batch := ms[0], ms[1]
	bodyEnd := batch.Body + int(batch.BodyLen)
	bufAt := func(i int) (off, ln int64) {
		p := batch.Buffers[i]
		return int64(binary.LittleEndian.Uint64(v[p:])), int64(binary.LittleEndian.Uint64(v[p+8:]))
	}
	nameOffs, _ := bufAt(BufNameOffsets)
	nameData, nameDataLen := bufAt(BufNameData)
	rnd := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 512)
	for i := range garbage {
		garbage[i] = byte(rnd.UintN(256))
	}
	const gib4 = 4 << 30
	cases := []Case{
		{Name: "truncated in the schema metadata", Data: v[:schema.Meta+schema.MetaLen/2]},
		{Name: "truncated after the batch metadata", Data: v[:batch.Body]},
		{Name: "truncated in the batch body", Data: v[:batch.Body+int(batch.BodyLen)/2]},
		{Name: "truncated in a message prefix", Data: v[:batch.Start+6]},
		{Name: "metadata length of 2 GiB", Announces: 1<<31 - 1,
			Data: append(append([]byte(nil), v[:batch.Start]...), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3, 4)},
		{Name: "negative metadata length", Data: append(append([]byte(nil), v[:batch.Start]...), 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0x80, 1, 2, 3, 4)},
		{Name: "legacy prefix, metadata length of 2 GiB", Announces: 1<<31 - 1, Data: []byte{0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3, 4}},
		{Name: "body length of 4 GiB", Announces: gib4, Data: put64(v, batch.BodyLenAt, gib4)},
		{Name: "body length of 2^62", Announces: 1 << 62, Data: put64(v, batch.BodyLenAt, 1<<62)},
		{Name: "negative body length", Data: put64(v, batch.BodyLenAt, -8)},
		{Name: "buffer length of 4 GiB", Announces: gib4, Data: put64(v, batch.Buffers[BufIDValues]+8, gib4)},
		{Name: "body and buffer lengths of 4 GiB", Announces: gib4,
			Data: put64(put64(v, batch.BodyLenAt, gib4), batch.Buffers[BufNameData]+8, gib4-nameData)},
		{Name: "buffer offset past the body", Data: put64(v, batch.Buffers[BufIDValues], batch.BodyLen+64)},
		{Name: "negative buffer offset", Data: put64(v, batch.Buffers[BufIDValues], -64)},
		{Name: "string offsets buffer at the character data", Data: put64(put64(v, batch.Buffers[BufNameOffsets], nameData),
			batch.Buffers[BufNameOffsets]+8, nameDataLen)},
		{Name: "string offset past the data", Data: func() []byte {
			c := bytes.Clone(v)
			binary.LittleEndian.PutUint32(c[batch.Body+int(nameOffs)+4*rows:], 1<<30)
			return c
		}()},
		{Name: "decreasing string offsets", Data: func() []byte {
			c := bytes.Clone(v)
			binary.LittleEndian.PutUint32(c[batch.Body+int(nameOffs)+4*2:], 1)
			return c
		}()},
		{Name: "row count of 2^40", Announces: 1 << 40, Data: put64(put64(v, batch.Nodes[0], 1<<40), batch.Nodes[1], 1<<40)},
		{Name: "batch length of 2^40", Announces: 1 << 40, Data: put64(v, batch.LengthAt, 1<<40)},
		{Name: "batch and row counts of 2^40", Announces: 1 << 40,
			Data: put64(put64(put64(v, batch.LengthAt, 1<<40), batch.Nodes[0], 1<<40), batch.Nodes[1], 1<<40)},
		{Name: "null count above the length", Data: put64(v, batch.Nodes[0]+8, int64(rows)+5)},
		{Name: "schema with 2^30 fields", Announces: 1 << 30, Data: func() []byte {
			c := bytes.Clone(v)
			binary.LittleEndian.PutUint32(c[schema.FieldsLenAt:], 1<<30)
			return c
		}()},
		{Name: "garbage after the schema", Data: append(append([]byte(nil), v[:batch.Start]...), garbage...)},
		{Name: "garbage after a continuation marker", Data: append(append(append([]byte(nil), v[:batch.Start]...), 0xFF, 0xFF, 0xFF, 0xFF), garbage...)},
		{Name: "garbage only", Data: garbage},
		{Name: "batch body replaced by garbage", Data: append(append(append([]byte(nil), v[:batch.Body]...), garbage[:batch.BodyLen]...), v[bodyEnd:]...)},
	}
	return cases
}
