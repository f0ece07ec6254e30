// Package sink writes a job's output topics to their destinations: Parquet
// files and SQLite tables.
//
// The host opens one [Writer] per (job, topic) when the topic's first batch
// arrives, calls [Writer.Write] for every batch, and then either
// [Writer.Commit] (the job succeeded) or [Writer.Abort] (it failed or was
// cancelled). Output becomes visible only at Commit and atomically: a Parquet
// file is written under a hidden temporary name and renamed into place; a
// SQLite table receives the job's rows in one transaction. After Abort
// nothing the writer created remains.
//
// Every row written gets two lineage columns, _job_id and _file_version_id
// (int64, non-null), so output can always be traced back to the job and the
// input file version that produced it.
//
// Errors are *guest.Error values: guest.ErrSchema for schema problems (a batch
// whose schema differs from the topic's, a column that clashes with a lineage
// column, a type a sink cannot store, an existing SQLite table with other
// columns) and guest.ErrSink for everything else (bad URIs, I/O failures, a
// locked database). A cancelled context yields guest.ErrCancelled.
package sink

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/host/guest"
)

// Names of the lineage columns every sink adds to every row.
const (
	ColJobID         = "_job_id"
	ColFileVersionID = "_file_version_id"
)

// Target says where one (job, topic) output goes.
type Target struct {
	// URI is the destination:
	//   parquet://PATH            PATH relative to OutputDir, or absolute (parquet:///abs/PATH).
	//                             "x.parquet" is written as "x_<JobID>.parquet"; a PATH not
	//                             ending in ".parquet" is a directory receiving
	//                             "data_<JobID>.parquet" (or "<FileStem>.parquet").
	//                             An optional "?compression=zstd" overrides Options.Compression.
	//   sqlite:///abs/file.db/table   an absolute database path, then the table.
	//   sqlite://rel.db/table         a database path relative to OutputDir, then the table.
	URI string
	// OutputDir is the root for relative paths. A relative path must stay
	// inside it. Empty means relative URIs are rejected.
	OutputDir string
	// JobID is written to the _job_id lineage column and used in file names.
	JobID int64
	// FileVersionID is written to the _file_version_id lineage column.
	FileVersionID int64
	// Topic names the output in errors and artifacts; the caller has validated it.
	Topic string
	// FileStem, when set, makes the Parquet directory form write
	// <dir>/<FileStem>.parquet instead of <dir>/data_<JobID>.parquet. It must be
	// a plain file name (no path separators, not "." or "..").
	FileStem string
	// Provenance is written as Parquet key-value metadata, sorted by key
	// (e.g. casparian.plugin, casparian.input_sha256, casparian.job_id).
	// The SQLite sink ignores it. nil = none.
	Provenance map[string]string
	// Schema optionally fixes the topic's schema before the first batch. nil
	// means the first batch fixes it. It matters only for a Commit without any
	// Write: the Parquet sink then writes an empty file with this schema (or
	// with only the lineage columns when nil), and the SQLite sink creates the
	// table (or does nothing when nil).
	Schema *arrow.Schema
}

// Options tune a sink. The zero value is ready to use.
type Options struct {
	// Compression is the Parquet codec: "snappy" (default when empty), "zstd",
	// "gzip", "brotli", "lz4" (LZ4_RAW) or "none". The SQLite sink ignores it.
	Compression string
	// CompressionLevel is passed to the codec; 0 means the codec's default.
	CompressionLevel int
	// MaxRowGroupRows caps the rows in one Parquet row group; 0 means 1,048,576.
	MaxRowGroupRows int64
	// MaxRowGroupBytes caps the encoded, compressed bytes one Parquet row group
	// holds in memory before it is flushed to disk; 0 means 128 MiB. Memory per
	// writer stays near this bound (plus about one data page and one
	// dictionary page per column) however long the stream.
	MaxRowGroupBytes int64
	// NoDictionarySampling turns off the Parquet sink's sampling of the first
	// batch, which writes columns that are ~all distinct without trying a
	// dictionary first (see dictplan.go). false (default) = sample.
	NoDictionarySampling bool
	// Allocator allocates Arrow and Parquet buffers; nil means memory.DefaultAllocator.
	Allocator memory.Allocator
	// TempDir holds the SQLite sink's private staging database; empty means
	// os.TempDir(). (The Parquet sink always stages next to its final file so
	// that the commit is a same-directory rename.)
	TempDir string
	// SQLiteBusyTimeout is how long a SQLite commit waits for another writer
	// to release the target database; 0 means 30s.
	SQLiteBusyTimeout time.Duration

	// sequentialColumns makes the Parquet sink encode columns one after
	// another through pqarrow.FileWriter even for flat schemas (tests compare
	// the two paths).
	sequentialColumns bool
}

