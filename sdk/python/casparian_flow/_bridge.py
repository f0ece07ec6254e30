"""Guest side of the bridge framing (docs/BRIDGE.md; Go: bridge/frame.go).

A frame is a 1-byte type, a 4-byte big-endian body length, then the body.
BATCH bodies are a u16 topic length, the topic, and one Arrow IPC stream; the
other frames carry one canonical JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .errors import BridgeClosedError, ResourceLimitError, TopicError

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "SDK_VERSION",
    "FRAME_HELLO",
    "FRAME_BATCH",
    "FRAME_LOG",
    "FRAME_ERROR",
    "FRAME_END",
    "HEADER_SIZE",
    "MAX_TOPIC_LEN",
    "MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_FRAME_BYTES",
    "canonical_json",
    "encode_frame",
    "encode_json_frame",
    "hello_payload",
    "validate_topic",
    "batch_header",
    "ipc_stream",
    "ipc_stream_size",
    "BatchFrame",
    "batch_frames",
    "FrameWriter",
]

MAGIC = "casparian-bridge"
PROTOCOL_VERSION = 1
SDK_VERSION = "0.1.0"

FRAME_HELLO = 0x01
FRAME_BATCH = 0x02
FRAME_LOG = 0x03
FRAME_ERROR = 0x04
FRAME_END = 0x05

HEADER_SIZE = 5
MAX_TOPIC_LEN = 255
MAX_MESSAGE_BYTES = 1 << 20  # HELLO, LOG, ERROR, END bodies
DEFAULT_MAX_BATCH_BYTES = 64 << 20
DEFAULT_MAX_FRAME_BYTES = 256 << 20
_MAX_U32 = 0xFFFFFFFF

_HEADER = struct.Struct(">BI")
_BATCH_HEADER = struct.Struct(">BIH")

_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_TOPIC_CHARS_LATER = _TOPIC_CHARS | frozenset("-.")


def canonical_json(value: Any) -> bytes:
    """JSON as both ends write it: sorted keys, no whitespace, UTF-8, no HTML escaping.

    Lone surrogates (undecodable file names) come out as JSON ``\\uXXXX`` escapes.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def encode_frame(frame_type: int, body: bytes) -> bytes:
    """A whole frame: header and body."""
    return _HEADER.pack(frame_type, len(body)) + body


def encode_json_frame(frame_type: int, value: Any) -> bytes:
    """A HELLO, LOG, ERROR or END frame holding ``value`` as canonical JSON."""
    return encode_frame(frame_type, canonical_json(value))


def hello_payload(
    sdk_version: str = SDK_VERSION, runtime: str | None = None, pid: int | None = None
) -> dict[str, Any]:
    """The HELLO body; runtime and pid default to this interpreter and process."""
    if runtime is None:
        runtime = f"{platform.python_implementation()} {platform.python_version()}"
    return {
        "magic": MAGIC,
        "version": PROTOCOL_VERSION,
        "sdk_version": sdk_version,
        "runtime": runtime,
        "pid": os.getpid() if pid is None else pid,
    }


def validate_topic(topic: object) -> str:
    """Check a topic name like Go's ``bridge.ValidateTopic``; return it or raise TopicError.

    A topic is 1-255 ASCII letters, digits, '_', '-' and '.', not starting
    with '-' or '.'.
    """
    if not isinstance(topic, str):
        raise TopicError(f"invalid topic {topic!r}: a topic is a str, not {type(topic).__name__}")
    if not 1 <= len(topic) <= MAX_TOPIC_LEN:
        raise TopicError(f"invalid topic {topic!r}: must be 1-{MAX_TOPIC_LEN} characters")
    if topic[0] not in _TOPIC_CHARS or not _TOPIC_CHARS_LATER.issuperset(topic):
        raise TopicError(
            f"invalid topic {topic!r}: use letters, digits, '_', '-' and '.' (not first)"
        )
    return topic


def batch_header(topic: str, ipc_len: int) -> bytes:
    """Header, topic length and topic of a BATCH frame whose IPC stream is ``ipc_len`` bytes."""
    raw = validate_topic(topic).encode("ascii")
    body_len = 2 + len(raw) + ipc_len
    if body_len > _MAX_U32:
        raise ResourceLimitError(f"BATCH frame of {body_len} bytes does not fit the u32 length")
    return _BATCH_HEADER.pack(FRAME_BATCH, body_len, len(raw)) + raw


