"""Residency: peak RSS and wall time for N workflows parked on a timer (on
a message, or on a child of their own that waits for one), with
``Engine(evict_after=5.0)`` (a parked run leaves memory once nothing it
waits on is due within 5 s), with the engine's defaults
(the same), with eviction off (every parked run stays), and with a cap on
resident runs (``Engine(max_resident=...)``).

Each configuration runs in its own process (peak RSS is per process): N
workflows are started by a pool of threads (group commit); each sleeps
durably until a deadline a day away. Once all are parked, the process moves
its wall clock a day on (``time.time`` offset, which the engine reads
everywhere) and every timer comes due at once. Printed per configuration:
time to start and park them all, time for all to fire and end (drain), RSS
when all are parked and at the end, runs evicted, most resident at once,
(timers) how late 1,000 of them fired after their recorded deadline, the
share of each phase spent in CPython's cyclic GC, and the objects it tracks
per run once all are parked (with eviction off: what a resident parked run
costs it). And how late a 10 ms timer on the engine's hub fired (p99 and
max, per phase): as measured, and less the collector's pauses meanwhile
(what the engine's own work held the hub; a collection stops every
thread), with the longest collection of each phase.
With ``--spread S`` the deadlines are spread over S seconds after the
horizon, so once the clock has jumped they come due one after another in
real time, as a day's timers do.

    python bench/residency.py                     # 10k and 100k: default, off, cap 10k
    python bench/residency.py --sizes 200000 --configs default --horizon 3600 --spread 60
    python bench/residency.py --sizes 200000 --configs evict --wait message
    python bench/residency.py --sizes 200000 --configs default --wait child
    python bench/residency.py --sizes 1000000 --configs cap
    python bench/residency.py --sizes 200000 --configs default,off --wait message --store postgres
    python bench/residency.py --sizes 200000 --configs default --horizon 3600 --spread 180 --store postgres

Leased stores and timers: the clock the script moves runs out the leases of
the runs in memory at that moment too (the engine claims them back, under
new fences); the parked leases of evicted runs hold (their engine's entry
is renewed at its next heartbeat).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from typing import Iterator

CHILD = r"""
import gc, json, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
sys.path.insert(0, {root!r})
import aion_green as aion

@aion.workflow(name="bench.kid")
def kid(ctx):
    return ctx.receive("go")

@aion.workflow(name="bench.parked")
def parked(ctx, until):
    if {wait!r} == "message":
        return ctx.receive("go")
    if {wait!r} == "child":
        return ctx.start_child(kid, id=ctx.workflow_id + "/kid").result()
    ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
    return 1

def peak_mib():
    # VmHWM: Linux carries ru_maxrss across fork and exec (the parent's peak).
    with open("/proc/self/status") as status:
        return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024

gc_s = [0.0, 0.0, 0.0]  # seconds in the cyclic collector: the total, when the current one began, the longest
def on_gc(phase, info):
    if phase == "start":
        gc_s[1] = time.perf_counter()
    else:
        took = time.perf_counter() - gc_s[1]
        gc_s[0] += took
        gc_s[2] = max(gc_s[2], took)
gc.callbacks.append(on_gc)

n, cap, starters = {n}, {cap}, {starters}
kwargs = {engine_kwargs!r}
if cap is not None:
    kwargs["max_resident"] = cap
engine = aion.Engine({url!r}, workflows=[parked, kid], **kwargs)
engine.list(limit=1)
# A 10 ms timer on the engine's hub, ticking throughout: how late it fires
# says how long the hub was held at a time (issue 21: never over 20 ms).
import gevent
ticks = []
net_ticks = []  # the same, less the collector's pauses meanwhile (the engine's own holding)
def ticker():
    while True:
        t, g = time.perf_counter(), gc_s[0]
        gevent.sleep(0.01)
        late = time.perf_counter() - t - 0.01
        ticks.append(late)
        net_ticks.append(late - (gc_s[0] - g))
engine._epoch.hub.spawn(ticker, name="bench-ticker")
tracked_before = len(gc.get_objects())
day, spread = {horizon!r}, {spread!r}
base = time.time() + day
def in_threads(fn):
    # fn(i) for every i < n from the starter threads, each taking every
    # starters-th i: a future per thread, not per run (pool.map of n items
    # made n futures and work items up front, 7 objects each for the cyclic
    # GC: most of what its full collections walked during this bench).
    with ThreadPoolExecutor(starters) as pool:
        list(pool.map(lambda k: [fn(i) for i in range(k, n, starters)], range(starters)))
t0 = time.monotonic()
in_threads(lambda i: engine.start(parked, base + spread * i / n, id=f"w{{i}}"))
# Parked: every run has recorded its timer (the timer service holds one
# entry per parked run, in memory or not), or its start (waiting on "go").
if {wait!r} in ("message", "child"):
    while engine.count(status="running") < (2 * n if {wait!r} == "child" else n):
        time.sleep(0.05)
    time.sleep(7)  # (by default message waiters leave memory after evict_after, 5 s)