// Defaults applied to zero-valued Options fields.
const (
	DefaultCompression       = "snappy"
	DefaultMaxRowGroupRows   = 1 << 20
	DefaultMaxRowGroupBytes  = 128 << 20
	DefaultSQLiteBusyTimeout = 30 * time.Second
)

func (o Options) withDefaults() (Options, error) {
	if o.Compression == "" {
		o.Compression = DefaultCompression
	}
	if _, err := codecFor(o.Compression); err != nil {
		return o, err
	}
	switch {
	case o.MaxRowGroupRows < 0:
		return o, fmt.Errorf("open sink: MaxRowGroupRows must not be negative, got %d", o.MaxRowGroupRows)
	case o.MaxRowGroupBytes < 0:
		return o, fmt.Errorf("open sink: MaxRowGroupBytes must not be negative, got %d", o.MaxRowGroupBytes)
	case o.SQLiteBusyTimeout < 0:
		return o, fmt.Errorf("open sink: SQLiteBusyTimeout must not be negative, got %s", o.SQLiteBusyTimeout)
	}
	if o.MaxRowGroupRows == 0 {
		o.MaxRowGroupRows = DefaultMaxRowGroupRows
	}
	if o.MaxRowGroupBytes == 0 {
		o.MaxRowGroupBytes = DefaultMaxRowGroupBytes
	}
	if o.Allocator == nil {
		o.Allocator = memory.DefaultAllocator
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.SQLiteBusyTimeout == 0 {
		o.SQLiteBusyTimeout = DefaultSQLiteBusyTimeout
	}
	return o, nil
}

// Artifact describes one committed output.
type Artifact struct {
	// Topic is Target.Topic.
	Topic string
	// URI is the final location: parquet:///abs/path or sqlite:///abs/file.db/table.
	URI string
	// Rows is the number of rows committed.
	Rows int64
	// Bytes is the Parquet file's size; for SQLite, the size of the staging
	// database (an estimate of the data appended).
	Bytes int64
}

// Writer writes one (job, topic) output.
//
// A Writer is safe for concurrent use, but calls are serialised: an Abort from
// another goroutine waits for a Write in progress to return. After an error
// from Write or Commit the Writer accepts no more batches; the caller calls
// Abort (always safe, idempotent) to make sure nothing remains.
type Writer interface {
	// Write appends one batch. The first batch fixes the topic's schema; a
	// later batch with another schema fails with guest.ErrSchema naming the
	// topic and both schemas. Write adds lineage columns _job_id and
	// _file_version_id (int64, non-null) to every row; a batch that already
	// has such a column is a schema error. The record is owned by the caller
	// and valid only during the call: Write neither keeps nor releases it.
	// ctx governs the call: a cancelled ctx fails it with guest.ErrCancelled.
	Write(ctx context.Context, rec arrow.RecordBatch) error
	// Rows is the number of rows written so far.
	Rows() int64
	// Commit makes the output visible atomically and returns the artifact
	// (URI as parquet:///abs/path or sqlite:///abs/file.db/table). ctx governs
	// the commit (for SQLite, also the wait for the database lock). When
	// Commit fails, nothing becomes visible and the staged data is discarded.
	Commit(ctx context.Context) (Artifact, error)
	// Abort discards everything written; idempotent; afterwards no visible and
	// no temp file remains. Abort after a successful Commit does nothing.
	Abort() error
}

// Open opens a Writer for t, dispatching on the URI scheme. An unknown scheme
// is an error listing the supported ones. Open creates directories as needed
// and the staging file, so permission problems surface here.
func Open(ctx context.Context, t Target, o Options) (Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, cancelled("open sink", t, err)
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, sinkErr(err)
	}
	loc, err := resolve(t)
	if err != nil {
		return nil, err
	}
	switch loc.scheme {
	case schemeParquet:
		return openParquet(t, o, loc)
	case schemeSQLite:
		return openSQLite(ctx, t, o, loc)
	}
	return nil, sinkErr(fmt.Errorf("open sink: unsupported scheme %q", loc.scheme))
}

