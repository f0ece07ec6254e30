// Package sdk is the Go SDK for Casparian Flow plugins.
//
// A plugin describes itself (Info) and processes one input file per call
// (Process), emitting Arrow record batches to named topics through an Output.
// The same plugin value is served either as a native go-plugin executable
// (package sdk/goplugin) or as a sandboxed WASM module built with
// GOOS=wasip1 GOARCH=wasm (package sdk/wasm), without changing its code:
//
//	// main.go, one file for both builds
//	func main() { serve.Main(myplugin.Plugin{}) }   // see sdk/serve
//
// Plugin-side packages never import host code, wazero or ZeroMQ: only this
// package, arrow-go and the standard library.
package sdk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/apache/arrow-go/v18/arrow"
)

// Topic is one output of a plugin.
type Topic struct {
	// Name is the topic name: 1-255 ASCII letters, digits, '_', '-' and
	// '.', not starting with '-' or '.' (topics become file and table names).
	Name string
	// Schema, if set, is the schema every batch of the topic must have.
	// nil lets the first batch fix it.
	Schema *arrow.Schema
}

// Info describes a plugin.
type Info struct {
	Name        string
	Version     string
	Description string
	// Topics lists the topics the plugin emits. A plugin may emit only to
	// listed topics when the list is non-empty.
	Topics []Topic
}

// Input is one unit of work.
type Input struct {
	// Path is the input file as the plugin can open it (inside a WASM
	// sandbox, the path of the read-only mount).
	Path string
	// JobID identifies the job (0 outside a job).
	JobID int64
	// FileID is the file version id the job reads (0 if none).
	FileID int64
	// Config is the plugin's configuration (JSON values); never nil.
	Config map[string]any
}

// Output receives what a plugin produces.
type Output interface {
	// Emit sends one record batch to a topic. The batch is serialized before
	// Emit returns, so the caller keeps ownership (release it afterwards).
	// An error means the host refused the batch (schema mismatch, job
	// cancelled, ...): the plugin must stop and return it.
	Emit(topic string, rec arrow.RecordBatch) error
	// Logger returns a logger whose records reach the host's logs, tagged
	// with the job.
	Logger() *slog.Logger
}

// Plugin is what a Go plugin author implements.
type Plugin interface {
	Info() Info
	// Process reads in.Path and emits batches to out. ctx is cancelled when
	// the job is cancelled or times out (native plugins only; a WASM plugin
	// is stopped by the host instead).
	Process(ctx context.Context, in Input, out Output) error
}

// MaxTopicLen is the longest topic name.
const MaxTopicLen = 255

// ValidateTopic reports whether name is a valid topic name (the host applies
// the same rule).
func ValidateTopic(name string) error {
	if len(name) == 0 || len(name) > MaxTopicLen {
		return fmt.Errorf("topic name %q: must be 1-%d characters", name, MaxTopicLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '.')
		if !ok {
			return fmt.Errorf("topic name %q: use letters, digits, '_', '-' and '.' (not first)", name)
		}
	}
	return nil
}

// CheckEmit is the plugin-side check every Output implementation applies
// before serializing a batch: a valid topic, listed in info when info lists
// topics, with the declared schema when one is declared.
func CheckEmit(info Info, topic string, rec arrow.RecordBatch) error {
	if rec == nil {
		return errors.New("emit: nil record batch")
	}
	if err := ValidateTopic(topic); err != nil {
		return fmt.Errorf("emit: %w", err)
	}
	if len(info.Topics) == 0 {
		return nil
	}
	for _, t := range info.Topics {
		if t.Name != topic {
			continue
		}
		if t.Schema != nil && !t.Schema.Equal(rec.Schema()) {
			return fmt.Errorf("emit to topic %q: batch schema %s differs from the declared schema %s",
				topic, rec.Schema(), t.Schema)
		}
		return nil
	}
	names := make([]string, len(info.Topics))
	for i, t := range info.Topics {
		names[i] = t.Name
	}
	return fmt.Errorf("emit: topic %q is not declared in Info().Topics %v", topic, names)
}
