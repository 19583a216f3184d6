"""Residency: peak RSS and wall time for N workflows parked on a timer (or
on a message), with ``Engine(evict_after=5.0)`` (a parked run leaves memory
once nothing it waits on is due within 5 s), with eviction off (the
default: every parked run stays), and with a cap on resident runs
(``Engine(max_resident=...)``).

Each configuration runs in its own process (peak RSS is per process): N
workflows are started by a pool of threads (group commit); each sleeps
durably until a deadline a day away. Once all are parked, the process moves
its wall clock a day on (``time.time`` offset, which the engine reads
everywhere) and every timer comes due at once. Printed per configuration:
time to start and park them all, time for all to fire and end (drain), RSS
when all are parked and at the end, runs evicted, most resident at once.

    python bench/residency.py                     # 10k and 100k: evict, off, cap 10k
    python bench/residency.py --sizes 200000 --configs evict --wait message
    python bench/residency.py --sizes 1000000 --configs cap
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
sys.path.insert(0, {root!r})
import aion_green as aion

@aion.workflow(name="bench.parked")
def parked(ctx, until):
    if {wait!r} == "message":
        return ctx.receive("go")
    ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
    return 1

def peak_mib():
    # VmHWM: Linux carries ru_maxrss across fork and exec (the parent's peak).
    with open("/proc/self/status") as status:
        return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024

n, cap, starters = {n}, {cap}, {starters}
engine = aion.Engine("sqlite:///" + {db!r}, workflows=[parked], max_resident=cap,
                     **{engine_kwargs!r})
engine.list(limit=1)
day = 86_400.0
until = time.time() + day
t0 = time.monotonic()
with ThreadPoolExecutor(starters) as pool:
    list(pool.map(lambda i: engine.start(parked, until, id=f"w{{i}}"), range(n)))
# Parked: every run has recorded its timer (the timer service holds one
# entry per parked run, in memory or not), or its start (waiting on "go").
if {wait!r} == "message":
    while engine.count(status="running") < n:
        time.sleep(0.05)
    time.sleep(7)  # (by default message waiters leave memory after evict_after, 5 s)
else:
    while len(engine._epoch.timers._heap) < n:
        time.sleep(0.05)
parked_s = time.monotonic() - t0
parked_rss = peak_mib()
t1 = time.monotonic()
if {wait!r} == "message":
    with ThreadPoolExecutor(starters) as pool:
        list(pool.map(lambda i: engine.signal(f"w{{i}}", "go", i), range(n)))
else:
    # A day passes (the wall clock every part of the engine reads moves on).
    real_time = time.time
    time.time = lambda: real_time() + day
    engine.poke()
while engine.list(status="running", limit=1):
    time.sleep(0.05)
drain_s = time.monotonic() - t1
rss = peak_mib()
print(json.dumps({{"n": n, "cap": cap, "parked_s": parked_s, "drain_s": drain_s,
                  "parked_rss_mib": parked_rss, "peak_rss_mib": rss,
                  "evictions": engine.evictions, "resident_peak": engine.resident_peak}}))
engine.shutdown()
"""


def run(n: int, cap: int | None, starters: int, engine_kwargs: dict, wait: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "residency.db")
        code = CHILD.format(root=root, n=n, cap=cap, starters=starters, db=db,
                            engine_kwargs=engine_kwargs, wait=wait)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"n={n} cap={cap} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--starters", type=int, default=16, help="threads that start runs")
    parser.add_argument("--configs", default="evict,off,cap",
                        help="evict (evict_after=5.0), off (evict_after=None, the default: every "
                             "parked run stays; 1,000,000 needs ~15 GiB), cap (max_resident)")
    parser.add_argument("--wait", choices=("timer", "message"), default="timer",
                        help="what the runs park on: a timer a day away, or a message")
    args = parser.parse_args()
    configs = {"evict": (None, {"evict_after": 5.0}), "off": (None, {"evict_after": None}),
               "cap": (args.cap, {"evict_after": None})}
    print(f"parked on a {args.wait}")
    print(f"{'runs':>9} {'config':>9} {'start+park s':>12} {'starts/s':>9} {'drain s':>8} "
          f"{'done/s':>8} {'RSS parked MiB':>15} {'peak RSS MiB':>13} {'KiB/run':>8} "
          f"{'evicted':>9} {'resident max':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        for name in args.configs.split(","):
            cap, kwargs = configs[name]
            r = run(n, cap, args.starters, kwargs, args.wait)
            label = f"cap {cap}" if cap else name
            print(f"{n:>9,} {label:>9} {r['parked_s']:>12.1f} {n / r['parked_s']:>9,.0f} "
                  f"{r['drain_s']:>8.1f} {n / r['drain_s']:>8,.0f} {r['parked_rss_mib']:>15.0f} "
                  f"{r['peak_rss_mib']:>13.0f} {r['peak_rss_mib'] * 1024 / n:>8.2f} "
                  f"{r['evictions']:>9,} {r['resident_peak']:>13,}", flush=True)


if __name__ == "__main__":
    main()
