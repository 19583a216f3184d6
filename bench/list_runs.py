"""Paging through every running run, as an engine's recovery does.

An engine that starts over a store resumes every unfinished run, reading
them with ``list_runs(status="running")`` 500 at a time. This creates N
running runs with a step recorded each on a fresh SQLite file (without
fsync: only the reads are timed), then times that paging.

    python bench/list_runs.py [--runs 200000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from aion_green.core import events as ev  # noqa: E402
from aion_green.store import Append, CreateRun, SQLiteStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200_000)
    args = parser.parse_args()
    n = args.runs
    tmp = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        store = SQLiteStore(os.path.join(tmp, "list.db"), durable=False)
        ids = [f"w-{i:07d}" for i in range(n)]
        for i in range(0, n, 5000):
            store.write_batch([CreateRun(wid, "t", "[]", f"r-{wid}", 1.0) for wid in ids[i:i + 5000]])
            store.write_batch([Append(wid, 1, [ev.NewEvent(ev.STEP_COMPLETED, 2.0, {
                "step": 1, "name": "s", "attempt": 1, "result": 1})]) for wid in ids[i:i + 5000]])
        t0 = time.perf_counter()
        after, seen = None, 0
        while True:
            page = store.list_runs(ev.RUNNING, None, 500, after)
            seen += len(page)
            if len(page) < 500:
                break
            after = page[-1].workflow_id
        took = time.perf_counter() - t0
        store.close()
        assert seen == n, (seen, n)
        print(f"{n:,} running runs listed 500 at a time: {took:.2f} s ({took / n * 1e6:.1f} us per run)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
