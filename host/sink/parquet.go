package sink

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/casparianflow/casparian/host/guest"
)

var _ Writer = (*parquetWriter)(nil)

// codecFor maps a compression name to the Parquet codec.
func codecFor(name string) (compress.Compression, error) {
	switch strings.ToLower(name) {
	case "", "snappy":
		return compress.Codecs.Snappy, nil
	case "zstd":
		return compress.Codecs.Zstd, nil
	case "gzip":
		return compress.Codecs.Gzip, nil
	case "brotli":
		return compress.Codecs.Brotli, nil
	case "lz4", "lz4_raw":
		return compress.Codecs.Lz4Raw, nil
	case "none", "uncompressed":
		return compress.Codecs.Uncompressed, nil
	}
	return 0, fmt.Errorf("unknown compression %q (supported: snappy, zstd, gzip, brotli, lz4, none)", name)
}

type writerState int

const (
	stateOpen writerState = iota
	stateFailed
	stateCommitted
	stateAborted
)

// writeBatchSize is how many values the Parquet column writers encode
// between page-size checks. arrow-go's default (1024) spends measurably more
// time in per-batch bookkeeping; 8192 int64s overshoot a 1 MiB page by at
// most 64 KiB.
const writeBatchSize = 8192

// outBufSize is the file write buffer; row groups reach the file in large
// writes anyway, this only coalesces page headers and footers.
const outBufSize = 1 << 20

// parquetWriter stages a Parquet file under a hidden temp name next to its
// final name and renames it into place on Commit.
type parquetWriter struct {
	mu    sync.Mutex
	t     Target
	o     Options
	final string // absolute final path
	tmp   string // absolute temp path
	popts []parquet.WriterProperty

	f   *os.File
	out *switchWriter // f behind a buffer; switched to io.Discard on Abort
	fw  pqFileWriter  // *flatFileWriter for flat schemas, else *pqarrow.FileWriter

	inSchema  *arrow.Schema // the topic's schema as the guest sends it
	outSchema *arrow.Schema // inSchema + lineage columns
	// physSchema is outSchema with durations as int64 (see physicalType),
	// or nil when outSchema has no durations.
	physSchema *arrow.Schema

	jobCol, fvCol constInt64
	rows          int64
	// newGroup asks the next write to start a row group: the current one
	// reached MaxRowGroupBytes. Deferred so a commit never ends on an empty group.
	newGroup bool
	state    writerState
}

// removeStaleTemps deletes the temporary files an earlier attempt of the same
// job left for the same final file when its process died before commit or
// abort (the original system's "delete stale staging on start"). Errors are
// ignored: a leftover is harmless, only untidy.
func removeStaleTemps(dir, name string, jobID int64) {
	prefix := fmt.Sprintf(".%s.tmp-%d-", name, jobID)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), prefix) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func openParquet(t Target, o Options, loc location) (*parquetWriter, error) {
	codecName := o.Compression
	if loc.compression != "" {
		codecName = loc.compression
	}
	codec, err := codecFor(codecName)
	if err != nil {
		return nil, sinkErr(fmt.Errorf("open parquet sink: %w", err))
	}
	dir, name := filepath.Split(loc.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, ioErr(t, "open parquet sink", fmt.Errorf("create directory: %w", err))
	}
	removeStaleTemps(dir, name, t.JobID)
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, sinkErr(fmt.Errorf("open parquet sink: %w", err))
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.tmp-%d-%s", name, t.JobID, hex.EncodeToString(rnd[:])))
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		return nil, ioErr(t, "open parquet sink", err)
	}

	popts := []parquet.WriterProperty{
		parquet.WithAllocator(o.Allocator),
		parquet.WithCompression(codec),
		parquet.WithMaxRowGroupLength(o.MaxRowGroupRows),
		parquet.WithDictionaryDefault(true),
		// The lineage columns are constant: delta encoding stores them in a
		// few bytes per 128 values without hashing every value into a
		// dictionary (which cost ~25 ms per million rows per column).
		parquet.WithDictionaryFor(ColJobID, false),
		parquet.WithEncodingFor(ColJobID, parquet.Encodings.DeltaBinaryPacked),
		parquet.WithDictionaryFor(ColFileVersionID, false),
		parquet.WithEncodingFor(ColFileVersionID, parquet.Encodings.DeltaBinaryPacked),
		parquet.WithStats(true),
		parquet.WithBatchSize(writeBatchSize),
		parquet.WithCreatedBy("casparian (" + parquet.DefaultCreatedBy + ")"),
	}
	if o.CompressionLevel != 0 {
		popts = append(popts, parquet.WithCompressionLevel(o.CompressionLevel))
	}
	w := &parquetWriter{
		t:      t,
		o:      o,
		final:  loc.path,
		tmp:    tmp,
		popts:  popts,
		f:      f,
		out:    &switchWriter{w: bufio.NewWriterSize(f, outBufSize)},
		jobCol: constInt64{mem: o.Allocator, val: t.JobID},
		fvCol:  constInt64{mem: o.Allocator, val: t.FileVersionID},
	}
	if t.Schema != nil {
		if err := w.declare(t.Schema); err != nil {
			w.discard()
			return nil, err
		}
	}
	return w, nil
}

