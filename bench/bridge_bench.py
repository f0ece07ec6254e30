#!/usr/bin/env python3
"""Python bridge benchmark: a Python plugin emitting 1M rows through the real
host (bin/casparian run: Python process, Unix-socket bridge, Parquet sink)
vs pyarrow writing the same table in-process.

    python bench/bridge_bench.py [--rows N] [--runs N] [--bin bin/casparian]

The table is the one of bench/sink_bench.py (1,000,000 rows x 8 columns:
int64, float64, string, bool, timestamp[us,UTC], date32, nullable int64,
dictionary<int32,string>), saved as an uncompressed Arrow IPC file.

Both sides start from that file, memory-mapped:
  * pyarrow (reference, in this process): read_all + pq.write_table,
    snappy, row groups of 1,048,576 rows;
  * ours: `casparian run` with a plugin that reads the file and returns the
    table; the host writes snappy Parquet with the same row-group bound,
    plus the two lineage columns, fsync and atomic rename. Timed as the whole
    command (process start, interpreter start, imports, bridge, write).
The "fixed cost" row is the same command with a plugin that returns one row:
what every job pays regardless of size (interpreter start, pyarrow import).
A third row runs the pyarrow reference as a fresh `python` process, so that
both sides pay for starting an interpreter and importing pyarrow.
Goal: ours / pyarrow <= 1.3x.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sink_bench import SCHEMA_DESC, build_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_GROUP = 1_048_576

PLUGIN_FULL = """
import pyarrow as pa
import pyarrow.ipc as ipc

class Handler:
    def execute(self, path):
        return ipc.open_file(pa.memory_map(path)).read_all()
"""

PLUGIN_TINY = """
import pyarrow as pa
import pyarrow.ipc as ipc

class Handler:
    def execute(self, path):
        # The same imports and calls as PLUGIN_FULL, one row. (Building arrays with
        # pa.array would make pyarrow import pandas, ~0.4 s, which is not ours.)
        return ipc.open_file(pa.memory_map(path)).get_batch(0).slice(0, 1)
"""


def time_reference(path, out, runs):
    times = []
    for _ in range(runs):
        if os.path.exists(out):
            os.remove(out)
        t0 = time.perf_counter()
        table = ipc.open_file(pa.memory_map(path)).read_all()
        pq.write_table(table, out, compression="snappy", row_group_size=ROW_GROUP)
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
        times.append(time.perf_counter() - t0)
    return times


REF_SCRIPT = """
import os, sys, pyarrow as pa, pyarrow.ipc as ipc, pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
t = ipc.open_file(pa.memory_map(src)).read_all()
pq.write_table(t, out, compression="snappy", row_group_size=%d)
with open(out, "rb+") as f:
    os.fsync(f.fileno())
""" % ROW_GROUP


def time_reference_process(path, out, runs):
    times = []
    for _ in range(runs):
        if os.path.exists(out):
            os.remove(out)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", REF_SCRIPT, path, out], check=True)
        times.append(time.perf_counter() - t0)
    return times


def time_ours(binary, plugin, path, outdir, runs):
    times = []
    for _ in range(runs):
        shutil.rmtree(outdir, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [binary, "run", "--plugin", plugin, "--output", outdir, "--python", sys.executable,
             "--progress", "none", "--jobs", "1", path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"casparian run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        times.append(elapsed)
    return times


def ms(v):
    return f"{v * 1000:8.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(REPO, "bin", "casparian"))
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} not found: run `make build` first")

    tmp = tempfile.mkdtemp(prefix="cf-bridge-bench-")
    try:
        table = build_table(args.rows)
        src = os.path.join(tmp, "input.arrow")
        with ipc.new_file(src, table.schema) as w:
            w.write_table(table)
        del table
        full = os.path.join(tmp, "full.py")
        tiny = os.path.join(tmp, "tiny.py")
        open(full, "w").write(PLUGIN_FULL)
        open(tiny, "w").write(PLUGIN_TINY)

        ref = time_reference(src, os.path.join(tmp, "ref.parquet"), args.runs)
        ref_proc = time_reference_process(src, os.path.join(tmp, "ref2.parquet"), args.runs)
        ours = time_ours(args.bin, full, src, os.path.join(tmp, "out"), args.runs)
        fixed = time_ours(args.bin, tiny, src, os.path.join(tmp, "out-tiny"), args.runs)

        out_files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(tmp, "out")) for f in fs]
        rows = sum(pq.read_metadata(f).num_rows for f in out_files)
        if rows != args.rows:
            sys.exit(f"ours wrote {rows} rows, expected {args.rows}")

        r_best, r_med = min(ref), statistics.median(ref)
        o_best, o_med = min(ours), statistics.median(ours)
        f_med = statistics.median(fixed)
        print(f"Python bridge benchmark: {args.rows:,} rows x 8 columns ({SCHEMA_DESC})")
        print(f"settings: snappy, row groups of {ROW_GROUP:,} rows, {args.runs} runs each, "
              f"pyarrow {pa.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print()
        print(f"{'what':<52}{'best ms':>9}{'median ms':>11}")
        print(f"{'pyarrow in-process: read IPC + write_table + fsync':<52}{ms(r_best):>9}{ms(r_med):>11}")
        print(f"{'pyarrow in a fresh python process (start + import too)':<52}{ms(min(ref_proc)):>9}{ms(statistics.median(ref_proc)):>11}")
        print(f"{'ours: casparian run, Python plugin through the bridge':<52}{ms(o_best):>9}{ms(o_med):>11}")
        print(f"{'  of which fixed cost per job (1-row plugin)':<52}{ms(min(fixed)):>9}{ms(f_med):>11}")
        print()
        ratio = o_med / r_med
        ratio_var = max(o_med - f_med, 1e-9) / r_med
        ratio_proc = o_med / statistics.median(ref_proc)
        verdict = lambda r: "met" if r <= 1.3 else "NOT met"
        print(f"ours / pyarrow in-process (median, whole command):  {ratio:5.2f}x  goal <= 1.3x: {verdict(ratio)}")
        print(f"ours / pyarrow in a fresh process (median):          {ratio_proc:5.2f}x  goal <= 1.3x: {verdict(ratio_proc)}")
        print(f"ours minus fixed job cost / pyarrow in-process:      {ratio_var:5.2f}x  goal <= 1.3x: {verdict(ratio_var)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
