package wasm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/bridge"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/guestlog"
	abi "github.com/casparianflow/casparian/sdk/wasm"
)

// The decoders of what a module hands the host through its imports
// (docs/WASM_ABI.md section 3): pointer and length pairs into its linear
// memory, the Arrow IPC stream of emit, log lines, and the Info and Error
// JSON documents. They are pure functions of the module's memory and the
// call's arguments, so the fuzz targets (decode_fuzz_test.go) drive them
// without a module. Every length is checked against its cap before
// anything is read or copied; what they return is bounded by those caps.

// guestMemory is what the decoders read of a module's linear memory
// (wazero's api.Memory).
type guestMemory interface {
	// Read returns a view of byteCount bytes at offset, or false when they
	// lie outside the memory.
	Read(offset, byteCount uint32) ([]byte, bool)
	Size() uint32
}

// readMem reads size bytes at ptr (a view, not a copy).
func readMem(mem guestMemory, label, what string, ptr, size uint32) ([]byte, *guest.Error) {
	b, ok := mem.Read(ptr, size)
	if !ok {
		return nil, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: %s (pointer %d, length %d) lies outside the module's %d-byte memory", label, what, ptr, size, mem.Size())}
	}
	return b, nil
}

// decodeEmit checks the arguments of emit(topic_ptr, topic_len, ipc_ptr,
// ipc_len): the topic (at most bridge.MaxTopicLen bytes, valid, declared
// when topics is not nil) and the stream's length (at most maxBatch). It
// returns the topic and a view of the stream in memory.
func decodeEmit(mem guestMemory, label string, topics map[string]bool, maxBatch int64, tp, tl, dp, dl uint32) (string, []byte, *guest.Error) {
	if tl > bridge.MaxTopicLen {
		return "", nil, &guest.Error{Kind: guest.ErrSchema, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: topic name of %d bytes is longer than %d", label, tl, bridge.MaxTopicLen)}
	}
	tb, gerr := readMem(mem, label, "emit topic", tp, tl)
	if gerr != nil {
		return "", nil, gerr
	}
	topic := string(tb)
	if err := validateTopic(topic); err != nil {
		return "", nil, &guest.Error{Kind: guest.ErrSchema, ExitCode: -1, Message: fmt.Sprintf("plugin %s: %v", label, err), Err: err}
	}
	if topics != nil && !topics[topic] {
		return "", nil, &guest.Error{Kind: guest.ErrSchema, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s emitted to topic %q, which its Info does not declare", label, topic),
			Hint:    "emit only to the topics listed in Info().Topics, or list this one"}
	}
	if int64(dl) > maxBatch {
		return "", nil, &guest.Error{Kind: guest.ErrResourceLimit, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: batch of %d bytes for topic %q exceeds the %d-byte limit", label, dl, topic, maxBatch),
			Hint:    "emit smaller batches (the Go SDK splits them by itself), or raise the WASM batch limit"}
	}
	data, gerr := readMem(mem, label, "emit data", dp, dl)
	if gerr != nil {
		return "", nil, gerr
	}
	return topic, data, nil
}

// emitFailure marks an error of guest.Output.Emit inside bridge.ReadIPC.
type emitFailure struct{ err error }

func (e emitFailure) Error() string { return e.err.Error() }

// decodeBatches decodes the Arrow IPC stream of one emit call (capped at its
// own length, so no announced length can make the host allocate more than
// the module handed over) and calls fn for each record batch. An error of
// fn is the job's error (SINK unless it says otherwise); anything wrong
// with the stream is PROTOCOL.
func decodeBatches(data []byte, alloc memory.Allocator, label, topic string, fn func(arrow.RecordBatch) error) *guest.Error {
	_, err := bridge.ReadIPC(bytes.NewReader(data), int64(len(data)), alloc, func(rec arrow.RecordBatch) error {
		if err := fn(rec); err != nil {
			return emitFailure{err}
		}
		return nil
	})
	if err == nil {
		return nil
	}
	var ef emitFailure
	if errors.As(err, &ef) {
		return guest.AsError(ef.err, guest.ErrSink)
	}
	return &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
		Message: fmt.Sprintf("plugin %s: topic %q: %v", label, topic, err),
		Hint:    "emit takes one uncompressed Arrow IPC stream: a schema message, then record batches (docs/WASM_ABI.md)"}
}

