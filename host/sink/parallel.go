package sink

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/metadata"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// pqarrow.FileWriter encodes a record's columns one after another. For a
// flat schema (every column one Parquet leaf) the column chunk writers of a
// buffered row group are independent, so flatFileWriter drives
// parquet/file directly and encodes the columns of each piece in parallel,
// each through pqarrow.WriteArrowToColumn with the definition levels
// pqarrow's path builder would compute. Schemas with nested columns keep
// using pqarrow.FileWriter.
//
// What the column writers share is read-only (writer properties, schema) or
// safe for concurrent use (the allocator, the codecs' encoder pools, the
// byte-buffer pools). Each column gets its own arrow write context, which
// holds pqarrow's scratch buffer. Nothing reaches the file until the row
// group is closed, sequentially.

// pqFileWriter is what parquetWriter uses of a Parquet file writer; both
// *pqarrow.FileWriter and *flatFileWriter implement it.
type pqFileWriter interface {
	NewBufferedRowGroupChecked() error
	WriteBuffered(rec arrow.RecordBatch) error
	RowGroupTotalBytesWritten() int64
	AppendKeyValueMetadata(key, value string) error
	Close() error
}

var (
	_ pqFileWriter = (*pqarrow.FileWriter)(nil)
	_ pqFileWriter = (*flatFileWriter)(nil)
)

// parallelMinRows is the smallest piece whose columns are encoded in
// parallel; below it the goroutine hand-off costs more than it saves.
// A variable for tests.
var parallelMinRows int64 = 1 << 10

// flatSchema reports whether every field of sc is stored as exactly one
// Parquet leaf that pqarrow writes without a path (no lists, structs, maps,
// unions or extension types; dictionaries of such flat types are fine).
func flatSchema(sc *arrow.Schema) bool {
	for _, f := range sc.Fields() {
		if !flatType(f.Type) {
			return false
		}
	}
	return true
}

func flatType(dt arrow.DataType) bool {
	switch t := dt.(type) {
	case arrow.ExtensionType, arrow.NestedType:
		return false
	case *arrow.DictionaryType:
		return t.ValueType.ID() != arrow.DICTIONARY && flatType(t.ValueType)
	}
	return true
}

type flatFileWriter struct {
	wr      *file.Writer
	rgw     file.BufferedRowGroupWriter
	cws     []file.ColumnChunkWriter // rgw's column writers
	cols    []flatColumn
	maxRows int64
	closed  bool
}

type flatColumn struct {
	ctx context.Context // the column's own pqarrow write context
	def []int16         // definition levels scratch, at most maxKeptLevels long
}

// maxKeptLevels bounds the definition levels scratch a column keeps between
// writes (128 KiB), so a writer with many nullable columns fed huge batches
// does not hold their levels beyond the row group's memory bound.
const maxKeptLevels = 64 << 10

// newFlatFileWriter does what pqarrow.NewFileWriter does for a flat schema
// (same Parquet schema, same key-value metadata including the stored Arrow
// schema). It returns nil, nil when sc is not flat.
func newFlatFileWriter(sc *arrow.Schema, w io.Writer, props *parquet.WriterProperties, arrProps pqarrow.ArrowWriterProperties, storeSchema bool) (*flatFileWriter, error) {
	if !flatSchema(sc) {
		return nil, nil
	}
	pqschema, err := pqarrow.ToParquet(sc, props, arrProps)
	if err != nil {
		return nil, err
	}
	if pqschema.NumColumns() != sc.NumFields() {
		return nil, nil
	}
	md := sc.Metadata()
	meta := make(metadata.KeyValueMetadata, 0)
	for i := 0; i < md.Len(); i++ {
		meta.Append(md.Keys()[i], md.Values()[i])
	}
	if storeSchema {
		// As pqarrow.WithStoreSchema does; its list-element normalisation
		// changes nothing in a flat schema.
		stored := arrow.NewSchema(sc.Fields(), &md)
		meta.Append(arrowSchemaKey, base64.StdEncoding.EncodeToString(flight.SerializeSchema(stored, props.Allocator())))
	}
	wr, err := file.NewParquetWriterWithError(w, pqschema.Root(), file.WithWriterProps(props), file.WithWriteMetadata(meta))
	if err != nil {
		return nil, err
	}
	f := &flatFileWriter{wr: wr, cols: make([]flatColumn, sc.NumFields()), maxRows: props.MaxRowGroupLength()}
	for i := range f.cols {
		p := arrProps
		f.cols[i].ctx = pqarrow.NewArrowWriteContext(context.Background(), &p)
	}
	return f, nil
}

func (f *flatFileWriter) AppendKeyValueMetadata(key, value string) error {
	return f.wr.AppendKeyValueMetadata(key, value)
}

