"""Group commits on PostgreSQL, the store alone: K connections (threads),
each appending batches of B events to runs of its own as fast as it can
for S seconds; commits/s and events/s. What the store-wide event stream's
commit-ordered positions cost (issue 18: a one-row counter locked until
each commit) shows here without the engine's noise; compare two trees:

    python bench/pg_commits.py TREE K B S [RTT_MS]     # e.g. . 4 20 5 1

RTT_MS: the stores reach the server through a relay in this process that
holds each chunk RTT_MS/2 milliseconds each way: a server on another
machine, where each wait for an answer costs a round trip (issue 21: the
pipelined group commit waits twice per batch).
"""
import collections
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.abspath(sys.argv[1]))
import psycopg  # noqa: E402

from aion_green.core import events as ev  # noqa: E402
from aion_green.store import Append, CreateRun  # noqa: E402
from aion_green.stores.postgres.store import PostgresStore  # noqa: E402


def _relay(target, delay):
    """A TCP relay on a free local port to ``target`` (host, port) that
    holds every chunk ``delay`` seconds in each direction; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src, dst):
        held = collections.deque()
        ready = threading.Condition()

        def send():
            while True:
                with ready:
                    while not held:
                        ready.wait()
                    due, chunk = held.popleft()
                time.sleep(max(0.0, due - time.monotonic()))
                if not chunk:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(chunk)

        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            with ready:
                held.append((time.monotonic() + delay, chunk))
                ready.notify()
            if not chunk:
                return

    def accept():
        while True:
            client, _ = listener.accept()
            server = socket.create_connection(target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=pipe, args=(server, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def main():
    writers, batch, seconds = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rtt_ms = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    base = os.environ.get("AION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    schema = "aion_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    served = base
    if rtt_ms:
        parts = urllib.parse.urlsplit(base)
        port = _relay((parts.hostname, parts.port or 5432), rtt_ms / 2000)
        served = parts._replace(netloc=parts.netloc.replace(
            f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname,
            f"127.0.0.1:{port}")).geturl()
    url = f"{served}?options=-csearch_path%3D{schema}"
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
        print(f"{sys.argv[1]}: {writers} writers x {batch} events per commit, {rtt_ms:g} ms "
              f"of round trip: {sum(commits) / seconds:.0f} commits/s, "
              f"{sum(commits) * batch / seconds:.0f} events/s, "
              f"{1000 * seconds * writers / max(1, sum(commits)):.2f} ms per commit")
        for store in stores:
            store.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
