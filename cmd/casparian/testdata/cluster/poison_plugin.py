# Test plugin for the fault tests: the input "poison" kills its process
# (as a segfault or the OOM killer would); any other input emits one row.
import os

import pyarrow as pa


class Handler:
    def execute(self, file_path):
        with open(file_path) as f:
            if f.read().strip() == "poison":
                os._exit(9)
        yield pa.record_batch([pa.array([1], type=pa.int64())], names=["n"])
