"""Start-and-wait round trips through gunicorn's gevent worker on loopback.

The server is ``examples/flask_app.py`` under ``gunicorn -k gevent`` on a
fresh SQLite file (durable commits); clients keep their connection open
(HTTP/1.1 keep-alive), as a web front end would. Two targets:

- ``api``: the engine's own HTTP API (``aion_green.transport.wsgi.WSGIApp``,
  mounted by the example at ``/aion``). The API has no start-and-wait in one
  call, so a round trip is two requests on the same connection:
  ``POST /aion/v1/workflows`` (start ``shop.stamp``, a one-step workflow,
  under an id the client picks; it answers once the start is durable) and
  ``GET /aion/v1/workflows/result?workflow_id=ID&timeout=60`` (wait for its
  end);
- ``api-wait``: the same API, one request per round trip:
  ``POST /aion/v1/workflows`` with ``"wait": 60`` (start, then wait for
  the end, in one request; the API has it since issue 21);
- ``flask``: ``POST /stamp/<n>``, a Flask handler that calls
  ``engine.start(...).result()`` (one request per round trip);
- ``healthz``: ``GET /aion/healthz``, which asks nothing of the engine: what
  gunicorn, the mount and the API's routing cost alone (not in ``both``);
- ``floor``: api-wait's request, served by ``bench/http_floor_app.py``: the
  same mount over an engine double that answers at once, so the round trip
  is gunicorn, the WSGI apps, the API's checks and JSON, and nothing of the
  engine; api-wait's server CPU less this is what the engine adds (not in
  ``both``);
- ``engine``: no HTTP: the example's engine in one process under
  ``patch_all()``, as gunicorn's worker has it, with a greenlet per client
  calling ``engine.start(stamp, n).result()`` (not in ``both``; the client
  CPU columns are the whole process, and a line per run gives its CPU per
  round trip by thread: the callers' greenlets, the hub, the store writer
  and reader, the step pool).

Two clients: ``raw`` (the default) is one process driving every connection
from one ``selectors`` loop, with request bytes built by string formatting
and responses read by their ``Content-Length``: the lightest Python client,
so the server's capacity is what is measured; ``http.client`` is one
thread per connection with the standard library's client (the figures
before issue 21 used it). The two cores are shared by client and server:
the client's CPU share (its own ``os.times()`` against the gunicorn
worker's ``/proc/PID/stat`` over the same window) is printed beside each
figure, and so are the group commits per round trip, records per commit
and the share of the wall time the store writer spent in its commits (the
engine's ``/aion/metrics``, read before and after).

With ``--store postgres`` the example runs on a schema of its own on the
server at ``--url`` (dropped after each run), and ``--workers N`` then
gives N engines that each drive the runs their requests start (over SQLite
one worker drives and the others are its clients; with ``--store
sqlite-leases`` the file is opened with ``?leases=on`` and each worker
drives its own, as over PostgreSQL). "server CPU" is every
worker's; the PostgreSQL server's processes are a column of their own (all
of them: measure on a server nothing else uses); the commit columns are
the one worker's that answers ``/aion/metrics``.

    python bench/http.py [--target api|api-wait|flask|both] [--client raw|http.client]
        [--clients 1,50] [--requests 4000] [--repeat 3] [--workers 1]
        [--profile DIR [--cprofile]] [--perf] [--root CHECKOUT] [--switch-interval S]
        [--store sqlite|sqlite-leases|postgres [--url URL]]

``--profile DIR``: the worker's CPU by thread over each 50-client window
(bench/http_server.py), the busiest threads' time on a CPU, waiting for
one, and asleep (``/proc/PID/task/TID/schedstat``), and how often per round
trip each went to sleep (a lock, the GIL, I/O) and was preempted (its
``status``), and with ``--cprofile`` a cProfile of its main
thread on that thread's CPU clock, in ``DIR/<target>-<repeat>/``.
``--perf``: ``perf record -g`` of the worker over each 50-client window
(needs perf; kernel.perf_event_paranoid <= 2), summed by thread and by
where the sample fell: Python's interpreter, SQLite, or a system call
(``futex``: GIL and lock hand-offs between threads; ``fdatasync``: the
commits' flushes; ``sendto``/``recvfrom``: the sockets).
"""
import os
import sys

