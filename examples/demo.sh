#!/usr/bin/env bash
# make demo: run the example plugins through the real host and read the
# Parquet back with pyarrow and DuckDB.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/casparian}
PY=${CASPARIAN_PYTHON:-.venv/bin/python}
OUT=demo-out

rm -rf "$OUT"
echo "==> Python plugin: examples/python-csv (CSV orders -> topics orders + daily_totals)"
"$BIN" run --plugin examples/python-csv/orders_plugin.py --output "$OUT/python-csv" --python "$PY" examples/python-csv/data
echo
echo "==> Reading the Parquet back with pyarrow and DuckDB"
"$PY" examples/python-csv/verify.py "$OUT/python-csv" examples/python-csv/data

echo
echo "==> The control plane: casparian start (sentinel + worker + SQLite queue in one process)"
DB="$OUT/queue.db"
"$BIN" enqueue --database "$DB" --plugin orders --plugin-file examples/python-csv/orders_plugin.py examples/python-csv/data
# ipc:// keeps the demo off the network; tcp://127.0.0.1:5555 works the same.
"$BIN" start --addr "ipc://$PWD/$OUT/sentinel.sock" --database "$DB" --output "$OUT/cluster" --python "$PY" \
    --log-level warn --exit-when-done
echo
"$BIN" jobs --database "$DB"
echo
"$BIN" workers --database "$DB"
echo
"$PY" examples/python-csv/verify.py "$OUT/cluster" examples/python-csv/data
