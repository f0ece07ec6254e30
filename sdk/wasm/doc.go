// Package wasm makes an sdk.Plugin a WebAssembly module for the sandboxed
// WASM guest: a WASI preview 1 reactor that implements the Casparian WASM
// ABI (docs/WASM_ABI.md; its names and JSON documents are the constants and
// types of this package, which the host shares).
//
// # Writing and building a plugin
//
// A plugin's main package is the same for the native go-plugin build and
// the WASM build:
//
//	package main
//
//	import "github.com/casparianflow/casparian/sdk/serve"
//
//	func main() { serve.Main(myplugin.Plugin{}) }
//
// Build the module with
//
//	GOOS=wasip1 GOARCH=wasm go build -tags arrow_json_stdlib -buildmode=c-shared -o myplugin.wasm .
//
// The arrow_json_stdlib tag is optional: it makes arrow-go use encoding/json
// instead of github.com/goccy/go-json, which leaves a module about a third
// smaller (15 MB -> 10 MB for bench/guestbench/plugin) and as much faster to
// validate and load.
//
// -buildmode=c-shared makes a reactor: the host calls _initialize (the Go
// runtime's initialization and every package's init functions) and then the
// module's exports, any number of times. A plain `go build` makes a WASI
// command instead (main runs from _start and the module exits when main
// returns), which the host refuses with a hint to add -buildmode=c-shared.
//
// # How registration works
//
// The exports of the ABI are //go:wasmexport functions of this package.
// They need not be in package main: the directive may be used in any package
// (functions only, not methods), and the linker keeps every //go:wasmexport
// function of every linked package as a root, so importing this package
// (through sdk/serve) is what makes a module export them.
//
// In a reactor, the Go runtime never runs main.main. So the first export
// that needs the plugin (casparian_info or casparian_process) runs
// main.main once itself (it is reached with //go:linkname); there
// serve.Main(p), which is [Main] in a wasip1 build, registers p and returns
// at once. main should therefore do nothing but call serve.Main: code after
// it runs in the WASM build (not in the native one, where Main never
// returns), and main must not block. A plugin may instead register from an
// init function with [Register], which _initialize runs; then main.main is
// never called.
//
// # What the plugin sees
//
// Process gets the input at sdk.Input.Path (/input/<file name>, read-only;
// nothing else of the host's file system exists), its config, the job and
// file ids, and context.Background(): the host stops a WASM module from the
// outside (deadline, cancellation), so ctx is never cancelled. Clocks and
// randomness are deterministic unless the host is configured otherwise.
//
// Output.Emit checks the batch with sdk.CheckEmit, serializes it as one
// Arrow IPC stream (schema + batch) and passes it to the host's emit import;
// a batch larger than the host's limit (max_batch_bytes in the input
// document) is split in halves by rows until every part fits. The host
// decodes, validates and sinks the batch before emit returns; when it
// refuses a batch (a sink error, a cancelled job, invalid data) it stops the
// module, so no plugin code runs after a refused emit. Output.Logger's
// records reach the host as log records of stream "sdk"; what the plugin
// writes to os.Stdout and os.Stderr arrives as streams "stdout" and "stderr".
//
// Process's error is reported with set_error: kind SCHEMA when it is the
// error Emit returned for a batch CheckEmit refused, INPUT when it is an
// *fs.PathError about the input file, PLUGIN_ERROR otherwise. A panic in
// Process is recovered and reported as PLUGIN_ERROR with its stack; a panic
// in another goroutine or a fatal runtime error (out of memory) crashes the
// module, which the host reports as CRASHED or RESOURCE_LIMIT.
//
// Outside GOOS=wasip1 this package holds only the ABI's constants and types.
package wasm
