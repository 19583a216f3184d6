"""Engine processes sharing one PostgreSQL database, beside SQLite.

A loader creates the runs unowned (one transaction), then K engine
processes claim and drive them until all have ended:

(a) ``--runs`` workflows of 10 trivial steps (steps/s);
(b) ``--runs`` workflows of 1 trivial step (workflows/s).

Printed for 1, 2 and 4 engine processes on PostgreSQL, and for one engine
on a SQLite file (durable commits) with the same work, as the reference.
Each figure is the median of ``--repeat`` runs, each on a fresh schema
(PostgreSQL) or file (SQLite).

    python bench/postgres.py [--url postgresql://postgres@127.0.0.1:5432/test]
                             [--runs 2000] [--repeat 3] [--engines 1,2,4]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import aion_green as aion  # noqa: E402
from aion_green.store import CreateRun  # noqa: E402


def trivial(i):
    return i


@aion.workflow(name="bench.pg.ten")
def ten(ctx):
    for i in range(10):
        ctx.step(trivial, i)
    return 10


@aion.workflow(name="bench.pg.one")
def one(ctx):
    return ctx.step(trivial, 1)


def worker(url):
    """An engine process: drive what it claims until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    engine = aion.Engine(url, workflows=[ten, one], max_resident=1000)
    engine.list(limit=1)
    print("ready", flush=True)
    while not stop:
        time.sleep(0.05)
    engine.shutdown()


def load(store, wtype, runs):
    now = time.time()
    for start in range(0, runs, 1000):
        store.write_batch([CreateRun(f"w{k:06}", wtype, "[]", uuid.uuid4().hex, now)
                           for k in range(start, min(start + 1000, runs))])


def finished(store, runs):
    return sum(len(store.list_runs(status, None, runs, None))
               for status in ("completed", "failed"))


def measure(url, wtype, runs, engines):
    """Engines up first; then the runs appear, and the clock runs until the
    last has ended."""
    from aion_green.stores import open_store

    store = open_store(url)
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", url],
                                  stdout=subprocess.PIPE, text=True) for _ in range(engines)]
        try:
            for proc in procs:
                proc.stdout.readline()
            began = time.perf_counter()
            load(store, wtype, runs)
            while finished(store, runs) < runs:
                time.sleep(0.05)
            wall = time.perf_counter() - began
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
                proc.stdout.close()
        return wall
    finally:
        store.close()


def pg_schema(base):
    import psycopg

    schema = f"aion_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}options=-csearch_path%3D{schema}"


def drop_schema(base, schema):
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("AION_TEST_POSTGRES",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="1,2,4")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    counts = [int(n) for n in args.engines.split(",")]
    print(f"{args.runs} runs per scenario, median of {args.repeat}; "
          f"{os.cpu_count()} CPUs on this machine")
    for label, wtype, steps in (("(a) 10 steps", "bench.pg.ten", 10), ("(b) 1 step", "bench.pg.one", 1)):
        rows = []
        walls = []
        for _ in range(args.repeat):
            directory = tempfile.mkdtemp(prefix="aion-bench-")
            try:
                walls.append(measure(f"sqlite:///{directory}/bench.db", wtype, args.runs, 1))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        rows.append(("SQLite, 1 engine", statistics.median(walls)))
        for engines in counts:
            walls = []
            for _ in range(args.repeat):
                schema, url = pg_schema(args.url)
                try:
                    walls.append(measure(url, wtype, args.runs, engines))
                finally:
                    drop_schema(args.url, schema)
            rows.append((f"PostgreSQL, {engines} engine(s)", statistics.median(walls)))
        for name, wall in rows:
            print(f"{label}: {name:<24} {wall:6.2f} s  {args.runs * steps / wall:8.0f} steps/s  "
                  f"{args.runs / wall:7.0f} workflows/s")


if __name__ == "__main__":
    sys.exit(main())
