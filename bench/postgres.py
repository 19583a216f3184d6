"""Engine processes sharing one PostgreSQL database, beside SQLite.

A loader creates the runs unowned (one transaction), then K engine
processes claim and drive them until all have ended:

(a) ``--runs`` workflows of 10 trivial steps (steps/s);
(b) ``--runs`` workflows of 1 trivial step (workflows/s).

Printed for 1, 2 and 4 engine processes on PostgreSQL, and for one engine
on a SQLite file (durable commits) with the same work, as the reference.
Each figure is the median of ``--repeat`` runs, each on a fresh schema
(PostgreSQL) or file (SQLite), taken round robin over the configurations
(SQLite, 1, 2, 4 engines, then again), so that other work on a shared
machine falls on each alike.

For each engine count on PostgreSQL it also prints (issue 21):

share    how many of the runs each engine drove, from the store: a run's
         ``owner`` once it has ended is the engine that recorded its end
         (every append is fenced by the lease its owner holds, and a
         finished run is never claimed again); sorted, largest first,
         median of each rank over the repeats
steps    each engine's own count of completed steps (its metrics), which
         also counts the steps of runs it drove only in part
cpu      CPU seconds per wall second over the measured window, from
         /proc: the engine processes (all their threads), the server (the
         backends of these engines, by application_name, and the
         server's background processes: WAL writer, checkpointer...),
         this loader (its process and backends: it polls a count of the
         ended runs every 50 ms), the rest of the machine (other jobs on
         this shared machine), and the machine's busy total against its
         cores
commits  the engines' group commits per second (their metrics, whole
         life: the few heartbeat commits outside the window are noise),
         how long one took, and the busiest engine's writer thread's share
         of the wall time spent in commits, and in all its work (commits
         and calls: the history read of each claimed run, claims, lease
         renewals; timed by this bench around the writer's batches)
bound    which resource limits the figure: "cores" when the machine's
         busy total is at least 90 % of its cores; else "engines" when an
         engine process uses at least 90 % of one core (its hub, writer and
         step threads share one GIL); else "server": the engines wait on
         the server's commits (a round trip and the WAL's fsync each; the
         commits line says how much of the time)
leases   lease renewals and misses summed over the engines (an engine's
         ``metrics.leases``: a miss is a renewal that failed or committed
         after the leases it extended ran out), and the least time any
         renewal had to spare; the engines run with ``--lease`` seconds
         (2 by default: a renewal every 0.67 s, so a run of a few seconds
         sees several)

    python bench/postgres.py [--url postgresql://postgres@127.0.0.1:5432/test]
                             [--runs 1000] [--repeat 5] [--engines 1,2,4]
                             [--lease 2] [--no-sqlite]
"""
import argparse
import json
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

_TICK = os.sysconf("SC_CLK_TCK")


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


def worker(url, lease):
    """An engine process: drive what it claims until SIGTERM; then print
    its own figures (steps completed, lease renewals) as one JSON line."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    engine = aion.Engine(url, workflows=[ten, one], max_resident=1000, lease=lease)
    engine.list(limit=1)
    # The writer thread's busy time (commits, and calls such as the history
    # reads of claimed runs): the bench's own probe, not an engine figure.
    writer, busy = engine._epoch.writer, [0.0]
    for name in ("_run_batch", "_run_urgent"):
        def timed(*args, _run=getattr(writer, name)):
            began = time.perf_counter()
            try:
                return _run(*args)
            finally:
                busy[0] += time.perf_counter() - began
        setattr(writer, name, timed)
    print(f"ready {engine.engine_id}", flush=True)
    while not stop:
        time.sleep(0.05)
    figures = engine.metrics
    leases = getattr(figures, "leases", None)  # (None before issue 21: to compare with)
    print("stats " + json.dumps({
        "steps": sum(sum(f.completed.counts) for f in list(figures.steps.values())),
        "commits": sum(figures.commits.seconds.counts), "commit_seconds": figures.commits.seconds.sum,
        "writer_busy": busy[0],
        "renewals": getattr(leases, "renewals", 0), "missed": getattr(leases, "missed", 0),
        "lost": getattr(leases, "lost", 0), "tightest": getattr(leases, "tightest", None)}),
        flush=True)
    engine.shutdown()


def load(store, wtype, runs):
    now = time.time()
    for start in range(0, runs, 1000):
        store.write_batch([CreateRun(f"w{k:06}", wtype, "[]", uuid.uuid4().hex, now)
                           for k in range(start, min(start + 1000, runs))])


def finished(store):
    counts = store.count_runs_by_status()
    return counts.get("completed", 0) + counts.get("failed", 0)


# -- CPU, from /proc ---------------------------------------------------------------------
def _cpu_seconds(pid):
    """User + system CPU seconds of a process (all its threads); None once gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine():
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # (guest time is already counted in user)
    return (total - idle) / _TICK, total / _TICK


