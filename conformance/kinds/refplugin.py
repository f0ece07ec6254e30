"""The conformance suite's Python reference plugin.

It mirrors the Go reference plugin (conformance/refplugin/main.go): the job's
config key "mode" picks a behaviour, and the tables are those of package
conformance/reftable, built with pyarrow. Keep the two in step.
"""

import decimal
import math
import os
import sys
import time

import pyarrow as pa

from casparian_flow.sdk import BasePlugin

ERROR_MESSAGE = "conformance: bad record 7"
PANIC_MESSAGE = "conformance: deliberate panic"
EXIT_CODE = 3
LOG_MESSAGE = "conformance log record"

ROWS = pa.schema([pa.field("id", pa.int64())])
ECHO = pa.schema([pa.field("path", pa.string()), pa.field("content", pa.string())])
BIG = pa.schema([pa.field("blob", pa.binary())])

INT64_MIN = -(2**63)


def types_batch():
    n = None
    cols = {
        "i8": pa.array([-5, n, 127], pa.int8()),
        "i16": pa.array([-300, n, -32768], pa.int16()),
        "i32": pa.array([-70000, n, 2147483647], pa.int32()),
        "i64": pa.array([-5_000_000_000, n, INT64_MIN], pa.int64()),
        "u8": pa.array([7, n, 255], pa.uint8()),
        "u16": pa.array([700, n, 65535], pa.uint16()),
        "u32": pa.array([70000, n, 4294967295], pa.uint32()),
        "u64": pa.array([5_000_000_000, n, 18446744073709551615], pa.uint64()),
        "f32": pa.array([1.5, n, -2.25], pa.float32()),
        "f64": pa.array([math.pi, n, -1e300], pa.float64()),
        "dec": pa.array([decimal.Decimal("12345678.90"), n, decimal.Decimal("-0.01")], pa.decimal128(10, 2)),
        "str": pa.array(["héllo wörld ✓", n, ""], pa.string()),
        "lstr": pa.array(["large ünïcode", n, "x"], pa.large_string()),
        "bin": pa.array([b"\x00\x01\x02\xff", n, b""], pa.binary()),
        "flag": pa.array([True, n, False], pa.bool_()),
        "day": pa.array([19723, n, -1], pa.date32()),
        "ts": pa.array([1704067200123456, n, -1], pa.timestamp("us")),
        "tstz": pa.array([1704067200000000, n, 0], pa.timestamp("us", tz="UTC")),
        "dur": pa.array([86_400_000, n, -1], pa.duration("ms")),
        "list": pa.array([[1, 2, None], n, []], pa.list_(pa.int32())),
        "st": pa.array(
            [{"a": 1, "b": "x"}, n, {"a": None, "b": "z"}],
            pa.struct([pa.field("a", pa.int32()), pa.field("b", pa.string())]),
        ),
        "map": pa.array([[("a", 1), ("b", None)], n, []], pa.map_(pa.string(), pa.int32())),
        "dict": pa.array(["red", n, "red"], pa.string()).dictionary_encode(),
    }
    return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols.keys()))


def rows(first, n):
    return pa.RecordBatch.from_arrays([pa.array(range(first, first + n), pa.int64())], schema=ROWS)


def num(cfg, key, default):
    v = cfg.get(key)
    return int(v) if isinstance(v, (int, float)) else default


class Handler(BasePlugin):
    def consume(self, event):
        cfg = self.config
        mode = cfg.get("mode")
        if mode == "types":
            self.publish("types", types_batch())
        elif mode == "empty":
            pass
        elif mode == "zero_rows":
            for _ in range(2):
                self.publish("rows", rows(0, 0))
        elif mode == "tiny":
            for i in range(num(cfg, "batches", 10_000)):
                self.publish("rows", rows(i, 1))
        elif mode == "big":
            n = num(cfg, "rows", 16)
            size = (num(cfg, "mb", 256) << 20) // n
            value = bytes(j % 251 for j in range(251)) * (size // 251 + 1)
            value = value[:size]
            self.publish("big", pa.RecordBatch.from_arrays([pa.array([value] * n, pa.binary())], schema=BIG))
        elif mode == "topics":
            for i in range(num(cfg, "n", 8)):
                arrays = [pa.array([i], pa.int64()) for _ in range(i + 1)]
                self.publish(f"t{i}", pa.RecordBatch.from_arrays(arrays, names=[f"c{c}" for c in range(i + 1)]))
        elif mode == "schema_change":
            self.publish("rows", rows(0, 1))
            self.publish("rows", pa.RecordBatch.from_arrays([pa.array(["not an int"], pa.string())], names=["id"]))
        elif mode == "error":
            raise ValueError(ERROR_MESSAGE)
        elif mode == "panic":
            raise RuntimeError(PANIC_MESSAGE)
        elif mode == "exit":
            print(f"conformance: exiting with status {EXIT_CODE}", file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)
        elif mode == "hang":
            while True:  # ignores cancellation: only the host can stop it
                try:
                    time.sleep(3600)
                except BaseException:
                    pass
        elif mode == "stream":
            i = 0
            while True:
                self.publish("rows", rows(i, 1))
                i += 1
                time.sleep(0.01)
        elif mode == "noise":
            mb = num(cfg, "mb", 4)
            line = "noise " * 16 + "\n"
            for stream in (sys.stdout, sys.stderr):
                chunk = line * 1024
                written = 0
                while written < mb << 20:
                    stream.write(chunk)
                    written += len(chunk)
                stream.flush()
            self.publish("rows", rows(0, 1))
        elif mode == "echo":
            with open(event.path, encoding="utf-8") as f:
                content = f.read()
            self.publish("echo", pa.RecordBatch.from_arrays([pa.array([event.path]), pa.array([content])], schema=ECHO))
        elif mode == "logs":
            self.log.info("%s answer=42", LOG_MESSAGE)
            self.publish("rows", rows(0, 1))
        elif mode == "sleep":
            time.sleep(num(cfg, "ms", 100) / 1000)
            self.publish("rows", rows(0, 1))
        else:
            raise ValueError(f"conformance reference plugin: unknown mode {mode!r}")
