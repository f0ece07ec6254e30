# Test plugin for the hung-plugin test: the input "hang" makes it ignore
# SIGTERM and cancellation and never return (only SIGKILL stops it); any
# other input emits one row.
import signal
import time

import pyarrow as pa


class Handler:
    def execute(self, file_path):
        with open(file_path) as f:
            if f.read().split()[0] == "hang":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    try:
                        time.sleep(3600)
                    except BaseException:
                        pass
        yield pa.record_batch([pa.array([1], type=pa.int64())], names=["n"])
