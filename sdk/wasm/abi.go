package wasm

// ABIVersion is the version of the WASM ABI (docs/WASM_ABI.md) this package
// implements. A module returns it from the casparian_abi_version export; the
// host refuses a module whose version it does not speak.
const ABIVersion = 1

// Names of the functions a module exports (docs/WASM_ABI.md, "Exports").
const (
	ExportABIVersion = "casparian_abi_version" // () -> i32
	ExportAlloc      = "casparian_alloc"       // (size i32) -> ptr i32
	ExportFree       = "casparian_free"        // (ptr i32, size i32) -> ()
	ExportInfo       = "casparian_info"        // () -> status i32
	ExportProcess    = "casparian_process"     // (ptr i32, len i32) -> status i32
	ExportMemory     = "memory"                // the module's linear memory
	ExportInitialize = "_initialize"           // WASI reactor initializer, called first when present
	ExportStart      = "_start"                // WASI command entry point: not accepted
)

// Names of the functions the host provides to a module (docs/WASM_ABI.md, "Imports").
const (
	ImportModule   = "casparian"
	ImportEmit     = "emit"      // (topic_ptr, topic_len, ipc_ptr, ipc_len i32) -> status i32
	ImportLog      = "log"       // (level, msg_ptr, msg_len i32) -> ()
	ImportSetInfo  = "set_info"  // (json_ptr, json_len i32) -> ()
	ImportSetError = "set_error" // (json_ptr, json_len i32) -> ()
)

// Status codes.
const (
	// StatusOK is returned by casparian_info, casparian_process and emit on success.
	StatusOK = 0
	// StatusFailed is what the Go SDK returns from casparian_info and
	// casparian_process on failure (any non-zero value means failure).
	StatusFailed = 1
	// StatusRefused is returned by emit when the host refuses a batch.
	StatusRefused = 1
)

// InputMount is the directory under which the sandbox shows the input file:
// the plugin sees its input at InputMount + "/" + the file's base name.
const InputMount = "/input"

// Input is the JSON document the host passes to casparian_process.
type Input struct {
	// Path is the input file as the module opens it (under InputMount).
	Path string `json:"path"`
	// JobID identifies the job (0 outside a job).
	JobID int64 `json:"job_id"`
	// FileID is the file version id the job reads (0 if none).
	FileID int64 `json:"file_id"`
	// Config is the plugin's configuration; an object, never null.
	Config map[string]any `json:"config"`
	// MaxBatchBytes is the largest Arrow IPC stream the host accepts in one
	// emit call. A guest SDK splits larger batches.
	MaxBatchBytes int64 `json:"max_batch_bytes"`
}

// Info is the JSON document a module passes to set_info during casparian_info.
type Info struct {
	Name        string  `json:"name"`
	Version     string  `json:"version,omitempty"`
	Description string  `json:"description,omitempty"`
	Topics      []Topic `json:"topics,omitempty"`
	// SDK names the guest SDK and its version ("casparian-go/1"), for logs.
	SDK string `json:"sdk,omitempty"`
}

// Topic is one declared output of a module.
type Topic struct {
	Name string `json:"name"`
}

// Error is the JSON document a module passes to set_error before it returns
// a non-zero status.
type Error struct {
	// Kind is a guest error code: PLUGIN_ERROR (the default), INPUT, SCHEMA
	// or RESOURCE_LIMIT. Other codes are reported as PLUGIN_ERROR.
	Kind string `json:"kind,omitempty"`
	// Type is the error's type or exception class, if the language has one.
	Type      string `json:"type,omitempty"`
	Message   string `json:"message"`
	Traceback string `json:"traceback,omitempty"`
}

// Log levels passed to the log import: the numeric values of log/slog.
const (
	LevelDebug = -4
	LevelInfo  = 0
	LevelWarn  = 4
	LevelError = 8
)
