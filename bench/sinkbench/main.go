// Command sinkbench times the Parquet sink writing an Arrow IPC file that is
// first read fully into memory. bench/sink_bench.py runs it next to pyarrow's
// pq.write_table on the same table and prints the comparison.
//
//	sinkbench -in table.arrow -out DIR [-runs 5] [-compression snappy] [-row-group-rows 1048576] [-cpuprofile FILE]
//
// It prints one JSON object on stdout. Only Open+Write+Commit is timed: the
// IPC read happens before the first run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"

	"github.com/casparianflow/casparian/host/sink"
)

type result struct {
	Runs          int       `json:"runs"`
	Rows          int64     `json:"rows"`
	Batches       int       `json:"batches"`
	Columns       int       `json:"columns_in"`
	ColumnsOut    int       `json:"columns_out"`
	RowGroups     int       `json:"row_groups"`
	Bytes         int64     `json:"bytes"`
	Compression   string    `json:"compression"`
	RowGroupRows  int64     `json:"row_group_rows"`
	RunsMS        []float64 `json:"runs_ms"`
	BestMS        float64   `json:"best_ms"`
	MedianMS      float64   `json:"median_ms"`
	WriteMedianMS float64   `json:"write_median_ms"`
	// CommitMedianMS is closing the file (footer), fsync, rename and
	// directory fsync.
	CommitMedianMS float64 `json:"commit_median_ms"`
	// CPUMedianMS is the process's user+system CPU time per run (median):
	// less sensitive than wall time to other load on the machine, but it
	// includes work on other cores (the garbage collector).
	CPUMedianMS float64 `json:"cpu_median_ms"`
	GoVersion   string  `json:"go_version"`
	GOMAXPROCS  int     `json:"gomaxprocs"`
	Output      string  `json:"output"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sinkbench:", err)
		os.Exit(1)
	}
}

func run() error {
	in := flag.String("in", "", "Arrow IPC file to write (required)")
	out := flag.String("out", "", "output directory (required)")
	runs := flag.Int("runs", 5, "timed runs")
	codec := flag.String("compression", "snappy", "parquet codec")
	rgRows := flag.Int64("row-group-rows", 1<<20, "max rows per row group")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the timed runs to this file")
	flag.Parse()
	if *in == "" || *out == "" || *runs < 1 {
		flag.Usage()
		return fmt.Errorf("-in and -out are required, -runs must be positive")
	}

	recs, schema, err := readIPC(*in)
	if err != nil {
		return err
	}
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	res := result{Runs: *runs, Batches: len(recs), Columns: schema.NumFields(), Compression: *codec, RowGroupRows: *rgRows,
		GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	for _, r := range recs {
		res.Rows += r.NumRows()
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	ctx := context.Background()
	var writes, commits, cpus []float64
	for i := 0; i < *runs; i++ {
		tg := sink.Target{URI: "parquet://sinkbench.parquet", OutputDir: *out, JobID: 1, FileVersionID: 1, Topic: "bench",
			Provenance: map[string]string{"casparian.plugin": "sinkbench"}}
		runtime.GC() // start each run from the same heap state, as a fresh job would
		c0 := cpuTime()
		t0 := time.Now()
		w, err := sink.Open(ctx, tg, sink.Options{Compression: *codec, MaxRowGroupRows: *rgRows})
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := w.Write(ctx, r); err != nil {
				w.Abort()
				return err
			}
		}
		t1 := time.Now()
		art, err := w.Commit(ctx)
		if err != nil {
			return err
		}
		t2 := time.Now()
		cpus = append(cpus, ms(cpuTime()-c0))
		res.RunsMS = append(res.RunsMS, ms(t2.Sub(t0)))
		writes = append(writes, ms(t1.Sub(t0)))
		commits = append(commits, ms(t2.Sub(t1)))
		res.Bytes = art.Bytes
		res.Output = art.URI
	}
	res.BestMS = slices.Min(res.RunsMS)
	res.MedianMS = median(res.RunsMS)
	res.WriteMedianMS = median(writes)
	res.CommitMedianMS = median(commits)
	res.CPUMedianMS = median(cpus)

	path := filepath.Join(*out, "sinkbench_1.parquet")
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		return err
	}
	res.RowGroups = pf.NumRowGroups()
	res.ColumnsOut = pf.MetaData().Schema.Root().NumFields()
	pf.Close()

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// readIPC reads every batch of an Arrow IPC file into memory.
func readIPC(path string) ([]arrow.RecordBatch, *arrow.Schema, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer r.Close()
	var recs []arrow.RecordBatch
	for i := 0; i < r.NumRecords(); i++ {
		rec, err := r.RecordBatchAt(i) // owned: released by the caller
		if err != nil {
			return nil, nil, fmt.Errorf("read %s batch %d: %w", path, i, err)
		}
		recs = append(recs, rec)
	}
	return recs, r.Schema(), nil
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
