# Writes bridge/testdata/golden/batch_py.bin: the BATCH fixture as pyarrow encodes it.
# Usage: python sdk/python/tests/make_golden.py bridge/testdata/golden/batch_py.bin
import pyarrow as pa, struct, sys
schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()), pa.field("score", pa.float64())])
t = pa.table({"id": [1,2,3], "name": ["ann", None, "çé"], "score": [1.5, 2.5, None]}, schema=schema)
sink = pa.BufferOutputStream()
with pa.ipc.new_stream(sink, schema) as w:
    for b in t.to_batches():
        w.write_batch(b)
body = sink.getvalue().to_pybytes()
topic = b"people"
frame = struct.pack(">BI", 2, 2 + len(topic) + len(body)) + struct.pack(">H", len(topic)) + topic + body
open(sys.argv[1], "wb").write(frame)
