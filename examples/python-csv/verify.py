"""Reads the example's Parquet output with pyarrow and DuckDB and checks it
against the CSV inputs. Usage: verify.py OUTPUT_DIR CSV_DIR. Exit 1 on mismatch."""

import csv
import glob
import os
import sys
from collections import defaultdict

import duckdb
import pyarrow.parquet as pq


def main(out_dir: str, csv_dir: str) -> int:
    expected_orders = 0
    expected_days = 0
    expected_revenue = 0.0
    for path in sorted(glob.glob(os.path.join(csv_dir, "*.csv"))):
        days = set()
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                expected_orders += 1
                expected_revenue += round(int(row["quantity"]) * float(row["unit_price"]), 2)
                days.add(row["ordered_at"][:10])
        expected_days += len(days)

    problems = []
    orders_files = sorted(glob.glob(os.path.join(out_dir, "orders", "*.parquet")))
    daily_files = sorted(glob.glob(os.path.join(out_dir, "daily_totals", "*.parquet")))
    orders = pq.read_table(orders_files) if orders_files else None
    daily = pq.read_table(daily_files) if daily_files else None

    print(f"pyarrow: orders       {orders.num_rows if orders else 0:>5} rows in {len(orders_files)} files (expected {expected_orders})")
    print(f"pyarrow: daily_totals {daily.num_rows if daily else 0:>5} rows in {len(daily_files)} files (expected {expected_days})")
    if orders is None or orders.num_rows != expected_orders:
        problems.append("orders row count")
    if daily is None or daily.num_rows != expected_days:
        problems.append("daily_totals row count")
    if orders is not None:
        print(f"         orders schema: {', '.join(f'{f.name}:{f.type}' for f in orders.schema)}")
        meta = pq.read_metadata(orders_files[0]).metadata or {}
        plugin = meta.get(b"casparian.plugin", b"?").decode()
        sha = meta.get(b"casparian.input_sha256", b"?").decode()[:12]
        print(f"         provenance: plugin={plugin} input_sha256={sha}…")
        if "_job_id" not in orders.column_names or "_file_version_id" not in orders.column_names:
            problems.append("lineage columns missing")

    con = duckdb.connect()
    n, revenue, jobs = con.execute(
        "SELECT count(*), round(sum(total), 2), count(DISTINCT _job_id) FROM read_parquet(?)",
        [os.path.join(out_dir, "orders", "*.parquet")],
    ).fetchone()
    d_orders, d_revenue = con.execute(
        "SELECT sum(orders), round(sum(revenue), 2) FROM read_parquet(?)",
        [os.path.join(out_dir, "daily_totals", "*.parquet")],
    ).fetchone()
    print(f"duckdb:  {n} orders from {jobs} jobs, revenue {revenue:.2f} (expected {expected_orders}, {expected_revenue:.2f})")
    print(f"duckdb:  daily_totals sum to {d_orders} orders, revenue {d_revenue:.2f}")
    if n != expected_orders or abs(revenue - expected_revenue) > 0.01:
        problems.append("duckdb orders totals")
    if d_orders != expected_orders or abs(d_revenue - expected_revenue) > 0.01:
        problems.append("duckdb daily totals")

    if problems:
        print("MISMATCH: " + ", ".join(problems))
        return 1
    print("OK: pyarrow and DuckDB read back every row the CSV files hold.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