// ResolveURI returns the final location a Target will be written to, as
// parquet:///abs/path or sqlite:///abs/file.db/table, without touching the
// file system.
func ResolveURI(t Target) (string, error) {
	loc, err := resolve(t)
	if err != nil {
		return "", err
	}
	return loc.uri(), nil
}

const (
	schemeParquet = "parquet"
	schemeSQLite  = "sqlite"
)

// SupportedSchemes lists the URI schemes Open accepts.
var SupportedSchemes = []string{schemeParquet + "://", schemeSQLite + "://"}

// location is a resolved Target.
type location struct {
	scheme string
	// path: the final Parquet file, or the SQLite database file.
	path string
	// table: the SQLite table.
	table string
	// compression: a Parquet codec from the URI's query, or "".
	compression string
}

func (l location) uri() string {
	if l.scheme == schemeSQLite {
		return "sqlite://" + filepath.ToSlash(l.path) + "/" + l.table
	}
	return "parquet://" + filepath.ToSlash(l.path)
}

var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func resolve(t Target) (location, error) {
	scheme, rest, ok := strings.Cut(t.URI, "://")
	if !ok || (scheme != schemeParquet && scheme != schemeSQLite) {
		return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: unsupported scheme, want one of %s",
			t.URI, strings.Join(SupportedSchemes, ", ")))
	}
	if strings.ContainsRune(rest, 0) {
		return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: path contains a NUL byte", t.URI))
	}
	loc := location{scheme: scheme}
	switch scheme {
	case schemeParquet:
		p, query, _ := strings.Cut(rest, "?")
		if query != "" {
			q, err := url.ParseQuery(query)
			if err != nil {
				return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: bad query: %w", t.URI, err))
			}
			for k := range q {
				if k != "compression" {
					return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: unknown query parameter %q (supported: compression)", t.URI, k))
				}
			}
			loc.compression = q.Get("compression")
			if _, err := codecFor(loc.compression); err != nil {
				return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: %w", t.URI, err))
			}
		}
		base, err := rootedPath(t, p)
		if err != nil {
			return location{}, err
		}
		isDir := strings.HasSuffix(p, "/") || !strings.EqualFold(filepath.Ext(base), ".parquet")
		switch {
		case isDir && t.FileStem != "":
			if err := checkFileStem(t.FileStem); err != nil {
				return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: %w", t.URI, err))
			}
			loc.path = filepath.Join(base, t.FileStem+".parquet")
		case isDir:
			loc.path = filepath.Join(base, fmt.Sprintf("data_%d.parquet", t.JobID))
		default:
			ext := filepath.Ext(base)
			loc.path = fmt.Sprintf("%s_%d%s", strings.TrimSuffix(base, ext), t.JobID, ext)
		}
	case schemeSQLite:
		if strings.ContainsAny(rest, "?#") {
			return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: sqlite paths may not contain '?' or '#'", t.URI))
		}
		i := strings.LastIndex(rest, "/")
		if i < 0 {
			return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: want sqlite:///abs/file.db/table or sqlite://rel.db/table", t.URI))
		}
		dbPart, table := rest[:i], rest[i+1:]
		if !tableNameRE.MatchString(table) {
			return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: invalid table name %q (want letters, digits and '_', not starting with a digit)", t.URI, table))
		}
		if strings.HasPrefix(strings.ToLower(table), "sqlite_") {
			return location{}, sinkErr(fmt.Errorf("resolve sink uri %q: table name %q is reserved by SQLite", t.URI, table))
		}
		p, err := rootedPath(t, dbPart)
		if err != nil {
			return location{}, err
		}
		loc.path, loc.table = p, table
	}
	return loc, nil
}