# Run as a script, this file's folder comes first on sys.path, and this
# file's name would hide the standard library's http package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import collections  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(_HERE)
_TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workers, directory, profile=None, cprofile=False, root=ROOT, switch=None,
                 app="examples.flask_app:app", db=None):
    port = free_port()
    env = dict(os.environ, AION_GREEN_DB=db or f"sqlite:///{os.path.join(directory, 'bench.db')}",
               PYTHONPATH=root)
    if switch:
        env["AION_BENCH_SWITCH_INTERVAL"] = str(switch)
    if profile:
        env["AION_BENCH_PROFILE"] = profile
        if cprofile:
            env["AION_BENCH_CPROFILE"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers), "-b",
         f"127.0.0.1:{port}", "--no-control-socket", "--worker-connections", "1000",
         "-c", os.path.join(_HERE, "http_server.py"),
         "--chdir", root, app],
        env=dict(env, PYTHONPATH=f"{root}{os.pathsep}{ROOT}") if app.startswith("bench.") else env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            response = conn.getresponse()
            if response.status == 200:
                pid = json.loads(response.read())["pid"]
                conn.close()
                return proc, port, pid
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not come up")


def schedstat(pid):
    """Each thread's (ns on a CPU, ns runnable but waiting for one, times it
    gave up its CPU to sleep (a lock, the GIL, I/O), times it was taken off
    it), from ``/proc/PID/task/TID/schedstat`` and ``status``."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                run, wait, _ = map(int, f.read().split())
            with open(f"/proc/{pid}/task/{task}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        out[int(task)] = (run, wait, int(status["voluntary_ctxt_switches"]),
                          int(status["nonvoluntary_ctxt_switches"]))
    return out


def cpu_of(pid):
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def processes(match):
    """The pids of the processes for which ``match(ppid, command line)``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match(ppid, command):
            pids.append(int(entry))
    return pids


def cpu_of_all(pids):
    """The CPU seconds of ``pids`` so far (those still there)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_of(pid)
        except OSError:
            pass
    return total


def pg_schema(base):
    """A schema of its own on the server at ``base`` (dropped by
    :func:`drop_schema`), and the URL that works in it."""
    import uuid

    import psycopg

    schema = f"aion_bench_http_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return schema, f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def drop_schema(base, schema):
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def commits(port):
    """(group commits, records committed, seconds spent committing) so far,
    from the engine's metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/aion/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    count = re.search(r"^aion_commit_batch_size_count (\S+)", text, re.M)
    total = re.search(r"^aion_commit_batch_size_sum (\S+)", text, re.M)
    seconds = re.search(r"^aion_commit_duration_seconds_sum (\S+)", text, re.M)
    if not count or not total or not seconds:
        return 0.0, 0.0, 0.0
    return float(count.group(1)), float(total.group(1)), float(seconds.group(1))


