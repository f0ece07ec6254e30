// Command testplugin is the go-plugin guest's test plugin. Its behaviour is
// picked by Input.Config["mode"]; the environment picks what it does before
// the go-plugin handshake (CF_TEST_PREHANDSHAKE) and where it records that it
// started (CF_TEST_MARKER_DIR). The tests build it with `go build`.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/hashicorp/go-hclog"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/serve"
)

var (
	numbers = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "x", Type: arrow.PrimitiveTypes.Float64}}, nil)
	words   = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.PrimitiveTypes.Int64}, {Name: "word", Type: arrow.BinaryTypes.String}}, nil)
	big     = arrow.NewSchema([]arrow.Field{{Name: "v", Type: arrow.PrimitiveTypes.Int64}}, nil)
)

type plugin struct{}

// The throughput mode's batches (one job at a time per process).
var (
	cached                []arrow.RecordBatch
	cachedRows, cachedPer int
)

func (plugin) Info() sdk.Info {
	if os.Getenv("CF_TEST_INFO") == "hang" {
		select {}
	}
	return sdk.Info{Name: "testplugin", Version: "1.2.3", Description: "go-plugin guest test plugin",
		Topics: []sdk.Topic{{Name: "numbers", Schema: numbers}, {Name: "words", Schema: words}, {Name: "big", Schema: big}, {Name: "free"}}}
}

