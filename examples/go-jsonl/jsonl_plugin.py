"""The Python twin of the Go example plugin (examples/go-jsonl/jsonl): the same
topics, schemas and rows, so the three guest kinds can be compared.

    casparian run --plugin examples/go-jsonl/jsonl_plugin.py --output out examples/go-jsonl/data
"""

import datetime as dt
import json

import pyarrow as pa

from casparian_flow.sdk import BasePlugin, FileEvent

EVENTS = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("level", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("duration_ms", pa.float64()),
    ]
)
ERRORS = pa.schema([pa.field("line", pa.int64(), nullable=False), pa.field("error", pa.string(), nullable=False)])


def _parse_ts(text):
    # RFC 3339, as Go's time.RFC3339Nano accepts it (Z or an offset).
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


class Handler(BasePlugin):
    def consume(self, event: FileEvent):
        file_path = event.path
        events = {name: [] for name in EVENTS.names}
        errors = {name: [] for name in ERRORS.names}
        with open(file_path, encoding="utf-8") as f:
            for line_no, text in enumerate(f, start=1):
                text = text.rstrip("\n")
                if not text:
                    continue
                try:
                    e = json.loads(text)
                    if not isinstance(e, dict):
                        raise ValueError
                except ValueError:
                    errors["line"].append(line_no)
                    errors["error"].append("invalid JSON")
                    continue
                if e.get("ts") is None or e.get("level") is None:
                    errors["line"].append(line_no)
                    errors["error"].append("missing ts or level")
                    continue
                try:
                    ts = _parse_ts(e["ts"])
                except (TypeError, ValueError):
                    errors["line"].append(line_no)
                    errors["error"].append('bad timestamp "%s"' % e["ts"])
                    continue
                events["line"].append(line_no)
                events["ts"].append(ts)
                events["level"].append(e["level"])
                events["message"].append(e.get("message") or "")
                d = e.get("duration_ms")
                events["duration_ms"].append(None if d is None else float(d))
        if events["line"]:
            self.publish("events", pa.table(events, schema=EVENTS))
        if errors["line"]:
            self.publish("errors", pa.table(errors, schema=ERRORS))
        self.log.info("parsed events: %d lines, %d bad", len(events["line"]) + len(errors["line"]), len(errors["line"]))
