"""Side by side: aion_green and DBOS Transact (the `dbos` package, SQLite
system database) doing the same work on the same machine, in one run.

Scenarios (each engine, each scenario, each repeat in its own process, on a
fresh database in a temporary directory; peak RSS is that process's own
high-water mark, VmHWM):

  sequential  one workflow of 1,000 sequential one-line steps (steps/s)
  concurrent  1,000 workflows of 10 steps, started from 50 threads (steps/s, peak RSS)
  starts      1,000 single-step workflows started back to back from one
              thread, then waited for (workflows/s)
  sleepers    10,000 workflows each sleeping 1 s, started from 50 threads
              (wall time, p99 lateness, peak RSS, RSS per sleeping workflow)
  recovery    1,000 workflows (step, durable sleep until a common deadline,
              step) parked in one process, which is SIGKILLed; once the
              deadline has passed a new process resumes them (time from
              creating the engine to all done)
  sweep       steps/s for N concurrent workflows of 10 steps, N in 1, 10,
              100 (N = 1,000 is `concurrent`); plotted to
              bench/compare_concurrency.png

Then the same scenarios (not the sweep) again in processes that call
gevent.monkey.patch_all() first, with a timeout per scenario, reporting
what each engine did (figures, an error, or a hang).

Both engines keep their default durability: aion_green `durable=True` (WAL,
synchronous=FULL: one fsync per group commit); DBOS opens SQLite with its
defaults (rollback journal, synchronous=FULL: journal and database fsynced on
every commit).

    pip install -e '.[bench]'
    python bench/compare.py [--repeat 3] [--only SCENARIO[,...]] [--engine aion|dbos|both]
                            [--quick] [--no-patched] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/http.py would shadow the standard library's http package (which dbos
# imports) while bench/ is first on sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(ROOT, "bench")]
PLOT = os.path.join(ROOT, "bench", "compare_concurrency.png")
SCENARIOS = ("sequential", "concurrent", "starts", "sleepers", "recovery", "sweep")
PATCHED_SCENARIOS = ("sequential", "concurrent", "starts", "sleepers", "recovery")
STARTERS = 50

FULL = {"sequential": 1000, "concurrent": 1000, "starts": 1000, "sleepers": 10_000, "recovery": 1000,
        "sweep": (1, 10, 100)}
QUICK = {"sequential": 200, "concurrent": 200, "starts": 200, "sleepers": 1000, "recovery": 200,
         "sweep": (1, 10, 100)}


# ---------------------------------------------------------------------------
# The child: one engine, one scenario, one process.
# ---------------------------------------------------------------------------

class _Rows(list):
    def fetchone(self):
        return self[0] if self else None

    def fetchall(self):
        return list(self)


def _read(db, sql, params=()):
    """One read of an engine's SQLite file on a connection of its own."""
    import sqlite3
    conn = sqlite3.connect(db, timeout=30)
    try:
        return _Rows(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


def _rss_mib() -> float:
    """This process's peak RSS so far (MiB). VmHWM, not getrusage: Linux
    carries ru_maxrss across fork and exec, so a child started by a bigger
    parent reports the parent's peak until it outgrows it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_threads(n_threads, fn, items):
    """fn(item) for every item, from n_threads `threading.Thread`s: real
    threads in a plain process, greenlets under patch_all (as a gevent web
    app's requests would be)."""
    import threading
    chunks = [items[i::n_threads] for i in range(n_threads)]
    errors = []

    def run(chunk):
        try:
            for item in chunk:
                fn(item)
        except BaseException as exc:  # noqa: B036 - reported by the parent
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _max_overlap(intervals):
    """The most intervals (start, end) open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


class _Counter:
    """Live executions of a step function (the recovery check)."""

    def __init__(self):
        self._ticks = []

    def tick(self):
        self._ticks.append(1)  # list.append is atomic under the GIL

    @property
    def value(self):
        return len(self._ticks)


class AionSide:
    name = "aion"

    def __init__(self, db):
        import aion_green as aion
        self.aion = aion
        self.db = db
        self.first = _Counter()
        self.second = _Counter()
        self.woke = woke = {}
        self.failed = failed = []
        first, second = self.first, self.second

        def trivial(i):
            return i

        def step_one(i):
            first.tick()
            return i

        def step_two(i):
            second.tick()
            return i

        @aion.workflow(name="cmp.sequential")
        def sequential(ctx, n):
            for i in range(n):
                ctx.step(trivial, i)
            return n

        @aion.workflow(name="cmp.ten")
        def ten(ctx):
            for i in range(10):
                ctx.step(trivial, i)
            return 10

        @aion.workflow(name="cmp.one")
        def one(ctx):
            return ctx.step(trivial, 1)

        @aion.workflow(name="cmp.sleeper")
        def sleeper(ctx, seconds, key):
            try:
                ctx.sleep(seconds)
            except Exception as exc:
                failed.append(exc)
                raise
            woke[key] = time.time()  # not recorded: the measurement only
            return seconds

        @aion.workflow(name="cmp.parked")
        def parked(ctx, until):
            from datetime import datetime, timezone
            ctx.step(step_one, 1)
            ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
            return ctx.step(step_two, 2)

        self.wf = {"sequential": sequential, "ten": ten, "one": one, "sleeper": sleeper, "parked": parked}
        cap = os.environ.get("AION_CMP_MAX_RESIDENT")  # --aion-max-resident, passed to children
        self.engine = aion.Engine(f"sqlite:///{db}", workflows=list(self.wf.values()), durable=True,
                                  max_resident=int(cap) if cap else None)

    def launch(self):
        self.engine.list(limit=1)  # the engine starts lazily; recovery begins here

    def start(self, kind, *args, wid):
        return self.engine.start(self.wf[kind], *args, id=wid)

    def result(self, handle):
        return handle.result(600)

    def all_done(self):
        return not self.engine.list(status="running", limit=1)

    def count_done(self):
        return _read(self.db, "SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0]

    def first_error(self):
        row = _read(self.db, "SELECT count(*), max(error) FROM runs WHERE status = 'failed'").fetchone()
        return f"{row[0]} failed: {str(row[1])[:300]}" if row[0] else "none failed"

    def parked_count(self):
        return _read(self.db, "SELECT count(*) FROM events WHERE type = 'TimerStarted'").fetchone()[0]

    def sleep_records(self):
        """(sleep recorded, its deadline, the workflow's code running again)
        per sleeper, wall-clock seconds."""
        rows = _read(self.db, "SELECT workflow_id, at, data FROM events WHERE type = 'TimerStarted' "
            "AND workflow_id LIKE 's%'").fetchall()
        return [(at, json.loads(data)["fire_at"], self.woke[wid]) for wid, at, data in rows if wid in self.woke]


class DbosSide:
    name = "dbos"

    def __init__(self, db):
        from dbos import DBOS, SetWorkflowID
        self.DBOS, self.SetWorkflowID = DBOS, SetWorkflowID
        self.db = db
        self.first = _Counter()
        self.second = _Counter()
        self.woke = woke = {}
        self.failed = failed = []
        first, second = self.first, self.second
        # A fixed version and executor id: recovery on launch takes the
        # PENDING workflows of this executor and application version.
        DBOS(config={"name": "compare", "system_database_url": f"sqlite:///{db}",
                     "application_version": "compare-1", "executor_id": "local",
                     "log_level": "WARNING"})

        @DBOS.step()
        def trivial(i):
            return i

        @DBOS.step()
        def step_one(i):
            first.tick()
            return i

        @DBOS.step()
        def step_two(i):
            second.tick()
            return i

        @DBOS.workflow()
        def sequential(n):
            for i in range(n):
                trivial(i)
            return n

        @DBOS.workflow()
        def ten():
            for i in range(10):
                trivial(i)
            return 10

        @DBOS.workflow()
        def one():
            return trivial(1)

        @DBOS.workflow()
        def sleeper(seconds, key):
            try:
                DBOS.sleep(seconds)
            except Exception as exc:
                failed.append(exc)
                raise
            woke[key] = time.time()  # not recorded: the measurement only
            return seconds

        @DBOS.workflow()
        def parked(until):
            step_one(1)
            # Never 0: DBOS.sleep(0) records nothing, which would shift the
            # replay's function ids.
            DBOS.sleep(max(0.001, until - time.time()))
            return step_two(2)

        self.wf = {"sequential": sequential, "ten": ten, "one": one, "sleeper": sleeper, "parked": parked}

    def launch(self):
        self.DBOS.launch()  # recovers this executor's PENDING workflows

    def start(self, kind, *args, wid):
        with self.SetWorkflowID(wid):
            return self.DBOS.start_workflow(self.wf[kind], *args)

    def result(self, handle):
        return handle.get_result()

    def all_done(self):
        # A direct read: DBOS.list_workflows refuses to run under patch_all
        # (it sees DBOS's own background event loop as running).
        return not _read(self.db, "SELECT 1 FROM workflow_status WHERE status IN "
                                "('PENDING', 'ENQUEUED') LIMIT 1").fetchone()

    def count_done(self):
        return _read(self.db, "SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'").fetchone()[0]

    def first_error(self):
        import base64
        import pickle
        row = _read(self.db, "SELECT count(*), max(o.error) FROM workflow_status w LEFT JOIN workflow_output o "
                           "ON o.workflow_uuid = w.workflow_uuid WHERE w.status = 'ERROR'").fetchone()
        if not row[0]:
            return "none failed"
        try:
            err = repr(pickle.loads(base64.b64decode(row[1])))
        except Exception:
            err = str(row[1])
        return f"{row[0]} failed: {err[:300]}"

    def parked_count(self):
        return _read(self.db, "SELECT count(*) FROM operation_outputs WHERE function_name = 'DBOS.sleep'").fetchone()[0]

    def sleep_records(self):
        # (workflow_status.completed_at has whole seconds on Python < 3.12.)
        rows = _read(self.db, "SELECT workflow_uuid, started_at_epoch_ms, output FROM operation_outputs "
            "WHERE function_name = 'DBOS.sleep' AND workflow_uuid LIKE 's%'").fetchall()
        return [(s / 1000, float(json.loads(out)), self.woke[w]) for w, s, out in rows if w in self.woke]


def _side(engine, db):
    return AionSide(db) if engine == "aion" else DbosSide(db)


def child_main(spec):
    if spec["patched"]:
        from gevent import monkey
        monkey.patch_all()
    sys.path.insert(0, ROOT)
    scenario, n, db = spec["scenario"], spec["n"], spec["db"]
    side = _side(spec["engine"], db)
    out = {}

    if scenario == "resume":
        # The process after the kill: its clock runs from creating the engine.
        t0 = time.perf_counter()
        side.launch()
        while not side.all_done():
            time.sleep(0.02)
        out["recovery_s"] = time.perf_counter() - t0
        out["completed"] = side.count_done()
        out["step_one_reran"] = side.first.value
        out["step_two_ran"] = side.second.value
        _emit(out)

    side.launch()
    side.result(side.start("one", wid="warm-up"))
    base = _rss_mib()
    out["rss_base_mib"] = base

    if scenario == "sequential":
        t0 = time.perf_counter()
        side.result(side.start("sequential", n, wid="seq"))
        dt = time.perf_counter() - t0
        out.update(seconds=dt, steps_per_s=n / dt)
    elif scenario in ("concurrent", "sweep"):
        handles = []
        t0 = time.perf_counter()
        _in_threads(min(STARTERS, n), lambda i: handles.append(side.start("ten", wid=f"c{i}")), list(range(n)))
        for h in handles:
            side.result(h)
        dt = time.perf_counter() - t0
        out.update(seconds=dt, steps_per_s=10 * n / dt, rss_peak_mib=_rss_mib())
    elif scenario == "starts":
        t0 = time.perf_counter()
        handles = [side.start("one", wid=f"b{i}") for i in range(n)]
        started = time.perf_counter() - t0
        for h in handles:
            side.result(h)
        dt = time.perf_counter() - t0
        out.update(seconds=dt, workflows_per_s=n / dt, start_calls_s=started)
    elif scenario == "sleepers":
        handles = []

        def start(i):
            if side.failed:  # a peer whose sleep raises: stop starting, report it
                raise side.failed[0]
            handles.append(side.start("sleeper", 1.0, f"s{i}", wid=f"s{i}"))

        t0 = time.time()
        _in_threads(STARTERS, start, list(range(n)))
        started = time.time() - t0
        for h in handles:
            side.result(h)
        wall = time.time() - t0
        peak = _rss_mib()
        recs = side.sleep_records()
        late = [end - deadline for _, deadline, end in recs]
        asleep = _max_overlap([(began, deadline) for began, deadline, _ in recs])
        out.update(wall_s=wall, start_s=started, done=len(recs), p50_late_ms=statistics.median(late) * 1000,
                   p99_late_ms=_percentile(late, 0.99) * 1000, max_late_ms=max(late) * 1000,
                   rss_peak_mib=peak, max_asleep=asleep, kib_per_sleeper=(peak - base) * 1024 / asleep)
    elif scenario == "park":
        until = spec["until"]
        t0 = time.time()
        _in_threads(min(STARTERS, n), lambda i: side.start("parked", until, wid=f"r{i}"), list(range(n)))
        while side.parked_count() < n:
            if time.time() > until:
                _emit({"error": f"only {side.parked_count()} of {n} parked before the deadline "
                                f"({side.first_error()}); raise --park-budget if none failed"})
            time.sleep(0.02)
        parked_rss = _rss_mib()
        out.update(park_s=time.time() - t0, slack_s=until - time.time(), step_one_ran=side.first.value,
                   rss_parked_mib=parked_rss, kib_per_parked=(parked_rss - base) * 1024 / n)
        print("PARKED " + json.dumps(out), flush=True)
        while True:  # waits for SIGKILL
            time.sleep(60)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    _emit(out)


def _emit(out):
    print("RESULT " + json.dumps(out), flush=True)
    # No graceful shutdown: every figure is taken, and a peer that hangs on
    # its way out (under patch_all, say) must not hide them.
    os._exit(0)


# ---------------------------------------------------------------------------
# The parent: runs the children, takes medians, prints and plots.
# ---------------------------------------------------------------------------

def _spawn(spec):
    # stderr goes to a file: a peer that logs a traceback per workflow would
    # fill a pipe and block.
    err = open(spec["db"] + f".{spec['scenario']}.stderr", "w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    proc.err_file = err
    return proc


def _stderr(proc):
    proc.err_file.seek(0)
    text = proc.err_file.read()
    proc.err_file.close()
    return text


def _reap(proc, timeout):
    """(RESULT dict or None, note) of a child, killing it past timeout."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, f"timed out after {timeout:.0f} s (killed); stderr: {_tail(_stderr(proc))}"
    err = _stderr(proc)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            if "error" in res:
                return None, res["error"]
            return res, ""
    return None, f"exit {proc.returncode}; stderr: {_tail(err)}"


def _tail(text, n=400):
    text = (text or "").strip().replace("\n", " | ")
    return text[-n:] if text else "(empty)"


def run_one(engine, scenario, n, patched, timeout, park_budget):
    tmp = tempfile.mkdtemp(prefix=f"cmp-{engine}-")
    db = os.path.join(tmp, "bench.db")
    try:
        spec = {"engine": engine, "scenario": scenario, "n": n, "db": db, "patched": patched}
        if scenario != "recovery":
            return _reap(_spawn(spec), timeout)
        until = time.time() + park_budget[engine]
        proc = _spawn(dict(spec, scenario="park", until=until))
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, "")] + [lines.put("")],
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        parked = None
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            if line.startswith("PARKED "):
                parked = json.loads(line[7:])
                break
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
                proc.wait()
                return None, res.get("error", "park child ended early")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err = _stderr(proc)
        if parked is None:
            return None, f"never parked ({proc.returncode}); stderr: {_tail(err)}"
        time.sleep(max(0.0, until - time.time()) + 0.1)  # every deadline has passed
        res, note = _reap(_spawn(dict(spec, scenario="resume")), timeout)
        if res is not None:
            res.update({k: parked[k] for k in ("park_s", "slack_s", "rss_parked_mib", "kib_per_parked")})
            if res["completed"] < n:
                return None, f"only {res['completed']} of {n} completed after recovery"
        return res, note
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def median_of(runs, key):
    vals = [r[key] for r in runs if r is not None and key in r]
    return statistics.median(vals) if vals else None


def collect(args, sizes, engines, scenarios, patched):
    """{(engine, scenario, n): {"runs": [...], "notes": [...]}}"""
    results = {}
    for scenario in scenarios:
        ns = sizes["sweep"] if scenario == "sweep" else (sizes[scenario],)
        for n in ns:
            for engine in engines:
                entry = results.setdefault((engine, scenario, n), {"runs": [], "notes": []})
                for i in range(args.repeat):
                    t0 = time.monotonic()
                    res, note = run_one(engine, scenario, n, patched, args.timeout, args.park_budget)
                    tag = f"{'patched ' if patched else ''}{engine:4} {scenario:10} n={n:<6} #{i + 1}"
                    if res is None:
                        print(f"  {tag}: FAILED: {note}", flush=True)
                        entry["notes"].append(note)
                        break  # a peer that fails once is not retried (time)
                    entry["runs"].append(res)
                    brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()}
                    print(f"  {tag}: {time.monotonic() - t0:5.1f} s {brief}", flush=True)
    return results


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:,.2f}{unit}" if abs(v) < 10 else f"{v:,.1f}{unit}"


