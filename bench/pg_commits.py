"""Group commits on PostgreSQL, the store alone: K connections (threads),
each appending batches of B events to runs of its own as fast as it can
for S seconds; commits/s and events/s. What the store-wide event stream's
commit-ordered positions cost (issue 18: a one-row counter locked until
each commit) shows here without the engine's noise; compare two trees:

    python bench/pg_commits.py TREE K B S      # e.g. . 4 20 5
"""
import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.abspath(sys.argv[1]))
import psycopg  # noqa: E402

from aion_green.core import events as ev  # noqa: E402
from aion_green.store import Append, CreateRun  # noqa: E402
from aion_green.stores.postgres.store import PostgresStore  # noqa: E402


def main():
    writers, batch, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    base = os.environ.get("AION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    schema = "aion_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = f"{base}?options=-csearch_path%3D{schema}"
    try:
        stores = [PostgresStore(url) for _ in range(writers)]
        for k, store in enumerate(stores):
            store.write_batch([CreateRun(f"r{k}-{i}", "m.wf", "[]", f"run{k}-{i}", 1.0)
                               for i in range(batch)])
        commits = [0] * writers
        stop = time.monotonic() + seconds

        def work(k):
            store, heads = stores[k], dict.fromkeys(range(batch), 1)
            while time.monotonic() < stop:
                outcomes = store.write_batch([Append(f"r{k}-{i}", heads[i], [ev.NewEvent(
                    ev.STEP_COMPLETED, 2.0, {"step": heads[i]})]) for i in range(batch)])
                heads = dict(enumerate(outcomes))
                commits[k] += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"{sys.argv[1]}: {writers} writers x {batch} events per commit: "
              f"{sum(commits) / seconds:.0f} commits/s, {sum(commits) * batch / seconds:.0f} events/s")
        for store in stores:
            store.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