// decodeLog decodes log(level, msg_ptr, msg_len): a message longer than
// maxLine (guestlog.DefaultMaxLine for modules) is cut (only maxLine bytes are read),
// invalid UTF-8 is replaced.
func decodeLog(mem guestMemory, label string, maxLine uint32, level int32, p, n uint32) (slog.Level, string, *guest.Error) {
	cut := n > maxLine
	if cut {
		n = maxLine
	}
	b, gerr := readMem(mem, label, "log message", p, n)
	if gerr != nil {
		return 0, "", gerr
	}
	msg := strings.ToValidUTF8(string(b), "\uFFFD")
	if cut {
		msg += "…"
	}
	return slog.Level(level), msg, nil
}

// decodeInfoDoc reads the set_info document (refused above maxDocBytes) and
// returns a copy.
func decodeInfoDoc(mem guestMemory, label string, p, n uint32) ([]byte, *guest.Error) {
	if n > maxDocBytes {
		return nil, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: Info JSON of %d bytes is larger than %d", label, n, maxDocBytes)}
	}
	b, gerr := readMem(mem, label, "set_info document", p, n)
	if gerr != nil {
		return nil, gerr
	}
	return bytes.Clone(b), nil
}

// decodeErrorDoc reads the set_error document (its first maxDocBytes: an
// over-long one keeps its start) and returns a copy.
func decodeErrorDoc(mem guestMemory, label string, p, n uint32) ([]byte, *guest.Error) {
	if n > maxDocBytes {
		n = maxDocBytes
	}
	b, gerr := readMem(mem, label, "set_error document", p, n)
	if gerr != nil {
		return nil, gerr
	}
	return bytes.Clone(b), nil
}

// parseInfo decodes the Info document: JSON, and every declared topic valid.
func parseInfo(doc []byte, label string) (abi.Info, *guest.Error) {
	var info abi.Info
	if err := json.Unmarshal(doc, &info); err != nil {
		return abi.Info{}, &guest.Error{Kind: guest.ErrProtocol, ExitCode: -1, Err: err,
			Message: fmt.Sprintf("plugin %s: invalid Info JSON from casparian_info: %v", label, err)}
	}
	for _, t := range info.Topics {
		if err := validateTopic(t.Name); err != nil {
			return abi.Info{}, &guest.Error{Kind: guest.ErrSchema, ExitCode: -1,
				Message: fmt.Sprintf("plugin %s declares an invalid topic: %v", label, err)}
		}
	}
	return info, nil
}

// parseFailure builds the job's error from a non-zero status of export fn
// and the module's Error document (nil when it called no set_error). A
// module can claim only its own kinds (PLUGIN_ERROR, INPUT, SCHEMA,
// RESOURCE_LIMIT), never a host's.
func parseFailure(doc []byte, label, fn string, status uint32) *guest.Error {
	if doc == nil {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s: %s failed with status %d and reported no error", label, fn, status),
			Hint:    "call casparian.set_error before returning a non-zero status (docs/WASM_ABI.md)"}
	}
	var d abi.Error
	if err := json.Unmarshal(doc, &d); err != nil || d.Message == "" {
		return &guest.Error{Kind: guest.ErrPlugin, ExitCode: -1,
			Message: fmt.Sprintf("plugin %s failed: %s", label, guestlog.Truncate(strings.ToValidUTF8(string(doc), "\uFFFD"), 2000))}
	}
	kind := guest.ErrPlugin
	switch d.Kind {
	case "INPUT":
		kind = guest.ErrInput
	case "SCHEMA":
		kind = guest.ErrSchema
	case "RESOURCE_LIMIT":
		kind = guest.ErrResourceLimit
	}
	msg := d.Message
	if d.Type != "" && !strings.HasPrefix(msg, d.Type) {
		msg = d.Type + ": " + msg
	}
	return &guest.Error{Kind: kind, ExitCode: -1, Message: msg, Traceback: d.Traceback, Hint: failureHint(kind, msg)}
}