ROWS = (
    # label, scenario, key, unit, higher is better, target ratio
    ("1 workflow x {n} sequential steps: steps/s", "sequential", "steps_per_s", "", True, 10),
    ("{n} workflows x 10 steps, concurrent: steps/s", "concurrent", "steps_per_s", "", True, 30),
    ("{n} workflows x 10 steps: peak RSS", "concurrent", "rss_peak_mib", " MiB", False, None),
    ("{n} single-step workflows back to back: workflows/s", "starts", "workflows_per_s", "", True, 10),
    ("{n} workflows sleeping 1 s: wall, first start to last end", "sleepers", "wall_s", " s", False, None),
    ("{n} workflows sleeping 1 s: starting them (50 threads)", "sleepers", "start_s", " s", False, None),
    ("{n} workflows sleeping 1 s: p99 lateness (wake - deadline)", "sleepers", "p99_late_ms", " ms", False, None),
    ("{n} workflows sleeping 1 s: peak RSS", "sleepers", "rss_peak_mib", " MiB", False, None),
    ("{n} workflows sleeping 1 s: most asleep at once", "sleepers", "max_asleep", "", True, None),
    ("{n} workflows asleep at once (recovery's first process): RSS per sleeping workflow", "recovery",
     "kib_per_parked", " KiB", False, 10),
    ("recovery: {n} workflows resumed after SIGKILL: time to all done", "recovery", "recovery_s", " s", False, None),
)


