// Command plugin is guestbench's Go plugin, built both as a go-plugin
// executable and as a WASM module. Config "mode": "noop" (emit nothing,
// the default), "rows" (emit "rows" rows of {id int64, name string} in batches of
// "batch" rows), "tiny" ("batches" batches of one row each).
package main

import (
	"context"
	"fmt"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/serve"
)

var schema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String},
}, nil)

type plugin struct{}

func (plugin) Info() sdk.Info {
	return sdk.Info{Name: "guestbench", Version: "1.0.0", Topics: []sdk.Topic{{Name: "rows", Schema: schema}}}
}

func num(cfg map[string]any, key string, def int) int {
	if v, ok := cfg[key].(float64); ok {
		return int(v)
	}
	return def
}

func (plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	switch mode, _ := in.Config["mode"].(string); mode {
	case "noop", "": // no config (e.g. dispatched by the sentinel): no-op
		return nil
	case "rows":
		return emit(out, num(in.Config, "rows", 1_000_000), num(in.Config, "batch", 65536))
	case "tiny":
		return emit(out, num(in.Config, "batches", 10_000), 1)
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
}

func emit(out sdk.Output, rows, batch int) error {
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	ids := b.Field(0).(*array.Int64Builder)
	names := b.Field(1).(*array.StringBuilder)
	for start := 0; start < rows; start += batch {
		n := min(batch, rows-start)
		for i := start; i < start+n; i++ {
			ids.Append(int64(i))
			names.Append("name-" + fmt.Sprint(i%1000))
		}
		rec := b.NewRecordBatch()
		err := out.Emit("rows", rec)
		rec.Release()
		if err != nil {
			return err
		}
	}
	return nil
}

func main() { serve.Main(plugin{}) }
