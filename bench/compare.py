"""Side by side: aion_green, DBOS Transact (the `dbos` package, SQLite
system database) and Celery (Redis broker and results, acks_late; a real
`celery worker` subprocess, prefork and -P gevent) doing the same work on
the same machine, in one run.

Scenarios (each engine, each scenario, each repeat in its own process, on a
fresh database in a temporary directory; peak RSS is that process's own
high-water mark, VmHWM):

  sequential  one workflow of 1,000 sequential one-line steps (steps/s)
  chain       100 workflows of 10 sequential steps, each started and waited
              for before the next (Celery: 100 chains of 10 tasks, each
              task given the previous one's result) (steps/s)
  concurrent  1,000 workflows of 10 steps, started from 50 threads (steps/s,
              peak RSS); Celery: 1,000 chains of 10 in flight at once
  starts      1,000 single-step workflows started back to back from one
              thread, then waited for (workflows/s); Celery: 1,000
              single-task jobs sent, then their results waited for
  kill        1,000 jobs of one step that counts its execution in Redis and
              then takes 20 ms; once 30 % have begun, the worker is
              SIGKILLed (aion_green: the engine's process; Celery: the
              worker's process group) and a new one started; then: jobs
              lost (no result), jobs whose step ran twice, time to all done
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
what each engine did (figures, an error, or a hang); not Celery, whose
gevent mode is its worker's pool (`celery_gevent`), not the client's.

Both SQL engines keep their default durability: aion_green `durable=True`
(WAL, synchronous=FULL: one fsync per group commit); DBOS opens SQLite with
its defaults (rollback journal, synchronous=FULL: journal and database
fsynced on every commit). Celery keeps its jobs and results in Redis, as
durable as that server is configured (printed: here in memory only), and
records nothing per step: a chain's intermediate results are Redis keys.

Celery runs against the Redis server on 127.0.0.1:6379, which the bench
never starts or stops: database 11, every key prefixed `aionbench21:` (the
broker's and the results' `global_keyprefix`), and only those keys deleted
after each run. Settings: task_acks_late, JSON, no remote control, gossip,
mingle or heartbeat; kombu's visibility_timeout 10 s (its default, 3,600 s,
would hold a killed worker's jobs for an hour; --celery-visibility), its
restore sweep every second; the prefork pool has one process per CPU, the
gevent pool 100 greenlets (--celery-gevent-concurrency) with 200 Redis
connections (kombu's default 10 ran out). Each Celery run starts its own
worker (the wait for it to come up is not timed) and stops it.

    pip install -e '.[bench]'
    python bench/compare.py [--repeat 3] [--only SCENARIO[,...]]
                            [--engine all|both|aion,dbos,celery,celery_gevent]
                            [--quick] [--no-patched] [--json FILE]
"""
from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:3] == ["--celery-worker", "gevent"]:
    # `celery worker -P gevent` patches before anything is imported; so do we.
    from gevent import monkey as _monkey
    _monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/http.py would shadow the standard library's http package (which dbos
# imports) while bench/ is first on sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(ROOT, "bench")]
PLOT = os.path.join(ROOT, "bench", "compare_concurrency.png")
SCENARIOS = ("sequential", "chain", "concurrent", "starts", "sleepers", "recovery", "kill", "sweep")
PATCHED_SCENARIOS = ("sequential", "chain", "concurrent", "starts", "sleepers", "recovery", "kill")
ENGINES = ("aion", "dbos", "celery", "celery_gevent")
LABELS = {"aion": "aion_green", "dbos": "DBOS Transact 3.4", "celery": "Celery (prefork)",
          "celery_gevent": "Celery (-P gevent)"}
# What each engine is run for (the others' rows show "-").
SUPPORTS = {
    "aion": set(SCENARIOS),
    "dbos": set(SCENARIOS) - {"kill"},
    "celery": {"chain", "concurrent", "starts", "kill", "sweep"},
    "celery_gevent": {"chain", "concurrent", "starts", "kill", "sweep"},
}
STARTERS = 50