def _write_stream(sink: pa.NativeFile, schema: pa.Schema, batches: Sequence[pa.RecordBatch]) -> None:
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def ipc_stream_size(schema: pa.Schema, batches: Sequence[pa.RecordBatch]) -> int:
    """Size in bytes of the IPC stream of ``batches``, computed without copying any data."""
    mock = pa.MockOutputStream()
    _write_stream(mock, schema, batches)
    return int(mock.size())


def ipc_stream(schema: pa.Schema, batches: Sequence[pa.RecordBatch], size: int | None = None) -> pa.Buffer:
    """One Arrow IPC stream (schema, batches, end-of-stream marker) in one buffer.

    The buffer is allocated once at its exact size (``size``, from
    :func:`ipc_stream_size`), so the data is copied once, with no regrowth.
    """
    if size is None:
        size = ipc_stream_size(schema, batches)
    buf = pa.allocate_buffer(size)
    sink = pa.FixedSizeBufferWriter(buf)
    _write_stream(sink, schema, batches)
    if sink.tell() != size:  # pragma: no cover - the IPC writer is deterministic
        raise RuntimeError(f"Arrow IPC stream is {sink.tell()} bytes, expected {size}")
    return buf


class BatchFrame:
    """One encoded BATCH frame: ``header`` (type, length, topic) then ``ipc``."""

    __slots__ = ("header", "ipc", "batches", "rows")

    def __init__(self, header: bytes, ipc: pa.Buffer, batches: int, rows: int) -> None:
        self.header = header
        self.ipc = ipc
        self.batches = batches
        self.rows = rows

    def to_bytes(self) -> bytes:
        """The whole frame as bytes (a copy; for tests and tools)."""
        return self.header + bytes(memoryview(self.ipc))