def _server_pids(conn, app):
    """The server processes that serve these engines: their backends (by
    application_name) and the server's background processes."""
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                        "OR backend_type <> 'client backend'", (app,)).fetchall()
    return {pid for (pid,) in rows}


class CpuWindow:
    """CPU used over a window by the engines, the server, this loader (its
    process and its backends) and the machine."""

    def __init__(self, conn, app, engine_pids):
        self.conn, self.app, self.engine_pids = conn, app, list(engine_pids)

    def _loader(self):
        rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                 (f"{self.app}_loader",)).fetchall()
        return sum(_cpu_seconds(pid) or 0.0 for (pid,) in rows) + _cpu_seconds(os.getpid())

    def begin(self):
        self.server = {pid: _cpu_seconds(pid) for pid in _server_pids(self.conn, self.app)}
        self.engines = [_cpu_seconds(pid) for pid in self.engine_pids]
        self.loader = self._loader()
        self.machine = _machine()
        self.began = time.perf_counter()

    def end(self):
        wall = time.perf_counter() - self.began
        busy, total = _machine()
        engines = [(_cpu_seconds(pid) or 0.0) - (then or 0.0)
                   for pid, then in zip(self.engine_pids, self.engines)]
        server = 0.0
        for pid in _server_pids(self.conn, self.app) | set(self.server):
            now = _cpu_seconds(pid)
            if now is not None:  # (a backend that came during the window counts from 0)
                server += now - (self.server.get(pid) or 0.0)
        loader = (self._loader() - self.loader) / wall
        cores = (total - self.machine[1]) / wall  # the machine's cores, as /proc counts them
        machine = (busy - self.machine[0]) / wall
        return {"engines": [e / wall for e in engines], "server": server / wall,
                "loader": loader, "machine": machine, "cores": cores,
                "rest": max(0.0, machine - sum(engines) / wall - server / wall - loader)}


def bound_of(cpu):
    """Which resource limits the figure (see the module docstring)."""
    if cpu["machine"] >= 0.9 * cpu["cores"]:
        return "cores"
    if max(cpu["engines"], default=0.0) >= 0.9:
        return "engines"
    return "server"


# -- one measurement ---------------------------------------------------------------------
def _named(url, app):
    """The URL with sessions named ``app`` in pg_stat_activity."""
    return f"{url}{'&' if '?' in url else '?'}application_name={app}"


def measure(url, wtype, runs, engines, lease=2.0):
    """Engines up first; then the runs appear, and the clock runs until the
    last has ended. Over PostgreSQL, also who drove what and the CPU."""
    from aion_green.stores import open_store

    postgres = url.startswith("postgres")
    app = f"aion_bench_{uuid.uuid4().hex[:8]}"
    engine_url = _named(url, app) if postgres else url
    store = open_store(_named(url, f"{app}_loader") if postgres else url)
    conn = None
    if postgres:
        import psycopg

        conn = psycopg.connect(url, autocommit=True, application_name=f"{app}_loader")
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", engine_url,
                                   "--lease", str(lease)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(engines)]
        ids = []
        stats = []
        try:
            for proc in procs:
                line = proc.stdout.readline().split()
                assert line[:1] == ["ready"], f"an engine process did not start: {line}"
                ids.append(line[1])
            window = CpuWindow(conn, app, [p.pid for p in procs]) if postgres else None
            if window is not None:
                window.begin()
            began = time.perf_counter()
            load(store, wtype, runs)
            while finished(store) < runs:
                time.sleep(0.05)
            wall = time.perf_counter() - began
            cpu = window.end() if window is not None else None
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                for line in proc.stdout:
                    if line.startswith("stats "):
                        stats.append(json.loads(line[6:]))
                proc.wait(timeout=60)
                proc.stdout.close()
        result = {"wall": wall, "cpu": cpu, "stats": stats}
        if postgres:
            ended = dict(conn.execute(
                "SELECT owner, count(*) FROM aion_runs WHERE status IN ('completed', 'failed') "
                "GROUP BY owner").fetchall())
            result["ended_by"] = [int(ended.get(i, 0)) for i in ids]
            result["unowned"] = sum(int(n) for owner, n in ended.items() if owner not in ids)
        return result
    finally:
        if conn is not None:
            conn.close()
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


def _median(values):
    return statistics.median(values) if values else float("nan")


