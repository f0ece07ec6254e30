"""The bridge shim: runs one plugin on one input and streams its output to the host.

The host starts, for every job (docs/BRIDGE.md §1)::

    PYTHON -I -c BOOTSTRAP SDK_DIR JOB_JSON

with :data:`BOOTSTRAP` exactly as below (also in ``sdk/python/BOOTSTRAP.txt``)::

    import sys; sys.path.insert(0, sys.argv[1]); from casparian_flow.bridge_shim import main; sys.exit(main(sys.argv[2]))

Exit status: 0 after END, 1 after ERROR or when the host went away (nothing
more is sent then), 2 when ``JOB_JSON`` cannot be read (nothing is sent: the
socket is not known). ``print()`` output goes to the process's stdout, which
the host drains; Python ``logging`` records (root level INFO) become LOG frames.
The shim reads no environment variables.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from . import _bridge
from ._bridge import FrameWriter, batch_frames, validate_topic
from ._convert import ACCEPTED_TYPES, is_publishable, to_arrow_table
from .errors import BridgeClosedError, CasparianError, InputError, PluginLoadError, SchemaError, TopicError
from .sdk import DEFAULT_TOPIC, BasePlugin, FileEvent, TopicHandle

__all__ = ["BOOTSTRAP", "PLUGIN_MODULE_NAME", "Job", "BridgeContext", "load_plugin", "main"]

#: The ``-c`` program the host passes: ``PYTHON -I -c BOOTSTRAP SDK_DIR JOB_JSON``.
BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from casparian_flow.bridge_shim import main; sys.exit(main(sys.argv[2]))"
)

#: Name of the plugin module in ``sys.modules``.
PLUGIN_MODULE_NAME = "casparian_plugin"

_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_BAD_JOB = 2


@dataclass
class Job:
    """The job spec read from ``job.json`` (unknown keys are ignored)."""

    socket: str
    plugin_path: str
    input_path: str
    plugin_name: str = "plugin"
    job_id: int = 0
    file_version_id: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    max_batch_bytes: int = _bridge.DEFAULT_MAX_BATCH_BYTES
    max_frame_bytes: int = _bridge.DEFAULT_MAX_FRAME_BYTES

    @classmethod
    def from_json(cls, raw: Any) -> Job:
        """Validate a decoded ``job.json``; raises ValueError naming the bad key."""
        if not isinstance(raw, dict):
            raise ValueError("job spec is not a JSON object")

        def get(key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
            if key not in raw or raw[key] is None:
                if required:
                    raise ValueError(f"job spec has no {key!r}")
                return default
            value = raw[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise ValueError(f"job spec key {key!r} has the wrong type ({type(value).__name__})")
            return value

        def limit(key: str, default: int) -> int:
            value = int(get(key, int, default))
            return value if value > 0 else default  # 0 (Go's zero value) = the default

        return cls(
            socket=get("socket", str, required=True),
            plugin_path=get("plugin_path", str, required=True),
            input_path=get("input_path", str, required=True),
            plugin_name=get("plugin_name", str, "plugin") or "plugin",
            job_id=get("job_id", int, 0),
            file_version_id=get("file_version_id", int, 0),
            config=get("config", dict, {}),
            max_batch_bytes=limit("max_batch_bytes", _bridge.DEFAULT_MAX_BATCH_BYTES),
            max_frame_bytes=min(limit("max_frame_bytes", _bridge.DEFAULT_MAX_FRAME_BYTES), 0xFFFFFFFF),
        )


class BridgeContext:
    """The context a plugin's ``configure(ctx, config)`` receives in the shim.

    ``publish`` converts and streams immediately; it may be called from any thread.
    """

    def __init__(self, writer: FrameWriter, job: Job) -> None:
        self._writer = writer
        self._job = job
        self._topics: list[str] = []
        self._handles: dict[str, TopicHandle] = {}
        self._lock = threading.Lock()

    @property
    def plugin_name(self) -> str:
        return self._job.plugin_name

    @property
    def job_id(self) -> int:
        return self._job.job_id

    @property
    def file_version_id(self) -> int:
        return self._job.file_version_id

    @property
    def input_path(self) -> str:
        return self._job.input_path

    @property
    def config(self) -> dict[str, Any]:
        return self._job.config

    def register_topic(self, topic: str) -> TopicHandle:
        """Validate ``topic`` and return its handle (1, 2, …; stable per topic)."""
        validate_topic(topic)
        with self._lock:
            handle = self._handles.get(topic)
            if handle is None:
                self._topics.append(topic)
                handle = self._handles[topic] = len(self._topics)
        return handle

    def topic_name(self, handle: Union[TopicHandle, str]) -> str:
        """The topic of a handle (or a topic name, validated)."""
        if isinstance(handle, str):
            return validate_topic(handle)
        if isinstance(handle, int) and not isinstance(handle, bool) and 1 <= handle <= len(self._topics):
            return self._topics[handle - 1]
        raise TopicError(f"unknown topic handle {handle!r}: use register_topic(name) or a topic name")

    def publish(self, handle: Union[TopicHandle, str], data: Any) -> None:
        """Convert ``data`` to Arrow and send it to the host now, in frames of
        at most about ``max_batch_bytes``."""
        topic = self.topic_name(handle)
        table = to_arrow_table(data)
        for frame in batch_frames(topic, table, self._job.max_batch_bytes, self._job.max_frame_bytes):
            self._writer.send_batch(frame)


class _BridgeLogHandler(logging.Handler):
    """Sends every log record to the host as a LOG frame (stderr once the session is over)."""

    def __init__(self, writer: FrameWriter) -> None:
        super().__init__(logging.NOTSET)
        self._writer = writer
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self._writer.log(record.levelname, record.name, message):
                return
        except BridgeClosedError:
            return  # the host is gone; main() notices and exits
        except Exception:
            self.handleError(record)
            return
        sys.stderr.write(f"{record.levelname} {record.name}: {message}\n")


def load_plugin(path: str) -> types.ModuleType:
    """Compile and run the plugin file as module ``casparian_plugin`` (in ``sys.modules``)."""
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    module = types.ModuleType(PLUGIN_MODULE_NAME)
    module.__file__ = path
    sys.modules[PLUGIN_MODULE_NAME] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(PLUGIN_MODULE_NAME, None)
        raise
    return module


def _default_topic(module: types.ModuleType) -> str:
    manifest = getattr(module, "MANIFEST", None)
    topic = manifest.get("topic") if isinstance(manifest, dict) else getattr(manifest, "topic", None)
    return topic if isinstance(topic, str) and topic else DEFAULT_TOPIC


def _overrides(handler: object, name: str) -> bool:
    """True if the handler has its own ``name`` (not BasePlugin's default)."""
    method = getattr(type(handler), name, None)
    return callable(method) and method is not getattr(BasePlugin, name, None)


def _call_entry_point(handler: object, event: FileEvent) -> Any:
    """consume(event) if the handler defines it, falling back to the legacy
    execute(path) when consume raises NotImplementedError (BasePlugin's default)."""
    has_execute = _overrides(handler, "execute")
    if _overrides(handler, "consume"):
        try:
            return handler.consume(event)  # type: ignore[attr-defined]
        except NotImplementedError:
            if not has_execute:
                raise
    if has_execute:
        return handler.execute(event.path)  # type: ignore[attr-defined]
    raise PluginLoadError(f"{type(handler).__name__} defines neither consume(event) nor execute(path)")


def _publish_result(ctx: BridgeContext, topic: str, result: Any) -> None:
    """Publish what the entry point returned: a table, None, or an iterable of them."""
    if result is None:
        return
    if is_publishable(result):
        ctx.publish(topic, result)
        return
    if isinstance(result, (str, bytes, bytearray, dict)) or not hasattr(result, "__iter__"):
        raise SchemaError(
            f"the plugin returned a {_type_name(result)}: return or yield {ACCEPTED_TYPES}, "
            "None, or an iterable of them"
        )
    for item in result:
        if item is None:
            continue
        if not is_publishable(item):
            raise SchemaError(f"the plugin yielded a {_type_name(item)}: expected {ACCEPTED_TYPES} or None")
        ctx.publish(topic, item)


def _type_name(obj: object) -> str:
    t = type(obj)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _check_input(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file is not readable: {path}")


def _run_plugin(job: Job, ctx: BridgeContext) -> None:
    _check_input(job.input_path)  # before any plugin code runs
    module = load_plugin(job.plugin_path)
    handler_cls = getattr(module, "Handler", None)
    if not isinstance(handler_cls, type):
        raise PluginLoadError(f"plugin {job.plugin_path} defines no top-level class Handler")
    topic = _default_topic(module)
    handler = handler_cls()
    config = dict(job.config)
    if isinstance(handler, BasePlugin):
        # Attached before configure so an override that skips super() still publishes.
        handler._ctx, handler._config = ctx, config
    configure: Callable[..., Any] | None = getattr(handler, "configure", None)
    if callable(configure):
        configure(ctx, config)
    event = FileEvent(
        path=job.input_path,
        file_id=job.file_version_id,
        metadata={"job_id": job.job_id, "plugin_name": job.plugin_name},
    )
    _publish_result(ctx, topic, _call_entry_point(handler, event))


def _plugin_traceback(e: BaseException) -> str:
    """The formatted traceback without the shim's own frames at the top."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


def _error_of(e: BaseException) -> tuple[str, str, str, str]:
    """(kind, type, message, traceback) of an exception."""
    kind = e.kind if isinstance(e, CasparianError) else "PLUGIN_ERROR"
    if isinstance(e, SystemExit):
        message = f"the plugin called sys.exit({e.code!r})"
    elif isinstance(e, SyntaxError):
        message = str(e)  # "invalid syntax (plugin.py, line 3)"
    else:
        message = str(e) or type(e).__name__
    return kind, type(e).__name__, message, _plugin_traceback(e)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            # sun_path holds ~107 bytes; the host runs us inside the socket's directory.
            if os.path.dirname(os.path.abspath(path)) != os.getcwd():
                raise
            sock.connect(os.path.basename(path))
    except BaseException:
        sock.close()
        raise
    return sock


def _read_job(path: str) -> Job:
    with open(path, "rb") as f:
        raw = json.loads(f.read().decode("utf-8"))
    return Job.from_json(raw)


def main(job_json_path: str) -> int:
    """Run the job described by ``job_json_path``; return the process exit status."""
    try:
        job = _read_job(job_json_path)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"casparian_flow.bridge_shim: cannot read the job spec {job_json_path}: {e}\n")
        return _EXIT_BAD_JOB
    try:
        sock = _connect(job.socket)
    except OSError as e:
        sys.stderr.write(f"casparian_flow.bridge_shim: cannot connect to {job.socket}: {e}\n")
        return _EXIT_FAILED
    writer = FrameWriter(sock)
    try:
        writer.send_json(_bridge.FRAME_HELLO, _bridge.hello_payload())
    except BridgeClosedError:
        return _EXIT_FAILED

    handler = _BridgeLogHandler(writer)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        return _session(job, writer)
    finally:
        root.removeHandler(handler)


def _session(job: Job, writer: FrameWriter) -> int:
    error: tuple[str, str, str, str] | None = None
    try:
        _run_plugin(job, BridgeContext(writer, job))
    except SystemExit as e:
        if e.code not in (None, 0):
            error = _error_of(e)
    except BaseException as e:  # noqa: BLE001 - everything the plugin raises is reported
        error = _error_of(e)
    _flush_stdio()  # the host may kill the process group as soon as it reads END/ERROR
    if writer.broken:
        writer.close()
        return _EXIT_FAILED
    try:
        if error is None:
            writer.end()
            return _EXIT_OK
        writer.error(*error)
    except BridgeClosedError:
        pass
    return _EXIT_FAILED
