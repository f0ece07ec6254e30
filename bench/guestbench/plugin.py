"""guestbench's Python plugin: the same modes as plugin/main.go."""

import pyarrow as pa

from casparian_flow.sdk import BasePlugin, FileEvent

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string())])


class Handler(BasePlugin):
    def consume(self, event: FileEvent):
        cfg = self.config or {}
        mode = cfg.get("mode")
        if mode == "noop":
            return
        if mode == "rows":
            self._emit(int(cfg.get("rows", 1_000_000)), int(cfg.get("batch", 65536)))
        elif mode == "tiny":
            self._emit(int(cfg.get("batches", 10_000)), 1)
        else:
            raise ValueError("unknown mode %r" % mode)

    def _emit(self, rows, batch):
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            ids = pa.array(range(start, start + n), type=pa.int64())
            names = pa.array(["name-%d" % (i % 1000) for i in range(start, start + n)], type=pa.string())
            self.publish("rows", pa.record_batch([ids, names], schema=SCHEMA))