// rootedPath turns the path part of a URI into an absolute, clean path: an
// absolute path as is, a relative one under OutputDir (never escaping it).
func rootedPath(t Target, p string) (string, error) {
	if p == "" || p == "/" {
		return "", sinkErr(fmt.Errorf("resolve sink uri %q: empty path", t.URI))
	}
	p = filepath.FromSlash(p)
	if filepath.IsAbs(p) {
		return filepath.Clean(p), nil
	}
	if t.OutputDir == "" {
		return "", sinkErr(fmt.Errorf("resolve sink uri %q: relative path needs an output directory", t.URI))
	}
	root, err := filepath.Abs(t.OutputDir)
	if err != nil {
		return "", sinkErr(fmt.Errorf("resolve sink uri %q: output directory: %w", t.URI, err))
	}
	full := filepath.Join(root, p)
	rel, err := filepath.Rel(root, full)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", sinkErr(fmt.Errorf("resolve sink uri %q: path escapes the output directory %s", t.URI, root))
	}
	return full, nil
}

func checkFileStem(s string) error {
	if s == "." || s == ".." || strings.ContainsAny(s, `/\`) || strings.ContainsRune(s, 0) {
		return fmt.Errorf("invalid file stem %q: want a plain file name", s)
	}
	return nil
}

// sortedKeys returns m's keys in order, so metadata is deterministic.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkLineageFree fails when the schema already has a lineage column.
func checkLineageFree(t Target, sc *arrow.Schema) error {
	for _, f := range sc.Fields() {
		if f.Name == ColJobID || f.Name == ColFileVersionID {
			return schemaErr(fmt.Errorf("topic %q: column %q clashes with a lineage column the sink adds (%s, %s); rename it",
				t.Topic, f.Name, ColJobID, ColFileVersionID))
		}
	}
	return nil
}

// schemaMismatch builds the error for a batch whose schema is not the topic's.
func schemaMismatch(t Target, want, got *arrow.Schema) error {
	return &guest.Error{
		Kind: guest.ErrSchema,
		Message: fmt.Sprintf("write topic %q: batch schema differs from the topic's schema\ntopic schema: %s\nbatch schema: %s",
			t.Topic, oneLine(want), oneLine(got)),
		Hint:     "every batch of one topic must have the same schema; publish differently shaped data under another topic",
		ExitCode: -1,
	}
}

// oneLine renders a schema compactly: "a: int64, b: utf8 (nullable)".
func oneLine(sc *arrow.Schema) string {
	parts := make([]string, sc.NumFields())
	for i, f := range sc.Fields() {
		s := f.Name + ": " + f.Type.String()
		if !f.Nullable {
			s += " not null"
		}
		if f.HasMetadata() {
			s += fmt.Sprintf(" %v", f.Metadata)
		}
		parts[i] = s
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func sinkErr(err error) *guest.Error {
	if ge, ok := err.(*guest.Error); ok {
		return ge
	}
	return &guest.Error{Kind: guest.ErrSink, Message: err.Error(), Err: err, ExitCode: -1}
}

func schemaErr(err error) *guest.Error {
	if ge, ok := err.(*guest.Error); ok {
		return ge
	}
	return &guest.Error{Kind: guest.ErrSchema, Message: err.Error(), Err: err, ExitCode: -1}
}

func cancelled(op string, t Target, err error) *guest.Error {
	return &guest.Error{Kind: guest.ErrCancelled, Message: fmt.Sprintf("%s: topic %q: %v", op, t.Topic, err), Err: err, ExitCode: -1}
}
