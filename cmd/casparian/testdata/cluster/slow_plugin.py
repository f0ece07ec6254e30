# Test plugin for the cluster tests. The input file holds "DELAY ROWS": the
# plugin emits a first batch at once (so the sink has a temporary file open),
# sleeps DELAY seconds, then emits the rest and ends.
import time

import pyarrow as pa


class Handler:
    def execute(self, file_path):
        with open(file_path) as f:
            fields = f.read().split()
        delay = float(fields[0]) if fields else 0.0
        rows = int(fields[1]) if len(fields) > 1 else 4
        half = rows // 2
        yield pa.record_batch([pa.array(range(half), type=pa.int64())], names=["n"])
        time.sleep(delay)
        yield pa.record_batch([pa.array(range(half, rows), type=pa.int64())], names=["n"])