def table(results, sizes, engines, patched):
    lines = ["| figure | aion_green | DBOS | ratio (aion better by) | target |", "|---|---|---|---|---|"]
    for label, scenario, key, unit, higher, target in ROWS:
        n = sizes[scenario]
        a = results.get(("aion", scenario, n))
        d = results.get(("dbos", scenario, n))
        if a is None and d is None:
            continue
        av = median_of(a["runs"], key) if a else None
        dv = median_of(d["runs"], key) if d else None
        aval = _fmt(av, unit) if av is not None else ("failed" if a and a["notes"] else "-")
        dval = _fmt(dv, unit) if dv is not None else ("failed" if d and d["notes"] else "-")
        ratio, met = "-", ""
        if av and dv:
            r = av / dv if higher else dv / av
            ratio = f"{r:,.1f}x"
            if target:
                met = f">= {target}x: {'met' if r >= target else 'MISSED'}"
        lines.append(f"| {label.format(n=f'{n:,}')} | {aval} | {dval} | {ratio} | {met} |")
    if "recovery" in [k[1] for k in results]:
        for engine in engines:
            e = results.get((engine, "recovery", sizes["recovery"]))
            if e and e["runs"]:
                r = e["runs"][-1]
                lines.append(f"\n{engine}: recovery check (last run): {r['completed']:,} completed, "
                             f"first step re-ran {r['step_one_reran']} times, second step ran "
                             f"{r['step_two_ran']:,} times; parking took {r['park_s']:.1f} s")
    notes = [(k, note) for k, v in results.items() for note in v["notes"]]
    for (engine, scenario, n), note in notes:
        lines.append(f"\n{'patched ' if patched else ''}{engine} {scenario} n={n}: {note}")
    return "\n".join(lines)