else:
    while len(engine._epoch.timers._heap) < n:
        time.sleep(0.05)
parked_s = time.monotonic() - t0
parked_gc = gc_s[0]
parked_ticks, parked_gc_longest = sorted(ticks), gc_s[2]
parked_net = sorted(net_ticks)
# What the cyclic GC tracks, per run, once all are parked (in memory or
# not), its garbage collected first (neither phase's time counts that).
gc.collect()
tracked_per_run = (len(gc.get_objects()) - tracked_before) / n
collected_gc = gc_s[0]
parked_rss = peak_mib()
ticks.clear()
net_ticks.clear()
gc_s[2] = 0.0  # (not the collection just made)
t1 = time.monotonic()
if {wait!r} in ("message", "child"):
    suffix = "/kid" if {wait!r} == "child" else ""
    in_threads(lambda i: engine.signal(f"w{{i}}" + suffix, "go", i))
else:
    # A day passes (the wall clock every part of the engine reads moves on).
    # With a spread, to a second before the first deadline: each then comes
    # due in real time (its lateness is the engine's).
    real_time = time.time
    jump = day if not spread else base - real_time() - 1.0
    time.time = lambda: real_time() + jump
    engine.poke()
while engine.list(status="running", limit=1):
    time.sleep(0.05)
drain_s = time.monotonic() - t1
drain_gc = gc_s[0] - collected_gc
drain_ticks = sorted(ticks)
drain_net = sorted(net_ticks)
rss = peak_mib()
# Lateness of the wakes (timers only): TimerFired's time minus the deadline
# recorded in TimerStarted, for 1,000 runs spread over the ids.
late = []
if {wait!r} == "timer":
    for i in range(0, n, max(1, n // 1000)):
        history = engine.history(f"w{{i}}")
        fire_at = next(e for e in history if e.type == "TimerStarted").data["fire_at"]
        late.append(next(e for e in history if e.type == "TimerFired").at - fire_at)
    late.sort()
print(json.dumps({{"n": n, "cap": cap, "parked_s": parked_s, "drain_s": drain_s,
                  "parked_gc_s": parked_gc, "drain_gc_s": drain_gc,
                  "tracked_per_run": tracked_per_run,
                  "parked_rss_mib": parked_rss, "peak_rss_mib": rss,
                  "evictions": engine.evictions, "resident_peak": engine.resident_peak,
                  "late_p50": late[len(late) // 2] if late else None,
                  "late_p99": late[int(len(late) * 0.99)] if late else None,
                  "late_max": late[-1] if late else None,
                  "gc_longest": [parked_gc_longest, gc_s[2]],
                  "tick_park": [parked_ticks[int(len(parked_ticks) * 0.99)], parked_ticks[-1]],
                  "tick_drain": [drain_ticks[int(len(drain_ticks) * 0.99)], drain_ticks[-1]],
                  "net_park": [parked_net[int(len(parked_net) * 0.99)], parked_net[-1]],
                  "net_drain": [drain_net[int(len(drain_net) * 0.99)], drain_net[-1]]}}))
engine.shutdown()
"""


def run(n: int, cap: int | None, starters: int, engine_kwargs: dict, wait: str,
        horizon: float = 86_400.0, spread: float = 0.0, store: str = "sqlite",
        pg: str = "", vacuum: float = 0.0) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp, _store_url(store, pg, tmp) as url:
        code = CHILD.format(root=root, n=n, cap=cap, starters=starters, url=url,
                            engine_kwargs=engine_kwargs, wait=wait, horizon=horizon,
                            spread=spread)
        with _vacuuming(url if store == "postgres" else "", vacuum):
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"n={n} cap={cap} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _store_url(store: str, pg: str, tmp: str) -> Iterator[str]:
    """The store a run parks on: a SQLite file (driven by its one engine, or
    leased: ``?leases=on``), or a fresh PostgreSQL schema, dropped after."""
    if store != "postgres":
        db = os.path.join(tmp, "residency.db")
        yield f"sqlite:///{db}" + ("?leases=on" if store == "sqlite-leases" else "")
        return
    import psycopg

    schema = f"bench_residency_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg}{'&' if '?' in pg else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def _vacuuming(url: str, every: float) -> Iterator[None]:
    """What autovacuum does on a server that runs it (its default): every
    ``every`` seconds, ``VACUUM ANALYZE`` the tables the runs churn (a
    lease parked or renewed, a head moved: each a new row version).
    Without it, on a server with autovacuum off, the dead versions pile up
    and each group commit's row locks crawl through them."""
    if not url or not every:
        yield
        return
    import threading

    import psycopg

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    for table in ("aion_runs", "aion_timers", "aion_events"):
                        conn.execute(f"VACUUM ANALYZE {table}")
            except psycopg.Error:
                pass  # (the schema is being created or dropped)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _autovacuum_off(pg: str) -> bool:
    import psycopg

    with psycopg.connect(pg, autocommit=True) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return row is not None and row[0] == "off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--starters", type=int, default=16, help="threads that start runs")
    parser.add_argument("--configs", default="default,off,cap",
                        help="default (the engine's defaults: evict_after=5.0), evict "
                             "(evict_after=--evict-after, 5.0 unless said), off (evict_after=None: every parked run "
                             "stays; 1,000,000 needs ~15 GiB), cap (max_resident, eviction off)")
    parser.add_argument("--evict-after", type=float, default=5.0,
                        help="the evict config's evict_after (seconds)")
    parser.add_argument("--horizon", type=float, default=86_400.0,
                        help="seconds to the timers (the clock then jumps by as much)")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="timers spread over this many seconds after the horizon (they "
                             "then fire in real time, one after another: their lateness)")
    parser.add_argument("--wait", choices=("timer", "message", "child"), default="timer",
                        help="what the runs park on: a timer a day away, a message, or a "
                             "child of their own that waits for a message (2 runs each)")
    parser.add_argument("--store", choices=("sqlite", "sqlite-leases", "postgres"),
                        default="sqlite", help="where the runs are kept: a SQLite file that "
                        "one engine drives (the default), the same with ?leases=on, or "
                        "PostgreSQL (a fresh schema, dropped after; leased runs)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="the PostgreSQL server for --store postgres")
    parser.add_argument("--vacuum", type=float, default=None,
                        help="--store postgres: VACUUM ANALYZE the run tables every this many "
                             "seconds (0: never); by default every 20 s when the server runs "
                             "with autovacuum off, never otherwise")
    args = parser.parse_args()
    if args.store == "postgres" and args.vacuum is None:
        args.vacuum = 20.0 if _autovacuum_off(args.pg) else 0.0
    if args.store != "sqlite" and "cap" in args.configs.split(","):
        parser.error("leased runs (--store sqlite-leases or postgres): without --configs cap "
                     "(a cap on the runs an engine leases leaves the rest to other engines: "
                     "there are none here)")
    configs = {"default": (None, {}), "evict": (None, {"evict_after": args.evict_after}),
               "off": (None, {"evict_after": None}),
               "cap": (args.cap, {"evict_after": None})}
    print(f"parked on a {args.wait}, store {args.store}"
          + (f" (autovacuum's stand-in: VACUUM ANALYZE every {args.vacuum:g} s)"
             if args.store == "postgres" and args.vacuum else ""))
    print(f"{'runs':>9} {'config':>9} {'start+park s':>12} {'starts/s':>9} {'drain s':>8} "
          f"{'done/s':>8} {'RSS parked MiB':>15} {'peak RSS MiB':>13} {'KiB/run':>8} "
          f"{'evicted':>9} {'resident max':>13} {'late p50/p99/max s':>20} {'GC park/drain':>14} {'GC objs/run':>12} "
          f"{'hub tick late p99/max ms, park':>31} {'drain':>12} {'less GC, park':>14} {'drain':>12} "
          f"{'longest GC ms, park/drain':>26}")
    for n in (int(s) for s in args.sizes.split(",")):
        for name in args.configs.split(","):
            cap, kwargs = configs[name]
            r = run(n, cap, args.starters, kwargs, args.wait, args.horizon, args.spread,
                    args.store, args.pg, args.vacuum or 0.0)
            label = f"cap {cap}" if cap else name
            print(f"{n:>9,} {label:>9} {r['parked_s']:>12.1f} {n / r['parked_s']:>9,.0f} "
                  f"{r['drain_s']:>8.1f} {n / r['drain_s']:>8,.0f} {r['parked_rss_mib']:>15.0f} "
                  f"{r['peak_rss_mib']:>13.0f} {r['peak_rss_mib'] * 1024 / n:>8.2f} "
                  f"{r['evictions']:>9,} {r['resident_peak']:>13,} {lateness(r):>20} "
                  f"{r['parked_gc_s'] / r['parked_s']:>6.0%} / {r['drain_gc_s'] / r['drain_s']:>4.0%} "
                  f"{r['tracked_per_run']:>12.1f} {ticks(r['tick_park']):>31} "
                  f"{ticks(r['tick_drain']):>12} {ticks(r['net_park']):>14} "
                  f"{ticks(r['net_drain']):>12} {ticks(r['gc_longest']):>26}",
                  flush=True)


def ticks(pair: list) -> str:
    return f"{pair[0] * 1e3:.0f}/{pair[1] * 1e3:.0f}"


def lateness(r: dict) -> str:
    if r.get("late_p50") is None:
        return "-"
    return f"{r['late_p50']:.3f}/{r['late_p99']:.3f}/{r['late_max']:.3f}"


if __name__ == "__main__":
    main()