# -- the requests of a round trip -----------------------------------------------------------
def requests_of(target, port):
    """``first(wid)`` and, for the API, ``second(wid)``: a round trip's request bytes."""
    host = f"Host: 127.0.0.1:{port}\r\n"
    if target == "healthz":
        def healthz(wid):
            return f"GET /aion/healthz HTTP/1.1\r\n{host}\r\n".encode()
        return healthz, None
    if target == "flask":
        def first(wid):
            return (f"POST /stamp/{wid} HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n").encode()
        return first, None
    if target in ("api-wait", "floor"):
        def start_and_wait(wid):
            body = f'{{"workflow":"shop.stamp","args":["{wid}"],"id":"stamp-{wid}","wait":60}}'
            return (f"POST /aion/v1/workflows HTTP/1.1\r\n{host}Content-Type: application/json"
                    f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
        return start_and_wait, None

    def first(wid):
        body = f'{{"workflow":"shop.stamp","args":["{wid}"],"id":"stamp-{wid}"}}'
        return (f"POST /aion/v1/workflows HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def second(wid):
        return (f"GET /aion/v1/workflows/result?workflow_id=stamp-{wid}&timeout=60 HTTP/1.1\r\n"
                f"{host}\r\n").encode()
    return first, second


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


class _Conn:
    __slots__ = ("sock", "buf", "wid", "stage", "began", "left")


def run_raw(port, target, clients, total, prefix):
    """``total`` round trips over ``clients`` connections, from one selectors
    loop in this thread: (latencies, wall seconds, client CPU seconds)."""
    first, second = requests_of(target, port)
    per_client = total // clients
    sel = selectors.DefaultSelector()
    latencies = []
    conns = []
    for _ in range(clients):
        conn = _Conn()
        conn.sock = socket.create_connection(("127.0.0.1", port))
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.setblocking(False)
        conn.buf = b""
        conn.left = per_client
        conn.stage = 0
        conns.append(conn)

    def send_next(conn, c):
        conn.left -= 1
        conn.wid = f"{prefix}-{c}-{conn.left}"
        conn.stage = 1
        conn.began = time.perf_counter()
        conn.sock.sendall(first(conn.wid))

    cpu0 = os.times()
    began = time.perf_counter()
    open_ = 0
    for c, conn in enumerate(conns):
        if conn.left > 0:
            sel.register(conn.sock, selectors.EVENT_READ, (c, conn))
            send_next(conn, c)
            open_ += 1
    while open_:
        for key, _ in sel.select():
            c, conn = key.data
            data = conn.sock.recv(65536)
            if not data:
                raise SystemExit("the server closed a connection")
            conn.buf += data
            head_end = conn.buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            match = _LENGTH.search(conn.buf, 0, head_end + 2)
            if match is None:
                raise SystemExit(f"a response without Content-Length: {conn.buf[:200]!r}")
            end = head_end + 4 + int(match.group(1))
            if len(conn.buf) < end:
                continue
            if conn.buf[9:12] != b"200":
                raise SystemExit(f"a request failed: {conn.buf[:end]!r}")
            conn.buf = conn.buf[end:]
            if conn.stage == 1 and second is not None:
                conn.stage = 2
                conn.sock.sendall(second(conn.wid))
                continue
            latencies.append(time.perf_counter() - conn.began)
            if conn.left > 0:
                send_next(conn, c)
            else:
                sel.unregister(conn.sock)
                conn.sock.close()
                open_ -= 1
    wall = time.perf_counter() - began
    cpu1 = os.times()
    sel.close()
    return latencies, wall, (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)


def run_threads(port, target, clients, total, prefix):
    """The same with ``http.client``, one thread per connection."""
    first, second = requests_of(target, port)
    latencies, errors = [], []
    lock = threading.Lock()
    per_client = total // clients

    def ask(conn, method, path, body=None):
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            errors.append(response.status)

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_client):
            wid = f"{prefix}-{c}-{i}"
            began = time.perf_counter()
            if target == "flask":
                ask(conn, "POST", f"/stamp/{wid}", b"")
            elif target == "api-wait":
                ask(conn, "POST", "/aion/v1/workflows", json.dumps(
                    {"workflow": "shop.stamp", "args": [wid], "id": f"stamp-{wid}",
                     "wait": 60}).encode())
            else:
                ask(conn, "POST", "/aion/v1/workflows", json.dumps(
                    {"workflow": "shop.stamp", "args": [wid], "id": f"stamp-{wid}"}).encode())
                ask(conn, "GET", f"/aion/v1/workflows/result?workflow_id=stamp-{wid}&timeout=60")
            mine.append(time.perf_counter() - began)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    cpu0 = os.times()
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    cpu1 = os.times()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[:5]}")
    return latencies, wall, (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)


