package goplugin_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/host/guest"
)

// countOutput counts rows and Arrow buffer bytes and keeps nothing.
type countOutput struct {
	rows, bytes atomic.Int64
}

func (o *countOutput) Emit(_ context.Context, _ string, rec arrow.RecordBatch) error {
	o.rows.Add(rec.NumRows())
	for _, col := range rec.Columns() {
		for _, buf := range col.Data().Buffers() {
			if buf != nil {
				o.bytes.Add(int64(buf.Len()))
			}
		}
	}
	return nil
}

func (o *countOutput) Log(guest.LogRecord) {}

func benchRuntime(b *testing.B, cfg goplugin.Config) guest.Instance {
	b.Helper()
	rt, err := goplugin.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rt.Close(context.Background()) })
	inst, err := rt.Load(context.Background(), guest.Plugin{Name: "testplugin", Kind: guest.KindGoPlugin, Path: testPlugin(b)})
	if err != nil {
		b.Fatal(err)
	}
	return inst
}

// Per-job overhead of a warm process running a plugin that does nothing.
func BenchmarkWarmNoopJob(b *testing.B) {
	inst := benchRuntime(b, goplugin.Config{MaxJobsPerProcess: 1 << 30})
	in := guest.Input{Path: "/dev/null", Config: map[string]any{"mode": "noop"}}
	if err := inst.Run(context.Background(), in, &countOutput{}); err != nil { // warm up
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := inst.Run(context.Background(), in, &countOutput{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A job in a fresh process: checksum, exec, handshake, TLS, Info, the job.
// (The previous process is stopped in the background.)
func BenchmarkColdNoopJob(b *testing.B) {
	inst := benchRuntime(b, goplugin.Config{MaxIdle: -1})
	in := guest.Input{Path: "/dev/null", Config: map[string]any{"mode": "noop"}}
	for b.Loop() {
		if err := inst.Run(context.Background(), in, &countOutput{}); err != nil {
			b.Fatal(err)
		}
	}
}

// 1M rows (int64 id, string "w<id>") in batches of 65,536 rows, decoded and
// validated by the host, in a warm process.
func BenchmarkThroughput1MRows(b *testing.B) {
	inst := benchRuntime(b, goplugin.Config{})
	in := guest.Input{Path: "/dev/null", Config: map[string]any{"mode": "throughput", "rows": 1_000_000, "batch_rows": 65536}}
	out := &countOutput{}
	if err := inst.Run(context.Background(), in, out); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(out.bytes.Load())
	start := time.Now()
	n := 0
	b.ResetTimer()
	for b.Loop() {
		out := &countOutput{}
		if err := inst.Run(context.Background(), in, out); err != nil {
			b.Fatal(err)
		}
		if out.rows.Load() != 1_000_000 {
			b.Fatalf("rows %d", out.rows.Load())
		}
		n++
	}
	b.ReportMetric(float64(n)*1e6/time.Since(start).Seconds(), "rows/s")
}