func (f *flatFileWriter) RowGroupTotalBytesWritten() int64 {
	if f.rgw != nil {
		return f.rgw.TotalBytesWritten()
	}
	return 0
}

func (f *flatFileWriter) NewBufferedRowGroupChecked() error {
	if f.rgw != nil {
		if err := f.rgw.Close(); err != nil {
			return err
		}
	}
	rgw, err := f.wr.AppendBufferedRowGroupChecked()
	if err != nil {
		return err
	}
	f.rgw = rgw
	f.cws = f.cws[:0]
	for i := range f.cols {
		cw, err := rgw.Column(i)
		if err != nil {
			return err
		}
		f.cws = append(f.cws, cw)
	}
	return nil
}

// WriteBuffered appends rec to the open row group, starting new ones at
// the maximum row group length, as pqarrow.FileWriter.WriteBuffered does.
func (f *flatFileWriter) WriteBuffered(rec arrow.RecordBatch) error {
	if f.closed {
		return errors.New("WriteBuffered called on already closed FileWriter")
	}
	if int(rec.NumCols()) != len(f.cols) {
		return fmt.Errorf("record has %d columns, writer %d", rec.NumCols(), len(f.cols))
	}
	if f.rgw == nil {
		if err := f.NewBufferedRowGroupChecked(); err != nil {
			return err
		}
	}
	cur, err := f.rgw.NumRows()
	if err != nil {
		return err
	}
	rows := int64(cur)
	n := rec.NumRows()
	for off := int64(0); off < n; {
		if rows >= f.maxRows {
			if err := f.NewBufferedRowGroupChecked(); err != nil {
				return err
			}
			rows = 0
		}
		size := min(f.maxRows-rows, n-off)
		if err := f.writeRange(rec, off, size); err != nil {
			return err
		}
		off += size
		rows += size
	}
	return nil
}

func (f *flatFileWriter) writeRange(rec arrow.RecordBatch, off, size int64) error {
	cols := rec.Columns()
	if off != 0 || size != rec.NumRows() {
		sliced := make([]arrow.Array, len(cols))
		for i, c := range cols {
			sliced[i] = array.NewSlice(c, off, off+size)
			defer sliced[i].Release()
		}
		cols = sliced
	}
	workers := min(runtime.GOMAXPROCS(0), len(cols))
	if size < parallelMinRows || workers <= 1 {
		for i, c := range cols {
			if err := f.writeColumn(i, c); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
		errs   = make([]error, len(cols))
	)
	for range workers {
		wg.Go(func() {
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(cols) {
					return
				}
				if errs[i] = f.writeColumnSafe(i, cols[i]); errs[i] != nil {
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeColumnSafe is writeColumn with a panic (arrow-go panics on some
// invalid input) turned into an error, as it would otherwise end the process.
func (f *flatFileWriter) writeColumnSafe(i int, arr arrow.Array) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("column %d: %v", i, r)
		}
	}()
	return f.writeColumn(i, arr)
}

// writeColumn writes arr to the i-th column chunk with the definition levels
// pqarrow's path builder produces for a top-level leaf (see
// pathBuilder.addTerminalInfo and writePath in pqarrow/path_builder.go).
func (f *flatFileWriter) writeColumn(i int, arr arrow.Array) error {
	cw := f.cws[i]
	col := &f.cols[i]
	if dict, ok := arr.(*array.Dictionary); ok && dict.Dictionary().NullN() > 0 {
		return fmt.Errorf("%w: writing DictionaryArray with null encoded in dictionary not yet supported", arrow.ErrNotImplemented)
	}
	var (
		def          []int16
		leafNullable bool
	)
	if cw.Descr().SchemaNode().RepetitionType() == parquet.Repetitions.Optional {
		n := arr.Len()
		if cap(col.def) >= n {
			def = col.def[:n]
		} else {
			def = make([]int16, n)
			if n <= maxKeptLevels {
				col.def = def
			}
		}
		nulls := arr.Data().NullN()
		switch {
		case nulls == 0 || (nulls == array.UnknownNullCount && arr.NullBitmapBytes() == nil):
			for j := range def {
				def[j] = 1
			}
		case nulls == n:
			clear(def)
			leafNullable = true
		default:
			bm, offset := arr.NullBitmapBytes(), arr.Data().Offset()
			for j := range def {
				if bitutil.BitIsSet(bm, offset+j) {
					def[j] = 1
				} else {
					def[j] = 0
				}
			}
			leafNullable = true
		}
	}
	return pqarrow.WriteArrowToColumn(col.ctx, cw, arr, def, nil, leafNullable)
}

// Close closes the open row group and writes the footer.
func (f *flatFileWriter) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	var rgErr error
	if f.rgw != nil {
		rgErr = f.rgw.Close()
	}
	err := f.wr.Close()
	if rgErr != nil {
		return rgErr
	}
	return err
}
