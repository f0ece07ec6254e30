// Package reftable defines the tables the conformance suite's reference
// plugins emit, so that the Go reference plugin (built both as a go-plugin
// executable and as a WASM module) and the suite build them from one
// definition. The Python reference plugin builds the same tables with
// pyarrow (conformance/kinds/refplugin.py); the suite compares every
// guest's output with these.
//
// It imports only arrow-go: plugin code may use it.
package reftable

import (
	"fmt"
	"math"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Topics and config of the reference plugins. The "mode" config key picks
// a behaviour; see Modes.
const (
	TopicTypes = "types"
	TopicRows  = "rows"
	TopicBig   = "big"
	TopicEcho  = "echo"
	// TopicN is the name of topic i of mode "topics".
	TopicPrefix = "t"
	// ErrorMessage is the message of mode "error"'s error; PanicMessage the
	// panic's (or exception's).
	ErrorMessage = "conformance: bad record 7"
	PanicMessage = "conformance: deliberate panic"
	// ExitCode is the status mode "exit" exits with.
	ExitCode = 3
	// LogMessage is the info record of mode "logs", with attribute LogKey=LogValue.
	LogMessage = "conformance log record"
	LogKey     = "answer"
	LogValue   = "42"
)

// Modes of the reference plugins (config "mode"):
//
//	types          one batch of Types() on topic "types"
//	empty          nothing
//	zero_rows      two batches of zero rows on "rows" (schema RowsSchema)
//	tiny           config "batches" one-row batches on "rows", ids 0..n-1
//	big            one batch on "big" of config "mb" MiB: column "blob" (binary),
//	               config "rows" rows (default 16) of mb/rows MiB each, byte i%251
//	topics         config "n" topics "t0".."t{n-1}"; topic i has i+1 int64
//	               columns c0..ci and one row whose values are i
//	schema_change  a RowsSchema batch, then a batch with "id" as utf8, on "rows"
//	error          fails with ErrorMessage
//	panic          panics (raises) with PanicMessage
//	exit           exits the process (WASM: the module) with ExitCode
//	hang           blocks forever, ignoring cancellation
//	stream         a one-row batch on "rows" every 10 ms, forever
//	noise          config "mb" MiB (default 4) of lines to stdout and as much
//	               to stderr, then one batch on "rows"
//	echo           one batch on "echo": {path utf8, content utf8}: the input
//	               path as the plugin sees it and the file's content
//	logs           logs LogMessage (info, LogKey=LogValue), one batch on "rows"
//	sleep          sleeps config "ms" milliseconds, then one batch on "rows"
var Modes = []string{"types", "empty", "zero_rows", "tiny", "big", "topics", "schema_change", "error",
	"panic", "exit", "hang", "stream", "noise", "echo", "logs", "sleep"}

// RowsSchema is the schema of topic "rows".
var RowsSchema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true}}, nil)

// EchoSchema is the schema of topic "echo".
var EchoSchema = arrow.NewSchema([]arrow.Field{
	{Name: "path", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "content", Type: arrow.BinaryTypes.String, Nullable: true},
}, nil)

// BigSchema is the schema of topic "big".
var BigSchema = arrow.NewSchema([]arrow.Field{{Name: "blob", Type: arrow.BinaryTypes.Binary, Nullable: true}}, nil)