def _group_batches(table: pa.Table, target: int) -> Iterator[list[pa.RecordBatch]]:
    """Zero-copy record batches of ``table`` grouped so each group holds about
    ``target`` bytes at most: large batches are sliced by estimated bytes per
    row, small consecutive ones share a group."""
    group: list[pa.RecordBatch] = []
    group_bytes = 0
    for batch in table.to_batches():
        n = batch.num_rows
        if n == 0:
            continue
        nbytes = batch.nbytes
        if nbytes <= target:
            pieces: Iterator[pa.RecordBatch] = iter((batch,))
        else:
            step = max(1, int(target * n // nbytes))
            pieces = (batch.slice(i, step) for i in range(0, n, step))
        for piece in pieces:
            size = nbytes if piece is batch else piece.nbytes
            if group and group_bytes + size > target:
                yield group
                group, group_bytes = [], 0
            group.append(piece)
            group_bytes += size
    if group:
        yield group


def _halves(batches: list[pa.RecordBatch]) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
    if len(batches) > 1:
        mid = len(batches) // 2
        return batches[:mid], batches[mid:]
    batch = batches[0]
    mid = batch.num_rows // 2
    return [batch.slice(0, mid)], [batch.slice(mid)]


def batch_frames(
    topic: str,
    table: pa.Table,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
) -> Iterator[BatchFrame]:
    """Encode ``table`` as BATCH frames of about ``max_batch_bytes`` of Arrow
    data each (never over ``max_frame_bytes`` per body).

    An empty table gives one frame holding only the schema. A single row whose
    encoding exceeds ``max_frame_bytes`` raises :class:`ResourceLimitError`.
    """
    validate_topic(topic)
    overhead = 2 + len(topic)
    schema = table.schema
    if table.num_rows == 0:
        yield from _encode_group(topic, schema, [], overhead, max_frame_bytes)
        return
    target = max(1, min(max_batch_bytes, max_frame_bytes - overhead))
    for group in _group_batches(table, target):
        yield from _encode_group(topic, schema, group, overhead, max_frame_bytes)


def _encode_group(
    topic: str, schema: pa.Schema, group: list[pa.RecordBatch], overhead: int, max_frame_bytes: int
) -> Iterator[BatchFrame]:
    size = ipc_stream_size(schema, group)
    if overhead + size <= max_frame_bytes:
        ipc = ipc_stream(schema, group, size)
        yield BatchFrame(batch_header(topic, size), ipc, len(group), sum(b.num_rows for b in group))
        return
    rows = sum(b.num_rows for b in group)
    if rows <= 1:
        what = "one row" if rows else "the schema"
        raise ResourceLimitError(
            f"{what} of topic {topic!r} encodes to {size} bytes of Arrow data, "
            f"over the host's BATCH frame limit of {max_frame_bytes} bytes"
        )
    for half in _halves(group):
        yield from _encode_group(topic, schema, half, overhead, max_frame_bytes)


_CUT = "… [truncated]"


def _fit(payload: dict[str, Any], key: str, limit: int, keep_tail: bool = False) -> bytes:
    """Canonical JSON of ``payload`` at most ``limit`` bytes, cutting the
    string ``payload[key]`` (keeping its head, or its tail) as needed."""
    body = canonical_json(payload)
    if len(body) <= limit:
        return body
    text: str = payload[key]

    def cut(keep: int) -> str:
        return _CUT + text[len(text) - keep :] if keep_tail else text[:keep] + _CUT

    # The encoded size grows with the number of characters kept: binary search
    # for the most that fit (only oversized messages get here).
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        payload[key] = cut(mid)
        if len(canonical_json(payload)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    payload[key] = cut(lo)
    return canonical_json(payload)


class FrameWriter:
    """Writes frames to the host socket; safe for concurrent use (one lock
    around every socket write).

    After :meth:`finish` (END or ERROR) the session is over: BATCH writes raise
    :class:`BridgeClosedError` and LOG writes go to ``fallback`` instead. Any
    socket error marks the writer ``broken`` (the host is gone).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.closed = False
        self.broken = False
        self.batches = 0
        self.rows = 0

    def _send_locked(self, *parts: bytes | memoryview) -> None:
        if self.closed:
            raise BridgeClosedError("the bridge session is over: nothing more can be sent to the host")
        try:
            for part in parts:
                self._sock.sendall(part)
        except OSError as e:
            self.broken = True
            self.closed = True
            raise BridgeClosedError(f"lost the connection to the host: {e}") from e

    def send_json(self, frame_type: int, value: Any) -> None:
        """Send a HELLO or LOG frame."""
        frame = encode_json_frame(frame_type, value)
        with self._lock:
            self._send_locked(frame)

    def send_batch(self, frame: BatchFrame) -> None:
        """Send one BATCH frame without copying its Arrow data."""
        with self._lock:
            self._send_locked(frame.header, memoryview(frame.ipc))
            self.batches += frame.batches
            self.rows += frame.rows

    def log(self, level: str, logger: str, message: str) -> bool:
        """Send a LOG frame; False (nothing sent) when the session is over."""
        payload = {"level": level, "logger": logger, "message": message}
        frame = encode_frame(FRAME_LOG, _fit(payload, "message", MAX_MESSAGE_BYTES))
        with self._lock:
            if self.closed:
                return False
            self._send_locked(frame)
        return True

    def end(self) -> None:
        """Send END with the counts of what was sent, then close."""
        with self._lock:
            payload = {"batches": self.batches, "rows": self.rows}
            self._finish_locked(encode_json_frame(FRAME_END, payload))

    def error(self, kind: str, type_name: str, message: str, traceback: str) -> None:
        """Send ERROR, then close. Long messages and tracebacks are cut to fit 1 MiB."""
        payload: dict[str, Any] = {"kind": kind, "message": message}
        if type_name:
            payload["type"] = type_name
        _fit(payload, "message", 64 << 10)
        if traceback:  # its end names the failing line: keep the tail
            payload["traceback"] = traceback
            body = _fit(payload, "traceback", MAX_MESSAGE_BYTES, keep_tail=True)
        else:
            body = canonical_json(payload)
        with self._lock:
            self._finish_locked(encode_frame(FRAME_ERROR, body))

    def _finish_locked(self, frame: bytes) -> None:
        try:
            self._send_locked(frame)
        finally:
            self.closed = True
            self._close_socket()

    def close(self) -> None:
        """Close without sending anything."""
        with self._lock:
            self.closed = True
            self._close_socket()

    def _close_socket(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
