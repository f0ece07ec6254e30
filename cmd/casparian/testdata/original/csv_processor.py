# The original's canonical plugin shape (tests/e2e/test_publish_execute_verify.py):
# must run unchanged.
from casparian_flow.sdk import BasePlugin, PluginMetadata
import pandas as pd
import pyarrow as pa

MANIFEST = PluginMetadata(
    pattern="*.csv",
    topic="processed_output",
    subscriptions=[],
)


class Handler(BasePlugin):
    def consume(self, event):
        file_path = event.path
        df = pd.read_csv(file_path)
        df["processed"] = True
        df["row_count"] = len(df)
        self.publish("processed_output", pa.Table.from_pandas(df))
