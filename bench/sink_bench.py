#!/usr/bin/env python3
"""Parquet sink benchmark: Casparian's Go sink vs pyarrow's pq.write_table.

Builds one deterministic 1,000,000-row x 8-column table, saves it as an Arrow
IPC file, times pyarrow writing it (in process), runs the Go program
bench/sinkbench on the same IPC file (it reads the file into memory before
timing), and prints a side-by-side table.

    python bench/sink_bench.py [--rows N] [--runs N] [--compression snappy]
                               [--row-group-rows N] [--batch-rows N] [--json]

The Go side runs `go run ./bench/sinkbench` from the repository root, or the
prebuilt binary named by $CASPARIAN_SINKBENCH. Needs only pyarrow and the
standard library.

What is compared:
  * "same table": pyarrow write_table on the 8 columns vs our sink as the
    product runs it (it adds the 2 lineage columns, writes a temp file,
    fsyncs it, renames it, fsyncs the directory). This is the headline row:
    goal ours/pyarrow <= 1.0x.
  * "equal work": pyarrow writing the same 10 columns our file holds, with
    an fsync, so both sides do the same I/O and encoding.
Both sides: the given codec, the same max row-group rows, dictionary
encoding on, statistics on, data page v1, 1 MiB pages, Arrow schema stored.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_DESC = ("int64, float64, string(short words), bool, timestamp[us,UTC], "
               "date32, int64(~10% null), dictionary<int32,string>")


def build_table(rows: int) -> pa.Table:
    rng = random.Random(42)
    letters = string.ascii_lowercase
    vocab = ["".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(10_000)]
    cats = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    base_us = 1_700_000_000_000_000
    maybe = [None if rng.random() < 0.1 else rng.randrange(1 << 40) for _ in range(rows)]
    return pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "x": pa.array([rng.random() for _ in range(rows)], pa.float64()),
        "word": pa.array([rng.choice(vocab) for _ in range(rows)], pa.string()),
        "flag": pa.array([rng.random() < 0.5 for _ in range(rows)], pa.bool_()),
        "ts": pa.array([base_us + i * 1_000_000 + rng.randrange(1_000_000) for i in range(rows)],
                       pa.timestamp("us", tz="UTC")),
        "day": pa.array([19_000 + rng.randrange(3_650) for _ in range(rows)], pa.date32()),
        "maybe": pa.array(maybe, pa.int64()),
        "cat": pa.array([rng.choice(cats) for _ in range(rows)], pa.string()).dictionary_encode(),
    })


def with_lineage(table: pa.Table) -> pa.Table:
    n = table.num_rows
    for name in ("_job_id", "_file_version_id"):
        table = table.append_column(pa.field(name, pa.int64(), nullable=False),
                                    pa.array([1] * n, pa.int64()))
    return table


def time_pyarrow(table, path, runs, compression, rg_rows, fsync):
    """Returns (wall ms per run, CPU ms per run)."""
    times, cpus = [], []
    for _ in range(runs):
        if os.path.exists(path):
            os.remove(path)
        c0 = time.process_time()
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            pq.write_table(table, f, compression=compression, row_group_size=rg_rows,
                           use_dictionary=True, write_statistics=True, data_page_version="1.0",
                           data_page_size=1 << 20, store_schema=True)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        times.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return times, cpus


def run_go(ipc_path, out_dir, runs, compression, rg_rows):
    binary = os.environ.get("CASPARIAN_SINKBENCH")
    cmd = [binary] if binary else ["go", "run", "./bench/sinkbench"]
    cmd += ["-in", ipc_path, "-out", out_dir, "-runs", str(runs),
            "-compression", compression, "-row-group-rows", str(rg_rows)]
    if os.environ.get("SINKBENCH_CPUPROFILE"):
        cmd += ["-cpuprofile", os.environ["SINKBENCH_CPUPROFILE"]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sinkbench failed ({' '.join(cmd)}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--compression", default="snappy")
    ap.add_argument("--row-group-rows", type=int, default=1 << 20)
    ap.add_argument("--batch-rows", type=int, default=0,
                    help="split the IPC file into batches of this many rows (0 = one batch, like the table)")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="casparian-sink-bench-")
    try:
        t0 = time.perf_counter()
        table = build_table(args.rows).combine_chunks()
        ipc_path = os.path.join(tmp, "table.arrow")
        with ipc.new_file(ipc_path, table.schema) as w:
            w.write_table(table, max_chunksize=args.batch_rows or None)
        print(f"built {args.rows:,} rows x {table.num_columns} columns in {time.perf_counter() - t0:.1f}s "
              f"({table.nbytes / 2**20:.1f} MiB in memory)", file=sys.stderr)

        py_path = os.path.join(tmp, "pyarrow.parquet")
        py, py_cpu = time_pyarrow(table, py_path, args.runs, args.compression, args.row_group_rows, fsync=False)
        py_size = os.path.getsize(py_path)
        lin = with_lineage(table)
        py_eq_path = os.path.join(tmp, "pyarrow_lineage.parquet")
        py_eq, py_eq_cpu = time_pyarrow(lin, py_eq_path, args.runs, args.compression, args.row_group_rows, fsync=True)
        py_eq_size = os.path.getsize(py_eq_path)

        go_dir = os.path.join(tmp, "go")
        os.makedirs(go_dir)
        go = run_go(ipc_path, go_dir, args.runs, args.compression, args.row_group_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    settings = (f"{args.compression}, row group <= {args.row_group_rows:,} rows, dict on, stats on, "
                f"{go['batches']} IPC batch(es), N={args.runs}")
    rows = [
        ("same table (headline)", "8 cols", py, py_size, "pyarrow write_table"),
        ("equal work", "10 cols", py_eq, py_eq_size, "pyarrow +lineage cols +fsync"),
    ]
    go_best, go_med = go["best_ms"], go["median_ms"]
    header = ["what", "schema", "rows", "pyarrow best/median ms", "ours best/median ms",
              "ours/pyarrow (median)", "goal", "met", "pyarrow bytes", "ours bytes"]
    table_rows = []
    for what, schema, times, size, _ in rows:
        ratio = go_med / statistics.median(times)
        table_rows.append([what, schema, f"{args.rows:,}",
                           f"{min(times):.0f} / {statistics.median(times):.0f}",
                           f"{go_best:.0f} / {go_med:.0f}",
                           f"{ratio:.2f}x", "<= 1.0x", "yes" if ratio <= 1.0 else "NO",
                           f"{size:,}", f"{go['bytes']:,}"])
    widths = [max(len(str(r[i])) for r in [header] + table_rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    print(f"schema: {SCHEMA_DESC}")
    print(f"settings: {settings}")
    print(f"pyarrow {pa.__version__} (in process); ours: {go['go_version']}, GOMAXPROCS={go['gomaxprocs']}, "
          f"writes 10 columns ({go['row_groups']} row group(s)); ours = Open+Write+Commit incl. fsync+rename "
          f"(write {go['write_median_ms']:.0f} ms + commit {go['commit_median_ms']:.0f} ms, medians)")
    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in table_rows:
        print(line(r))
    print(f"CPU time per run (medians; less sensitive to other load on the machine): "
          f"pyarrow {statistics.median(py_cpu):.0f} ms, pyarrow equal work {statistics.median(py_eq_cpu):.0f} ms, "
          f"ours {go['cpu_median_ms']:.0f} ms (Go counts its garbage collector on other cores too)")
    if args.json:
        print(json.dumps({"pyarrow_ms": py, "pyarrow_cpu_ms": py_cpu, "pyarrow_equal_work_ms": py_eq,
                          "pyarrow_equal_work_cpu_ms": py_eq_cpu, "pyarrow_bytes": py_size,
                          "pyarrow_equal_work_bytes": py_eq_size, "ours": go}, indent=2))


if __name__ == "__main__":
    main()
