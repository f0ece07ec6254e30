"""Exceptions raised by the SDK.

Every SDK exception carries ``kind``: the error code the bridge shim reports
to the host in its ERROR frame (see docs/BRIDGE.md §2). Exceptions that are
not SDK exceptions are reported as ``PLUGIN_ERROR``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CasparianError",
    "ManifestError",
    "PluginLoadError",
    "SchemaError",
    "TopicError",
    "ResourceLimitError",
    "InputError",
    "BridgeClosedError",
]


class CasparianError(Exception):
    """Base class of the SDK's exceptions."""

    kind: ClassVar[str] = "PLUGIN_ERROR"


class ManifestError(CasparianError, TypeError):
    """A ``PluginMetadata`` (MANIFEST) was built with an unknown or bad field."""


class PluginLoadError(CasparianError):
    """The plugin module does not have the shape the host needs (no ``Handler`` …)."""


class SchemaError(CasparianError, TypeError):
    """Published data could not be converted to Arrow."""

    kind = "SCHEMA"


class TopicError(CasparianError, ValueError):
    """A topic name is not valid (see :func:`casparian_flow.validate_topic`)."""

    kind = "SCHEMA"


class ResourceLimitError(CasparianError):
    """Published data does not fit in the host's limits (one row over the frame cap)."""

    kind = "RESOURCE_LIMIT"


class InputError(CasparianError, OSError):
    """The job's input file is missing or unreadable."""

    kind = "INPUT"


class BridgeClosedError(CasparianError, ConnectionError):
    """The connection to the host is closed (the host cancelled the job, or the session ended)."""

    kind = "PROTOCOL"
