# The plugin of the original's Rust E2E (tests/e2e/schema.sql): a plain Handler
# whose execute yields one RecordBatch {id int64, value float64}.
import pyarrow as pa


class Handler:
    def execute(self, file_path):
        batch = pa.RecordBatch.from_arrays(
            [pa.array([1, 2, 3], type=pa.int64()), pa.array([1.5, 2.5, 3.5], type=pa.float64())],
            names=["id", "value"],
        )
        yield batch
