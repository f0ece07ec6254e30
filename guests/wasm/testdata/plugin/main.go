// Command plugin is the WASM guest's test plugin, built by the tests with
// GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared. Its behaviour is
// chosen by the "mode" key of its config (see Process).
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/casparianflow/casparian/sdk"
	"github.com/casparianflow/casparian/sdk/serve"
)

var rowsSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "name", Type: arrow.BinaryTypes.String},
}, nil)

type plugin struct{}

func (plugin) Info() sdk.Info {
	return sdk.Info{Name: "testplugin", Version: "1.2.3", Description: "the WASM guest's test plugin",
		Topics: []sdk.Topic{{Name: "rows", Schema: rowsSchema}, {Name: "summary"}, {Name: "probe"}}}
}

func num(cfg map[string]any, key string, def int) int {
	if v, ok := cfg[key].(float64); ok {
		return int(v)
	}
	return def
}

var sink [][]byte // keeps "grow" allocations alive

var calls int // Process calls this module instance served

var listeners []net.Listener // kept open by mode "listen"

func (plugin) Process(ctx context.Context, in sdk.Input, out sdk.Output) error {
	mode, _ := in.Config["mode"].(string)
	calls++
	switch mode {
	case "count":
		// How many jobs this module instance ran, this one included.
		out.Logger().Info("calls", "n", calls)
		return nil
	case "", "emit":
		return emit(in, out)
	case "noop":
		return nil
	case "error":
		return fmt.Errorf("bad row 17 in %s", in.Path)
	case "panic":
		var m map[string]int
		m["boom"]++ // assignment to entry in nil map
		return nil
	case "exit":
		fmt.Fprintln(os.Stderr, "exiting with status 3")
		os.Exit(3)
	case "fatal":
		go func() { panic("goroutine boom") }()
		select {}
	case "loop":
		n := 0
		for n >= 0 {
			n = (n + 1) % 1000
		}
		return nil
	case "grow":
		for {
			sink = append(sink, make([]byte, 1<<20))
		}
	case "open":
		path, _ := in.Config["path"].(string)
		_, err := os.ReadFile(path)
		return err
	case "write":
		return os.WriteFile(in.Path, []byte("overwritten"), 0o644)
	case "escape":
		return escape(in, out)
	case "dial":
		// Dials config "network" ("tcp" or "udp") at config "addr" and, if
		// that works, writes to the connection.
		return dial(in.Config)
	case "listen":
		// Listens on TCP at config "addr" and keeps the listener open after
		// the run, so the host can try to reach it while the module is warm.
		ln, err := net.Listen("tcp", in.Config["addr"].(string))
		if err != nil {
			return err
		}
		listeners = append(listeners, ln)
		out.Logger().Info("listening", "addr", ln.Addr().String())
		return nil
	case "undeclared":
		return out.Emit("secret", batch(1, 0))
	case "parallel":
		// Goroutines inside one export call: the Go runtime schedules them
		// while Process waits.
		n := num(in.Config, "workers", 4)
		recs := make(chan arrow.RecordBatch, n)
		var wg sync.WaitGroup
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				time.Sleep(time.Duration(n-w) * time.Millisecond)
				recs <- batch(10, w*10)
			}(w)
		}
		go func() { wg.Wait(); close(recs) }()
		for rec := range recs {
			err := out.Emit("rows", rec)
			rec.Release()
			if err != nil {
				return err
			}
		}
		return nil
	case "slow":
		// Emits a batch every "sleep_ms" milliseconds.
		for i := 0; i < num(in.Config, "batches", 3); i++ {
			time.Sleep(time.Duration(num(in.Config, "sleep_ms", 100)) * time.Millisecond)
			rec := batch(1, i)
			err := out.Emit("rows", rec)
			rec.Release()
			if err != nil {
				return err
			}
		}
		return nil
	case "big":
		rec := batch(num(in.Config, "rows", 10000), 0)
		defer rec.Release()
		return out.Emit("rows", rec)
	}
	return errors.New("unknown mode " + mode)
}

func batch(n, first int) arrow.RecordBatch {
	b := array.NewRecordBuilder(memory.DefaultAllocator, rowsSchema)
	defer b.Release()
	for i := 0; i < n; i++ {
		b.Field(0).(*array.Int64Builder).Append(int64(first + i))
		b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("row-%d-%s", first+i, strings.Repeat("x", 20)))
	}
	return b.NewRecordBatch()
}