_SYSCALL = re.compile(r"(?:__x64_sys_|__do_sys_)(\w+)")


def perf_summary(data, pid):
    """Samples by thread and category from a ``perf record -g`` file: a list
    of (thread, share of all samples, [(category, share of the thread's)])."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "tid,ip,sym,dso"],
                         capture_output=True, text=True).stdout
    by_tid = collections.defaultdict(collections.Counter)

    def category(frames):
        for sym, _ in frames:
            m = _SYSCALL.match(sym)
            if m:
                return "syscall " + m.group(1)
        if not frames:
            return "?"
        sym, dso = frames[0]
        if "kernel" in dso:
            return "kernel (preemption, interrupts)"
        return os.path.basename(dso).split(".")[0].split("-")[0]

    tid, frames = None, []
    for line in out.splitlines() + [""]:
        if not line.strip():
            if tid is not None:
                by_tid[tid][category(frames)] += 1
            tid, frames = None, []
        elif not line.startswith("\t"):
            tid, frames = int(line.split()[0]), []
        else:
            m = re.match(r"\s*\S+\s+(.*) \((.*)\)$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
    total = sum(sum(c.values()) for c in by_tid.values()) or 1
    rows = []
    for tid, counts in sorted(by_tid.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        if n / total < 0.01:
            continue
        name = ("main (gunicorn, WSGI, engine callers)" if tid == pid
                else "store writer" if counts.get("syscall fdatasync")
                else "store reader" if counts.get("libsqlite3") else "hub, step pool")
        rows.append((f"{name} [{tid}]", n / total,
                     [(c, k / n) for c, k in counts.most_common(8)]))
    return rows


_IN_PROCESS = r"""
from gevent import monkey; monkey.patch_all()
import json, os, sys, time, gevent
root, db, clients, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, root)
os.environ["AION_GREEN_DB"] = db
from examples.flask_app import engine, stamp

def client(c, n, prefix):
    for i in range(n):
        engine.start(stamp, f"{prefix}-{c}-{i}", id=f"stamp-{prefix}-{c}-{i}").result(timeout=60)

gevent.joinall([gevent.spawn(client, c, 10, "warm") for c in range(min(clients, 10))])
latencies = []
def timed(c, n):
    for i in range(n):
        began = time.perf_counter()
        client(c, 1, f"run{i}")
        latencies.append(time.perf_counter() - began)
main_ident = monkey.get_original("_thread", "get_ident")()

def role(ident, frame):
    # A thread's part, from the bottom of its stack (its current greenlet's).
    if ident == main_ident:
        return "callers"
    names = []
    while frame is not None:
        names.append((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name, frame))
        frame = frame.f_back
    for filename, name, f in reversed(names):
        if filename == "writer.py" and name == "_main":
            return getattr(f.f_locals.get("self"), "name", "aion-store")
        if filename == "step_pool.py":
            return "step pool"
        if filename in ("hub_thread.py", "hub.py"):
            return "hub"
    return "other"

def clocks():
    out = {}
    for ident, frame in sys._current_frames().items():
        try:
            out[ident] = (role(ident, frame), time.clock_gettime(time.pthread_getcpuclockid(ident)))
        except OSError:
            pass
    return out