// declare fixes the topic's schema and checks that Parquet can store it.
func (w *parquetWriter) declare(sc *arrow.Schema) error {
	if err := checkLineageFree(w.t, sc); err != nil {
		return err
	}
	out := withLineage(sc)
	phys := physicalSchema(out)
	fwSchema := out
	if phys != nil {
		fwSchema = phys
	}
	if _, err := pqarrow.ToParquet(fwSchema, parquet.NewWriterProperties(w.popts...), pqarrow.DefaultWriterProps()); err != nil {
		return schemaErr(fmt.Errorf("write topic %q: schema cannot be stored in parquet: %w\nschema: %s", w.t.Topic, err, oneLine(sc)))
	}
	w.inSchema, w.outSchema, w.physSchema = sc, out, phys
	return nil
}

// start creates the Parquet writer for the declared schema. first is the
// first batch, sampled to plan dictionary encoding (see dictplan.go); nil
// when committing without any batch.
func (w *parquetWriter) start(first arrow.RecordBatch) error {
	popts := w.popts
	if first != nil && !w.o.NoDictionarySampling {
		for _, name := range plainColumns(first, parquet.DefaultDictionaryPageSizeLimit) {
			popts = append(popts[:len(popts):len(popts)], parquet.WithDictionaryFor(name, false))
		}
	}
	props := parquet.NewWriterProperties(popts...)
	arrOpts := []pqarrow.WriterOption{pqarrow.WithAllocator(w.o.Allocator)}
	fwSchema := w.outSchema
	storeSchema := w.physSchema == nil
	if storeSchema {
		arrOpts = append(arrOpts, pqarrow.WithStoreSchema())
	} else {
		fwSchema = w.physSchema
	}
	arrProps := pqarrow.NewArrowWriterProperties(arrOpts...)
	var fw pqFileWriter
	flat, err := w.newFlat(fwSchema, props, arrProps, storeSchema)
	if flat != nil {
		fw = flat
	} else if err == nil {
		fw, err = pqarrow.NewFileWriter(fwSchema, w.out, props, arrProps)
	}
	if err != nil {
		if w.out.err != nil {
			return ioErr(w.t, "open parquet writer", w.out.err)
		}
		return schemaErr(fmt.Errorf("write topic %q: schema cannot be stored in parquet: %w\nschema: %s", w.t.Topic, err, oneLine(w.inSchema)))
	}
	kv := map[string]string{}
	if w.physSchema != nil {
		// pqarrow stored the physical schema; store the real one instead.
		kv[arrowSchemaKey] = base64.StdEncoding.EncodeToString(flight.SerializeSchema(parquetStoredSchema(w.outSchema), w.o.Allocator))
	}
	for k, v := range w.t.Provenance {
		kv[k] = v
	}
	for _, k := range sortedKeys(kv) {
		if err := fw.AppendKeyValueMetadata(k, kv[k]); err != nil {
			w.out.w = io.Discard
			fw.Close()
			return sinkErr(fmt.Errorf("write topic %q: file metadata: %w", w.t.Topic, err))
		}
	}
	w.fw = fw
	return nil
}

const arrowSchemaKey = "ARROW:schema"

