"""End to end: a fake host runs the bridge shim as the Go host does and reads every frame."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from bridge_frames import END, HELLO
from conftest import SDK_DIR, FakeHost

from casparian_flow.bridge_shim import BOOTSTRAP


def test_bootstrap_file_matches_constant() -> None:
    assert (SDK_DIR / "BOOTSTRAP.txt").read_text(encoding="utf-8") == BOOTSTRAP
    assert BOOTSTRAP == (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from casparian_flow.bridge_shim import main; sys.exit(main(sys.argv[2]))"
    )


def test_hello_then_end_for_a_plugin_returning_nothing(host: FakeHost) -> None:
    run = host.run(
        """
        class Handler:
            def execute(self, path):
                return None
        """
    )
    run.assert_ok()
    assert [f.type for f in run.frames] == [HELLO, END]
    hello = run.frames[0].payload
    assert hello is not None
    assert hello["magic"] == "casparian-bridge" and hello["version"] == 1
    assert hello["sdk_version"] == "0.1.0"
    assert hello["pid"] == run.pid
    assert hello["runtime"] == f"CPython {'.'.join(map(str, sys.version_info[:3]))}"
    assert run.last == {"batches": 0, "rows": 0}


def test_two_topics_with_different_schemas(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa
        from casparian_flow.sdk import BasePlugin, PluginMetadata

        MANIFEST = PluginMetadata(pattern="*.csv", topic="rows")

        class Handler(BasePlugin):
            def consume(self, event):
                self.publish("rows", pa.table({"id": [1, 2, 3], "word": ["a", "b", "c"]}))
                summary = self._ctx.register_topic("summary")
                self._ctx.publish(summary, pa.table({"count": [3], "mean": [2.0]}))
                self.publish("rows", pa.table({"id": [4], "word": ["d"]}))
        """
    )
    run.assert_ok()
    assert [f.topic for f in run.batch_frames] == ["rows", "summary", "rows"]
    assert run.table("rows").to_pylist() == [
        {"id": 1, "word": "a"}, {"id": 2, "word": "b"}, {"id": 3, "word": "c"}, {"id": 4, "word": "d"},
    ]
    assert run.table("summary").to_pylist() == [{"count": 3, "mean": 2.0}]
    assert run.table("summary").schema.names == ["count", "mean"]
    assert run.last == {"batches": 3, "rows": 5}


@pytest.mark.parametrize(
    ("body", "topic", "expected"),
    [
        # bare pandas DataFrame returned (the original broke on this)
        ("return pd.DataFrame({'v': [1, 2, 3]})", "out_topic", [1, 2, 3]),
        # bare pyarrow Table and RecordBatch
        ("return pa.table({'v': [4, 5]})", "out_topic", [4, 5]),
        ("return pa.RecordBatch.from_pydict({'v': [6]})", "out_topic", [6]),
        # bare polars DataFrame
        ("return pl.DataFrame({'v': [7, 8]})", "out_topic", [7, 8]),
        # a list with None items skipped
        ("return [None, pa.table({'v': [1]}), None, pd.DataFrame({'v': [2]})]", "out_topic", [1, 2]),
        # a generator of mixed kinds with None
        (
            "yield pl.DataFrame({'v': [1]}); yield None; yield pa.RecordBatch.from_pydict({'v': [2]}); "
            "yield pd.DataFrame({'v': [3]})",
            "out_topic",
            [1, 2, 3],
        ),
    ],
)
def test_return_and_yield_forms_go_to_manifest_topic(host: FakeHost, body: str, topic: str, expected: list[int]) -> None:
    run = host.run(
        f"""
        import pandas as pd, polars as pl, pyarrow as pa
        from casparian_flow.sdk import BasePlugin, PluginMetadata
        MANIFEST = PluginMetadata(topic="{topic}")

        class Handler(BasePlugin):
            def consume(self, event):
                {body}
        """
    )
    run.assert_ok()
    assert run.topics() == [topic]
    assert run.table(topic).column("v").to_pylist() == expected
    assert run.last["rows"] == len(expected)


