"""The plugin author's API (reference §4.2) and its fixes of the original's bugs."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

import casparian_flow
from casparian_flow import ManifestError, TopicError, validate_topic
from casparian_flow.sdk import BasePlugin, FileEvent, PluginMetadata


def test_exports_from_package_and_sdk_module() -> None:
    assert casparian_flow.BasePlugin is BasePlugin
    assert casparian_flow.PluginMetadata is PluginMetadata
    assert casparian_flow.FileEvent is FileEvent
    assert casparian_flow.__version__ == "0.1.0"


def test_file_event_defaults() -> None:
    e = FileEvent("/data/a.csv")
    assert (e.path, e.file_id, e.event_type, e.metadata) == ("/data/a.csv", 0, "file_found", {})
    assert FileEvent("x").metadata is not e.metadata


def test_plugin_metadata_defaults() -> None:
    m = PluginMetadata()
    assert m.pattern is None
    assert m.topic is None
    assert m.priority == 50
    assert m.subscriptions == []
    assert m.sinks == {}
    assert m.version == "1.0.0"
    assert m.description is None
    assert m.name is None
    assert PluginMetadata().subscriptions is not m.subscriptions
    assert [f.name for f in dataclasses.fields(PluginMetadata)] == [
        "pattern", "topic", "priority", "subscriptions", "sinks", "version", "description", "name",
    ]


def test_plugin_metadata_all_fields() -> None:
    m = PluginMetadata(
        pattern="*.csv", topic="processed_output", priority=10, subscriptions=["raw"],
        sinks={"processed_output": "parquet://out"}, version="2.0.0", description="d", name="csv_processor",
    )
    assert m.topic == "processed_output" and m.name == "csv_processor" and m.sinks["processed_output"] == "parquet://out"
    assert PluginMetadata("*.csv", "t").topic == "t"
    assert dataclasses.replace(m, priority=1).priority == 1


def test_plugin_metadata_unknown_field() -> None:
    with pytest.raises(ManifestError) as info:
        PluginMetadata(pattern="*MCDATA", topics=["pfc_db_data"])  # type: ignore[call-arg]
    msg = str(info.value)
    assert "'topics'" in msg
    assert "did you mean 'topic'" in msg
    for name in ("pattern", "topic", "priority", "subscriptions", "sinks", "version", "description", "name"):
        assert name in msg
    assert isinstance(info.value, TypeError)


def test_plugin_metadata_positional_errors() -> None:
    with pytest.raises(ManifestError, match="at most 8 positional"):
        PluginMetadata(*range(9))  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="two values for field 'pattern'"):
        PluginMetadata("*.csv", pattern="*.txt")  # type: ignore[misc]


class _FakeContext:
    plugin_name = "fake_plugin"

    def __init__(self) -> None:
        self.registered: list[str] = []
        self.published: list[tuple[Any, Any]] = []

    def register_topic(self, topic: str) -> int:
        validate_topic(topic)
        self.registered.append(topic)
        return len(self.registered)

    def publish(self, handle: Any, data: Any) -> None:
        self.published.append((handle, data))


def test_execute_returns_consume_result() -> None:
    class Handler(BasePlugin):
        def consume(self, event: FileEvent) -> Any:
            return ("consumed", event.path, event.file_id)

    assert Handler().execute("/in/file.csv") == ("consumed", "/in/file.csv", 0)


def test_default_consume_raises_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        BasePlugin().consume(FileEvent("x"))


def test_publish_registers_topics_lazily_once() -> None:
    ctx = _FakeContext()
    p = BasePlugin()
    p.configure(ctx, {"k": 1})
    p.publish("a", "data1")
    p.publish("b", "data2")
    p.publish("a", "data3")
    assert ctx.registered == ["a", "b"]
    assert ctx.published == [(1, "data1"), (2, "data2"), (1, "data3")]
    assert p.config == {"k": 1}


def test_publish_bad_topic_raises_topic_error() -> None:
    p = BasePlugin()
    p.configure(_FakeContext(), None)
    with pytest.raises(TopicError, match="invalid topic '../etc'"):
        p.publish("../etc", None)


def test_publish_before_configure() -> None:
    with pytest.raises(RuntimeError, match="before configure"):
        BasePlugin().publish("t", None)


def test_config_never_none_and_log_named_after_plugin() -> None:
    class Handler(BasePlugin):
        def __init__(self) -> None:  # no super().__init__(): must still work
            self.x = 1

    h = Handler()
    assert h.config == {}
    assert isinstance(h.log, logging.Logger) and h.log.name == "Handler"
    h.configure(_FakeContext(), None)
    assert h.config == {}
    assert h.log.name == "fake_plugin"


@pytest.mark.parametrize(
    "topic",
    ["a", "output", "processed_output", "_x", "9lives", "a-b.c", "A" * 255, "x.parquet"],
)
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    "topic",
    ["", "A" * 256, ".hidden", "-x", "a/b", "../x", "a b", "é", "a\x00", "tab\t", 5, None],
)
def test_invalid_topics(topic: Any) -> None:
    with pytest.raises(TopicError):
        validate_topic(topic)