// newFlat returns the parallel writer for a flat schema, or nil (and no
// error) when the schema is nested or sequential columns are asked for.
func (w *parquetWriter) newFlat(sc *arrow.Schema, props *parquet.WriterProperties, arrProps pqarrow.ArrowWriterProperties, storeSchema bool) (*flatFileWriter, error) {
	if w.o.sequentialColumns {
		return nil, nil
	}
	return newFlatFileWriter(sc, w.out, props, arrProps, storeSchema)
}

func (w *parquetWriter) Rows() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rows
}

func (w *parquetWriter) Write(ctx context.Context, rec arrow.RecordBatch) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable("write"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return cancelled("write parquet", w.t, err)
	}
	if w.inSchema == nil {
		if err := w.declare(rec.Schema()); err != nil {
			w.state = stateFailed
			return err
		}
	} else if !rec.Schema().Equal(w.inSchema) {
		return schemaMismatch(w.t, w.inSchema, rec.Schema())
	}
	if w.fw == nil {
		if err := w.start(rec); err != nil {
			w.state = stateFailed
			return err
		}
	}
	n := rec.NumRows()
	if n == 0 {
		return nil
	}
	if err := w.write(ctx, rec); err != nil {
		w.state = stateFailed
		return err
	}
	w.rows += n
	return nil
}

func (w *parquetWriter) write(ctx context.Context, rec arrow.RecordBatch) error {
	n := rec.NumRows()
	// Pieces of at most a quarter of the byte bound, so one huge batch cannot
	// overshoot the row group's memory bound by much (nor make the lineage
	// columns as long as the batch).
	chunk := n
	quarter := w.o.MaxRowGroupBytes / 4
	if size := recordBytes(rec); size > quarter && n > 1 {
		chunk = max(1, int64(float64(n)*float64(quarter)/float64(size)))
	}
	for off := int64(0); off < n; off += chunk {
		if off > 0 {
			if err := ctx.Err(); err != nil {
				return cancelled("write parquet", w.t, err)
			}
		}
		if w.newGroup {
			if err := w.fw.NewBufferedRowGroupChecked(); err != nil {
				return w.writeErr(err)
			}
			w.newGroup = false
		}
		piece := rec
		if chunk < n {
			piece = rec.NewSlice(off, min(n, off+chunk))
		}
		err := w.writePiece(piece)
		if piece != rec {
			piece.Release()
		}
		if err != nil {
			return w.writeErr(err)
		}
		if w.fw.RowGroupTotalBytesWritten() >= w.o.MaxRowGroupBytes {
			w.newGroup = true
		}
	}
	return nil
}

// writePiece adds the lineage columns to rec and hands it to the Parquet writer.
func (w *parquetWriter) writePiece(rec arrow.RecordBatch) error {
	n := rec.NumRows()
	ncols := len(rec.Columns())
	cols := make([]arrow.Array, 0, ncols+2)
	cols = append(cols, rec.Columns()...)
	cols = append(cols, w.jobCol.get(int(n)), w.fvCol.get(int(n)))
	defer cols[ncols].Release()
	defer cols[ncols+1].Release()
	schema := w.outSchema
	if w.physSchema != nil {
		schema = w.physSchema
		for i := 0; i < ncols; i++ {
			if pt := w.physSchema.Field(i).Type; !arrow.TypeEqual(pt, w.outSchema.Field(i).Type) {
				cols[i] = asPhysical(cols[i], pt)
				defer cols[i].Release()
			}
		}
	}
	full := array.NewRecordBatch(schema, cols, n)
	defer full.Release()
	return w.fw.WriteBuffered(full)
}

// writeErr classifies an error from the Parquet writer.
func (w *parquetWriter) writeErr(err error) error {
	if w.out.err != nil {
		return ioErr(w.t, "write parquet", w.out.err)
	}
	return ioErr(w.t, "write parquet", err)
}

func (w *parquetWriter) usable(op string) error {
	switch w.state {
	case stateOpen:
		return nil
	case stateCommitted:
		return sinkErr(fmt.Errorf("%s parquet: topic %q: writer already committed", op, w.t.Topic))
	case stateAborted:
		return sinkErr(fmt.Errorf("%s parquet: topic %q: writer aborted", op, w.t.Topic))
	}
	return sinkErr(fmt.Errorf("%s parquet: topic %q: writer failed earlier; abort it", op, w.t.Topic))
}