def summary(results, runs, steps):
    """The medians of one engine count's repeats, as one printed block."""
    wall = _median([r["wall"] for r in results])
    lines = [f"{wall:6.2f} s  {runs * steps / wall:8.0f} steps/s  {runs / wall:7.0f} workflows/s"]
    if results[0].get("ended_by") is None:
        return lines
    # Shares by rank (largest first): engines are interchangeable between repeats.
    ranked = [sorted(r["ended_by"], reverse=True) for r in results]
    shares = [_median([row[k] for row in ranked]) for k in range(len(ranked[0]))]
    spread = [f"{min(row[k] for row in ranked)}-{max(row[k] for row in ranked)}"
              for k in range(len(ranked[0]))]
    lines.append("share   " + ", ".join(f"{100 * n / runs:.0f} %" for n in shares)
                 + f"  (runs ended, by rank: {', '.join(spread)} over the repeats)")
    steps_each = [sorted((s["steps"] for s in r["stats"]), reverse=True) for r in results]
    if all(len(row) == len(ranked[0]) for row in steps_each):
        lines.append("steps   " + ", ".join(
            f"{_median([row[k] for row in steps_each]):.0f}" for k in range(len(ranked[0])))
            + "  (completed by each engine, its own count)")
    cpus = [r["cpu"] for r in results]
    engines = _median([sum(c["engines"]) for c in cpus])
    busiest = _median([max(c["engines"]) for c in cpus])
    ours = _median([sum(c["engines"]) + c["server"] + c["loader"] for c in cpus])
    lines.append(f"cpu     engines {engines:.2f} (busiest {busiest:.2f}), server "
                 f"{_median([c['server'] for c in cpus]):.2f}, loader "
                 f"{_median([c['loader'] for c in cpus]):.2f}, rest "
                 f"{_median([c['rest'] for c in cpus]):.2f} (other jobs); this bench "
                 f"{ours:.2f}, machine "
                 f"{_median([c['machine'] for c in cpus]):.2f} of "
                 f"{_median([c['cores'] for c in cpus]):.2f} cores  (CPU s per s)")
    commits = _median([sum(s["commits"] for s in r["stats"]) / r["wall"] for r in results])
    busy = _median([max(s["commit_seconds"] for s in r["stats"]) / r["wall"] for r in results])
    took = _median([1000 * sum(s["commit_seconds"] for s in r["stats"])
                    / max(1, sum(s["commits"] for s in r["stats"])) for r in results])
    writer = _median([max(s.get("writer_busy", 0.0) for s in r["stats"]) / r["wall"]
                      for r in results])
    lines.append(f"commits {commits:.0f}/s over the engines, {took:.2f} ms each; the busiest "
                 f"writer thread committing {100 * busy:.0f} % of the time, busy "
                 f"{100 * writer:.0f} % (commits and calls: history reads, claims...)")
    bounds = [bound_of(c) for c in cpus]
    lines.append(f"bound   {max(set(bounds), key=bounds.count)}  ({', '.join(bounds)})")
    renewals = sum(s["renewals"] for r in results for s in r["stats"])
    missed = sum(s["missed"] for r in results for s in r["stats"])
    lost = sum(s["lost"] for r in results for s in r["stats"])
    tight = [s["tightest"] for r in results for s in r["stats"] if s["tightest"] is not None]
    lines.append(f"leases  {renewals} renewals, {missed} missed, {lost} lost"
                 + (f"; least spare {min(tight):.2f} s" if tight else "")
                 + "  (all repeats)")
    unowned = sum(r["unowned"] for r in results)
    if unowned:
        lines.append(f"        ({unowned} runs ended under an owner that is not one of the engines)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("AION_TEST_POSTGRES",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="1,2,4")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--no-sqlite", action="store_true", help="leave out the SQLite reference")
    parser.add_argument("--scenarios", default="a,b", help="a (10 steps), b (1 step), or both")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.lease)
        return
    counts = [int(n) for n in args.engines.split(",")]
    print(f"{args.runs} runs per scenario, median of {args.repeat}; "
          f"{os.cpu_count()} CPUs on this machine; lease {args.lease:g} s")
    scenarios = {"a": ("(a) 10 steps", "bench.pg.ten", 10), "b": ("(b) 1 step", "bench.pg.one", 1)}
    for key in args.scenarios.split(","):
        label, wtype, steps = scenarios[key]
        # Round robin over the configurations, one measurement of each per
        # round: on a shared machine a burst of other work then lands on
        # every configuration alike, not on whichever ran at the time.
        configs = ([] if args.no_sqlite else [0]) + counts
        results = {config: [] for config in configs}
        for _ in range(args.repeat):
            for config in configs:
                results[config].append(measure_one(args, wtype, config))
        if not args.no_sqlite:
            print(f"{label}: {'SQLite, 1 engine':<24} {summary(results[0], args.runs, steps)[0]}")
        for engines in counts:
            lines = summary(results[engines], args.runs, steps)
            print(f"{label}: {f'PostgreSQL, {engines} engine(s)':<24} {lines[0]}")
            for line in lines[1:]:
                print(f"    {line}")
            print(flush=True)


def measure_one(args, wtype, engines):
    """One measurement: ``engines`` engine processes on a fresh PostgreSQL
    schema, or (0) one engine on a fresh SQLite file."""
    if engines == 0:
        directory = tempfile.mkdtemp(prefix="aion-bench-")
        try:
            return measure(f"sqlite:///{directory}/bench.db", wtype, args.runs, 1)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    schema, url = pg_schema(args.url)
    try:
        return measure(url, wtype, args.runs, engines, args.lease)
    finally:
        drop_schema(args.url, schema)

if __name__ == "__main__":
    sys.exit(main())
