package wasm_test

import (
	"context"
	"os"
	"testing"

	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/internal/testenv"
)

// BenchmarkRunNoop is the per-job overhead of the WASM guest: instantiate
// the test module, _initialize (the Go runtime and package inits), one
// casparian_process call that returns at once, close.
func BenchmarkRunNoop(b *testing.B) {
	path := testPlugin(b)
	rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close(context.Background())
	inst, err := rt.Load(context.Background(), guest.Plugin{Name: "testplugin", Path: path})
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Close(context.Background())
	in := writeInput(b)
	rec := &testenv.Recorder{}
	cfg := map[string]any{"mode": "noop"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := inst.Run(context.Background(), guest.Input{Path: in, Config: cfg}, rec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadInMemory is a Load of a module the runtime has compiled
// already: read the file and check its SHA-256.
func BenchmarkLoadInMemory(b *testing.B) {
	path := testPlugin(b)
	rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close(context.Background())
	p := guest.Plugin{Name: "testplugin", Path: path}
	for i := -1; i < b.N; i++ {
		if i == 0 {
			b.ResetTimer() // after the first Load, from the disk cache
		}
		inst, err := rt.Load(context.Background(), p)
		if err != nil {
			b.Fatal(err)
		}
		inst.Close(context.Background())
	}
}

// BenchmarkLoadInMemoryInline is BenchmarkLoadInMemory with the module's
// bytes given inline (guest.Plugin.Source): they are hashed on every Load.
func BenchmarkLoadInMemoryInline(b *testing.B) {
	path := testPlugin(b)
	bin, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close(context.Background())
	p := guest.Plugin{Name: "testplugin", Source: bin}
	for i := -1; i < b.N; i++ {
		if i == 0 {
			b.ResetTimer()
		}
		inst, err := rt.Load(context.Background(), p)
		if err != nil {
			b.Fatal(err)
		}
		inst.Close(context.Background())
	}
}

// BenchmarkLoadFromDiskCache is the first Load in a new runtime of a module
// compiled before: read the compiled code, check the ABI, read the Info.
func BenchmarkLoadFromDiskCache(b *testing.B) {
	path := testPlugin(b)
	p := guest.Plugin{Name: "testplugin", Path: path}
	for i := 0; i < b.N; i++ {
		rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
		if err != nil {
			b.Fatal(err)
		}
		inst, err := rt.Load(context.Background(), p)
		if err != nil {
			b.Fatal(err)
		}
		inst.Close(context.Background())
		rt.Close(context.Background())
	}
}

// BenchmarkEmit100kRows is one run emitting 10 batches of 10,000 rows
// (int64 + a ~27-byte string): Arrow encoding in the module, the copy out
// of linear memory, decoding and validation in the host.
func BenchmarkEmit100kRows(b *testing.B) {
	path := testPlugin(b)
	rt, err := wasm.New(wasm.Config{CacheDir: sharedCache()})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close(context.Background())
	inst, err := rt.Load(context.Background(), guest.Plugin{Name: "testplugin", Path: path})
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Close(context.Background())
	in := writeInput(b)
	cfg := map[string]any{"batches": 10, "rows": 10000}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := &testenv.Recorder{}
		if err := inst.Run(context.Background(), guest.Input{Path: in, Config: cfg}, rec); err != nil {
			b.Fatal(err)
		}
		if rec.Rows("rows") != 100000 {
			b.Fatal(rec.Rows("rows"))
		}
		rec.Release()
	}
	b.ReportMetric(float64(b.N)*100000/b.Elapsed().Seconds(), "rows/s")
}
