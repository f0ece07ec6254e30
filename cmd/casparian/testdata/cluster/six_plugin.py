# Test plugin for the environment tests: it needs the package "six", which
# only the plugin's own environment has (published with --requirements).
import pyarrow as pa
import six


class Handler:
    def execute(self, file_path):
        yield pa.record_batch([pa.array([six.__version__]), pa.array([file_path])], names=["six", "path"])
