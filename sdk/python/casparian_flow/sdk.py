"""The plugin author's API: ``FileEvent``, ``PluginMetadata`` and ``BasePlugin``.

A plugin is a Python module with a top-level ``class Handler`` and, optionally,
a module-level ``MANIFEST = PluginMetadata(...)``::

    import pandas as pd
    from casparian_flow.sdk import BasePlugin, PluginMetadata

    MANIFEST = PluginMetadata(pattern="*.csv", topic="processed_output")

    class Handler(BasePlugin):
        def consume(self, event):
            df = pd.read_csv(event.path)
            self.publish("processed_output", df)   # streams now
            # or: return df / yield df             # goes to MANIFEST.topic

The host calls ``configure(ctx, config)`` first, then ``consume(event)`` (or
the legacy ``execute(path)``). Whatever the entry point returns or yields — a
pandas or polars DataFrame, a pyarrow Table or RecordBatch, ``None``, or an
iterable of those — is published to the default topic.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from .errors import ManifestError

__all__ = [
    "FileEvent",
    "PluginMetadata",
    "BasePlugin",
    "PluginContext",
    "TopicHandle",
    "DEFAULT_TOPIC",
]

#: Topic that returned or yielded data goes to when the MANIFEST names none.
DEFAULT_TOPIC = "output"

#: What ``PluginContext.register_topic`` returns.
TopicHandle = int


class PluginContext(Protocol):
    """What ``configure(ctx, config)`` receives; the bridge shim provides it."""

    def register_topic(self, topic: str) -> TopicHandle:
        """Validate ``topic`` and return its handle (the same handle for the same topic)."""
        ...

    def publish(self, handle: Union[TopicHandle, str], data: Any) -> None:
        """Convert ``data`` to Arrow and stream it to the host now."""
        ...


@dataclass
class FileEvent:
    """The input of one job: ``path`` is the absolute path of the input file."""

    path: str
    file_id: int = 0
    event_type: str = "file_found"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginMetadata:
    """A plugin's manifest (module-level ``MANIFEST``).

    Unknown keywords raise :class:`ManifestError` (a ``TypeError``) naming the
    bad field and listing the valid ones.
    """

    pattern: str | None = None
    topic: str | None = None
    priority: int = 50
    subscriptions: list[str] = field(default_factory=list)
    sinks: dict[str, str] = field(default_factory=dict)
    version: str = "1.0.0"
    description: str | None = None
    name: str | None = None


def _install_checked_init(cls: type[PluginMetadata]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self: PluginMetadata, *args: Any, **kwargs: Any) -> None:
        valid = ", ".join(names)
        if len(args) > len(names):
            raise ManifestError(
                f"PluginMetadata takes at most {len(names)} positional arguments "
                f"({valid}), got {len(args)}"
            )
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ManifestError(
                    f"PluginMetadata has no field {key!r}{hint}; valid fields are: {valid}"
                )
        for key in names[: len(args)]:
            if key in kwargs:
                raise ManifestError(f"PluginMetadata got two values for field {key!r}")
        generated(self, *args, **kwargs)

    setattr(cls, "__init__", __init__)


_install_checked_init(PluginMetadata)


class BasePlugin:
    """Base class for plugin handlers (optional: any ``class Handler`` works).

    The host constructs ``Handler()`` with no arguments, calls
    ``configure(ctx, config)``, then ``consume(event)``. Subclasses override
    ``consume`` (or the legacy ``execute``).
    """

    _ctx: PluginContext | None = None
    _config: dict[str, Any] | None = None
    _topic_handles: dict[str, TopicHandle] | None = None

    def configure(self, ctx: PluginContext, config: dict[str, Any] | None) -> None:
        """Store the context (used by :meth:`publish`) and the plugin configuration."""
        self._ctx = ctx
        self._config = dict(config) if config else {}
        self._topic_handles = None

    def consume(self, event: FileEvent) -> Any:
        """Process one input file. Return or yield tables, or call :meth:`publish`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement consume(event)")

    def execute(self, file_path: str) -> Any:
        """Legacy entry point: ``consume(FileEvent(file_path))``, returning its result."""
        return self.consume(FileEvent(path=file_path))

    def publish(self, topic: str, data: Any) -> None:
        """Stream ``data`` (DataFrame, Table, RecordBatch) to ``topic`` now."""
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError(
                f"{type(self).__name__}.publish({topic!r}) called before configure(ctx, config): "
                "the plugin is not attached to a host"
            )
        handles = self._topic_handles
        if handles is None:
            handles = self._topic_handles = {}
        handle = handles.get(topic)
        if handle is None:
            handle = handles[topic] = ctx.register_topic(topic)
        ctx.publish(handle, data)

    @property
    def config(self) -> dict[str, Any]:
        """The plugin configuration from the job (an empty dict when there is none)."""
        if self._config is None:
            self._config = {}
        return self._config

    @property
    def log(self) -> logging.Logger:
        """A logger named after the plugin; its records reach the host as LOG frames."""
        name = getattr(self._ctx, "plugin_name", None) or type(self).__name__
        return logging.getLogger(str(name))
