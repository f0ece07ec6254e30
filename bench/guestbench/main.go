// Command guestbench measures the three guest kinds side by side, through the
// real host (input hashing, guest, Parquet sink, atomic commit), in one
// process:
//
//   - warm per-job overhead of a no-op plugin (after warm-up jobs);
//   - throughput of a plugin emitting 1M rows {id int64, name string} in 64K-row
//     batches, written to Parquet;
//   - per-batch call overhead: 10,000 one-row batches, minus a no-op job;
//   - WASM module load: compiled from scratch, from the disk compilation
//     cache (a fresh runtime), and once compiled in memory;
//   - reference: pyarrow writing the same 1M-row table to Parquet, in a
//     Python process (bench/guestbench/reference.py).
//
// The Go plugin (bench/guestbench/plugin) is built at run time both as a
// go-plugin executable and as a WASM module; the Python plugin is
// bench/guestbench/plugin.py. Run: make bench, or go run ./bench/guestbench.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/casparianflow/casparian/guests/goplugin"
	"github.com/casparianflow/casparian/guests/python"
	"github.com/casparianflow/casparian/guests/wasm"
	"github.com/casparianflow/casparian/host"
	"github.com/casparianflow/casparian/host/guest"
	"github.com/casparianflow/casparian/host/manifest"
)

func main() {
	var (
		jobs   = flag.Int("jobs", 200, "warm no-op jobs per guest kind (Python: a tenth)")
		rows   = flag.Int("rows", 1_000_000, "rows for the throughput measurement")
		tiny   = flag.Int("batches", 10_000, "one-row batches for the per-batch overhead")
		pyFlag = flag.String("python", "", "Python interpreter (default: $CASPARIAN_PYTHON, ./.venv/bin/python, python3)")
	)
	flag.Parse()
	if err := run(*jobs, *rows, *tiny, *pyFlag); err != nil {
		fmt.Fprintln(os.Stderr, "guestbench:", err)
		os.Exit(1)
	}
}

func interpreter(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if v := os.Getenv("CASPARIAN_PYTHON"); v != "" {
		return v
	}
	if abs, err := filepath.Abs(".venv/bin/python"); err == nil {
		if _, err := os.Stat(abs); err == nil {
			return abs
		}
	}
	return "python3"
}

type result struct {
	kind                     guest.Kind
	noop, perBatch, rowsTime time.Duration
	noopJobs                 int
}

