"""What the disk and SQLite allow on this machine: the ceilings that
bench/steps.py holds the engine's figures against, measured in the same run.

  fdatasync      os.fdatasync after a small write (4 KiB overwritten at the
                 start of a file, as a checkpointed WAL is rewound and
                 overwritten in place), per second
  single commit  one-row transactions per second in WAL, on a connection
                 opened by the engine's own SQLiteStore (so with its PRAGMAs:
                 journal_mode=WAL, synchronous=FULL, wal_autocheckpoint,
                 busy_timeout; read back and printed), each BEGIN IMMEDIATE,
                 one INSERT of an event-sized row, COMMIT: one durable commit
  batched        rows per second inserted in one transaction (executemany of
                 event-sized rows, one COMMIT), on the same kind of connection
  events commit  diagnostic: one INSERT into the engine's own `events` table
                 (its primary key and its index on the global position) per
                 durable commit, the position given (no counter)
  + counter      diagnostic: the same, plus the position taken from the
                 one-row counter as the store does (UPDATE and SELECT of
                 event_positions in the transaction)
  store commit   the engine's own store, without the engine: one
                 SQLiteStore.write_batch([Append]) of one StepCompleted-sized
                 event per durable commit, from one thread (the SQL a
                 sequential step commits, with no thread hand-off); a
                 diagnostic between the raw single commit and the engine

Each is taken on a fresh file in a temporary directory beside the engine's
(same disk), and printed as the median of --repeat runs with the spread.

    python bench/ceiling.py [--repeat 5] [--dir DIR] [--commits 2000] [--rows 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from aion_green.core.events import NewEvent  # noqa: E402
from aion_green.store import Append  # noqa: E402
from aion_green.stores.sqlite.store import SQLiteStore  # noqa: E402

# An event row as a sequential step writes it (StepCompleted of a one-line
# step): the same order of size, so a page holds as many.
_DATA = json.dumps({"step": 1, "name": "trivial", "attempt": 1, "args_crc": 2212294583, "result": 1})
_PRAGMAS = ("journal_mode", "synchronous", "wal_autocheckpoint", "busy_timeout", "page_size")


class _TempDir:
    def __init__(self, base):
        self.path = tempfile.mkdtemp(prefix="aion-ceiling-", dir=base)

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def _engine_connection(path):
    """(store, connection): the engine's SQLiteStore opened on ``path``, and
    the connection its constructor configured. (The store keeps its PRAGMAs
    in its constructor, not as constants: opening it is the only way to take
    them without copying values. ``_conn`` is private; a benchmark may.)"""
    store = SQLiteStore(path, durable=True)
    return store, store._conn


def engine_pragmas(base=None):
    """The PRAGMAs of the engine's store connection, read back from one."""
    with _TempDir(base) as d:
        store, conn = _engine_connection(os.path.join(d, "pragmas.db"))
        try:
            return {p: conn.execute(f"PRAGMA {p}").fetchone()[0] for p in _PRAGMAS}
        finally:
            store.close()


