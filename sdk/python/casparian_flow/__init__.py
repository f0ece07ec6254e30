"""Casparian Flow plugin SDK.

Plugin authors import :class:`BasePlugin`, :class:`PluginMetadata` and
:class:`FileEvent` (also available from ``casparian_flow.sdk``). The host runs
plugins through :mod:`casparian_flow.bridge_shim`.
"""

from ._bridge import SDK_VERSION as __version__
from ._bridge import validate_topic
from .errors import (
    CasparianError,
    InputError,
    ManifestError,
    PluginLoadError,
    ResourceLimitError,
    SchemaError,
    TopicError,
)
from .sdk import DEFAULT_TOPIC, BasePlugin, FileEvent, PluginContext, PluginMetadata, TopicHandle

__all__ = [
    "__version__",
    "BasePlugin",
    "FileEvent",
    "PluginMetadata",
    "PluginContext",
    "TopicHandle",
    "DEFAULT_TOPIC",
    "validate_topic",
    "CasparianError",
    "ManifestError",
    "PluginLoadError",
    "SchemaError",
    "TopicError",
    "ResourceLimitError",
    "InputError",
]
