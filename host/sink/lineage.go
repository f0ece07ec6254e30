package sink

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// lineageFields are the columns every sink appends, in this order.
var lineageFields = []arrow.Field{
	{Name: ColJobID, Type: arrow.PrimitiveTypes.Int64, Nullable: false},
	{Name: ColFileVersionID, Type: arrow.PrimitiveTypes.Int64, Nullable: false},
}

// withLineage returns sc with the lineage columns appended (sc may be nil).
func withLineage(sc *arrow.Schema) *arrow.Schema {
	var fields []arrow.Field
	var md *arrow.Metadata
	if sc != nil {
		fields = append(fields, sc.Fields()...)
		m := sc.Metadata()
		md = &m
	}
	fields = append(fields, lineageFields...)
	return arrow.NewSchema(fields, md)
}

// constInt64 hands out non-null int64 arrays whose every value is val. It
// builds one buffer and serves shorter lengths as zero-copy slices of it, so a
// stream of equal-length batches costs one fill in total.
type constInt64 struct {
	mem memory.Allocator
	val int64
	arr *array.Int64 // nil until first use
}

// get returns an array of length n; the caller releases it.
func (c *constInt64) get(n int) arrow.Array {
	if c.arr == nil || c.arr.Len() < n {
		c.release()
		c.arr = newConstInt64(c.mem, c.val, n)
	}
	if c.arr.Len() == n {
		c.arr.Retain()
		return c.arr
	}
	return array.NewSlice(c.arr, 0, int64(n))
}

func (c *constInt64) release() {
	if c.arr != nil {
		c.arr.Release()
		c.arr = nil
	}
}

func newConstInt64(mem memory.Allocator, val int64, n int) *array.Int64 {
	buf := memory.NewResizableBuffer(mem)
	buf.Resize(n * arrow.Int64SizeBytes)
	vals := arrow.Int64Traits.CastFromBytes(buf.Bytes())
	if n > 0 {
		vals[0] = val
		for filled := 1; filled < n; filled *= 2 {
			copy(vals[filled:], vals[:filled])
		}
	}
	data := array.NewData(arrow.PrimitiveTypes.Int64, n, []*memory.Buffer{nil, buf}, nil, 0, 0)
	arr := array.NewInt64Data(data)
	data.Release()
	buf.Release()
	return arr
}