def fdatasync_per_s(n=2000, base=None, size=4096):
    """os.fdatasync per second, each after overwriting ``size`` bytes at
    offset 0 of a small file."""
    with _TempDir(base) as d:
        path = os.path.join(d, "sync.bin")
        block = os.urandom(size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            t0 = time.perf_counter()
            for _ in range(n):
                os.pwrite(fd, block, 0)
                os.fdatasync(fd)
            return n / (time.perf_counter() - t0)
        finally:
            os.close(fd)


def single_commits_per_s(n=2000, base=None):
    """One-row durable transactions per second, with the engine's PRAGMAs."""
    with _TempDir(base) as d:
        store, conn = _engine_connection(os.path.join(d, "single.db"))
        try:
            conn.execute("CREATE TABLE ceiling(id INTEGER PRIMARY KEY, wid TEXT, seq INTEGER, data TEXT)")
            for i in range(50):  # warm the file and the WAL
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO ceiling(wid, seq, data) VALUES (?,?,?)", ("w", i, _DATA))
                conn.execute("COMMIT")
            t0 = time.perf_counter()
            for i in range(n):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO ceiling(wid, seq, data) VALUES (?,?,?)", ("w", i, _DATA))
                conn.execute("COMMIT")
            return n / (time.perf_counter() - t0)
        finally:
            store.close()


def batched_rows_per_s(n=20000, base=None):
    """Rows per second inserted in one transaction (one durable commit),
    with the engine's PRAGMAs."""
    with _TempDir(base) as d:
        store, conn = _engine_connection(os.path.join(d, "batched.db"))
        try:
            conn.execute("CREATE TABLE ceiling(id INTEGER PRIMARY KEY, wid TEXT, seq INTEGER, data TEXT)")
            rows = [(f"w{i % 1000}", i, _DATA) for i in range(n)]
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO ceiling(wid, seq, data) VALUES (?,?,?)", rows)
            conn.execute("COMMIT")
            return n / (time.perf_counter() - t0)
        finally:
            store.close()


def _events_commits(n, base, counter):
    with _TempDir(base) as d:
        store, conn = _engine_connection(os.path.join(d, "events.db"))  # the engine's schema
        try:
            at = time.time()
            for i in range(n + 50):
                if i == 50:  # the first 50 warm the file and the WAL
                    t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                if counter:  # as stores/sqlite/store.py's _positions
                    conn.execute("UPDATE event_positions SET n = n + ?", (1,))
                    (pos,) = conn.execute("SELECT n FROM event_positions").fetchone()
                else:
                    pos = i + 1
                conn.execute("INSERT INTO events(workflow_id, seq, type, at, data, pos) VALUES (?,?,?,?,?,?)",
                             ("w", i + 1, "StepCompleted", at, _DATA, pos))
                conn.execute("COMMIT")
            return n / (time.perf_counter() - t0)
        finally:
            store.close()


def events_commits_per_s(n=2000, base=None):
    """One row into the engine's events table per durable commit, no counter."""
    return _events_commits(n, base, counter=False)


def counter_commits_per_s(n=2000, base=None):
    """The same, with the position drawn from the store's counter row."""
    return _events_commits(n, base, counter=True)


def store_commits_per_s(n=2000, base=None):
    """The engine's store alone: write_batch([Append of one event]) per
    durable commit, from this thread (no hand-off)."""
    with _TempDir(base) as d:
        store = SQLiteStore(os.path.join(d, "store.db"), durable=True)
        try:
            at = time.time()
            store.create_run("w", "bench.sequential", "[1000]", "run-1", at)
            head = 1
            events_of = [[NewEvent("StepCompleted", at, {"step": i, "name": "trivial", "attempt": 1,
                                                          "args_crc": 2212294583, "result": i})]
                         for i in range(n + 50)]
            for i in range(50):
                store.write_batch([Append("w", head, events_of[i])])
                head += 1
            t0 = time.perf_counter()
            for i in range(50, n + 50):
                out = store.write_batch([Append("w", head, events_of[i])])[0]
                assert out == head + 1, out
                head += 1
            return n / (time.perf_counter() - t0)
        finally:
            store.close()


CEILINGS = {
    # name: (function, size argument name, unit, what it bounds)
    "fdatasync": (fdatasync_per_s, "commits", "fdatasync/s", "bounds the disk"),
    "single_commit": (single_commits_per_s, "commits", "commits/s",
                      "bounds sequential steps, starts from one thread"),
    "batched": (batched_rows_per_s, "rows", "rows/s", "bounds concurrent steps"),
    "events_commit": (events_commits_per_s, "commits", "commits/s", "(diagnostic: the events table's keys)"),
    "counter_commit": (counter_commits_per_s, "commits", "commits/s", "(diagnostic: + the position counter)"),
    "store_commit": (store_commits_per_s, "commits", "commits/s", "(diagnostic: the engine's store alone)"),
}


def measure(repeat=1, base=None, commits=2000, rows=20000, names=None):
    """{name: [per-second figure of each run]}; the ceilings interleaved,
    run by run, so a burst of load elsewhere hits them alike."""
    out = {name: [] for name in (names or CEILINGS)}
    sizes = {"commits": commits, "rows": rows}
    for _ in range(repeat):
        for name in out:
            fn, size, _, _ = CEILINGS[name]
            out[name].append(fn(sizes[size], base=base))
    return out


def spread(values):
    return f"{min(values):,.0f}-{max(values):,.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the files go (default: the system's temp dir, "
                                                    "as bench/steps.py)")
    parser.add_argument("--commits", type=int, default=2000, help="commits (and fdatasyncs) per run")
    parser.add_argument("--rows", type=int, default=20000, help="rows of the batched transaction")
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    args = parser.parse_args()
    print("the engine's PRAGMAs (read back from SQLiteStore's connection):",
          ", ".join(f"{k}={v}" for k, v in engine_pragmas(args.dir).items()))
    runs = measure(args.repeat, args.dir, args.commits, args.rows)
    print(f"ceilings, median of {args.repeat} runs (spread):")
    for name, values in runs.items():
        _, _, unit, bounds = CEILINGS[name]
        print(f"  {name:14} {statistics.median(values):>10,.0f} {unit:12} ({spread(values)})  {bounds}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