// TypesSchema is the schema of Types: every type pyarrow and arrow-go
// share that the suite checks, each column nullable.
var TypesSchema = arrow.NewSchema([]arrow.Field{
	{Name: "i8", Type: arrow.PrimitiveTypes.Int8, Nullable: true},
	{Name: "i16", Type: arrow.PrimitiveTypes.Int16, Nullable: true},
	{Name: "i32", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
	{Name: "i64", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
	{Name: "u8", Type: arrow.PrimitiveTypes.Uint8, Nullable: true},
	{Name: "u16", Type: arrow.PrimitiveTypes.Uint16, Nullable: true},
	{Name: "u32", Type: arrow.PrimitiveTypes.Uint32, Nullable: true},
	{Name: "u64", Type: arrow.PrimitiveTypes.Uint64, Nullable: true},
	{Name: "f32", Type: arrow.PrimitiveTypes.Float32, Nullable: true},
	{Name: "f64", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	{Name: "dec", Type: &arrow.Decimal128Type{Precision: 10, Scale: 2}, Nullable: true},
	{Name: "str", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "lstr", Type: arrow.BinaryTypes.LargeString, Nullable: true},
	{Name: "bin", Type: arrow.BinaryTypes.Binary, Nullable: true},
	{Name: "flag", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
	{Name: "day", Type: arrow.FixedWidthTypes.Date32, Nullable: true},
	{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Microsecond}, Nullable: true},
	{Name: "tstz", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, Nullable: true},
	{Name: "dur", Type: &arrow.DurationType{Unit: arrow.Millisecond}, Nullable: true},
	{Name: "list", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32), Nullable: true},
	{Name: "st", Type: arrow.StructOf(
		arrow.Field{Name: "a", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		arrow.Field{Name: "b", Type: arrow.BinaryTypes.String, Nullable: true}), Nullable: true},
	{Name: "map", Type: arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int32), Nullable: true},
	{Name: "dict", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String},
		Nullable: true},
}, nil)

// Types returns the three-row table of TypesSchema: row 0 holds ordinary
// values, row 1 is null in every column, row 2 holds extremes (min/max
// integers, empty strings and lists, a negative decimal).
func Types(mem memory.Allocator) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, TypesSchema)
	defer b.Release()
	f := func(i int) array.Builder { return b.Field(i) }
	f(0).(*array.Int8Builder).AppendValues([]int8{-5, 0, math.MaxInt8}, []bool{true, false, true})
	f(1).(*array.Int16Builder).AppendValues([]int16{-300, 0, math.MinInt16}, []bool{true, false, true})
	f(2).(*array.Int32Builder).AppendValues([]int32{-70000, 0, math.MaxInt32}, []bool{true, false, true})
	f(3).(*array.Int64Builder).AppendValues([]int64{-5_000_000_000, 0, math.MinInt64}, []bool{true, false, true})
	f(4).(*array.Uint8Builder).AppendValues([]uint8{7, 0, math.MaxUint8}, []bool{true, false, true})
	f(5).(*array.Uint16Builder).AppendValues([]uint16{700, 0, math.MaxUint16}, []bool{true, false, true})
	f(6).(*array.Uint32Builder).AppendValues([]uint32{70000, 0, math.MaxUint32}, []bool{true, false, true})
	f(7).(*array.Uint64Builder).AppendValues([]uint64{5_000_000_000, 0, math.MaxUint64}, []bool{true, false, true})
	f(8).(*array.Float32Builder).AppendValues([]float32{1.5, 0, -2.25}, []bool{true, false, true})
	f(9).(*array.Float64Builder).AppendValues([]float64{math.Pi, 0, -1e300}, []bool{true, false, true})
	dec := f(10).(*array.Decimal128Builder)
	dec.Append(decimal128.FromI64(1234567890)) // 12345678.90
	dec.AppendNull()
	dec.Append(decimal128.FromI64(-1)) // -0.01
	f(11).(*array.StringBuilder).AppendValues([]string{"héllo wörld ✓", "", ""}, []bool{true, false, true})
	f(12).(*array.LargeStringBuilder).AppendValues([]string{"large ünïcode", "", "x"}, []bool{true, false, true})
	f(13).(*array.BinaryBuilder).AppendValues([][]byte{{0, 1, 2, 255}, nil, {}}, []bool{true, false, true})
	f(14).(*array.BooleanBuilder).AppendValues([]bool{true, false, false}, []bool{true, false, true})
	f(15).(*array.Date32Builder).AppendValues([]arrow.Date32{19723, 0, -1}, []bool{true, false, true}) // 2024-01-01, -, 1969-12-31
	f(16).(*array.TimestampBuilder).AppendValues([]arrow.Timestamp{1704067200123456, 0, -1}, []bool{true, false, true})
	f(17).(*array.TimestampBuilder).AppendValues([]arrow.Timestamp{1704067200000000, 0, 0}, []bool{true, false, true})
	f(18).(*array.DurationBuilder).AppendValues([]arrow.Duration{86_400_000, 0, -1}, []bool{true, false, true})
	lb := f(19).(*array.ListBuilder)
	lv := lb.ValueBuilder().(*array.Int32Builder)
	lb.Append(true)
	lv.AppendValues([]int32{1, 2}, nil)
	lv.AppendNull()
	lb.AppendNull()
	lb.Append(true) // empty list
	sb := f(20).(*array.StructBuilder)
	sa, sbs := sb.FieldBuilder(0).(*array.Int32Builder), sb.FieldBuilder(1).(*array.StringBuilder)
	sb.Append(true)
	sa.Append(1)
	sbs.Append("x")
	sb.AppendNull()
	sb.Append(true)
	sa.AppendNull()
	sbs.Append("z")
	mb := f(21).(*array.MapBuilder)
	mk, mv := mb.KeyBuilder().(*array.StringBuilder), mb.ItemBuilder().(*array.Int32Builder)
	mb.Append(true)
	mk.AppendValues([]string{"a", "b"}, nil)
	mv.Append(1)
	mv.AppendNull()
	mb.AppendNull()
	mb.Append(true) // empty map
	db := f(22).(*array.BinaryDictionaryBuilder)
	if err := db.AppendString("red"); err != nil {
		panic(fmt.Sprintf("reftable: %v", err))
	}
	db.AppendNull()
	if err := db.AppendString("red"); err != nil {
		panic(fmt.Sprintf("reftable: %v", err))
	}
	return b.NewRecordBatch()
}

// Rows returns a RowsSchema batch with ids first..first+n-1.
func Rows(mem memory.Allocator, first, n int) arrow.RecordBatch {
	b := array.NewInt64Builder(mem)
	defer b.Release()
	for i := range n {
		b.Append(int64(first + i))
	}
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(RowsSchema, []arrow.Array{col}, int64(n))
}

// TopicSchema is the schema of topic i of mode "topics".
func TopicSchema(i int) *arrow.Schema {
	fs := make([]arrow.Field, i+1)
	for c := range fs {
		fs[c] = arrow.Field{Name: fmt.Sprintf("c%d", c), Type: arrow.PrimitiveTypes.Int64, Nullable: true}
	}
	return arrow.NewSchema(fs, nil)
}

// Topic returns the one-row batch of topic i of mode "topics".
func Topic(mem memory.Allocator, i int) arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, TopicSchema(i))
	defer b.Release()
	for c := range i + 1 {
		b.Field(c).(*array.Int64Builder).Append(int64(i))
	}
	return b.NewRecordBatch()
}

// Big returns mode "big"'s batch: rows values of size bytes each, byte j of
// every value being j%251.
func Big(mem memory.Allocator, rows, size int) arrow.RecordBatch {
	v := make([]byte, size)
	for j := range v {
		v[j] = byte(j % 251)
	}
	b := array.NewBinaryBuilder(mem, arrow.BinaryTypes.Binary)
	defer b.Release()
	b.ReserveData(rows * size)
	for range rows {
		b.Append(v)
	}
	col := b.NewArray()
	defer col.Release()
	return array.NewRecordBatch(BigSchema, []arrow.Array{col}, int64(rows))
}
