package sink

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// arrow-go's Parquet writer cannot write durations, which pyarrow writes as
// plain INT64 and restores from the stored Arrow schema. The sink does the
// same: columns holding durations are reinterpreted (zero-copy) with every
// duration as int64 for the Parquet writer, and the original schema goes
// into the file's ARROW:schema metadata, from which pqarrow and pyarrow
// both read durations back.

// physicalType returns dt with every duration replaced by int64, and whether
// anything changed.
func physicalType(dt arrow.DataType) (arrow.DataType, bool) {
	switch t := dt.(type) {
	case *arrow.DurationType:
		return arrow.PrimitiveTypes.Int64, true
	case *arrow.ListType:
		f, ok := physicalField(t.ElemField())
		if !ok {
			return dt, false
		}
		return arrow.ListOfField(f), true
	case *arrow.LargeListType:
		f, ok := physicalField(t.ElemField())
		if !ok {
			return dt, false
		}
		return arrow.LargeListOfField(f), true
	case *arrow.FixedSizeListType:
		f, ok := physicalField(t.ElemField())
		if !ok {
			return dt, false
		}
		return arrow.FixedSizeListOfField(t.Len(), f), true
	case *arrow.MapType:
		k, kok := physicalField(t.KeyField())
		v, vok := physicalField(t.ItemField())
		if !kok && !vok {
			return dt, false
		}
		m := arrow.MapOfFields(k, v)
		m.KeysSorted = t.KeysSorted
		return m, true
	case *arrow.StructType:
		fields := make([]arrow.Field, t.NumFields())
		changed := false
		for i := range fields {
			var ok bool
			fields[i], ok = physicalField(t.Field(i))
			changed = changed || ok
		}
		if !changed {
			return dt, false
		}
		return arrow.StructOf(fields...), true
	case *arrow.DictionaryType:
		v, ok := physicalType(t.ValueType)
		if !ok {
			return dt, false
		}
		return &arrow.DictionaryType{IndexType: t.IndexType, ValueType: v, Ordered: t.Ordered}, true
	}
	return dt, false
}

func physicalField(f arrow.Field) (arrow.Field, bool) {
	dt, ok := physicalType(f.Type)
	f.Type = dt
	return f, ok
}

// physicalSchema applies physicalType to every field; nil when nothing changes.
func physicalSchema(sc *arrow.Schema) *arrow.Schema {
	fields := make([]arrow.Field, sc.NumFields())
	changed := false
	for i, f := range sc.Fields() {
		var ok bool
		fields[i], ok = physicalField(f)
		changed = changed || ok
	}
	if !changed {
		return nil
	}
	md := sc.Metadata()
	return arrow.NewSchema(fields, &md)
}

// asPhysical reinterprets arr as type dt (its physicalType) sharing all
// buffers. The caller releases the result.
func asPhysical(arr arrow.Array, dt arrow.DataType) arrow.Array {
	d := physicalData(arr.Data(), dt)
	defer d.Release()
	return array.MakeFromData(d)
}

func physicalData(d arrow.ArrayData, dt arrow.DataType) arrow.ArrayData {
	var children []arrow.ArrayData
	switch t := dt.(type) {
	case arrow.NestedType:
		fields := t.Fields()
		children = make([]arrow.ArrayData, len(d.Children()))
		for i, c := range d.Children() {
			ct := c.DataType()
			if i < len(fields) {
				ct = fields[i].Type
			}
			children[i] = physicalData(c, ct)
			defer children[i].Release()
		}
	}
	if dict, ok := dt.(*arrow.DictionaryType); ok {
		dd := physicalData(d.Dictionary(), dict.ValueType)
		defer dd.Release()
		return array.NewDataWithDictionary(dt, d.Len(), d.Buffers(), d.NullN(), d.Offset(), dd.(*array.Data))
	}
	return array.NewData(dt, d.Len(), d.Buffers(), children, d.NullN(), d.Offset())
}

// parquetStoredSchema is the schema written to ARROW:schema: list element
// fields are named "element", as pqarrow names the Parquet groups, so
// readers that match stored fields to columns by name find them.
func parquetStoredSchema(sc *arrow.Schema) *arrow.Schema {
	fields := make([]arrow.Field, sc.NumFields())
	for i, f := range sc.Fields() {
		fields[i] = storedField(f)
	}
	md := sc.Metadata()
	return arrow.NewSchema(fields, &md)
}

func storedField(f arrow.Field) arrow.Field {
	switch t := f.Type.(type) {
	case *arrow.ListType:
		e := storedField(t.ElemField())
		e.Name = "element"
		f.Type = arrow.ListOfField(e)
	case *arrow.LargeListType:
		e := storedField(t.ElemField())
		e.Name = "element"
		f.Type = arrow.LargeListOfField(e)
	case *arrow.FixedSizeListType:
		e := storedField(t.ElemField())
		e.Name = "element"
		f.Type = arrow.FixedSizeListOfField(t.Len(), e)
	case *arrow.StructType:
		fields := make([]arrow.Field, t.NumFields())
		for i := range fields {
			fields[i] = storedField(t.Field(i))
		}
		f.Type = arrow.StructOf(fields...)
	case *arrow.MapType:
		m := arrow.MapOfFields(storedField(t.KeyField()), storedField(t.ItemField()))
		m.KeysSorted = t.KeysSorted
		f.Type = m
	}
	return f
}
