"""The golden fixtures shared with the Go tests (bridge/testdata/golden, BRIDGE.md §5)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from bridge_frames import BATCH, END, HELLO, LOG, decode_frames
from conftest import GOLDEN_DIR, SDK_DIR

from casparian_flow import _bridge
from casparian_flow._bridge import FrameWriter, batch_frames, encode_json_frame, hello_payload

PEOPLE_SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string()), pa.field("score", pa.float64())]
)
PEOPLE_ROWS = [
    {"id": 1, "name": "ann", "score": 1.5},
    {"id": 2, "name": None, "score": 2.5},
    {"id": 3, "name": "çé", "score": None},
]
ERROR_TRACEBACK = 'Traceback (most recent call last):\n  File "plugin.py", line 3, in consume\nValueError: boom\n'


def golden(name: str) -> bytes:
    return (GOLDEN_DIR / name).read_bytes()


def written_by(action: Callable[[FrameWriter], object]) -> bytes:
    """Bytes a FrameWriter puts on a real socket while running action(writer)."""
    a, b = socket.socketpair()
    chunks: list[bytes] = []

    def read() -> None:
        while chunk := b.recv(1 << 16):
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    writer = FrameWriter(a)
    try:
        action(writer)
    finally:
        writer.close()
        reader.join(timeout=30)
        b.close()
    return b"".join(chunks)


def test_golden_dir_exists() -> None:
    assert (GOLDEN_DIR / "hello.bin").is_file(), GOLDEN_DIR


def test_hello_bytes() -> None:
    frame = encode_json_frame(_bridge.FRAME_HELLO, hello_payload(sdk_version="0.1.0", runtime="test", pid=1))
    assert frame == golden("hello.bin")


def test_log_bytes() -> None:
    message = 'héllo <world> & "quotes"'
    assert encode_json_frame(_bridge.FRAME_LOG, {"level": "INFO", "logger": "plugin", "message": message}) == golden(
        "log.bin"
    )
    assert written_by(lambda w: w.log("INFO", "plugin", message)) == golden("log.bin")


def test_error_bytes() -> None:
    got = written_by(lambda w: w.error("PLUGIN_ERROR", "ValueError", "boom", ERROR_TRACEBACK))
    assert got == golden("error.bin")


def test_end_bytes_count_batches_and_rows() -> None:
    table = pa.table({"x": [1, 2, 3, 4, 5]})
    two_batches = pa.Table.from_batches(table.to_batches(max_chunksize=3))

    def session(w: FrameWriter) -> None:
        for frame in batch_frames("t", two_batches):
            w.send_batch(frame)
        w.end()

    frames = decode_frames(written_by(session))
    assert [f.type for f in frames] == [BATCH, END]
    assert len(frames[0].batches) == 2
    assert frames[-1].raw == golden("end.bin")


@pytest.mark.parametrize("name", ["batch_go.bin", "batch_py.bin"])
def test_batch_fixture_decodes(name: str) -> None:
    frames = decode_frames(golden(name))
    assert len(frames) == 1
    frame = frames[0]
    assert frame.type == BATCH
    assert frame.topic == "people"
    assert frame.schema is not None and frame.schema.equals(PEOPLE_SCHEMA)
    assert frame.table().to_pylist() == PEOPLE_ROWS


def test_session_fixture_decodes() -> None:
    frames = decode_frames(golden("session.bin"))
    assert [f.type for f in frames] == [HELLO, BATCH, LOG, END]
    assert frames[0].payload == hello_payload("0.1.0", "test", 1)
    assert frames[1].table().to_pylist() == PEOPLE_ROWS
    assert frames[2].payload == {"level": "INFO", "logger": "plugin", "message": 'héllo <world> & "quotes"'}
    assert frames[3].payload == {"batches": 2, "rows": 5}


def test_make_golden_output_matches_fixture_and_sdk(tmp_path: Path) -> None:
    out = tmp_path / "batch_py.bin"
    subprocess.run([sys.executable, str(SDK_DIR / "tests" / "make_golden.py"), str(out)], check=True)
    made = out.read_bytes()
    (frame,) = decode_frames(made)
    (fixture,) = decode_frames(golden("batch_py.bin"))
    assert made[0] == fixture.raw[0] == BATCH
    assert made[5:13] == fixture.raw[5:13] == b"\x00\x06people"
    assert frame.topic == fixture.topic == "people"
    assert frame.schema is not None and frame.schema.equals(fixture.schema)
    assert frame.table().equals(fixture.table())
    assert frame.table().to_pylist() == PEOPLE_ROWS
    # The SDK encodes the same table to the same bytes as the fixture generator.
    table = pa.table(
        {"id": [1, 2, 3], "name": ["ann", None, "çé"], "score": [1.5, 2.5, None]}, schema=PEOPLE_SCHEMA
    )
    (sdk_frame,) = list(batch_frames("people", table))
    assert sdk_frame.to_bytes() == made


def test_long_log_and_error_bodies_are_cut_to_the_message_limit() -> None:
    limit = 1 << 20
    log_message = '"' * (limit)  # each quote is 2 bytes of JSON
    tb = "Traceback (most recent call last):\n" + "\x01" * (2 * limit) + "\nValueError: the end\n"
    frames = decode_frames(
        written_by(lambda w: (w.log("INFO", "p", log_message), w.error("PLUGIN_ERROR", "ValueError", "m" * limit, tb)))
    )
    assert [f.type for f in frames] == [LOG, 0x04]
    log, err = frames
    assert log.length <= limit and log.payload is not None
    assert log.payload["message"].startswith('""""') and log.payload["message"].endswith("… [truncated]")
    assert err.length <= limit and err.payload is not None
    assert err.payload["traceback"].endswith("\nValueError: the end\n")
    assert err.payload["traceback"].startswith("… [truncated]")
    assert len(err.payload["message"].encode()) <= 64 << 10
    assert err.payload["message"].startswith("mmmm")