func run(jobs, rows, tiny int, pyFlag string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "guestbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	py := interpreter(pyFlag)

	fmt.Println("Building the Go bench plugin as a go-plugin executable and as a WASM module ...")
	exe := filepath.Join(dir, "plugin")
	mod := filepath.Join(dir, "plugin.wasm")
	if err := gobuild(nil, "-o", exe, "./bench/guestbench/plugin"); err != nil {
		return err
	}
	if err := gobuild([]string{"GOOS=wasip1", "GOARCH=wasm"}, "-tags", "arrow_json_stdlib", "-buildmode=c-shared", "-o", mod, "./bench/guestbench/plugin"); err != nil {
		return err
	}
	pyPlugin, _ := filepath.Abs("bench/guestbench/plugin.py")

	// WASM load times.
	cache := filepath.Join(dir, "wasm-cache")
	cold, disk, mem, err := wasmLoads(ctx, mod, cache)
	if err != nil {
		return err
	}

	pyrt, err := python.New(python.Config{Python: py})
	if err != nil {
		return err
	}
	defer pyrt.Close(ctx)
	if _, err := pyrt.Preflight(ctx); err != nil {
		return err
	}
	gprt, err := goplugin.New(goplugin.Config{})
	if err != nil {
		return err
	}
	defer gprt.Close(ctx)
	wrt, err := wasm.New(wasm.Config{CacheDir: cache})
	if err != nil {
		return err
	}
	defer wrt.Close(ctx)
	rts := map[guest.Kind]guest.Runtime{guest.KindPython: pyrt, guest.KindGoPlugin: gprt, guest.KindWASM: wrt}
	out := filepath.Join(dir, "out")
	h, err := host.New(host.Config{Runtimes: rts, OutputDir: out, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	input := filepath.Join(dir, "input.txt")
	if err := os.WriteFile(input, []byte("x\n"), 0o644); err != nil {
		return err
	}

	plugins := []guest.Plugin{}
	for _, p := range []string{pyPlugin, exe, mod} {
		m, err := manifest.Resolve(p)
		if err != nil {
			return err
		}
		plugins = append(plugins, m.Plugin())
	}
	var results []result
	id := int64(0)
	job := func(p guest.Plugin, cfg map[string]any) (time.Duration, error) {
		id++
		start := time.Now()
		rc := h.Run(ctx, host.Job{ID: id, InputPath: input, Plugin: p, Config: cfg})
		if rc.Err != nil {
			return 0, rc.Err
		}
		return time.Since(start), nil
	}
	for _, p := range plugins {
		r := result{kind: p.Kind, noopJobs: jobs}
		if p.Kind == guest.KindPython {
			r.noopJobs = max(5, jobs/10)
		}
		noop := map[string]any{"mode": "noop"}
		for range 3 { // warm-up: compile, start processes
			if _, err := job(p, noop); err != nil {
				return fmt.Errorf("%s warm-up: %w", p.Kind, err)
			}
		}
		var ds []time.Duration
		for range r.noopJobs {
			d, err := job(p, noop)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		r.noop = ds[len(ds)/2]
		d, err := job(p, map[string]any{"mode": "tiny", "batches": float64(tiny)})
		if err != nil {
			return err
		}
		r.perBatch = (d - r.noop) / time.Duration(tiny)
		if r.rowsTime, err = job(p, map[string]any{"mode": "rows", "rows": float64(rows), "batch": float64(65536)}); err != nil {
			return err
		}
		results = append(results, r)
	}
	// WASM with a fresh module instance per job (--wasm-max-runs 1).
	frt, err := wasm.New(wasm.Config{CacheDir: cache, MaxRunsPerInstance: 1})
	if err != nil {
		return err
	}
	defer frt.Close(ctx)
	fh, err := host.New(host.Config{Runtimes: map[guest.Kind]guest.Runtime{guest.KindWASM: frt}, OutputDir: out,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	var fresh []time.Duration
	for i := range 3 + max(5, jobs/10) {
		id++
		start := time.Now()
		if rc := fh.Run(ctx, host.Job{ID: id, InputPath: input, Plugin: plugins[2], Config: map[string]any{"mode": "noop"}}); rc.Err != nil {
			return rc.Err
		}
		if i >= 3 {
			fresh = append(fresh, time.Since(start))
		}
	}
	slices.Sort(fresh)
	ref, err := reference(py, rows, filepath.Join(dir, "ref.parquet"))
	if err != nil {
		return err
	}

	fmt.Printf("\nPer guest kind, through the host (input hash, guest, Parquet sink, atomic commit); one job at a time:\n\n")
	fmt.Printf("  %-10s %18s %20s %22s %14s\n", "guest", "no-op job (p50)", "per-batch overhead", fmt.Sprintf("%d rows -> Parquet", rows), "vs pyarrow")
	for _, r := range results {
		fmt.Printf("  %-10s %18s %20s %22s %13.2fx\n", r.kind, dur(r.noop), dur(r.perBatch), dur(r.rowsTime),
			float64(r.rowsTime)/float64(ref))
	}
	fmt.Printf("  %-10s %18s %20s %22s %14s\n", "pyarrow", "", "", dur(ref), "1.00x (ref)")
	fmt.Printf("  %-10s %18s   (a fresh module instance per job: --wasm-max-runs 1; %d jobs)\n", "wasm fresh", dur(fresh[len(fresh)/2]), len(fresh))
	fmt.Printf("\n  goal: no-op job <= 1ms for goplugin and wasm\n")
	fmt.Printf("\nWASM module load (%s module, built with -tags arrow_json_stdlib):\n", size(mod))
	fmt.Printf("  compile, no cache        %10s\n", dur(cold))
	fmt.Printf("  from the disk cache      %10s   (goal <= 250ms; median of %d new runtimes)\n", dur(disk), wasmDiskLoads)
	fmt.Printf("  compiled, in memory      %10s   (goal <= 20ms)\n", dur(mem))
	fmt.Printf("\nSettings: %d warm no-op jobs (Python %d), median; per-batch = (job with %d one-row batches - no-op job) / %d;\n",
		jobs, max(5, jobs/10), tiny, tiny)
	fmt.Printf("rows job: {id int64, name string}, 64K-row batches, snappy; pyarrow: pa.table of the same columns + pq.write_table + fsync, in one Python process.\n")
	return nil
}

func gobuild(env []string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build", "-trimpath"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

func wasmLoads(ctx context.Context, mod, cache string) (cold, disk, mem time.Duration, err error) {
	p := guest.Plugin{Name: "guestbench", Kind: guest.KindWASM, Path: mod}
	load := func(rt *wasm.Runtime) (time.Duration, error) {
		start := time.Now()
		inst, err := rt.Load(ctx, p)
		if err != nil {
			return 0, err
		}
		d := time.Since(start)
		inst.Close(ctx)
		return d, nil
	}
	rt, err := wasm.New(wasm.Config{NoDiskCache: true})
	if err != nil {
		return
	}
	cold, err = load(rt)
	rt.Close(ctx)
	if err != nil {
		return
	}
	rt1, err := wasm.New(wasm.Config{CacheDir: cache}) // fills the disk cache
	if err != nil {
		return
	}
	if _, err = load(rt1); err != nil {
		return
	}
	rt1.Close(ctx)
	// A new runtime per load, as a new worker process has: the median of
	// wasmDiskLoads, and a load from memory in the last one.
	var disks []time.Duration
	for i := range wasmDiskLoads {
		rt2, err2 := wasm.New(wasm.Config{CacheDir: cache})
		if err2 != nil {
			return 0, 0, 0, err2
		}
		d, err2 := load(rt2)
		if err2 == nil && i == wasmDiskLoads-1 {
			mem, err2 = load(rt2)
		}
		rt2.Close(ctx)
		if err2 != nil {
			return 0, 0, 0, err2
		}
		disks = append(disks, d)
	}
	slices.Sort(disks)
	disk = disks[len(disks)/2]
	return
}

// wasmDiskLoads is how many loads from the disk cache are timed.
const wasmDiskLoads = 7

func reference(py string, rows int, path string) (time.Duration, error) {
	out, err := exec.Command(py, "bench/guestbench/reference.py", fmt.Sprint(rows), path).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("reference.py: %v\n%s", err, out)
	}
	return time.ParseDuration(strings.TrimSpace(string(out)))
}

func dur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func size(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
}