// emit reads the input, emits batches to "rows" and a summary, logs, prints
// and reads the clock and the random source.
func emit(in sdk.Input, out sdk.Output) error {
	f, err := os.Open(in.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	lines := 0
	for sc := bufio.NewScanner(f); sc.Scan(); {
		lines++
	}
	out.Logger().Info("read input", "lines", lines, "path", in.Path)
	fmt.Println("hello on stdout")
	fmt.Fprintln(os.Stderr, "hello on stderr")
	time.Sleep(10 * time.Millisecond)

	n, per := num(in.Config, "batches", 3), num(in.Config, "rows", 5)
	for i := 0; i < n; i++ {
		rec := batch(per, i*per)
		err := out.Emit("rows", rec)
		rec.Release()
		if err != nil {
			return err
		}
	}
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "lines", Type: arrow.PrimitiveTypes.Int64},
		{Name: "job_id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "file_id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "path", Type: arrow.BinaryTypes.String},
		{Name: "year", Type: arrow.PrimitiveTypes.Int64},
		{Name: "random", Type: arrow.PrimitiveTypes.Int64},
	}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	b.Field(0).(*array.Int64Builder).Append(int64(lines))
	b.Field(1).(*array.Int64Builder).Append(in.JobID)
	b.Field(2).(*array.Int64Builder).Append(in.FileID)
	b.Field(3).(*array.StringBuilder).Append(in.Path)
	b.Field(4).(*array.Int64Builder).Append(int64(time.Now().Year()))
	b.Field(5).(*array.Int64Builder).Append(rand.Int64())
	rec := b.NewRecordBatch()
	defer rec.Release()
	return out.Emit("summary", rec)
}

// escape tries to reach beyond the sandbox and emits one row per attempt
// to "probe": what it tried and the error it got ("" when it worked).
func escape(in sdk.Input, out sdk.Output) error {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "attempt", Type: arrow.BinaryTypes.String},
		{Name: "error", Type: arrow.BinaryTypes.String},
	}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	record := func(what string, err error) {
		b.Field(0).(*array.StringBuilder).Append(what)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		b.Field(1).(*array.StringBuilder).Append(msg)
	}
	readFile := func(p string) error { _, err := os.ReadFile(p); return err }
	record("read /etc/passwd", readFile("/etc/passwd"))
	record("read /input/../etc/passwd", readFile("/input/../etc/passwd"))
	record("read ../etc/passwd", readFile("../etc/passwd"))
	record("read /proc/self/environ", readFile("/proc/self/environ"))
	list := func(dir string) {
		ents, err := os.ReadDir(dir)
		names := []string{}
		for _, e := range ents {
			names = append(names, e.Name())
		}
		record("list "+dir+": "+strings.Join(names, ","), err)
	}
	list("/")
	list("/input")
	record("write the input", os.WriteFile(in.Path, []byte("overwritten"), 0o644))
	_, err := os.OpenFile(in.Path, os.O_RDWR, 0)
	record("open the input read-write", err)
	record("create /input/new", os.WriteFile("/input/new", []byte("x"), 0o644))
	record("remove the input", os.Remove(in.Path))
	record("mkdir /tmp/x", os.Mkdir("/tmp/x", 0o755))
	env := os.Environ()
	record(fmt.Sprintf("environment (%d variables)", len(env)), errOrNil(nil, len(env) > 0))
	host, err := os.Hostname()
	record("hostname "+host, err)
	rec := b.NewRecordBatch()
	defer rec.Release()
	return out.Emit("probe", rec)
}

// dial connects to cfg["addr"] over cfg["network"] and writes a line.
func dial(cfg map[string]any) error {
	network, _ := cfg["network"].(string)
	addr, _ := cfg["addr"].(string)
	c, err := net.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("hello from the sandbox\n"))
	return err
}

// errOrNil reports err, or an error when leaked is true (something visible
// that should not be).
func errOrNil(err error, leaked bool) error {
	if err == nil && !leaked {
		return errors.New("empty")
	}
	return err
}

func main() { serve.Main(plugin{}) }