def test_default_topic_is_output_without_manifest(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa
        class Handler:
            def consume(self, event):
                return pa.table({"path": [event.path], "file_id": [event.file_id]})
        """
    )
    run.assert_ok()
    assert run.topics() == ["output"]
    assert run.table("output").to_pylist() == [{"path": str(run.workdir / "input.csv"), "file_id": 7}]


def test_csv_processor_canonical_plugin(host: FakeHost) -> None:
    """The original's canonical modern plugin (reference §4.3)."""
    run = host.run(
        """
        import pandas as pd
        import pyarrow as pa
        from casparian_flow.sdk import BasePlugin, PluginMetadata

        MANIFEST = PluginMetadata(pattern="*.csv", topic="processed_output", subscriptions=[])

        class Handler(BasePlugin):
            def consume(self, event):
                df = pd.read_csv(event.path)
                df["total"] = df["price"] * df["qty"]
                df["processed"] = True
                self.publish("processed_output", pa.Table.from_pandas(df))
        """,
        input_bytes=b"item,price,qty\napple,0.5,4\npear,1.25,2\n",
    )
    run.assert_ok()
    assert len(run.batch_frames) == 1
    table = run.table("processed_output")
    assert table.column_names == ["item", "price", "qty", "total", "processed"]
    assert table.to_pylist() == [
        {"item": "apple", "price": 0.5, "qty": 4, "total": 2.0, "processed": True},
        {"item": "pear", "price": 1.25, "qty": 2, "total": 2.5, "processed": True},
    ]
    assert run.last == {"batches": 1, "rows": 2}


def test_original_e2e_test_plugin(host: FakeHost) -> None:
    """The plugin of the original Rust E2E: plain Handler, execute yields one RecordBatch."""
    run = host.run(
        """
        import pyarrow as pa

        class Handler:
            def execute(self, file_path):
                batch = pa.RecordBatch.from_arrays(
                    [pa.array([1, 2, 3], type=pa.int64()), pa.array([1.5, 2.5, 3.5], type=pa.float64())],
                    names=["id", "value"],
                )
                yield batch
        """
    )
    run.assert_ok()
    assert run.topics() == ["output"]
    table = run.table("output")
    assert table.schema == pa.schema([("id", pa.int64()), ("value", pa.float64())])
    assert table.to_pylist() == [{"id": 1, "value": 1.5}, {"id": 2, "value": 2.5}, {"id": 3, "value": 3.5}]


def test_legacy_execute_on_base_plugin_and_config(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa
        from casparian_flow.sdk import BasePlugin

        class Handler(BasePlugin):
            def configure(self, ctx, config):   # does not call super(): publish must still work
                self.factor = config["factor"]

            def execute(self, file_path):
                self.publish("scaled", pa.table({"v": [self.factor * 2], "cfg": [self.config["factor"]]}))
        """,
        config={"factor": 21},
    )
    run.assert_ok()
    assert run.table("scaled").to_pylist() == [{"v": 42, "cfg": 21}]


def test_plain_handler_gets_context_through_configure(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa

        class Handler:
            def configure(self, ctx, config):
                self.ctx, self.config = ctx, config

            def consume(self, event):
                h = self.ctx.register_topic("direct")
                assert self.ctx.register_topic("direct") == h
                self.ctx.publish(h, pa.table({"job": [self.ctx.job_id], "k": [self.config["k"]]}))
                self.ctx.publish("by_name", pa.table({"x": [1]}))
        """,
        config={"k": "v"},
    )
    run.assert_ok()
    assert run.table("direct").to_pylist() == [{"job": 42, "k": "v"}]
    assert run.table("by_name").to_pylist() == [{"x": 1}]


def test_plugin_module_is_a_real_module(host: FakeHost) -> None:
    run = host.run(
        """
        import dataclasses, sys
        import pyarrow as pa

        @dataclasses.dataclass
        class Row:
            name: str

        class Handler:
            def consume(self, event):
                mod = sys.modules[__name__]
                return pa.table({
                    "name": [__name__], "file": [__file__], "same": [mod.Row is Row],
                    "row": [Row("x").name], "cwd": [__import__("os").getcwd()],
                    "path0": [sys.path[0]],
                })
        """
    )
    run.assert_ok()
    (row,) = run.table("output").to_pylist()
    assert row["name"] == "casparian_plugin"
    assert row["file"] == str(run.workdir / "plugin.py")
    assert row["same"] is True and row["row"] == "x"
    assert row["cwd"] == str(run.workdir)
    assert row["path0"] == str(SDK_DIR)


def test_plugin_exception_sends_error_with_traceback(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa
        from casparian_flow.sdk import BasePlugin

        class Handler(BasePlugin):
            def consume(self, event):
                self.publish("before", pa.table({"x": [1]}))
                raise ValueError("boom: bad row 17")
        """
    )
    err = run.assert_error("PLUGIN_ERROR")
    assert err["type"] == "ValueError"
    assert err["message"] == "boom: bad row 17"
    tb = err["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    assert f'File "{run.workdir / "plugin.py"}", line 8, in consume' in tb
    assert tb.endswith("ValueError: boom: bad row 17\n")
    assert "bridge_shim.py" not in tb  # the shim's own frames are trimmed
    assert run.table("before").to_pylist() == [{"x": 1}]  # streamed before the failure


def test_syntax_error_reports_file_and_line(host: FakeHost) -> None:
    run = host.run("import pyarrow\n\ndef broken(:\n    pass\n")
    err = run.assert_error("PLUGIN_ERROR")
    assert err["type"] == "SyntaxError"
    assert "line 3" in err["message"]
    assert "plugin.py" in err["message"]
    assert "def broken(:" in err["traceback"]
    assert f'File "{run.workdir / "plugin.py"}", line 3' in err["traceback"]


def test_missing_input_is_input_error_and_plugin_not_called(host: FakeHost) -> None:
    run = host.run(
        """
        import logging
        logging.getLogger("p").info("module loaded")
        class Handler:
            def configure(self, ctx, config):
                logging.getLogger("p").info("configure called")
            def consume(self, event):
                logging.getLogger("p").info("consume called")
        """,
        input_bytes=None,
        input_name="gone.csv",
    )
    err = run.assert_error("INPUT")
    assert err["message"] == f"input file not found: {run.workdir / 'gone.csv'}"
    assert err["type"] == "InputError"
    assert run.logs == []


def test_unknown_manifest_field_is_a_clear_error(host: FakeHost) -> None:
    run = host.run(
        """
        from casparian_flow.sdk import BasePlugin, PluginMetadata
        MANIFEST = PluginMetadata(pattern="*MCDATA", topics=["pfc_db_data"])
        class Handler(BasePlugin):
            pass
        """
    )
    err = run.assert_error("PLUGIN_ERROR")
    assert err["type"] == "ManifestError"
    assert "'topics'" in err["message"] and "valid fields are" in err["message"]
    assert "line 3" in err["traceback"]


def test_missing_handler_class(host: FakeHost) -> None:
    run = host.run("class Plugin:\n    pass\n")
    err = run.assert_error("PLUGIN_ERROR")
    assert err["type"] == "PluginLoadError"
    assert "class Handler" in err["message"]


def test_handler_without_entry_point(host: FakeHost) -> None:
    run = host.run("from casparian_flow import BasePlugin\nclass Handler(BasePlugin):\n    pass\n")
    err = run.assert_error("PLUGIN_ERROR")
    assert "neither consume(event) nor execute(path)" in err["message"]


@pytest.mark.parametrize(
    ("body", "type_name", "needle"),
    [
        ("return 'not a table'", "SchemaError", "returned a str"),
        ("return {'a': [1]}", "SchemaError", "returned a dict"),
        ("return [pa.table({'a': [1]}), 42]", "SchemaError", "yielded a int"),
        ("self.publish('ok', [1, 2])", "SchemaError", "cannot publish a list"),
        ("self.publish('../escape', pa.table({'a': [1]}))", "TopicError", "invalid topic '../escape'"),
    ],
)
def test_bad_output_is_schema_error(host: FakeHost, body: str, type_name: str, needle: str) -> None:
    run = host.run(
        f"""
        import pyarrow as pa
        from casparian_flow import BasePlugin
        class Handler(BasePlugin):
            def consume(self, event):
                {body}
        """
    )
    err = run.assert_error("SCHEMA")
    assert err["type"] == type_name
    assert needle in err["message"]
    assert "pandas.DataFrame" in err["message"] or type_name == "TopicError"


@pytest.mark.parametrize(("code", "ok"), [("0", True), ("None", True), ("3", False), ("'fatal'", False)])
def test_sys_exit_from_plugin(host: FakeHost, code: str, ok: bool) -> None:
    run = host.run(
        f"""
        import sys, pyarrow as pa
        from casparian_flow import BasePlugin
        class Handler(BasePlugin):
            def consume(self, event):
                self.publish("t", pa.table({{"a": [1]}}))
                sys.exit({code})
        """
    )
    assert run.table("t").to_pylist() == [{"a": 1}]
    if ok:
        run.assert_ok()
        assert run.last == {"batches": 1, "rows": 1}
    else:
        err = run.assert_error("PLUGIN_ERROR")
        assert err["type"] == "SystemExit"
        assert err["message"] == f"the plugin called sys.exit({eval(code)!r})"


def test_big_table_is_chunked_under_max_batch_bytes(host: FakeHost) -> None:
    limit = 1 << 20
    run = host.run(
        """
        import pyarrow as pa
        class Handler:
            def consume(self, event):
                n = 300_000
                return pa.table({
                    "id": pa.array(range(n), pa.int64()),
                    "x": pa.array(range(n), pa.float64()),
                    "s": pa.array([f"value-{i}" for i in range(n)]),
                })
        """,
        job={"max_batch_bytes": limit},
    )
    run.assert_ok()
    frames = run.batch_frames
    assert len(frames) >= 6
    for f in frames:
        assert f.topic == "output"
        assert f.ipc is not None and len(f.ipc) <= limit * 1.05
    table = run.table("output")
    assert table.num_rows == 300_000
    assert table.column("id").to_pylist()[-3:] == [299_997, 299_998, 299_999]
    assert table.column("s")[123_456].as_py() == "value-123456"
    assert run.last == {"batches": sum(len(f.batches) for f in frames), "rows": 300_000}


def test_row_over_frame_cap_is_resource_limit(host: FakeHost) -> None:
    run = host.run(
        """
        import pyarrow as pa
        class Handler:
            def consume(self, event):
                return pa.table({"blob": ["x" * 200_000]})
        """,
        job={"max_frame_bytes": 100_000},
    )
    err = run.assert_error("RESOURCE_LIMIT")
    assert err["type"] == "ResourceLimitError"
    assert "100000" in err["message"]


def test_logging_becomes_log_frames(host: FakeHost) -> None:
    run = host.run(
        """
        import logging, threading, warnings
        import pyarrow as pa
        from casparian_flow.sdk import BasePlugin

        class Handler(BasePlugin):
            def consume(self, event):
                self.log.info("reading %s", "input.csv")
                logging.getLogger("custom.parser").warning("odd row %d", 7)
                logging.getLogger("custom.parser").debug("not sent: below INFO")
                def worker(i):
                    for j in range(50):
                        logging.getLogger(f"thread{i}").info("t%d-%d", i, j)
                threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
                for t in threads: t.start()
                self.publish("t", pa.table({"a": list(range(1000))}))
                for t in threads: t.join()
                try:
                    1 / 0
                except ZeroDivisionError:
                    self.log.exception("caught")
                warnings.warn("deprecated thing")
        """
    )
    run.assert_ok()
    logs = run.logs
    assert logs[0] == {"level": "INFO", "logger": "test_plugin", "message": "reading input.csv"}
    assert logs[1] == {"level": "WARNING", "logger": "custom.parser", "message": "odd row 7"}
    assert not any("below INFO" in m["message"] for m in logs)
    for i in range(4):
        assert [m["message"] for m in logs if m["logger"] == f"thread{i}"] == [f"t{i}-{j}" for j in range(50)]
    caught = [m for m in logs if m["message"].startswith("caught")]
    assert len(caught) == 1 and caught[0]["level"] == "ERROR"
    assert "ZeroDivisionError: division by zero" in caught[0]["message"]
    warned = [m for m in logs if m["logger"] == "py.warnings"]
    assert len(warned) == 1 and "deprecated thing" in warned[0]["message"]
    assert run.table("t").num_rows == 1000


def test_large_stdout_is_not_captured_and_does_not_block(host: FakeHost) -> None:
    run = host.run(
        """
        import sys
        import pyarrow as pa
        class Handler:
            def consume(self, event):
                line = "x" * 99 + "\\n"
                for _ in range(50_000):          # 5 MB, far over a pipe buffer
                    print(line, end="")
                print("stderr too", file=sys.stderr)
                return pa.table({"done": [True]})
        """
    )
    run.assert_ok()
    assert len(run.stdout) == 5_000_000
    assert run.stdout.count(b"\n") == 50_000
    assert b"stderr too" in run.stderr
    assert run.table("output").to_pylist() == [{"done": True}]
    assert run.logs == []


def test_host_gone_exits_quietly_with_status_1(host: FakeHost) -> None:
    def hang_up(conn: socket.socket) -> bool:
        header = conn.recv(5, socket.MSG_WAITALL)
        assert header[0] == HELLO
        (length,) = struct.unpack(">I", header[1:])
        conn.recv(length, socket.MSG_WAITALL)
        return False  # close right after HELLO, like a cancelled job

    run = host.run(
        """
        import time
        import pyarrow as pa
        from casparian_flow import BasePlugin
        class Handler(BasePlugin):
            def consume(self, event):
                time.sleep(0.2)
                for _ in range(100):
                    self.publish("t", pa.table({"a": list(range(10_000))}))
        """,
        on_connect=hang_up,
    )
    assert run.returncode == 1
    assert run.frames == []
    assert b"Traceback" not in run.stderr


def test_sdk_dir_with_only_the_embedded_files(host: FakeHost) -> None:
    """The Go host embeds exactly casparian_flow/*.py and py.typed; that must be enough."""
    sdk = Path(host.root) / "sdk"
    (sdk / "casparian_flow").mkdir(parents=True)
    src = SDK_DIR / "casparian_flow"
    names = [p.name for p in src.iterdir() if p.suffix == ".py"] + ["py.typed"]
    for name in names:
        shutil.copy(src / name, sdk / "casparian_flow" / name)
    run = host.run(
        """
        import casparian_flow, pyarrow as pa
        from casparian_flow.sdk import BasePlugin
        class Handler(BasePlugin):
            def consume(self, event):
                return pa.table({"sdk": [casparian_flow.__file__]})
        """,
        sdk_dir=sdk,
    )
    run.assert_ok()
    assert run.table("output").column("sdk")[0].as_py() == str(sdk / "casparian_flow" / "__init__.py")


def test_unreadable_job_spec_exits_2(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"plugin_path": "/x.py"}))
    missing = subprocess.run(
        [sys.executable, "-I", "-c", BOOTSTRAP, str(SDK_DIR), str(tmp_path / "nope.json")],
        capture_output=True, timeout=60,
    )
    assert missing.returncode == 2
    assert b"cannot read the job spec" in missing.stderr
    bad = subprocess.run(
        [sys.executable, "-I", "-c", BOOTSTRAP, str(SDK_DIR), str(job)], capture_output=True, timeout=60
    )
    assert bad.returncode == 2
    assert b"job spec has no 'socket'" in bad.stderr


def test_no_host_listening_exits_1(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"socket": str(tmp_path / "none.sock"), "plugin_path": "/x.py", "input_path": "/in"})
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", BOOTSTRAP, str(SDK_DIR), str(job)], capture_output=True, timeout=60
    )
    assert proc.returncode == 1
    assert b"cannot connect" in proc.stderr


def test_nothing_is_sent_after_end(host: FakeHost) -> None:
    """Logs emitted after the session ends (atexit) must not follow END on the socket."""
    run = host.run(
        """
        import atexit, logging
        atexit.register(lambda: logging.getLogger("late").warning("after the end"))
        class Handler:
            def consume(self, event):
                return None
        """
    )
    run.assert_ok()
    assert run.logs == []
    assert [f.type for f in run.frames] == [HELLO, END]
    assert run.returncode == 0
    assert os.path.isdir(run.workdir)
    assert b"after the end" in run.stderr

