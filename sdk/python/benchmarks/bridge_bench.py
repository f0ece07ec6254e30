"""Bridge throughput: a plugin returning N rows x 8 columns, through the real shim,
against pyarrow writing the same table as one IPC stream in process.

    python sdk/python/benchmarks/bridge_bench.py [ROWS]

The "bridge" time runs from the HELLO frame to the END frame as a host reads
them (so Python start-up and `import pyarrow` are not counted); the plugin
builds its table before the clock starts, with a marker LOG frame.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

SDK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SDK_DIR))
from casparian_flow.bridge_shim import BOOTSTRAP  # noqa: E402

PLUGIN = """
import logging
import pyarrow as pa

def make(n):
    base = pa.array(range(n), pa.int64())
    cols = {}
    for i in range(4):
        cols[f"i{i}"] = base
        cols[f"f{i}"] = base.cast(pa.float64())
    return pa.table(cols)

class Handler:
    def consume(self, event):
        t = make(int(open(event.path).read()))
        logging.getLogger("bench").info("start")
        return t
"""


def make_table(n: int) -> pa.Table:
    base = pa.array(range(n), pa.int64())
    cols = {}
    for i in range(4):
        cols[f"i{i}"] = base
        cols[f"f{i}"] = base.cast(pa.float64())
    return pa.table(cols)


def recv_exact(conn: socket.socket, n: int, buf: bytearray) -> memoryview:
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise EOFError
        got += k
    return view


def run_bridge(rows: int) -> tuple[float, int, int]:
    work = Path(tempfile.mkdtemp(prefix="cfb", dir="/tmp"))
    try:
        (work / "plugin.py").write_text(PLUGIN)
        (work / "input.txt").write_text(str(rows))
        sock_path = work / "bridge.sock"
        job = {"socket": str(sock_path), "plugin_path": str(work / "plugin.py"), "input_path": str(work / "input.txt")}
        (work / "job.json").write_text(json.dumps(job))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        proc = subprocess.Popen([sys.executable, "-I", "-c", BOOTSTRAP, str(SDK_DIR), str(work / "job.json")], cwd=work)
        conn, _ = listener.accept()
        buf = bytearray(300 << 20)
        start = 0.0
        nbytes = frames = 0
        while True:
            hdr = bytes(recv_exact(conn, 5, buf))
            ftype, length = struct.unpack(">BI", hdr)
            body = recv_exact(conn, length, buf)
            if ftype == 3 and b'"start"' in bytes(body):
                start = time.perf_counter()
            elif ftype == 2:
                frames += 1
                nbytes += length
            elif ftype in (4, 5):
                end = time.perf_counter()
                if ftype == 4:
                    raise SystemExit(bytes(body).decode())
                break
        conn.close()
        proc.wait()
        return end - start, nbytes, frames
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_pyarrow(rows: int) -> float:
    t = make_table(rows)
    start = time.perf_counter()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    sink.getvalue()
    return time.perf_counter() - start


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    best_py = min(run_pyarrow(rows) for _ in range(3))
    results = [run_bridge(rows) for _ in range(3)]
    best_bridge, nbytes, frames = min(results)
    mb = nbytes / 1e6
    print(f"rows={rows} cols=8 arrow_bytes={mb:.1f} MB frames={frames}")
    print(f"pyarrow IPC in process : {best_py * 1e3:8.1f} ms  {mb / best_py:8.0f} MB/s")
    print(f"bridge (plugin -> host): {best_bridge * 1e3:8.1f} ms  {mb / best_bridge:8.0f} MB/s")


if __name__ == "__main__":
    main()