def sweep_points(results, sizes, engine):
    pts = []
    for n in sizes["sweep"]:
        v = median_of(results.get((engine, "sweep", n), {"runs": []})["runs"], "steps_per_s")
        if v is not None:
            pts.append((n, v))
    v = median_of(results.get((engine, "concurrent", sizes["concurrent"]), {"runs": []})["runs"], "steps_per_s")
    if v is not None:
        pts.append((sizes["concurrent"], v))
    return sorted(pts)


def plot(results, sizes, engines, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    labels = {"aion": "aion_green", "dbos": "DBOS Transact 3.4"}
    for engine, marker in zip(engines, ("o", "s")):
        pts = sweep_points(results, sizes, engine)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=labels[engine])
            for x, y in pts:
                ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent workflows (10 one-line steps each)")
    ax.set_ylabel("steps/s (median)")
    ax.set_title("Steps/s against concurrency, SQLite, durable commits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {os.path.relpath(path, ROOT)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed")
    parser.add_argument("--patched-repeat", type=int, default=1,
                        help="runs per figure under patch_all() (what each engine does there)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--engine", choices=("aion", "dbos", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--no-patched", action="store_true", help="skip the runs under patch_all()")
    parser.add_argument("--patched-only", action="store_true", help="only the runs under patch_all()")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    parser.add_argument("--park-budget", type=float, default=None,
                        help="recovery: seconds from the first start to the common deadline "
                             "(default: aion 15, DBOS 60; --quick 5 and 20)")
    parser.add_argument("--aion-max-resident", type=int, default=None,
                        help="run aion_green with Engine(max_resident=N): parked runs beyond N "
                             "leave memory (residency)")
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    parser.add_argument("--plot", default=PLOT)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aion_max_resident is not None:
        os.environ["AION_CMP_MAX_RESIDENT"] = str(args.aion_max_resident)
    if args.child:
        child_main(json.loads(args.child))
        return
    sizes = QUICK if args.quick else FULL
    if args.timeout is None:
        args.timeout = 120.0 if args.quick else 600.0
    # The first process must park every workflow before the deadline; DBOS
    # starts far fewer per second, and the machine is noisy.
    if args.park_budget is None:
        args.park_budget = {"aion": 5.0, "dbos": 20.0} if args.quick else {"aion": 15.0, "dbos": 60.0}
    else:
        args.park_budget = {"aion": args.park_budget, "dbos": args.park_budget}
    scenarios = [s for s in (args.only.split(",") if args.only else SCENARIOS) if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose among {', '.join(SCENARIOS)}")
    engines = ("aion", "dbos") if args.engine == "both" else (args.engine,)

    import gevent

    import aion_green
    versions = [f"aion_green {aion_green.__version__}", f"gevent {gevent.__version__}"]
    try:
        from importlib.metadata import version
        versions.append(f"dbos {version('dbos')}")
    except Exception:
        pass
    print(f"{', '.join(versions)}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"median of {args.repeat} (under patch_all: {args.patched_repeat}); {'quick sizes' if args.quick else 'full sizes'}", flush=True)

    report = {}
    if not args.patched_only:
        print("plain processes:", flush=True)
        plain = collect(args, sizes, engines, scenarios, patched=False)
        report["plain"] = plain
        print("\n## plain\n" + table(plain, sizes, engines, False))
        if "sweep" in scenarios or "concurrent" in scenarios:
            print("\nsteps/s against concurrency (10 steps per workflow):")
            for engine in engines:
                print(f"  {engine}: " + ", ".join(f"N={n}: {v:,.0f}" for n, v in sweep_points(plain, sizes, engine)))
            if "sweep" in scenarios and args.plot:
                plot(plain, sizes, engines, args.plot)
    if not args.no_patched:
        pscen = [s for s in scenarios if s in PATCHED_SCENARIOS]
        if pscen:
            print("\nunder gevent.monkey.patch_all():", flush=True)
            patched = collect(argparse.Namespace(**dict(vars(args), repeat=args.patched_repeat)),
                              sizes, engines, pscen, patched=True)
            report["patched"] = patched
            print("\n## under gevent.monkey.patch_all()\n" + table(patched, sizes, engines, True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({mode: {f"{e}/{s}/{n}": v for (e, s, n), v in res.items()}
                       for mode, res in report.items()}, f, indent=1)


if __name__ == "__main__":
    main()
