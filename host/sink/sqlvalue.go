package sink

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// sqlDecl is the SQLite column type an Arrow type is stored as:
// integers, bools and durations INTEGER; floats REAL; strings, decimals,
// dates, times, timestamps and nested values TEXT; binaries BLOB. A
// dictionary is stored as its value type.
func sqlDecl(dt arrow.DataType) (string, error) {
	switch dt := dt.(type) {
	case *arrow.DictionaryType:
		return sqlDecl(dt.ValueType)
	case arrow.ExtensionType:
		return sqlDecl(dt.StorageType())
	}
	switch dt.ID() {
	case arrow.BOOL, arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64, arrow.DURATION:
		return "INTEGER", nil
	case arrow.FLOAT16, arrow.FLOAT32, arrow.FLOAT64:
		return "REAL", nil
	case arrow.STRING, arrow.LARGE_STRING, arrow.STRING_VIEW,
		arrow.DECIMAL32, arrow.DECIMAL64, arrow.DECIMAL128, arrow.DECIMAL256,
		arrow.DATE32, arrow.DATE64, arrow.TIME32, arrow.TIME64, arrow.TIMESTAMP,
		arrow.LIST, arrow.LARGE_LIST, arrow.FIXED_SIZE_LIST, arrow.STRUCT, arrow.MAP,
		arrow.NULL:
		return "TEXT", nil
	case arrow.BINARY, arrow.LARGE_BINARY, arrow.BINARY_VIEW, arrow.FIXED_SIZE_BINARY:
		return "BLOB", nil
	}
	return "", fmt.Errorf("arrow type %s has no SQLite mapping", dt)
}

// valueFunc returns the SQL value of row i (nil for NULL).
type valueFunc func(i int) (any, error)

// sqlValues builds the row accessor for one column of one batch. Values
// alias the batch's buffers; they are bound (copied by SQLite) before the
// batch is released.
func sqlValues(arr arrow.Array) (valueFunc, error) {
	nullable := func(f func(i int) (any, error)) valueFunc {
		if arr.NullN() == 0 {
			return f
		}
		return func(i int) (any, error) {
			if arr.IsNull(i) {
				return nil, nil
			}
			return f(i)
		}
	}
	switch a := arr.(type) {
	case *array.Dictionary:
		vals, err := sqlValues(a.Dictionary())
		if err != nil {
			return nil, err
		}
		return nullable(func(i int) (any, error) { return vals(a.GetValueIndex(i)) }), nil
	case array.ExtensionArray:
		return sqlValues(a.Storage())
	case *array.Null:
		return func(int) (any, error) { return nil, nil }, nil
	case *array.Boolean:
		return nullable(func(i int) (any, error) {
			if a.Value(i) {
				return int64(1), nil
			}
			return int64(0), nil
		}), nil
	case *array.Int8:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Int16:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Int32:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Int64:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.Uint8:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Uint16:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Uint32:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Uint64:
		return nullable(func(i int) (any, error) {
			v := a.Value(i)
			if v > math.MaxInt64 {
				return nil, fmt.Errorf("uint64 value %d does not fit SQLite's signed 64-bit INTEGER", v)
			}
			return int64(v), nil
		}), nil
	case *array.Duration:
		return nullable(func(i int) (any, error) { return int64(a.Value(i)), nil }), nil
	case *array.Float16:
		return nullable(func(i int) (any, error) { return float64(a.Value(i).Float32()), nil }), nil
	case *array.Float32:
		return nullable(func(i int) (any, error) { return float64(a.Value(i)), nil }), nil
	case *array.Float64:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.String:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.LargeString:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.StringView:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.Binary:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.LargeBinary:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.BinaryView:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.FixedSizeBinary:
		return nullable(func(i int) (any, error) { return a.Value(i), nil }), nil
	case *array.Decimal128:
		scale := a.DataType().(*arrow.Decimal128Type).Scale
		return nullable(func(i int) (any, error) { return a.Value(i).ToString(scale), nil }), nil
	case *array.Decimal256:
		scale := a.DataType().(*arrow.Decimal256Type).Scale
		return nullable(func(i int) (any, error) { return a.Value(i).ToString(scale), nil }), nil
	case *array.Decimal32, *array.Decimal64:
		return nullable(func(i int) (any, error) { return arr.ValueStr(i), nil }), nil
	case *array.Date32:
		return nullable(func(i int) (any, error) { return a.Value(i).ToTime().Format(time.DateOnly), nil }), nil
	case *array.Date64:
		return nullable(func(i int) (any, error) { return a.Value(i).ToTime().Format(time.DateOnly), nil }), nil
	case *array.Time32:
		unit := a.DataType().(*arrow.Time32Type).Unit
		layout := "15:04:05" + fraction(unit)
		return nullable(func(i int) (any, error) { return a.Value(i).ToTime(unit).Format(layout), nil }), nil
	case *array.Time64:
		unit := a.DataType().(*arrow.Time64Type).Unit
		layout := "15:04:05" + fraction(unit)
		return nullable(func(i int) (any, error) { return a.Value(i).ToTime(unit).Format(layout), nil }), nil
	case *array.Timestamp:
		ts := a.DataType().(*arrow.TimestampType)
		// Aware timestamps are instants: written in UTC with a Z. Naive ones
		// are wall-clock values: written as is, without a zone.
		layout := "2006-01-02T15:04:05" + fraction(ts.Unit)
		if ts.TimeZone != "" {
			layout += "Z"
		}
		return nullable(func(i int) (any, error) { return a.Value(i).ToTime(ts.Unit).UTC().Format(layout), nil }), nil
	case *array.List, *array.LargeList, *array.FixedSizeList, *array.Struct, *array.Map:
		return nullable(func(i int) (any, error) {
			switch v := arr.GetOneForMarshal(i).(type) {
			case json.RawMessage:
				return string(v), nil
			default:
				b, err := json.Marshal(v)
				if err != nil {
					return nil, fmt.Errorf("encode %s value as JSON: %w", arr.DataType(), err)
				}
				return string(b), nil
			}
		}), nil
	}
	return nil, fmt.Errorf("arrow type %s has no SQLite mapping", arr.DataType())
}

// fraction is the fixed-width fractional-seconds layout for a unit, so
// stored texts sort in time order.
func fraction(u arrow.TimeUnit) string {
	switch u {
	case arrow.Millisecond:
		return ".000"
	case arrow.Microsecond:
		return ".000000"
	case arrow.Nanosecond:
		return ".000000000"
	}
	return ""
}