func (plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	mode, _ := in.Config["mode"].(string)
	num := func(k string, def int) int {
		if v, ok := in.Config[k].(float64); ok {
			return int(v)
		}
		return def
	}
	log := out.Logger()
	if mode != "noop" {
		log.Info("job started", "pid", os.Getpid(), "job_id", in.JobID, "file_id", in.FileID, "path", in.Path)
	}
	switch mode {
	case "noop":
		return nil
	case "emit":
		for b := 0; b < num("batches", 3); b++ {
			rows := num("rows", 100)
			if err := emit(out, "numbers", numbersBatch(b, rows)); err != nil {
				return err
			}
			if err := emit(out, "words", wordsBatch(b, rows)); err != nil {
				return err
			}
		}
		return nil
	case "big":
		rows := num("bytes", 100<<20) / 8
		bld := array.NewInt64Builder(memory.DefaultAllocator)
		bld.Resize(rows)
		for i := 0; i < rows; i++ {
			bld.UnsafeAppend(int64(i) * 3)
		}
		col := bld.NewArray()
		rec := array.NewRecordBatch(big, []arrow.Array{col}, int64(rows))
		col.Release()
		defer rec.Release()
		return out.Emit("big", rec)
	case "throughput":
		// The batches are built once per process and re-sent by later jobs,
		// so a warm job measures the transport, not the batch building.
		total, per := num("rows", 1_000_000), num("batch_rows", 65536)
		if cachedRows != total || cachedPer != per {
			for _, r := range cached {
				r.Release()
			}
			cached, cachedRows, cachedPer = nil, total, per
			for start := 0; start < total; start += per {
				cached = append(cached, wordsBatch(start, min(per, total-start)))
			}
		}
		for _, r := range cached {
			if err := out.Emit("words", r); err != nil {
				return err
			}
		}
		return nil
	case "env":
		// One "words" row per environment variable: its name.
		ids := array.NewInt64Builder(memory.DefaultAllocator)
		ws := array.NewStringBuilder(memory.DefaultAllocator)
		defer ids.Release()
		defer ws.Release()
		env := os.Environ()
		for i, kv := range env {
			k, _, _ := strings.Cut(kv, "=")
			ids.Append(int64(i))
			ws.Append(k)
		}
		return emit(out, "words", recordOf(words, len(env), ids.NewArray(), ws.NewArray()))
	case "error":
		return fmt.Errorf("bad row 17 in %s", in.Path)
	case "input":
		f, err := os.Open(in.Path)
		if err != nil {
			return err
		}
		return f.Close()
	case "panic":
		var m map[string]int
		m["boom"]++ // nil map: panics
		return nil
	case "exit":
		fmt.Fprintln(os.Stderr, "about to die")
		os.Exit(3)
	case "alloc":
		// config "gb" GiB, touched so that it is really used.
		b := make([]byte, int(in.Config["gb"].(float64))<<30)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		return nil
	case "spin":
		n := 0
		for n >= 0 {
			n = (n + 1) % 1000
		}
		return nil
	case "hang":
		if in.Config["child"] == true {
			cmd := exec.Command("sleep", "1000")
			if err := cmd.Start(); err != nil {
				return err
			}
			log.Info("child started", "child_pid", cmd.Process.Pid)
		}
		select {} // ignores ctx: only a kill stops it
	case "stream":
		for b := 0; ; b++ {
			if err := emit(out, "numbers", numbersBatch(b, 10)); err != nil {
				log.Info("emit refused", "error", err.Error(), "ctx_err", fmt.Sprint(ctx.Err()))
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
	case "logs":
		log.Debug("debug record", "n", 1)
		log.Info("info record", "name", "x")
		log.WithGroup("req").Warn("warn record", "id", 7, slog.Group("inner", "k", "v"))
		log.With("component", "parser").Error("error record", "err", errors.New("bad thing"))
		fmt.Println("hello from stdout")
		fmt.Fprintln(os.Stderr, "raw stderr line")
		hl := hclog.New(&hclog.LoggerOptions{Name: "mylib", Output: os.Stderr, JSONFormat: true, Level: hclog.Trace})
		hl.Warn("hclog warning", "key", "value", "count", 3)
		hl.Error("hclog error")
		return nil
	case "forkbomb":
		// Children in sessions of their own, out of reach of a group kill,
		// until starting one more fails.
		for n := 0; ; n++ {
			cmd := exec.Command("sleep", in.Config["secs"].(string))
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				return fmt.Errorf("started %d children, then: %w", n, err)
			}
		}
	case "write":
		// Writes config "path", or a file in its TMPDIR and one in its
		// working directory.
		if path, ok := in.Config["path"].(string); ok {
			return os.WriteFile(path, []byte("x"), 0o600)
		}
		if err := os.WriteFile(filepath.Join(os.TempDir(), "tmp.txt"), []byte("x"), 0o600); err != nil {
			return err
		}
		if err := os.Mkdir("sub", 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join("sub", "cwd.txt"), []byte("x"), 0o600); err != nil {
			return err
		}
		return os.Rename(filepath.Join("sub", "cwd.txt"), "cwd.txt")
	case "undeclared":
		return emit(out, "secret", numbersBatch(0, 1))
	case "wrongschema":
		return emit(out, "words", numbersBatch(0, 1))
	case "raw":
		// One batch, whose IPC stream serveRaw replaces (CF_TEST_RAW=1).
		return emit(out, "free", numbersBatch(0, 4))
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// emit sends a batch and releases it.
func emit(out sdk.Output, topic string, rec arrow.RecordBatch) error {
	defer rec.Release()
	return out.Emit(topic, rec)
}

func numbersBatch(b, rows int) arrow.RecordBatch {
	ids := array.NewInt64Builder(memory.DefaultAllocator)
	xs := array.NewFloat64Builder(memory.DefaultAllocator)
	defer ids.Release()
	defer xs.Release()
	for i := 0; i < rows; i++ {
		ids.Append(int64(b*rows + i))
		xs.Append(float64(i) / 2)
	}
	return recordOf(numbers, rows, ids.NewArray(), xs.NewArray())
}

func wordsBatch(b, rows int) arrow.RecordBatch {
	ids := array.NewInt64Builder(memory.DefaultAllocator)
	ws := array.NewStringBuilder(memory.DefaultAllocator)
	defer ids.Release()
	defer ws.Release()
	for i := 0; i < rows; i++ {
		ids.Append(int64(b*rows + i))
		ws.Append("w" + strconv.Itoa(b*rows+i))
	}
	return recordOf(words, rows, ids.NewArray(), ws.NewArray())
}

func recordOf(s *arrow.Schema, rows int, cols ...arrow.Array) arrow.RecordBatch {
	rec := array.NewRecordBatch(s, cols, int64(rows))
	for _, c := range cols {
		c.Release()
	}
	return rec
}

func main() {
	if dir := os.Getenv("CF_TEST_MARKER_DIR"); dir != "" {
		_ = os.WriteFile(filepath.Join(dir, "started-"+strconv.Itoa(os.Getpid())), nil, 0o600)
	}
	switch os.Getenv("CF_TEST_PREHANDSHAKE") {
	case "print":
		fmt.Println("hello from main, before the handshake")
	case "partial":
		fmt.Print("no newline here")
		select {}
	case "hang":
		select {}
	case "exit":
		fmt.Fprintln(os.Stderr, "cannot start: missing configuration")
		os.Exit(2)
	}
	if os.Getenv("CF_TEST_RAW") == "1" {
		serveRaw()
	}
	serve.Main(plugin{})
}