FULL = {"sequential": 1000, "chain": 100, "concurrent": 1000, "starts": 1000, "sleepers": 10_000,
        "recovery": 1000, "kill": 1000, "sweep": (1, 10, 100)}
QUICK = {"sequential": 200, "chain": 20, "concurrent": 200, "starts": 200, "sleepers": 1000,
         "recovery": 200, "kill": 200, "sweep": (1, 10, 100)}

# Celery: the Redis server this machine runs (never started or stopped
# here). Every key this bench writes starts with KEY_PREFIX, in database
# REDIS_DB, and only those keys are deleted afterwards.
REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 11
KEY_PREFIX = "aionbench21:"
CELERY_QUEUE = "aionbench21"
# The kill test's job: count the execution in Redis, then take this long.
EFFECT_SECONDS = 0.02
KILL_AT = 0.3  # SIGKILL once this share of the jobs have begun


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


_REDIS = {}


def _redis():
    """This native thread's Redis client (created on first use, so a
    prefork child makes its own). One per native thread: under patch_all a
    socket belongs to the hub of the thread that made it, and a step pool
    thread that used another thread's connection failed with "Cannot switch
    to a different thread"."""
    from gevent import monkey
    ident = monkey.get_original("_thread", "get_ident")()
    client = _REDIS.get(ident)
    if client is None:
        import redis
        client = _REDIS[ident] = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    return client


