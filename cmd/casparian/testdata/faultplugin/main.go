// Command faultplugin is the fault tests' Go plugin, built at test time as a
// go-plugin executable and as a WASM module (GOOS=wasip1 GOARCH=wasm
// -buildmode=c-shared). The input file says what it does:
//
//	ok N    emit one batch of N rows (column n: 0..N-1) to topic "rows" (N=1 if absent)
//	hang    never return, ignoring cancellation (only the host can stop it)
//	crash   exit the process with status 9 (a poison input)
//
// Built with -ldflags "-X main.variant=poison", every input crashes: a
// separate plugin artifact for the poison-plugin scenario.
package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/serve"
)

var variant = "normal"

var schema = arrow.NewSchema([]arrow.Field{{Name: "n", Type: arrow.PrimitiveTypes.Int64}}, nil)

type plugin struct{}

func (plugin) Info() sdk.Info {
	return sdk.Info{Name: "faultplugin", Version: "1.0.0", Description: "the fault tests' plugin (" + variant + ")",
		Topics: []sdk.Topic{{Name: "rows", Schema: schema}}}
}

func (plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	b, err := os.ReadFile(in.Path)
	if err != nil {
		return err
	}
	fields := strings.Fields(string(b))
	mode := "ok"
	if len(fields) > 0 {
		mode = fields[0]
	}
	if variant == "poison" {
		mode = "crash"
	}
	switch mode {
	case "hang":
		for { // ignores ctx
			time.Sleep(time.Hour)
		}
	case "crash":
		os.Exit(9)
	}
	rows := 1
	if len(fields) > 1 {
		if rows, err = strconv.Atoi(fields[1]); err != nil {
			return err
		}
	}
	bld := array.NewInt64Builder(memory.DefaultAllocator)
	defer bld.Release()
	for i := range rows {
		bld.Append(int64(i))
	}
	col := bld.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, int64(rows))
	defer rec.Release()
	return out.Emit("rows", rec)
}

func main() { serve.Main(plugin{}) }
