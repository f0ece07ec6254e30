"""guestbench's reference: pyarrow builds the same table the bench plugins emit
({id int64, name string}, N rows) and writes it to Parquet (snappy) with an
fsync, in this process. Prints the time as a Go duration (e.g. 812.5ms)."""

import os
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    rows, path = int(sys.argv[1]), sys.argv[2]
    start = time.perf_counter()
    ids = pa.array(range(rows), type=pa.int64())
    names = pa.array(["name-%d" % (i % 1000) for i in range(rows)], type=pa.string())
    pq.write_table(pa.table({"id": ids, "name": names}), path, compression="snappy")
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    print("%.3fms" % ((time.perf_counter() - start) * 1000))


if __name__ == "__main__":
    main()