def _redis_cleanup():
    """Delete this bench's keys (KEY_PREFIX) and nothing else."""
    try:
        r = _redis()
        keys = list(r.scan_iter(match=KEY_PREFIX + "*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
    except Exception as exc:  # the figures are taken; say so and go on
        print(f"  (Redis cleanup failed: {exc!r})", flush=True)


def trivial(i):
    """A one-line step (Celery's task; not a lambda: Celery builds its
    signature check from the function's name)."""
    return i


def effect(run, job, seconds):
    """The kill test's job body, the same for every engine: count this
    execution where the killed process cannot lose it, then work a while."""
    _redis().hincrby(f"{KEY_PREFIX}{run}:effects", job, 1)
    time.sleep(seconds)
    return job


def _effects(run, n):
    """(jobs begun, jobs that ran twice or more, executions beyond the first)."""
    counts = [int(v) for v in _redis().hgetall(f"{KEY_PREFIX}{run}:effects").values()]
    return len(counts), sum(1 for c in counts if c > 1), sum(c - 1 for c in counts)


def _celery_app():
    """The Celery app of the client and of the worker (the same settings on
    both sides): Redis broker and results, acks_late."""
    from celery import Celery
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    visibility = float(os.environ.get("AION_CMP_CELERY_VISIBILITY", "10"))
    app = Celery("cmp", broker=url, backend=url, set_as_current=True)
    app.conf.update(
        # A task is acknowledged once it has run, so a killed worker's
        # tasks are delivered again (at least once), not lost.
        task_acks_late=True,
        task_default_queue=CELERY_QUEUE,
        broker_transport_options={
            "global_keyprefix": KEY_PREFIX,
            # A killed worker's unacknowledged tasks go back to the queue
            # after this many seconds (kombu's default: 3,600), checked
            # every unacked_restore_interval seconds.
            "visibility_timeout": visibility,
            "unacked_restore_interval": 1,
            "unacked_restore_limit": 10_000,
            # redis-py's connections per channel (kombu's default 10): a
            # gevent pool of 100 publishing chains and acking at once runs
            # out of them ("Too many connections", acks lost).
            "max_connections": int(os.environ.get("AION_CMP_CELERY_POOL_LIMIT", "10")),
        },
        result_backend_transport_options={"global_keyprefix": KEY_PREFIX},
        task_serializer="json", result_serializer="json", accept_content=["json"],
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=int(os.environ.get("AION_CMP_CELERY_POOL_LIMIT", "10")),
    )
    tasks = {
        "trivial": app.task(name="cmp.trivial")(trivial),
        "effect": app.task(name="cmp.effect")(effect),
    }
    return app, tasks


def celery_worker_main(pool, concurrency):
    """`celery worker` for _celery_app (run as `compare.py --celery-worker
    POOL N`, which patches first for gevent)."""
    app, _ = _celery_app()
    app.worker_main(["worker", "-P", pool, "-c", str(concurrency), "-Q", CELERY_QUEUE, "-l", "WARNING",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"])


class _CeleryWorker:
    """A `celery worker` subprocess in its own process group (the prefork
    pool's children with it), started and stopped by the bench."""

    def __init__(self, pool, concurrency, db, tag):
        self.pool, self.concurrency = pool, concurrency
        self.log = db + f".worker-{tag}.log"
        self.pgid_file = db + f".worker-{tag}.pgid"
        self.proc = None

    def start(self):
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--celery-worker", self.pool, str(self.concurrency)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with open(self.pgid_file, "w") as f:  # the parent kills it should this process die first
            f.write(str(self.proc.pid))

    def pids(self):
        """The worker's processes (its process group)."""
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # pgrp
                    out.append(int(entry))
        return out

    def hwm_mib(self):
        """Sum of the peak RSS (VmHWM) of the worker's processes."""
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total += int(line.split()[1]) / 1024
            except OSError:
                pass
        return total

    def kill(self, sig=signal.SIGKILL, timeout=15.0):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:  # the pool's children, should any outlive the main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.unlink(self.pgid_file)
        except OSError:
            pass

    def stop(self):
        self.kill(signal.SIGTERM)


def _chain10(tasks, i):
    """A chain of 10 tasks, each given the previous one's result."""
    from celery import chain
    t = tasks["trivial"]
    return chain(t.s(i), *[t.s() for _ in range(9)])


def _celery_get_all(results, timeout=600.0):
    """Wait for every result, one after another, as a client would.
    (ResultSet.get, which joins on the Redis backend natively, hung or
    returned early here with chains, and after results already read.)"""
    deadline = time.monotonic() + timeout
    for r in results:
        r.get(timeout=max(0.1, deadline - time.monotonic()))


def _celery_succeeded(ids):
    """How many of these task ids have a SUCCESS result in Redis (read
    directly: the kill test counts what is recorded, not what the client
    library has seen)."""
    done = 0
    for i in range(0, len(ids), 500):
        for raw in _redis().mget([f"{KEY_PREFIX}celery-task-meta-{t}" for t in ids[i:i + 500]]):
            if raw is not None and json.loads(raw).get("status") == "SUCCESS":
                done += 1
    return done


def celery_child(spec):
    """One Celery scenario: this process is the client (it sends the jobs
    and waits for their results in Redis); the worker is a subprocess."""
    scenario, n, db = spec["scenario"], spec["n"], spec["db"]
    pool = "gevent" if spec["engine"] == "celery_gevent" else "prefork"
    concurrency = spec["celery_gevent_c"] if pool == "gevent" else (os.cpu_count() or 2)
    if pool == "gevent":
        # With kombu's default of 10 Redis connections, a gevent pool of 100
        # ran out ("Too many connections", "Couldn't ack") and chains hung:
        # one per greenlet, as Celery's users are told to set. The worker
        # inherits it.
        os.environ["AION_CMP_CELERY_POOL_LIMIT"] = str(2 * concurrency)
    app, tasks = _celery_app()
    worker = _CeleryWorker(pool, concurrency, db, "1")
    out = {}
    try:
        worker.start()
        tasks["trivial"].delay(1).get(timeout=120)  # the worker is up and consuming
        out["rss_base_mib"] = _rss_mib()
        if scenario == "starts":
            t0 = time.perf_counter()
            results = [tasks["trivial"].delay(i) for i in range(n)]
            started = time.perf_counter() - t0
            _celery_get_all(results)
            dt = time.perf_counter() - t0
            out.update(seconds=dt, workflows_per_s=n / dt, start_calls_s=started)
        elif scenario == "chain":
            t0 = time.perf_counter()
            for i in range(n):
                assert _chain10(tasks, i).apply_async().get(timeout=120) == i
            dt = time.perf_counter() - t0
            out.update(seconds=dt, steps_per_s=10 * n / dt)
        elif scenario in ("concurrent", "sweep"):
            results = []
            t0 = time.perf_counter()
            _in_threads(min(STARTERS, n), lambda i: results.append(_chain10(tasks, i).apply_async()),
                        list(range(n)))
            _celery_get_all(results)
            dt = time.perf_counter() - t0
            out.update(seconds=dt, steps_per_s=10 * n / dt, rss_peak_mib=_rss_mib() + worker.hwm_mib())
        elif scenario == "kill":
            run = spec["run"]
            results = [tasks["effect"].delay(run, f"j{i}", EFFECT_SECONDS) for i in range(n)]
            while _redis().hlen(f"{KEY_PREFIX}{run}:effects") < KILL_AT * n:
                time.sleep(0.002)
            t_kill = time.perf_counter()
            worker.kill()
            began, _, _ = _effects(run, n)
            ids = [r.id for r in results]
            done_at_kill = _celery_succeeded(ids)
            worker = _CeleryWorker(pool, concurrency, db, "2")
            worker.start()
            # A job is lost if its result never comes: wait well past the
            # visibility timeout, then count.
            deadline = time.perf_counter() + float(os.environ.get("AION_CMP_CELERY_VISIBILITY", "10")) * 2 + 30
            completed = done_at_kill
            while completed < n and time.perf_counter() < deadline:
                time.sleep(0.02)
                completed = _celery_succeeded(ids)
            recovery = time.perf_counter() - t_kill
            began_all, twice, extra = _effects(run, n)
            out.update(completed=completed, lost=n - completed, ran_twice=twice, extra_runs=extra,
                       never_began=n - began_all, began_at_kill=began, done_at_kill=done_at_kill,
                       recovery_s=recovery)
        else:
            raise SystemExit(f"unknown scenario {scenario!r} for Celery")
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        worker.stop()
    _emit(out)


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

        @aion.workflow(name="cmp.effect")
        def effect_wf(ctx, run, job, seconds):
            return ctx.step(effect, run, job, seconds)

        self.wf = {"sequential": sequential, "ten": ten, "one": one, "sleeper": sleeper, "parked": parked,
                   "effect": effect_wf}
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
        if spec["scenario"].startswith("kill"):
            # The first Redis connection resolves gevent's resolver and
            # thread pool settings, which import modules lazily; under
            # patch_all importlib's lock is a gevent lock, and the main
            # thread and the step pool's threads (each with a hub of its
            # own) importing them at once ended in LoopExit and a SIGSEGV.
            # Resolve them here first, in one thread.
            _redis().ping()
    sys.path.insert(0, ROOT)
    if spec["engine"] in ("celery", "celery_gevent"):
        celery_child(spec)
    scenario, n, db = spec["scenario"], spec["n"], spec["db"]
    side = _side(spec["engine"], db)
    out = {}

    if scenario == "kill_resume":
        # The process after the kill: a new engine over the same file.
        t0 = time.perf_counter()
        side.launch()
        while not side.all_done():
            time.sleep(0.02)
        out["recovery_s"] = time.perf_counter() - t0
        completed = side.count_done() - 1  # less the warm-up
        began_all, twice, extra = _effects(spec["run"], n)
        out.update(completed=completed, lost=n - completed, ran_twice=twice, extra_runs=extra,
                   never_began=n - began_all)
        _emit(out)

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
    elif scenario == "chain":
        t0 = time.perf_counter()
        for i in range(n):
            side.result(side.start("ten", wid=f"h{i}"))
        dt = time.perf_counter() - t0
        out.update(seconds=dt, steps_per_s=10 * n / dt)
    elif scenario == "kill_run":
        run = spec["run"]
        _in_threads(min(STARTERS, n), lambda i: side.start("effect", run, f"j{i}", EFFECT_SECONDS, wid=f"k{i}"),
                    list(range(n)))
        while _redis().hlen(f"{KEY_PREFIX}{run}:effects") < KILL_AT * n:
            time.sleep(0.002)
        print("MIDRUN " + json.dumps({"began_at_signal": _effects(run, n)[0]}), flush=True)
        while True:  # waits for SIGKILL
            time.sleep(60)
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


def run_one(engine, scenario, n, patched, timeout, park_budget, celery_gevent_c=100):
    tmp = tempfile.mkdtemp(prefix=f"cmp-{engine}-")
    db = os.path.join(tmp, "bench.db")
    celery = engine.startswith("celery")
    try:
        import uuid
        spec = {"engine": engine, "scenario": scenario, "n": n, "db": db, "patched": patched,
                "run": uuid.uuid4().hex, "celery_gevent_c": celery_gevent_c}
        if celery or scenario not in ("recovery", "kill"):
            return _reap(_spawn(spec), timeout)
        if scenario == "kill":
            first, mark, second, until = "kill_run", "MIDRUN ", "kill_resume", None
        else:
            first, mark, second = "park", "PARKED ", "resume"
            until = time.time() + park_budget[engine]
        proc = _spawn(dict(spec, scenario=first, until=until))
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
            if line.startswith(mark):
                parked = json.loads(line[len(mark):])
                break
            if line.startswith("RESULT "):
                res = json.loads(line[7:])
                proc.wait()
                return None, res.get("error", "park child ended early")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        err = _stderr(proc)
        if parked is None:
            return None, f"never reached {mark.strip()} ({proc.returncode}); stderr: {_tail(err)}"
        if scenario == "kill":
            res, note = _reap(_spawn(dict(spec, scenario=second)), timeout)
            if res is not None:
                res.update(parked)
            return res, note
        time.sleep(max(0.0, until - time.time()) + 0.1)  # every deadline has passed
        res, note = _reap(_spawn(dict(spec, scenario=second)), timeout)
        if res is not None:
            res.update({k: parked[k] for k in ("park_s", "slack_s", "rss_parked_mib", "kib_per_parked")})
            if res["completed"] < n:
                return None, f"only {res['completed']} of {n} completed after recovery"
        return res, note
    finally:
        for name in os.listdir(tmp):  # a Celery worker whose client died first
            if name.endswith(".pgid"):
                try:
                    with open(os.path.join(tmp, name)) as f:
                        os.killpg(int(f.read()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        if celery or scenario == "kill":
            _redis_cleanup()
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
            # Engines alternate run by run, so a burst of load on this shared
            # machine falls on all of them alike.
            failed = set()
            for i in range(args.repeat):
                for engine in engines:
                    if scenario not in SUPPORTS[engine] or engine in failed:
                        continue
                    if patched and engine.startswith("celery"):
                        continue  # Celery's own gevent mode is the celery_gevent engine
                    entry = results.setdefault((engine, scenario, n), {"runs": [], "notes": []})
                    t0 = time.monotonic()
                    res, note = run_one(engine, scenario, n, patched, args.timeout, args.park_budget,
                                        args.celery_gevent_concurrency)
                    tag = f"{'patched ' if patched else ''}{engine:13} {scenario:10} n={n:<6} #{i + 1}"
                    if res is None:
                        print(f"  {tag}: FAILED: {note}", flush=True)
                        entry["notes"].append(note)
                        failed.add(engine)  # a peer that fails once is not retried (time)
                        continue
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
    ("{n} workflows (Celery: chains) of 10 steps one after another: steps/s", "chain", "steps_per_s", "",
     True, None),
    ("{n} workflows (Celery: chains) x 10 steps, concurrent: steps/s", "concurrent", "steps_per_s", "",
     True, 30),
    ("{n} workflows x 10 steps: peak RSS (Celery: client + worker processes)", "concurrent", "rss_peak_mib",
     " MiB", False, None),
    ("{n} single-step workflows (Celery: single-task jobs) back to back: /s", "starts", "workflows_per_s", "",
     True, 10),
    ("{n} workflows sleeping 1 s: wall, first start to last end", "sleepers", "wall_s", " s", False, None),
    ("{n} workflows sleeping 1 s: starting them (50 threads)", "sleepers", "start_s", " s", False, None),
    ("{n} workflows sleeping 1 s: p99 lateness (wake - deadline)", "sleepers", "p99_late_ms", " ms", False, None),
    ("{n} workflows sleeping 1 s: peak RSS", "sleepers", "rss_peak_mib", " MiB", False, None),
    ("{n} workflows sleeping 1 s: most asleep at once", "sleepers", "max_asleep", "", True, None),
    ("{n} workflows asleep at once (recovery's first process): RSS per sleeping workflow", "recovery",
     "kib_per_parked", " KiB", False, 10),
    ("recovery: {n} workflows resumed after SIGKILL: time to all done", "recovery", "recovery_s", " s", False, None),
    ("kill mid-run ({n} jobs of one 20 ms step): jobs lost", "kill", "lost", "", False, None),
    ("kill mid-run: jobs whose step ran twice or more", "kill", "ran_twice", "", False, None),
    ("kill mid-run: time from the new process (Celery: the kill) to all done", "kill", "recovery_s", " s",
     False, None),
)


def _spread(runs, key):
    vals = [r[key] for r in runs if r is not None and key in r]
    if len(vals) < 2:
        return ""
    return f" ({_fmt(min(vals))}-{_fmt(max(vals))})"


def table(results, sizes, engines, patched):
    """Medians (spread), and each other engine's ratio to aion_green
    ("aion better by": above 1, aion_green is ahead; below 1, behind)."""
    others = [e for e in engines if e != "aion"] if "aion" in engines else []
    head = ["figure"] + [LABELS[e] for e in engines] + [f"aion vs {LABELS[e]}" for e in others]
    lines = ["| " + " | ".join(head + ["target (vs DBOS)"]) + " |", "|" + "---|" * (len(head) + 1)]
    for label, scenario, key, unit, higher, target in ROWS:
        n = sizes[scenario]
        entries = {e: results.get((e, scenario, n)) for e in engines}
        if all(v is None for v in entries.values()):
            continue
        vals, cells = {}, []
        for e in engines:
            entry = entries[e]
            v = median_of(entry["runs"], key) if entry else None
            vals[e] = v
            if v is not None:
                cells.append(_fmt(v, unit) + _spread(entry["runs"], key))
            else:
                cells.append("failed" if entry and entry["notes"] else "-")
        ratios, met = [], ""
        av = vals.get("aion")
        for e in others:
            v = vals[e]
            if av is None or v is None or (not av and not v):
                ratios.append("-")
                continue
            if not av or not v:  # a count of zero on one side (jobs lost, say)
                ratios.append("aion 0" if (higher and not v) or (not higher and not av) else f"{e} 0")
                continue
            r = av / v if higher else v / av
            ratios.append(f"{r:,.2f}x")
            if target and e == "dbos":
                met = f">= {target}x: {'met' if r >= target else 'MISSED'}"
        lines.append("| " + " | ".join([label.format(n=f"{n:,}")] + cells + ratios + [met]) + " |")
    if "recovery" in [k[1] for k in results]:
        for engine in engines:
            e = results.get((engine, "recovery", sizes["recovery"]))
            if e and e["runs"]:
                r = e["runs"][-1]
                lines.append(f"\n{engine}: recovery check (last run): {r['completed']:,} completed, "
                             f"first step re-ran {r['step_one_reran']} times, second step ran "
                             f"{r['step_two_ran']:,} times; parking took {r['park_s']:.1f} s")
    for engine in engines:
        e = results.get((engine, "kill", sizes["kill"]))
        for r in (e or {"runs": []})["runs"]:
            lines.append(f"\n{engine}: kill mid-run: {r['completed']:,} of {sizes['kill']:,} completed, "
                         f"{r['lost']} lost, {r['ran_twice']} ran twice or more ({r['extra_runs']} extra "
                         f"executions), {r.get('never_began', 0)} never began; "
                         f"{r.get('began_at_kill', r.get('began_at_signal', '?'))} had begun at the kill; "
                         f"all done {r['recovery_s']:.2f} s after")
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
    for engine, marker in zip(engines, ("o", "s", "^", "v")):
        pts = sweep_points(results, sizes, engine)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=LABELS[engine])
            for x, y in pts:
                ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent workflows (10 one-line steps each)")
    ax.set_ylabel("steps/s (median)")
    ax.set_title("Steps/s against concurrency (aion_green, DBOS: SQLite, durable;\n"
                 "Celery: Redis broker and results, acks_late)", fontsize=9)
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
    parser.add_argument("--engine", default="all",
                        help=f"comma-separated among {', '.join(ENGINES)}; 'both' is aion,dbos; 'all' (the "
                             "default) is every one")
    parser.add_argument("--celery-gevent-concurrency", type=int, default=100,
                        help="celery_gevent: the worker's -c (prefork runs with one process per CPU)")
    parser.add_argument("--celery-visibility", type=float, default=10.0,
                        help="Celery: kombu's visibility_timeout, seconds before a killed worker's "
                             "unacknowledged tasks are delivered again (kombu's default: 3,600)")
    parser.add_argument("--celery-worker", nargs=2, metavar=("POOL", "N"), help=argparse.SUPPRESS)
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
    os.environ["AION_CMP_CELERY_VISIBILITY"] = str(args.celery_visibility)  # children inherit it
    if args.celery_worker:
        celery_worker_main(args.celery_worker[0], int(args.celery_worker[1]))
        return
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
    if args.engine == "all":
        engines = ENGINES
    elif args.engine == "both":
        engines = ("aion", "dbos")
    else:
        engines = tuple(e for e in ENGINES if e in args.engine.split(","))
        unknown = set(args.engine.split(",")) - set(ENGINES)
        if unknown or not engines:
            parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}; choose among {', '.join(ENGINES)}")

    import gevent

    import aion_green
    versions = [f"aion_green {aion_green.__version__}", f"gevent {gevent.__version__}"]
    try:
        from importlib.metadata import version
        versions.append(f"dbos {version('dbos')}")
        versions.append(f"celery {version('celery')}, kombu {version('kombu')}")
    except Exception:
        pass
    if any(e.startswith("celery") for e in engines):
        try:
            _redis().ping()
        except Exception as exc:
            print(f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer ({exc!r}): no Celery runs", flush=True)
            engines = tuple(e for e in engines if not e.startswith("celery"))
    if any(e.startswith("celery") for e in engines):
        try:
            cfg = {k: v for key in ("appendonly", "appendfsync", "save")
                   for k, v in _redis().config_get(key).items()}
            versions.append(f"Redis {_redis().info('server')['redis_version']} on {REDIS_HOST}:{REDIS_PORT} "
                            f"db {REDIS_DB} (appendonly={cfg.get('appendonly')!r}, save={cfg.get('save')!r}: "
                            f"{'in memory only' if cfg.get('appendonly') == 'no' and not cfg.get('save') else 'persisted'})")
        except Exception as exc:
            versions.append(f"Redis: {exc!r}")
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
