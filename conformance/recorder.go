package conformance

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/casparianflow/casparian/host/guest"
)

// Recorder is the guest.Output of the suite: it keeps every batch (retained
// until Release) and log record, and refuses a batch whose schema differs
// from the topic's first batch with an ErrSchema error, as the host's sinks
// do. EmitHook, when set, runs first and may refuse a batch.
type Recorder struct {
	mu       sync.Mutex
	batches  map[string][]arrow.RecordBatch
	order    []string
	logs     []guest.LogRecord
	schemas  map[string]*arrow.Schema
	released bool
	EmitHook func(topic string, rec arrow.RecordBatch) error
}

var _ guest.Output = (*Recorder)(nil)

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{batches: map[string][]arrow.RecordBatch{}, schemas: map[string]*arrow.Schema{}}
}

// Emit implements guest.Output.
func (r *Recorder) Emit(_ context.Context, topic string, rec arrow.RecordBatch) error {
	if r.EmitHook != nil {
		if err := r.EmitHook(topic, rec); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.released {
		// A run the suite gave up on (it did not stop in time) emits on.
		return guest.Errorf(guest.ErrCancelled, "the conformance suite stopped recording this run")
	}
	if s, ok := r.schemas[topic]; ok && !s.Equal(rec.Schema()) {
		return guest.Errorf(guest.ErrSchema, "topic %q: batch schema %s differs from the topic's schema %s",
			topic, oneLine(rec.Schema()), oneLine(s))
	}
	r.schemas[topic] = rec.Schema()
	rec.Retain()
	r.batches[topic] = append(r.batches[topic], rec)
	r.order = append(r.order, topic)
	return nil
}

// Log implements guest.Output.
func (r *Recorder) Log(l guest.LogRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, l)
}

// Batches returns the batches of topic, in order.
func (r *Recorder) Batches(topic string) []arrow.RecordBatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]arrow.RecordBatch(nil), r.batches[topic]...)
}

// Topics returns the topics emitted to, in first-emit order.
func (r *Recorder) Topics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, t := range r.order {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// Emits returns how many batches were emitted, over all topics.
func (r *Recorder) Emits() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

// Rows counts the rows of topic.
func (r *Recorder) Rows(topic string) int64 {
	var n int64
	for _, b := range r.Batches(topic) {
		n += b.NumRows()
	}
	return n
}

// Logs returns the log records.
func (r *Recorder) Logs() []guest.LogRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]guest.LogRecord(nil), r.logs...)
}

// Release releases every batch kept; later Emits are refused.
func (r *Recorder) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released = true
	for _, bs := range r.batches {
		for _, b := range bs {
			b.Release()
		}
	}
	r.batches = map[string][]arrow.RecordBatch{}
}

func oneLine(s *arrow.Schema) string {
	var parts []string
	for _, f := range s.Fields() {
		parts = append(parts, fmt.Sprintf("%s:%s", f.Name, f.Type))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
