"""Shared fixtures: the SDK source tree on sys.path, and a fake host that runs
the bridge shim the way the Go host does (docs/BRIDGE.md §1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

SDK_DIR = Path(__file__).resolve().parents[1]
GOLDEN_DIR = SDK_DIR.parents[1] / "bridge" / "testdata" / "golden"

if str(SDK_DIR) not in sys.path:
    sys.path.insert(0, str(SDK_DIR))

from bridge_frames import BATCH, END, ERROR, HELLO, LOG, Frame, decode_frames  # noqa: E402

from casparian_flow.bridge_shim import BOOTSTRAP  # noqa: E402


@dataclass
class ShimRun:
    """Everything a fake host saw of one shim run."""

    returncode: int
    raw: bytes
    stdout: bytes
    stderr: bytes
    pid: int
    workdir: Path
    frames: list[Frame] = field(default_factory=list)

    def of(self, ftype: int) -> list[Frame]:
        return [f for f in self.frames if f.type == ftype]

    @property
    def batch_frames(self) -> list[Frame]:
        return self.of(BATCH)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return [f.payload for f in self.of(LOG) if f.payload is not None]

    @property
    def last(self) -> dict[str, Any]:
        assert self.frames, "no frames"
        payload = self.frames[-1].payload
        assert payload is not None
        return payload

    def topics(self) -> list[str]:
        return sorted({f.topic for f in self.batch_frames if f.topic})

    def table(self, topic: str) -> pa.Table:
        frames = [f for f in self.batch_frames if f.topic == topic]
        assert frames, f"no BATCH frame for topic {topic!r}; topics: {self.topics()}"
        schema = frames[0].schema
        batches = [b for f in frames for b in f.batches]
        for f in frames:
            assert f.schema is not None and f.schema.equals(schema), f"schema changed in topic {topic}"
        return pa.Table.from_batches(batches, schema=schema)

    def assert_session_shape(self) -> None:
        """HELLO first, exactly one END/ERROR, last."""
        assert self.frames, f"no frames; stderr: {self.stderr.decode(errors='replace')}"
        assert self.frames[0].type == HELLO
        enders = [i for i, f in enumerate(self.frames) if f.type in (END, ERROR)]
        assert enders == [len(self.frames) - 1], [f.name for f in self.frames]

    def assert_ok(self) -> None:
        self.assert_session_shape()
        assert self.frames[-1].type == END, f"expected END, got {self.frames[-1].name}: {self.last}"
        assert self.returncode == 0, self.stderr.decode(errors="replace")

    def assert_error(self, kind: str) -> dict[str, Any]:
        self.assert_session_shape()
        assert self.frames[-1].type == ERROR, f"expected ERROR, got {self.frames[-1].name}"
        assert self.last["kind"] == kind, self.last
        assert self.returncode == 1
        return self.last


def _drain(stream: Any, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(65536), b""):
        sink.append(chunk)


class FakeHost:
    """Runs the shim in a private directory like the Go host: socket, plugin
    file and job.json there, `python -I -c BOOTSTRAP SDK_DIR JOB_JSON`, a
    reduced environment, stdout and stderr drained."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(
        self,
        plugin: str,
        *,
        input_bytes: bytes | None = b"",
        input_name: str = "input.csv",
        config: dict[str, Any] | None = None,
        job: dict[str, Any] | None = None,
        sdk_dir: Path = SDK_DIR,
        timeout: float = 120.0,
        on_connect: Callable[[socket.socket], bool] | None = None,
    ) -> ShimRun:
        work = Path(tempfile.mkdtemp(prefix="job", dir=self.root))
        sock_path = work / "bridge.sock"
        plugin_path = work / "plugin.py"
        plugin_path.write_text(textwrap.dedent(plugin), encoding="utf-8")
        input_path = work / input_name
        if input_bytes is not None:
            input_path.write_bytes(input_bytes)
        spec: dict[str, Any] = {
            "socket": str(sock_path),
            "plugin_path": str(plugin_path),
            "plugin_name": "test_plugin",
            "input_path": str(input_path),
            "job_id": 42,
            "file_version_id": 7,
            "config": config or {},
        }
        spec.update(job or {})
        job_path = work / "job.json"
        job_path.write_text(json.dumps(spec), encoding="utf-8")

        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        listener.settimeout(0.2)
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
        env["TMPDIR"] = str(work)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOTSTRAP, str(sdk_dir), str(job_path)],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out: list[bytes] = []
        err: list[bytes] = []
        drains = [
            threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
            threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
        ]
        for t in drains:
            t.start()
        raw = bytearray()
        deadline = time.monotonic() + timeout
        try:
            conn = None
            while conn is None and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    if proc.poll() is not None:
                        break
            if conn is not None:
                with conn:
                    conn.settimeout(timeout)
                    keep_reading = True
                    if on_connect is not None:
                        keep_reading = on_connect(conn)
                    buf = bytearray(1 << 20)
                    while keep_reading:
                        n = conn.recv_into(buf)
                        if n == 0:
                            break
                        raw += buf[:n]
            returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            listener.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for t in drains:
            t.join(timeout=10)
        run = ShimRun(
            returncode=returncode,
            raw=bytes(raw),
            stdout=b"".join(out),
            stderr=b"".join(err),
            pid=proc.pid,
            workdir=work,
        )
        run.frames = decode_frames(run.raw)
        return run


@pytest.fixture
def host() -> Iterator[FakeHost]:
    # A short directory: a Unix socket path must fit in ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="cfpy", dir="/tmp"))
    try:
        yield FakeHost(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
