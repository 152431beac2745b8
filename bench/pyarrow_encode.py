"""The baseline of the store's Parquet encoding benchmark: pyarrow writing the same batch.

Usage: pyarrow_encode.py BATCH.arrow ROUNDS. Reads the Arrow IPC file (not timed), then writes it
ROUNDS times to memory as one zstd (level 3) row group, printing the seconds of each write.
"""

import sys
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq


def main() -> None:
    path, rounds = sys.argv[1], int(sys.argv[2])
    with pa.memory_map(path) as source:
        table = ipc.open_file(source).read_all()
    print(f"version {pa.__version__}")
    for _ in range(rounds):
        sink = pa.BufferOutputStream()
        started = time.perf_counter()
        pq.write_table(table, sink, compression="zstd", compression_level=3, row_group_size=table.num_rows)
        seconds = time.perf_counter() - started
        print(f"bytes {sink.getvalue().size}")
        print(f"seconds {seconds}")


if __name__ == "__main__":
    main()
