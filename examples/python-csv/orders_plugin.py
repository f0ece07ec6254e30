"""Example Python plugin: CSV order exports -> two Parquet topics.

Run it:
    casparian run --plugin examples/python-csv/orders_plugin.py --output out examples/python-csv/data

Topics:
    orders        one row per order line, typed, with a computed total
    daily_totals  one row per (file, day): order count and revenue
"""

import pandas as pd
import pyarrow as pa

from casparian_flow.sdk import BasePlugin, FileEvent, PluginMetadata

MANIFEST = PluginMetadata(
    name="orders_csv",
    pattern="*.csv",
    topic="orders",
    subscriptions=[],
    version="1.0.0",
    description="Parses order CSV exports into orders and daily_totals.",
)


class Handler(BasePlugin):
    def consume(self, event: FileEvent):
        df = pd.read_csv(
            event.path,
            dtype={"order_id": "int64", "customer": "string", "product": "string", "quantity": "int64", "unit_price": "float64"},
            parse_dates=["ordered_at"],
        )
        df["ordered_at"] = df["ordered_at"].dt.tz_localize("UTC")
        df["total"] = (df["quantity"] * df["unit_price"]).round(2)
        self.publish("orders", df)

        daily = (
            df.assign(day=df["ordered_at"].dt.date)
            .groupby("day", as_index=False)
            .agg(orders=("order_id", "count"), revenue=("total", "sum"))
        )
        schema = pa.schema([("day", pa.date32()), ("orders", pa.int64()), ("revenue", pa.float64())])
        self.publish("daily_totals", pa.Table.from_pandas(daily, schema=schema, preserve_index=False))
        self.log.info("parsed %d orders over %d days", len(df), len(daily))
