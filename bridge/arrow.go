package bridge

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// ErrInvalidArrow reports a BATCH body that is not a valid Arrow IPC stream.
var ErrInvalidArrow = errors.New("invalid Arrow IPC stream")

// validator is implemented by arrow-go arrays that can check their buffers.
type validator interface{ ValidateFull() error }

// ReadIPC decodes one Arrow IPC stream from body and calls fn for each record
// batch, in order. The record is released after fn returns (fn retains it to
// keep it). The stream is untrusted: sizes are capped by limit (the frame
// length), every array is validated, and a panic inside the Arrow reader is
// turned into ErrInvalidArrow. The body is read to its end.
//
// A stream that holds a schema and no record batch (what the Python SDK
// sends for an empty table) stands for a batch of zero rows: fn gets one,
// with the stream's schema, so an empty result still reaches its topic with
// its columns.
func ReadIPC(body io.Reader, limit int64, mem memory.Allocator, fn func(arrow.RecordBatch) error) (n int, err error) {
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	// arrow-go's stream reader turns most of its own panics into errors (its
	// file reader did not until apache/arrow-go #1062); whatever still
	// escapes, from the reader or from validation, is an invalid stream.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: decoder panic: %v", ErrInvalidArrow, p)
		}
	}()
	tr := newAllocTracker(mem)
	rdr, err := ipc.NewReaderFromMessageReader(newGuardedReader(body, limit, tr), ipc.WithAllocator(tr))
	if err != nil {
		tr.freeStep()
		return 0, fmt.Errorf("%w: %v", ErrInvalidArrow, err)
	}
	failed := false // the last Next returned no record
	defer func() {
		rdr.Release()
		if failed {
			tr.freeStep() // what a recovered decoder panic left behind
		}
	}()
	for {
		tr.step()
		if !rdr.Next() {
			failed = true
			break
		}
		rec := rdr.RecordBatch()
		if err := ValidateRecord(rec); err != nil {
			return n, err
		}
		n++
		if err := fn(rec); err != nil {
			return n, err
		}
	}
	if err := rdr.Err(); err != nil && err != io.EOF {
		return n, fmt.Errorf("%w: %v", ErrInvalidArrow, err)
	}
	if n == 0 {
		empty := emptyRecord(mem, rdr.Schema())
		defer empty.Release()
		n++
		if err := fn(empty); err != nil {
			return n, err
		}
	}
	return n, nil
}

// emptyRecord returns a zero-row batch of schema.
func emptyRecord(mem memory.Allocator, schema *arrow.Schema) arrow.RecordBatch {
	cols := make([]arrow.Array, schema.NumFields())
	for i, f := range schema.Fields() {
		cols[i] = array.MakeArrayOfNull(mem, f.Type, 0)
		defer cols[i].Release()
	}
	return array.NewRecordBatch(schema, cols, 0)
}

// ValidateRecord checks every column of an untrusted record (offsets, lengths).
func ValidateRecord(rec arrow.RecordBatch) error {
	for i, col := range rec.Columns() {
		if col.Len() != int(rec.NumRows()) {
			return fmt.Errorf("%w: column %q has %d rows, batch has %d", ErrInvalidArrow, rec.ColumnName(i), col.Len(), rec.NumRows())
		}
		if v, ok := col.(validator); ok {
			if err := v.ValidateFull(); err != nil {
				return fmt.Errorf("%w: column %q: %v", ErrInvalidArrow, rec.ColumnName(i), err)
			}
		}
	}
	return nil
}

// EncodeIPC writes records as one Arrow IPC stream (test and tool helper).
func EncodeIPC(schema *arrow.Schema, recs ...arrow.RecordBatch) ([]byte, error) {
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema))
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
