"""Check that several runs of the JSON-lines example produced equal tables.

    python examples/go-jsonl/compare.py [--ignore-lineage] OUT_DIR_A OUT_DIR_B [OUT_DIR_C ...]

Each OUT_DIR is the --output of one run (topics "events" and "errors" as
subdirectories). Rows are compared in (_job_id, line) order, schemas and values
exactly, lineage columns included. With --ignore-lineage (runs whose job ids
differ, e.g. through the job queue) the _job_id and _file_version_id columns
are dropped and rows compared in the order of all other columns. Exit status 1
on any difference.
"""

import glob
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


LINEAGE = ("_job_id", "_file_version_id")


def load(out_dir, topic, ignore_lineage):
    files = sorted(glob.glob(os.path.join(out_dir, topic, "*.parquet")))
    if not files:
        sys.exit(f"{out_dir}: no Parquet files for topic {topic}")
    table = pa.concat_tables([pq.read_table(f) for f in files]).replace_schema_metadata(None)
    if ignore_lineage:
        table = table.drop_columns(list(LINEAGE))
        return table.sort_by([(c, "ascending") for c in table.column_names])
    return table.sort_by([("_job_id", "ascending"), ("line", "ascending")])


def main(args):
    ignore_lineage = "--ignore-lineage" in args
    dirs = [a for a in args if a != "--ignore-lineage"]
    if len(dirs) < 2:
        sys.exit(__doc__)
    ok = True
    for topic in ("events", "errors"):
        first = load(dirs[0], topic, ignore_lineage)
        for other_dir in dirs[1:]:
            other = load(other_dir, topic, ignore_lineage)
            if first.schema != other.schema:
                print(f"{topic}: schema of {other_dir} differs:\n{other.schema}\nvs {dirs[0]}:\n{first.schema}")
                ok = False
            elif not first.equals(other):
                diff = [c for c in first.column_names if not first[c].equals(other[c])]
                print(f"{topic}: {other_dir} differs from {dirs[0]} in columns {diff}")
                ok = False
        print(f"{topic:7} {first.num_rows:5} rows, {first.num_columns} columns: "
              + ("identical in all " + str(len(dirs)) + " runs" if ok else "DIFFERENT"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
