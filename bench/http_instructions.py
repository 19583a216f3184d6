"""Instructions per round trip of bench/http.py's server, counted by valgrind.

bench/http.py's figure at 1 client moves by 40 % between rounds of the same
tree on this shared machine. callgrind counts the instructions a process
executes (all threads, user space; the kernel's share, fsync included, is
not counted), a figure that does not move with the load.

The server is bench/http.py's: gunicorn's gevent worker (``-w 1``) serving
``examples/flask_app.py`` on a fresh SQLite file, run under callgrind. The
client is outside valgrind: one thread, one keep-alive connection, plain
``http.client`` (the standard library's, the same code for every build), and
it sends bench/http.py's request, ``POST /stamp/<n>``: start a one-step
workflow and wait for its result.

The worker is gunicorn's fork, where ``callgrind_control`` does not reach
(valgrind's gdbserver is not there after a fork), so the app is wrapped in a
middleware with two more routes: ``POST /_callgrind/zero`` calls
``os.getsid`` and ``POST /_callgrind/dump`` calls ``os.getresgid``, and
callgrind runs with ``--zero-before`` and ``--dump-before`` on those libc
functions, which nothing else in the server calls. The wrapper is one
Python call per request, the same for every build.

After --warm round trips (the first starts the engine), the worker's counters
are zeroed; then, --rounds times: --requests round trips and a dump (which
also zeroes), and --idle seconds with no request and a dump. A round's instructions divided by
its requests are the round trip's cost; the idle dumps say what the clock
alone costs (the engine's polls and sweeps run by the clock, and a round
trip takes ~50x longer under valgrind), and the "net" figure subtracts that
rate times the round's wall time.

    python bench/http_instructions.py [--root CHECKOUT] [--python EXE]
        [--requests 200] [--rounds 3] [--idle 10] [--keep DIR]

--root and --python measure another checkout (say a worktree of an older
commit, with its own venv) with this script. --keep keeps the dumps for
``callgrind_annotate``. Needs valgrind on the PATH (Debian: apt install
valgrind); takes a few minutes.
"""
import os
import sys

# Run as a script, this file's folder comes first on sys.path, and
# bench/http.py would hide the standard library's http package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import glob  # noqa: E402
import http.client  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(_HERE)

WRAPPER = '''
import os
from examples.flask_app import app as flask_app


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/_callgrind/zero":
        os.getsid(0)
    elif path == "/_callgrind/dump":
        os.getresgid()
    else:
        return flask_app(environ, start_response)
    start_response("200 OK", [("Content-Length", "0")])
    return [b""]
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(python: str, root: str, directory: str) -> tuple[subprocess.Popen, int, int]:
    """gunicorn -k gevent -w 1 under callgrind; returns it, its port and its worker's pid."""
    port = free_port()
    env = dict(os.environ, AION_GREEN_DB=f"sqlite:///{os.path.join(directory, 'bench.db')}", PYTHONPATH=root)
    # --timeout: under valgrind the worker's heartbeat is slow, and the master
    # would take it for hung and kill it. --keep-alive: the client's
    # connection stays open through the idle spells.
    with open(os.path.join(directory, "callgrind_app.py"), "w") as f:
        f.write(WRAPPER)
    env["PYTHONPATH"] = os.pathsep.join([root, directory])
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/cg.%p",
         "--zero-before=getsid", "--dump-before=getresgid",
         python, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}",
         "--no-control-socket", "--timeout", "3600", "--keep-alive", "3600", "--chdir", root, "callgrind_app:app"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "valgrind.log"), "w"),
        cwd=directory)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            if response.status == 200:
                pid = int(re.search(rb'"pid":\s*(\d+)', body).group(1))  # type: ignore[union-attr]
                return proc, port, pid
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("gunicorn did not come up under valgrind")


def round_trips(conn: http.client.HTTPConnection, prefix: str, n: int) -> None:
    for i in range(n):
        conn.request("POST", f"/stamp/{prefix}-{i}", body=b"")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"/stamp answered {response.status}")


def control(conn: http.client.HTTPConnection, what: str) -> None:
    conn.request("POST", f"/_callgrind/{what}", body=b"")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"/_callgrind/{what} answered {response.status}")


def dump(conn: http.client.HTTPConnection, pid: int, directory: str) -> int:
    """Dump the worker's counters (which zeroes them); return the dump's instructions."""
    before = set(glob.glob(f"{directory}/cg.{pid}.*"))
    control(conn, "dump")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(glob.glob(f"{directory}/cg.{pid}.*")) - before
        for path in new:
            with open(path) as f:
                # totals, the sum of the dump's costs, is written last (so
                # the dump is whole), and the first dump's summary line
                # counts from before the zeroing.
                found = re.search(r"^totals: (\d+)", f.read(), re.MULTILINE)
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise SystemExit("callgrind made no dump")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="its interpreter (default: this one)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--keep", help="copy the callgrind dumps into this folder")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH (Debian: apt install valgrind)")
    root = os.path.abspath(args.root)
    directory = tempfile.mkdtemp(prefix="aion-httpi-")
    # valgrind runs in the temporary folder: a relative --python would not be found there.
    python = args.python if os.sep not in args.python else os.path.abspath(args.python)
    proc, port, pid = start_server(python, root, directory)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        round_trips(conn, "warm", args.warm)
        control(conn, "zero")
        per, net, idle_rates = [], [], []
        for r in range(args.rounds):
            began = time.monotonic()
            round_trips(conn, f"r{r}", args.requests)
            busy = dump(conn, pid, directory)
            wall = time.monotonic() - began
            began = time.monotonic()
            time.sleep(args.idle)
            idle = dump(conn, pid, directory)
            idle_rate = idle / (time.monotonic() - began)
            per.append(busy / args.requests)
            net.append((busy - idle_rate * wall) / args.requests)
            idle_rates.append(idle_rate)
            print(f"round {r + 1}: {busy / args.requests / 1e3:,.0f} k instructions per round trip "
                  f"({wall / args.requests * 1e3:.0f} ms each under valgrind), "
                  f"idle {idle_rate / 1e3:,.0f} k/s, net {net[-1] / 1e3:,.0f} k", flush=True)
        conn.close()
        print(f"{root}: median {statistics.median(per) / 1e3:,.0f} k instructions per round trip "
              f"(net of the idle rate: {statistics.median(net) / 1e3:,.0f} k), "
              f"{args.rounds} rounds of {args.requests}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for path in glob.glob(f"{directory}/cg.{pid}.*"):
                shutil.copy(path, args.keep)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
