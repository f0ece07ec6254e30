// Package jsonl is an example Go plugin: it parses JSON-lines event logs into
// two topics, "events" (one row per valid line) and "errors" (one row per
// line it could not use). The same code is built as a go-plugin executable
// and as a WASM module (see ../main.go); jsonl_plugin.py is its Python twin.
package jsonl

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/sdk"
)

// Schemas of the two topics.
var (
	EventsSchema = arrow.NewSchema([]arrow.Field{
		{Name: "line", Type: arrow.PrimitiveTypes.Int64},
		{Name: "ts", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
		{Name: "level", Type: arrow.BinaryTypes.String},
		{Name: "message", Type: arrow.BinaryTypes.String},
		{Name: "duration_ms", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	}, nil)
	ErrorsSchema = arrow.NewSchema([]arrow.Field{
		{Name: "line", Type: arrow.PrimitiveTypes.Int64},
		{Name: "error", Type: arrow.BinaryTypes.String},
	}, nil)
)

// batchRows bounds the rows of one emitted batch.
const batchRows = 64 * 1024

// Plugin is the plugin value both builds serve.
type Plugin struct{}

// Info describes the plugin and its topics.
func (Plugin) Info() sdk.Info {
	return sdk.Info{Name: "jsonl", Version: "1.0.0", Description: "JSON-lines events -> events + errors",
		Topics: []sdk.Topic{{Name: "events", Schema: EventsSchema}, {Name: "errors", Schema: ErrorsSchema}}}
}

type event struct {
	TS         *string  `json:"ts"`
	Level      *string  `json:"level"`
	Message    string   `json:"message"`
	DurationMS *float64 `json:"duration_ms"`
}

// Process parses in.Path line by line.
func (Plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	f, err := os.Open(in.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	ev := array.NewRecordBuilder(memory.DefaultAllocator, EventsSchema)
	defer ev.Release()
	er := array.NewRecordBuilder(memory.DefaultAllocator, ErrorsSchema)
	defer er.Release()
	flush := func(b *array.RecordBuilder, topic string, force bool) error {
		if b.Field(0).Len() == 0 || (!force && b.Field(0).Len() < batchRows) {
			return nil
		}
		rec := b.NewRecordBatch()
		defer rec.Release()
		return out.Emit(topic, rec)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	var line, bad int64
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		if line%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		var e event
		var ts time.Time
		var msg string
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			msg = "invalid JSON"
		} else if e.TS == nil || e.Level == nil {
			msg = "missing ts or level"
		} else if ts, err = time.Parse(time.RFC3339Nano, *e.TS); err != nil {
			msg = fmt.Sprintf("bad timestamp %q", *e.TS)
		}
		if msg != "" {
			bad++
			er.Field(0).(*array.Int64Builder).Append(line)
			er.Field(1).(*array.StringBuilder).Append(msg)
			if err := flush(er, "errors", false); err != nil {
				return err
			}
			continue
		}
		ev.Field(0).(*array.Int64Builder).Append(line)
		ev.Field(1).(*array.TimestampBuilder).Append(arrow.Timestamp(ts.UnixMicro()))
		ev.Field(2).(*array.StringBuilder).Append(*e.Level)
		ev.Field(3).(*array.StringBuilder).Append(e.Message)
		if e.DurationMS != nil {
			ev.Field(4).(*array.Float64Builder).Append(*e.DurationMS)
		} else {
			ev.Field(4).(*array.Float64Builder).AppendNull()
		}
		if err := flush(ev, "events", false); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("line %d: %w", line+1, err)
	}
	if err := flush(ev, "events", true); err != nil {
		return err
	}
	if err := flush(er, "errors", true); err != nil {
		return err
	}
	out.Logger().Info("parsed events", "lines", line, "bad", bad)
	return nil
}
