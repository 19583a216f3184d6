"""Start-and-wait round trips through gunicorn's gevent worker on loopback.

Each request is ``POST /stamp/<n>`` to the example Flask app
(``examples/flask_app.py``): the handler starts a one-step durable workflow
on SQLite (durable commits) and answers with its result. Clients keep their
connection open (HTTP/1.1 keep-alive), as a web front end would.

Prints round trips per second and the latency median and p99, for 1 and
for 50 concurrent clients, with the given number of gunicorn workers (one
drives the store; with more, the others are its clients).

    python bench/http.py [--workers 1] [--requests 2000] [--repeat 3]
"""
import os
import sys

# Run as a script, this file's folder comes first on sys.path, and this
# file's name would hide the standard library's http package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import http.client  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workers, directory):
    port = free_port()
    env = dict(os.environ, AION_GREEN_DB=f"sqlite:///{os.path.join(directory, 'bench.db')}",
               PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "-b",
         f"127.0.0.1:{port}", "--no-control-socket", "--worker-connections", "1000",
         "--chdir", ROOT, "examples.flask_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not come up")


def run_clients(port, clients, total, prefix):
    latencies, errors = [], []
    lock = threading.Lock()
    per_client = total // clients

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_client):
            began = time.perf_counter()
            conn.request("POST", f"/stamp/{prefix}-{c}-{i}", body=b"")
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - began)
            if response.status != 200:
                errors.append(response.status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:5]}")
    latencies.sort()
    return len(latencies) / wall, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"start-and-wait round trips via gunicorn -k gevent -w {args.workers}, "
          f"SQLite durable, median of {args.repeat}")
    for clients, total in ((1, max(args.requests // 4, 50)), (50, args.requests)):
        rates, p50s, p99s = [], [], []
        for r in range(args.repeat):
            directory = tempfile.mkdtemp(prefix="aion-http-")
            proc, port = start_server(args.workers, directory)
            try:
                run_clients(port, min(clients, 10), 50, f"warm{r}")  # first requests start engines
                rate, p50, p99 = run_clients(port, clients, total, f"run{r}")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
                shutil.rmtree(directory, ignore_errors=True)
            rates.append(rate)
            p50s.append(p50)
            p99s.append(p99)
        print(f"{clients:>2} client(s): {statistics.median(rates):7.0f} round trips/s, "
              f"latency p50 {statistics.median(p50s) * 1000:6.1f} ms, "
              f"p99 {statistics.median(p99s) * 1000:6.1f} ms "
              f"(rates: {', '.join(f'{x:.0f}' for x in rates)})")


if __name__ == "__main__":
    main()
