package main_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/casparianflow/casparian/internal/testenv"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  string
)

// buildCLI returns the real casparian binary: $CASPARIAN_BIN (make test
// builds it with make build), else one built once for this test run, static,
// as make build does.
func buildCLI(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if b := os.Getenv("CASPARIAN_BIN"); b != "" {
			if _, err := os.Stat(b); err != nil {
				buildErr = fmt.Sprintf("CASPARIAN_BIN=%s: %v", b, err)
				return
			}
			builtBin = b
			return
		}
		dir, err := os.MkdirTemp("", "casparian-e2e-")
		if err != nil {
			buildErr = err.Error()
			return
		}
		bin := filepath.Join(dir, "casparian")
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Sprintf("go build: %v\n%s", err, out)
			return
		}
		builtBin = bin
	})
	if builtBin == "" {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" && os.Getenv("CASPARIAN_BIN") == "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	if examplesDir != "" {
		os.RemoveAll(examplesDir)
	}
	os.Exit(code)
}

func runCLI(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = testenv.RepoRoot()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// cliRunner returns a function that runs bin with args and fails t unless
// it exits with wantRC; it returns stdout and stderr.
func cliRunner(t *testing.T, bin string) func(wantRC int, args ...string) (string, string) {
	return func(wantRC int, args ...string) (string, string) {
		t.Helper()
		out, errOut, rc := runCLI(t, bin, args...)
		if rc != wantRC {
			t.Fatalf("casparian %v: exit %d, want %d\n%s%s", args, rc, wantRC, out, errOut)
		}
		return out, errOut
	}
}

// readParquetDir reads every Parquet file of a directory and returns the
// total rows and the float64 column sum of `col`.
func readParquetDir(t *testing.T, dir, col string) (rows int64, sum float64, files int) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	matches, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
	for _, m := range matches {
		files++
		rdr, err := file.OpenParquetFile(m, false)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{}, mem)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := fr.ReadTable(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		rows += tbl.NumRows()
		idx := tbl.Schema().FieldIndices(col)
		if len(idx) != 1 {
			t.Fatalf("%s: no column %q in %v", m, col, tbl.Schema())
		}
		for _, c := range tbl.Column(idx[0]).Data().Chunks() {
			fc := c.(*array.Float64)
			for i := 0; i < fc.Len(); i++ {
				sum += fc.Value(i)
			}
		}
		tbl.Release()
		rdr.Close()
	}
	return rows, sum, files
}

func TestRunExampleEndToEnd(t *testing.T) {
	py := testenv.Python(t)
	bin := buildCLI(t)
	out := t.TempDir()
	data := filepath.Join(testenv.RepoRoot(), "examples", "python-csv", "data")
	stdout, stderr, code := runCLI(t, bin, "run", "--plugin", "examples/python-csv/orders_plugin.py",
		"--output", out, "--python", py, "--jobs", "2", data)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// Expected values straight from the CSV files.
	var wantRows int64
	var wantRevenue float64
	csvs, _ := filepath.Glob(filepath.Join(data, "*.csv"))
	for _, c := range csvs {
		f, _ := os.Open(c)
		recs, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs[1:] {
			q, _ := strconv.ParseFloat(r[3], 64)
			p, _ := strconv.ParseFloat(r[4], 64)
			wantRows++
			wantRevenue += q * p
		}
	}
	rows, revenue, files := readParquetDir(t, filepath.Join(out, "orders"), "total")
	if rows != wantRows || files != len(csvs) {
		t.Errorf("orders: %d rows in %d files, want %d rows in %d files", rows, files, wantRows, len(csvs))
	}
	if d := revenue - wantRevenue; d > 0.01 || d < -0.01 {
		t.Errorf("orders total sums to %.2f, want %.2f", revenue, wantRevenue)
	}
	_, dailyRevenue, dailyFiles := readParquetDir(t, filepath.Join(out, "daily_totals"), "revenue")
	if dailyFiles != len(csvs) || dailyRevenue-wantRevenue > 0.01 || wantRevenue-dailyRevenue > 0.01 {
		t.Errorf("daily_totals: %d files, revenue %.2f, want %d files, %.2f", dailyFiles, dailyRevenue, len(csvs), wantRevenue)
	}
	for _, want := range []string{"3 total: 3 ok, 0 failed", "orders", "daily_totals", strconv.FormatInt(wantRows, 10)} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	// The demo's own check: pyarrow and DuckDB read the files back.
	verify := exec.Command(py, filepath.Join(testenv.RepoRoot(), "examples", "python-csv", "verify.py"), out, data)
	if b, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("verify.py: %v\n%s", err, b)
	}
}

func TestRunReportsFailuresAndKeepsGoodOutput(t *testing.T) {
	py := testenv.Python(t)
	bin := buildCLI(t)
	out := t.TempDir()
	in := t.TempDir()
	good := filepath.Join(in, "good.csv")
	bad := filepath.Join(in, "bad.csv")
	os.WriteFile(good, []byte("order_id,customer,product,quantity,unit_price,ordered_at\n1,a,b,2,3.5,2026-11-01 10:00:00\n"), 0o644)
	os.WriteFile(bad, []byte("order_id,customer,product,quantity,unit_price,ordered_at\nnot-a-number,a,b,2,3.5,2026-11-01 10:00:00\n"), 0o644)
	stdout, stderr, code := runCLI(t, bin, "run", "--plugin", "examples/python-csv/orders_plugin.py",
		"--output", out, "--python", py, good, bad, filepath.Join(in, "missing.csv"))
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"3 total: 1 ok, 2 failed", "[Job 1] PLUGIN_ERROR", "ValueError", "[Job 3] INPUT", "missing.csv"} {
		if !strings.Contains(stdout+stderr, want) {
			t.Errorf("output lacks %q:\nstdout:\n%s\nstderr:\n%s", want, stdout, stderr)
		}
	}
	if rows, _, files := readParquetDir(t, filepath.Join(out, "orders"), "total"); rows != 1 || files != 1 {
		t.Errorf("good file's output: %d rows in %d files", rows, files)
	}
}

// The original system's plugins run unchanged through the real binary.
func TestOriginalPluginsRunUnchanged(t *testing.T) {
	py := testenv.Python(t)
	bin := buildCLI(t)
	cases := []struct {
		plugin, topic string
		rows          int64
	}{
		{"csv_processor.py", "processed_output", 4},
		{"test_plugin.py", "output", 3},
	}
	for _, c := range cases {
		t.Run(c.plugin, func(t *testing.T) {
			out := t.TempDir()
			dir := filepath.Join(testenv.RepoRoot(), "cmd", "casparian", "testdata", "original")
			stdout, stderr, code := runCLI(t, bin, "run", "--plugin", filepath.Join(dir, c.plugin), "--output", out,
				"--python", py, filepath.Join(dir, "input.csv"))
			if code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
			}
			files, _ := filepath.Glob(filepath.Join(out, c.topic, "*.parquet"))
			if len(files) != 1 {
				t.Fatalf("files in %s: %v", c.topic, files)
			}
			rdr, err := file.OpenParquetFile(files[0], false)
			if err != nil {
				t.Fatal(err)
			}
			defer rdr.Close()
			if n := rdr.NumRows(); n != c.rows {
				t.Errorf("%s: %d rows, want %d", c.topic, n, c.rows)
			}
		})
	}
}