cpu0, clocks0, began = os.times(), clocks(), time.perf_counter()
gevent.joinall([gevent.spawn(timed, c, total // clients) for c in range(clients)])
wall, cpu1, clocks1 = time.perf_counter() - began, os.times(), clocks()
threads = {}
for ident, (name, cpu) in clocks1.items():
    threads[name] = threads.get(name, 0.0) + cpu - clocks0.get(ident, (name, 0.0))[1]
engine.shutdown()
print(json.dumps({"latencies": latencies, "wall": wall, "threads": threads,
                  "cpu": cpu1.user + cpu1.system - cpu0.user - cpu0.system}))
"""


def measure_in_process(args, clients, total):
    directory = tempfile.mkdtemp(prefix="aion-http-")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _IN_PROCESS, args.root,
             f"sqlite:///{os.path.join(directory, 'bench.db')}", str(clients), str(total)],
            capture_output=True, text=True, check=True, cwd=directory).stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    got = json.loads(out.strip().splitlines()[-1])
    latencies, wall, cpu = sorted(got["latencies"]), got["wall"], got["cpu"]
    n = len(latencies)
    print(f"  engine, {clients} clients: CPU per round trip by thread: " + ", ".join(
        f"{name} {seconds / n * 1e6:.0f} us" for name, seconds in
        sorted(got["threads"].items(), key=lambda kv: -kv[1]) if seconds / n >= 0.5e-6))
    return {"rate": n / wall, "p50": latencies[n // 2], "p99": latencies[int(n * 0.99)],
            "client_cpu": cpu / wall, "server_cpu": 0.0, "share": 1.0, "commits": 0.0,
            "per_commit": 0.0, "writer_busy": 0.0, "server_us": cpu / n * 1e6,
            "pg_cpu": 0.0}


def measure(args, target, clients, total, r, profile_dir):
    if target == "engine":
        return measure_in_process(args, clients, total)
    directory = tempfile.mkdtemp(prefix="aion-http-")
    profile = None
    if profile_dir and clients > 1:
        profile = os.path.join(profile_dir, f"{target}-{r}")
        os.makedirs(profile, exist_ok=True)
    app = "bench.http_floor_app:app" if target == "floor" else "examples.flask_app:app"
    schema = db = None
    if args.store == "postgres":
        schema, db = pg_schema(args.url)
    elif args.store == "sqlite-leases":
        db = f"sqlite:///{os.path.join(directory, 'bench.db')}?leases=on"
    try:
        proc, port, pid = start_server(args.workers, directory, profile, args.cprofile, args.root,
                                       args.switch_interval, app, db)
    except BaseException:
        if schema:
            drop_schema(args.url, schema)
        raise
    # Every worker's CPU (with --workers N, each its own engine), and over
    # PostgreSQL the server's processes too (the whole server: run it on a
    # machine nothing else uses while this measures).
    server_pids = processes(lambda _, cmd: cmd.startswith("postgres")) if schema else []
    run = run_raw if args.client == "raw" else run_threads
    try:
        run(port, target, min(clients, 10), 100, f"warm{r}")  # the first requests start the engine
        commits0 = commits(port)
        workers = processes(lambda ppid, _: ppid == proc.pid)  # (all up once they answered)
        server0, pg0 = cpu_of_all(workers), cpu_of_all(server_pids)
        if profile:
            open(os.path.join(profile, "on"), "w").close()
            time.sleep(0.15)
            sched0 = schedstat(pid)
        perf = None
        if args.perf and clients > 1:
            data = os.path.join(directory, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-g", "-p", str(pid),
                                     "-o", data], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        latencies, wall, client_cpu = run(port, target, clients, total, f"run{r}")
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
            for name, share, cats in perf_summary(data, pid):
                print(f"  perf {target} run {r}: {name}: {share:.0%} of the worker's samples; "
                      + ", ".join(f"{c} {k:.0%}" for c, k in cats))
        if profile:
            sched1 = schedstat(pid)
            busiest = sorted(sched1, key=lambda t: sched0.get(t, (0, 0, 0, 0))[0] - sched1[t][0])[:4]
            trips = total
            for tid in busiest:
                before = sched0.get(tid, (0, 0, 0, 0))
                run = (sched1[tid][0] - before[0]) / 1e9 / wall
                waited = (sched1[tid][1] - before[1]) / 1e9 / wall
                slept = (sched1[tid][2] - before[2]) / trips
                taken = (sched1[tid][3] - before[3]) / trips
                print(f"  sched {target} run {r}: thread {tid}{' (main)' if tid == pid else ''}: "
                      f"on a CPU {run:.0%} of the wall time, runnable but waiting for a CPU "
                      f"{waited:.0%}, asleep (GIL, I/O, idle) {1 - run - waited:.0%}; per round "
                      f"trip it went to sleep {slept:.2f} times and was preempted {taken:.2f}")
            os.unlink(os.path.join(profile, "on"))
            time.sleep(0.15)
        server_cpu = cpu_of_all(workers) - server0
        pg_cpu = cpu_of_all(server_pids) - pg0
        commits1 = commits(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
        if schema:
            drop_schema(args.url, schema)
    latencies.sort()
    n = len(latencies)
    done = commits1[0] - commits0[0]
    records = commits1[1] - commits0[1]
    return {
        "rate": n / wall, "p50": latencies[n // 2], "p99": latencies[int(n * 0.99)],
        "client_cpu": client_cpu / wall, "server_cpu": server_cpu / wall,
        "share": client_cpu / (client_cpu + server_cpu) if client_cpu + server_cpu else 0.0,
        "commits": done / n, "per_commit": records / done if done else 0.0,
        "writer_busy": (commits1[2] - commits0[2]) / wall,
        "server_us": server_cpu / n * 1e6, "pg_cpu": pg_cpu / wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("api", "api-wait", "flask", "both", "healthz",
                                             "engine", "floor"),
                        default="both")
    parser.add_argument("--client", choices=("raw", "http.client"), default="raw")
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=4000,
                        help="round trips per run at the most clients (a quarter at 1 client)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", metavar="DIR")
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="the worker's sys.setswitchinterval (default: CPython's 0.005)")
    parser.add_argument("--store", choices=("sqlite", "sqlite-leases", "postgres"),
                        default="sqlite",
                        help="the example's store: a fresh SQLite file (durable; one worker "
                             "drives every run), the same opened with ?leases=on (each "
                             "worker's engine drives its own runs), or a fresh schema on the "
                             "PostgreSQL server at --url (the same)")
    parser.add_argument("--url", default=os.environ.get(
        "AION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--root", default=ROOT,
                        help="serve the example and aion_green of this checkout (a worktree of "
                             "another commit: before/after runs with one script)")
    args = parser.parse_args()
    targets = ("api", "api-wait", "flask") if args.target == "both" else (args.target,)
    counts = [int(c) for c in args.clients.split(",")]
    store = {"sqlite": "SQLite durable", "sqlite-leases": "SQLite durable, ?leases=on",
             "postgres": "PostgreSQL"}[args.store]
    print(f"start-and-wait round trips via gunicorn -k gevent -w {args.workers}, {store}, "
          f"client {args.client}, median of {args.repeat}"
          + (f", switch interval {args.switch_interval}" if args.switch_interval else "")
          + f"; load {os.getloadavg()[0]:.2f}")
    print("target clients   trips/s (runs)                  p50 ms   p99 ms  client CPU  "
          "server CPU  per trip  client share  commits/trip  records/commit  writer busy"
          + ("  PostgreSQL CPU" if args.store == "postgres" else ""))
    for target in targets:
        for clients in counts:
            total = args.requests if clients == max(counts) else max(args.requests // 4, 100)
            runs = [measure(args, target, clients, total, r, args.profile)
                    for r in range(args.repeat)]

            rates = ", ".join(f"{x['rate']:.0f}" for x in runs)

            def med(key, runs=runs):
                return statistics.median(x[key] for x in runs)
            print(f"{target:8} {clients:>7} {med('rate'):9.0f} "
                  f"({rates:20}) "
                  f"{med('p50') * 1000:8.1f} {med('p99') * 1000:8.1f} "
                  f"{med('client_cpu'):10.2f}  {med('server_cpu'):10.2f}  {med('server_us'):6.0f} us  "
                  f"{med('share'):11.0%}  {med('commits'):12.2f}  {med('per_commit'):14.1f}  "
                  f"{med('writer_busy'):10.0%}"
                  + (f"  {med('pg_cpu'):14.2f}" if args.store == "postgres" else ""),
                  flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