func (w *parquetWriter) Commit(ctx context.Context) (Artifact, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable("commit"); err != nil {
		return Artifact{}, err
	}
	art, err := w.commit(ctx)
	if err != nil {
		w.discard()
		w.state = stateFailed
		return Artifact{}, err
	}
	w.state = stateCommitted
	return art, nil
}

func (w *parquetWriter) commit(ctx context.Context) (Artifact, error) {
	if err := ctx.Err(); err != nil {
		return Artifact{}, cancelled("commit parquet", w.t, err)
	}
	if w.inSchema == nil {
		if err := w.declare(arrow.NewSchema(nil, nil)); err != nil {
			return Artifact{}, err
		}
	}
	if w.fw == nil {
		if err := w.start(nil); err != nil {
			return Artifact{}, err
		}
	}
	w.jobCol.release()
	w.fvCol.release()
	if err := w.fw.Close(); err != nil {
		return Artifact{}, w.writeErr(err)
	}
	if err := w.out.Flush(); err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet", err)
	}
	if err := w.f.Sync(); err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet: sync", err)
	}
	st, err := w.f.Stat()
	if err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet", err)
	}
	err = w.f.Close()
	w.f = nil
	if err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet: close", err)
	}
	if err := ctx.Err(); err != nil {
		return Artifact{}, cancelled("commit parquet", w.t, err)
	}
	if err := os.Rename(w.tmp, w.final); err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet: rename", err)
	}
	// From here the file is visible. A failed directory sync leaves it in
	// place (it is complete) but reports the job as failed, since the rename
	// may not survive a crash.
	if err := syncDir(filepath.Dir(w.final)); err != nil {
		return Artifact{}, ioErr(w.t, "commit parquet: sync directory", err)
	}
	return Artifact{
		Topic: w.t.Topic,
		URI:   location{scheme: schemeParquet, path: w.final}.uri(),
		Rows:  w.rows,
		Bytes: st.Size(),
	}, nil
}

func (w *parquetWriter) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case stateCommitted, stateAborted:
		return nil
	}
	w.state = stateAborted
	return w.discard()
}

// discard releases everything and removes the temp file. Idempotent.
func (w *parquetWriter) discard() error {
	if w.fw != nil {
		// Closing flushes the open row group; send it nowhere.
		w.out.w = io.Discard
		_ = w.fw.Close()
	}
	w.jobCol.release()
	w.fvCol.release()
	var errs []error
	if w.f != nil {
		if err := w.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
		w.f = nil
	}
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return ioErr(w.t, "abort parquet", err)
	}
	return nil
}

// switchWriter is the Parquet writer's sink: a buffered file whose target
// can be switched to io.Discard, and which remembers the first write error
// (pqarrow does not always surface it with the cause intact).
type switchWriter struct {
	w   io.Writer
	err error
}

func (s *switchWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

func (s *switchWriter) Flush() error {
	if b, ok := s.w.(*bufio.Writer); ok {
		if err := b.Flush(); err != nil {
			if s.err == nil {
				s.err = err
			}
			return err
		}
	}
	return s.err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ioErr wraps an I/O failure as guest.ErrSink with the topic and a hint for
// the common causes.
func ioErr(t Target, op string, err error) *guest.Error {
	var ge *guest.Error
	if errors.As(err, &ge) {
		return ge
	}
	e := &guest.Error{Kind: guest.ErrSink, Message: fmt.Sprintf("%s: topic %q: %v", op, t.Topic, err), Err: err, ExitCode: -1}
	switch {
	case errors.Is(err, os.ErrPermission):
		e.Hint = "the worker cannot write to the output location; check its permissions"
	case errors.Is(err, syscall.ENOSPC):
		e.Hint = "the output file system is full"
	}
	return e
}

// recordBytes estimates a batch's in-memory size: the sum of its buffers
// (whole buffers, so a slice of a large array counts the full array).
func recordBytes(rec arrow.RecordBatch) int64 {
	var sum int64
	for _, c := range rec.Columns() {
		sum += dataBytes(c.Data())
	}
	return sum
}

func dataBytes(d arrow.ArrayData) int64 {
	var sum int64
	for _, b := range d.Buffers() {
		if b != nil {
			sum += int64(b.Len())
		}
	}
	for _, c := range d.Children() {
		sum += dataBytes(c)
	}
	if d.DataType().ID() == arrow.DICTIONARY {
		sum += dataBytes(d.Dictionary())
	}
	return sum
}
