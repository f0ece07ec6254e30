// Command refplugin is the conformance suite's Go reference plugin: one
// source built as a go-plugin executable (go build) and as a WASM module
// (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared). Its behaviour is
// chosen by the "mode" key of the job's config; the modes and the tables
// they emit are defined in package reftable, which the Python reference
// plugin (conformance/kinds/refplugin.py) mirrors.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/conformance/reftable"
	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/serve"
)

type plugin struct{}

func (plugin) Info() sdk.Info {
	// No topics declared: any topic may be emitted, and what a topic's
	// schema may be is the host's to enforce (mode schema_change).
	return sdk.Info{Name: "conformance-ref", Version: "1.0.0", Description: "the conformance suite's reference plugin"}
}

func num(cfg map[string]any, key string, def int) int {
	if v, ok := cfg[key].(float64); ok {
		return int(v)
	}
	return def
}

// emit sends rec to topic and releases it.
func emit(out sdk.Output, topic string, rec arrow.RecordBatch) error {
	defer rec.Release()
	return out.Emit(topic, rec)
}

func (plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	mem := memory.DefaultAllocator
	mode, _ := in.Config["mode"].(string)
	switch mode {
	case "types":
		return emit(out, reftable.TopicTypes, reftable.Types(mem))
	case "empty":
		return nil
	case "zero_rows":
		for range 2 {
			if err := emit(out, reftable.TopicRows, reftable.Rows(mem, 0, 0)); err != nil {
				return err
			}
		}
		return nil
	case "tiny":
		for i := range num(in.Config, "batches", 10_000) {
			if err := emit(out, reftable.TopicRows, reftable.Rows(mem, i, 1)); err != nil {
				return err
			}
		}
		return nil
	case "big":
		rows := num(in.Config, "rows", 16)
		return emit(out, reftable.TopicBig, reftable.Big(mem, rows, num(in.Config, "mb", 256)<<20/rows))
	case "topics":
		for i := range num(in.Config, "n", 8) {
			if err := emit(out, fmt.Sprintf("%s%d", reftable.TopicPrefix, i), reftable.Topic(mem, i)); err != nil {
				return err
			}
		}
		return nil
	case "schema_change":
		if err := emit(out, reftable.TopicRows, reftable.Rows(mem, 0, 1)); err != nil {
			return err
		}
		b := array.NewStringBuilder(mem)
		b.Append("not an int")
		col := b.NewArray()
		b.Release()
		defer col.Release()
		schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String, Nullable: true}}, nil)
		return emit(out, reftable.TopicRows, array.NewRecordBatch(schema, []arrow.Array{col}, 1))
	case "error":
		return errors.New(reftable.ErrorMessage)
	case "panic":
		panic(reftable.PanicMessage)
	case "exit":
		fmt.Fprintln(os.Stderr, "conformance: exiting with status", reftable.ExitCode)
		os.Exit(reftable.ExitCode)
	case "hang":
		for { // ignores ctx: only the host can stop it
			time.Sleep(time.Hour)
		}
	case "stream":
		for i := 0; ; i++ {
			if err := emit(out, reftable.TopicRows, reftable.Rows(mem, i, 1)); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	case "noise":
		mb := num(in.Config, "mb", 4)
		line := strings.Repeat("noise ", 16) + "\n" // 97 bytes
		for _, f := range []*os.File{os.Stdout, os.Stderr} {
			w := bufio.NewWriterSize(f, 64<<10)
			for n := 0; n < mb<<20; n += len(line) {
				w.WriteString(line)
			}
			w.Flush()
		}
		return emit(out, reftable.TopicRows, reftable.Rows(mem, 0, 1))
	case "echo":
		content, err := os.ReadFile(in.Path)
		if err != nil {
			return err
		}
		b := array.NewRecordBuilder(mem, reftable.EchoSchema)
		b.Field(0).(*array.StringBuilder).Append(in.Path)
		b.Field(1).(*array.StringBuilder).Append(string(content))
		rec := b.NewRecordBatch()
		b.Release()
		return emit(out, reftable.TopicEcho, rec)
	case "logs":
		out.Logger().Info(reftable.LogMessage, reftable.LogKey, reftable.LogValue)
		return emit(out, reftable.TopicRows, reftable.Rows(mem, 0, 1))
	case "sleep":
		time.Sleep(time.Duration(num(in.Config, "ms", 100)) * time.Millisecond)
		return emit(out, reftable.TopicRows, reftable.Rows(mem, 0, 1))
	}
	return fmt.Errorf("conformance reference plugin: unknown mode %q", mode)
}

func main() { serve.Main(plugin{}) }
