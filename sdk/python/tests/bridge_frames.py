"""A test-side decoder of bridge frames, written from docs/BRIDGE.md §2 and
independent of the SDK's encoder (it imports nothing from casparian_flow)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

HELLO, BATCH, LOG, ERROR, END = 0x01, 0x02, 0x03, 0x04, 0x05
NAMES = {HELLO: "HELLO", BATCH: "BATCH", LOG: "LOG", ERROR: "ERROR", END: "END"}
MAX_MESSAGE = 1 << 20
MAX_BATCH = 256 << 20


class FrameDecodeError(ValueError):
    pass


@dataclass
class Frame:
    type: int
    length: int
    raw: bytes  # the whole frame, header included
    payload: dict[str, Any] | None = None  # JSON frames
    topic: str | None = None  # BATCH
    ipc: bytes | None = None  # BATCH
    schema: pa.Schema | None = None  # BATCH
    batches: list[pa.RecordBatch] = field(default_factory=list)  # BATCH

    @property
    def name(self) -> str:
        return NAMES.get(self.type, hex(self.type))

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)

    def table(self) -> pa.Table:
        assert self.schema is not None
        return pa.Table.from_batches(self.batches, schema=self.schema)


def decode_frames(data: bytes, max_batch: int = MAX_BATCH) -> list[Frame]:
    """Decode a whole byte stream into frames; raise FrameDecodeError on any violation."""
    frames: list[Frame] = []
    pos = 0
    view = memoryview(data)
    while pos < len(data):
        if len(data) - pos < 5:
            raise FrameDecodeError(f"truncated header at offset {pos}")
        ftype, length = struct.unpack_from(">BI", data, pos)
        start, end = pos + 5, pos + 5 + length
        if end > len(data):
            raise FrameDecodeError(f"truncated {NAMES.get(ftype, ftype)} body at offset {pos}")
        body = bytes(view[start:end])
        frame = Frame(type=ftype, length=length, raw=bytes(view[pos:end]))
        if ftype == BATCH:
            if length > max_batch:
                raise FrameDecodeError(f"BATCH frame of {length} bytes over {max_batch}")
            (tlen,) = struct.unpack_from(">H", body, 0)
            if not 1 <= tlen <= 255 or tlen > length - 2:
                raise FrameDecodeError(f"bad topic length {tlen}")
            frame.topic = body[2 : 2 + tlen].decode("ascii")
            frame.ipc = body[2 + tlen :]
            reader = pa.ipc.open_stream(pa.BufferReader(frame.ipc))
            frame.schema = reader.schema
            frame.batches = list(reader)
            for b in frame.batches:
                b.validate(full=True)
        elif ftype in (HELLO, LOG, ERROR, END):
            if length > MAX_MESSAGE:
                raise FrameDecodeError(f"{NAMES[ftype]} frame of {length} bytes over {MAX_MESSAGE}")
            payload = json.loads(body.decode("utf-8"))
            if not isinstance(payload, dict):
                raise FrameDecodeError(f"{NAMES[ftype]} body is not a JSON object")
            frame.payload = payload
        else:
            raise FrameDecodeError(f"unknown frame type 0x{ftype:02x} at offset {pos}")
        frames.append(frame)
        pos = end
    return frames
