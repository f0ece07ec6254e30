// Package guest is the contract every guest kind implements: the Python
// bridge, go-plugin binaries and WASM modules all look the same to the host.
//
// The host calls [Runtime.Load] once per plugin it needs, [Instance.Run] once
// per input file, and receives (topic, Arrow record batch) pairs through an
// [Output]. Failures come back as *[Error] values whose Kind is one of the
// sentinel errors below, so callers branch with errors.Is whatever the guest
// kind.
//
// # Ownership of Arrow records
//
// A record passed to [Output.Emit] is owned by the guest: it is valid only for
// the duration of the call, and the guest releases it after Emit returns. An
// Output that keeps a record past the call must Retain it and later Release it.
// An Output never releases a record it did not retain.
//
// This package imports only the standard library and arrow-go, so every guest
// and every host can depend on it.
package guest

import (
	"context"
	"log/slog"

	"github.com/apache/arrow-go/v18/arrow"
)

// Kind names a guest kind. The values are stable strings used in manifests,
// flags and the wire protocol.
type Kind string

// The guest kinds shipped with the product.
const (
	KindPython   Kind = "python"
	KindGoPlugin Kind = "goplugin"
	KindWASM     Kind = "wasm"
)

// Plugin identifies one plugin artifact to load.
type Plugin struct {
	// Name is the plugin's name (from its manifest, else the file stem).
	Name string
	// Version is the plugin's declared version; empty means unknown.
	Version string
	// Kind is the guest kind that runs it.
	Kind Kind
	// Path is the artifact on disk: a .py file, an executable or a .wasm module.
	// For Python it may be empty when Source is set.
	Path string
	// Source holds the artifact bytes when they arrive inline (a Python plugin
	// sent in a DISPATCH). When non-nil it wins over Path.
	Source []byte
	// Hash is the SHA-256 hex of the artifact, recorded in provenance and, for
	// binary guests, checked before start. Empty means "compute it".
	Hash string
	// Interpreter, for the Python guest, is the interpreter of the plugin's
	// own environment (with its declared packages); "" means the runtime's.
	Interpreter string
}

// Input is one unit of work: one input file for one plugin.
type Input struct {
	// JobID identifies the job in errors, logs and lineage columns.
	JobID int64
	// FileVersionID is the immutable file version the job reads (0 if none).
	FileVersionID int64
	// Path is the absolute path of the input file.
	Path string
	// Config is the plugin's configuration, delivered to the plugin as-is.
	// nil means an empty configuration.
	Config map[string]any
}

// Output receives what a plugin produces during [Instance.Run].
//
// The host implements it. A guest calls Emit only from the goroutine that
// runs Run, never concurrently for the same Run; Log may be called from any
// goroutine, concurrently with Emit.
type Output interface {
	// Emit delivers one record batch for a topic. The record is valid only
	// during the call (see the package doc on ownership). A non-nil error
	// (a schema mismatch, a failed write, a cancelled context) must make the
	// guest stop the plugin and return that error, wrapped, from Run.
	Emit(ctx context.Context, topic string, rec arrow.RecordBatch) error
	// Log forwards one log line produced by the plugin. It must not block for long.
	Log(rec LogRecord)
}

// LogRecord is one line of plugin output forwarded to the host's logs.
type LogRecord struct {
	Level   slog.Level
	Message string
	// Stream is where the line came from: "stdout", "stderr" or "sdk"
	// (the SDK's own logger).
	Stream string
	// Attrs carries extra structured fields the guest knows (logger name, ...).
	Attrs []slog.Attr
}

// Runtime is one guest kind. It is safe for concurrent use: the host calls
// Load and Run from many goroutines at once.
type Runtime interface {
	// Kind reports the guest kind this runtime serves.
	Kind() Kind
	// Load prepares a plugin for running: it validates the artifact and may
	// start or compile it. ctx bounds the loading only. A Load error is an
	// *Error (usually ErrPlugin or ErrProtocol).
	Load(ctx context.Context, p Plugin) (Instance, error)
	// Close releases everything the runtime holds (caches, warm processes).
	// It is idempotent; Loads after Close fail.
	Close(ctx context.Context) error
}

// Instance is a loaded plugin.
type Instance interface {
	// Run runs the plugin on one input and streams its batches to out.
	// ctx governs the whole run: when it is cancelled or its deadline passes,
	// the guest stops the plugin (killing its process if it has one) and Run
	// returns an *Error of kind ErrCancelled or ErrTimeout. Run returns only
	// after every resource of the run (processes, goroutines, sockets) is gone.
	// An Instance may run several inputs one after another; whether Run may be
	// called concurrently is up to the guest kind (see [Concurrent]).
	Run(ctx context.Context, in Input, out Output) error
	// Close releases the instance. It is idempotent.
	Close(ctx context.Context) error
}

// Concurrent is an optional interface: an Instance whose Concurrent method
// returns true may run several inputs at once.
type Concurrent interface {
	Concurrent() bool
}
