package goplugin_test

import (
	"context"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/goplugin"
)

var lineSchema = arrow.NewSchema([]arrow.Field{{Name: "n", Type: arrow.PrimitiveTypes.Int64}}, nil)

// countPlugin emits one batch to its one declared topic.
type countPlugin struct{}

func (countPlugin) Info() sdk.Info {
	return sdk.Info{Name: "count", Version: "1.0.0", Topics: []sdk.Topic{{Name: "counts", Schema: lineSchema}}}
}

func (countPlugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	out.Logger().Info("counting", "path", in.Path)
	b := array.NewInt64Builder(memory.DefaultAllocator)
	defer b.Release()
	b.Append(42)
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(lineSchema, []arrow.Array{col}, 1)
	defer rec.Release()
	return out.Emit("counts", rec) // serialized before Emit returns
}

// A plugin's main serves it; serve.Main does the same and also builds for WASM.
func ExampleServe() {
	goplugin.Serve(countPlugin{}) // never returns
}
