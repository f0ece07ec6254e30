#!/usr/bin/env bash
# make demo: run the example plugins of every guest kind through the real host,
# then through the sentinel + worker + SQLite queue, and read the Parquet back.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/casparian}
PY=${CASPARIAN_PYTHON:-.venv/bin/python}
GOPLUGIN=${GOPLUGIN:-bin/examples/jsonl}
WASM=${WASM:-bin/examples/jsonl.wasm}
OUT=demo-out

rm -rf "$OUT"
echo "==> Python plugin: examples/python-csv (CSV orders -> topics orders + daily_totals)"
"$BIN" run --plugin examples/python-csv/orders_plugin.py --output "$OUT/python-csv" --python "$PY" examples/python-csv/data
echo
echo "==> Reading the Parquet back with pyarrow and DuckDB"
"$PY" examples/python-csv/verify.py "$OUT/python-csv" examples/python-csv/data

echo
echo "==> Go plugin examples/go-jsonl, one source built two ways: a go-plugin executable ..."
"$BIN" run --plugin "$GOPLUGIN" --output "$OUT/jsonl-goplugin" examples/go-jsonl/data
echo
echo "==> ... and a WASM module in the wazero sandbox"
"$BIN" run --plugin "$WASM" --output "$OUT/jsonl-wasm" examples/go-jsonl/data
echo
echo "==> ... and its Python twin (examples/go-jsonl/jsonl_plugin.py)"
"$BIN" run --plugin examples/go-jsonl/jsonl_plugin.py --output "$OUT/jsonl-python" --python "$PY" examples/go-jsonl/data
echo
echo "==> The three guest kinds wrote the same tables"
"$PY" examples/go-jsonl/compare.py "$OUT/jsonl-goplugin" "$OUT/jsonl-wasm" "$OUT/jsonl-python"

echo
echo "==> The control plane: casparian start (sentinel + worker + SQLite queue in one process)"
DB="$OUT/queue.db"
"$BIN" enqueue --database "$DB" --plugin orders --plugin-file examples/python-csv/orders_plugin.py examples/python-csv/data
"$BIN" enqueue --database "$DB" --plugin jsonl_go --plugin-file "$GOPLUGIN" \
    --sink events=parquet://jsonl-goplugin/events --sink errors=parquet://jsonl-goplugin/errors examples/go-jsonl/data
"$BIN" enqueue --database "$DB" --plugin jsonl_wasm --plugin-file "$WASM" \
    --sink events=parquet://jsonl-wasm/events --sink errors=parquet://jsonl-wasm/errors examples/go-jsonl/data
# ipc:// keeps the demo off the network; tcp://127.0.0.1:5555 works the same.
"$BIN" start --addr "ipc://$PWD/$OUT/sentinel.sock" --database "$DB" --output "$OUT/cluster" --python "$PY" \
    --log-level warn --exit-when-done
echo
"$BIN" jobs --database "$DB"
echo
"$BIN" workers --database "$DB"
echo
"$PY" examples/python-csv/verify.py "$OUT/cluster" examples/python-csv/data
"$PY" examples/go-jsonl/compare.py --ignore-lineage "$OUT/cluster/jsonl-goplugin" "$OUT/cluster/jsonl-wasm" "$OUT/jsonl-python"
