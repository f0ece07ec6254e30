package sink

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pythonWithPyarrow returns a Python interpreter that can import pyarrow:
// $CASPARIAN_PYTHON, else /tmp/vtest/bin/python. It skips the test when
// there is none.
func pythonWithPyarrow(t *testing.T) string {
	t.Helper()
	py := os.Getenv("CASPARIAN_PYTHON")
	if py == "" {
		py = "/tmp/vtest/bin/python"
	}
	if _, err := os.Stat(py); err != nil {
		t.Skipf("no Python with pyarrow (set CASPARIAN_PYTHON): %v", err)
	}
	if out, err := exec.Command(py, "-c", "import pyarrow.parquet").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import pyarrow: %v\n%s", py, err, out)
	}
	return py
}

const pyReadScript = `
import json, sys
import pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path)
md = pq.read_metadata(path)
print(json.dumps({
    "rows": t.num_rows,
    "row_groups": md.num_row_groups,
    "types": {f.name: str(f.type) for f in t.schema},
    "nullable": {f.name: f.nullable for f in t.schema},
    "nulls": {c: t.column(c).null_count for c in t.column_names},
    "row0": {k: repr(v) for k, v in t.slice(0, 1).to_pylist()[0].items()},
    "meta": {k.decode(): v.decode() for k, v in md.metadata.items() if not k.startswith(b"ARROW:")},
}))
`

// TestPyarrowReadsOurFiles checks that pyarrow, the reader most users have,
// sees the types, values, lineage and provenance the sink wrote.
func TestPyarrowReadsOurFiles(t *testing.T) {
	py := pythonWithPyarrow(t)
	mem := checkedMem(t)
	dir := t.TempDir()
	rec := buildRecord(t, mem, allTypes)
	defer rec.Release()
	prov := map[string]string{"casparian.plugin": "demo", "casparian.job_id": "7"}
	w := mustOpen(t, Target{URI: "parquet://all.parquet", OutputDir: dir, JobID: 7, FileVersionID: 70, Topic: "all", Provenance: prov}, Options{Allocator: mem})
	mustWrite(t, w, rec)
	mustCommit(t, w)

	script := filepath.Join(t.TempDir(), "read.py")
	if err := os.WriteFile(script, []byte(pyReadScript), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(context.Background(), py, script, filepath.Join(dir, "all_7.parquet")).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("pyarrow failed to read our file: %v\n%s", err, stderr)
	}
	var got struct {
		Rows      int64
		RowGroups int `json:"row_groups"`
		Types     map[string]string
		Nullable  map[string]bool
		Nulls     map[string]int64
		Row0      map[string]string
		Meta      map[string]string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	wantTypes := map[string]string{
		"i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
		"u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
		"f32": "float", "f64": "double", "dec": "decimal128(10, 2)",
		"str": "string", "lstr": "large_string", "bin": "binary", "lbin": "large_binary",
		"flag": "bool", "day": "date32[day]",
		"ts_naive": "timestamp[us]", "ts_utc": "timestamp[us, tz=UTC]",
		"ts_ny_ns": "timestamp[ns, tz=America/New_York]",
		"ts_s":     "timestamp[ms, tz=UTC]", // Parquet has no seconds; pyarrow does the same
		"dur_ms":   "duration[ms]", "dur_us": "duration[us]", "tod": "time64[us]",
		"list_i32": "list<element: int32>", "llist_str": "large_list<element: string>",
		"rec": "struct<a: int32, b: string>", "kv": "map<string, int32 ('kv')>",
		"cat":    "dictionary<values=string, indices=int32, ordered=0>",
		ColJobID: "int64", ColFileVersionID: "int64",
	}
	for name, want := range wantTypes {
		if got.Types[name] != want {
			t.Errorf("pyarrow reads %s as %q, want %q", name, got.Types[name], want)
		}
	}
	if len(got.Types) != len(wantTypes) {
		t.Errorf("pyarrow sees columns %v", got.Types)
	}
	for _, tc := range allTypes {
		if got.Nulls[tc.name] != 1 {
			t.Errorf("%s: pyarrow counts %d nulls, want 1", tc.name, got.Nulls[tc.name])
		}
	}
	for _, c := range []string{ColJobID, ColFileVersionID} {
		if got.Nullable[c] || got.Nulls[c] != 0 {
			t.Errorf("%s: nullable=%v nulls=%d", c, got.Nullable[c], got.Nulls[c])
		}
	}
	for col, want := range map[string]string{
		"dec":      "Decimal('1.23')",
		"dur_ms":   "datetime.timedelta(seconds=1, microseconds=500000)",
		"ts_utc":   "2024, 1, 2, 3, 4, 5, 123456",
		"ts_naive": "datetime.datetime(2024, 1, 2, 3, 4, 5, 123456)",
		"day":      "datetime.date(2024, 1, 2)",
		"kv":       "[('a', 1)]",
		"rec":      "{'a': 1, 'b': 'x'}",
		"cat":      "'x'",
		"str":      "'a'",
		ColJobID:   "7", ColFileVersionID: "70",
	} {
		if !strings.Contains(got.Row0[col], want) {
			t.Errorf("%s row 0: pyarrow reads %s, want %s", col, got.Row0[col], want)
		}
	}
	for k, v := range prov {
		if got.Meta[k] != v {
			t.Errorf("metadata %s = %q, want %q", k, got.Meta[k], v)
		}
	}
	if got.Rows != rec.NumRows() {
		t.Errorf("rows %d", got.Rows)
	}
}
