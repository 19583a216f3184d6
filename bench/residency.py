"""Residency: peak RSS and wall time for N workflows parked on a timer,
with and without a cap on resident runs (``Engine(max_resident=...)``).

Each configuration runs in its own process (peak RSS is per process): N
workflows are started by a pool of threads (group commit); each sleeps
durably until a deadline a day away. Once all are parked, the process moves
its wall clock a day on (``time.time`` offset, which the engine reads
everywhere) and every timer comes due at once. Printed per configuration:
time to start and park them all, time for all to fire and end (drain), RSS
when all are parked and at the end, runs evicted, most resident at once.

    python bench/residency.py                     # 10k and 100k, cap off and 10k
    python bench/residency.py --sizes 1000000 --no-uncapped
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
    ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
    return 1

def peak_mib():
    # VmHWM: Linux carries ru_maxrss across fork and exec (the parent's peak).
    with open("/proc/self/status") as status:
        return next(int(x.split()[1]) for x in status if x.startswith("VmHWM:")) / 1024

n, cap, starters = {n}, {cap}, {starters}
engine = aion.Engine("sqlite:///" + {db!r}, workflows=[parked], max_resident=cap)
engine.list(limit=1)
day = 86_400.0
until = time.time() + day
t0 = time.monotonic()
with ThreadPoolExecutor(starters) as pool:
    list(pool.map(lambda i: engine.start(parked, until, id=f"w{{i}}"), range(n)))
# Parked: every run has recorded its timer (the timer service holds one
# entry per parked run, in memory or not).
while len(engine._epoch.timers._heap) < n:
    time.sleep(0.05)
parked_s = time.monotonic() - t0
parked_rss = peak_mib()
# A day passes (the wall clock every part of the engine reads moves on).
real_time = time.time
time.time = lambda: real_time() + day
engine.poke()
t1 = time.monotonic()
while engine.list(status="running", limit=1):
    time.sleep(0.05)
drain_s = time.monotonic() - t1
rss = peak_mib()
print(json.dumps({{"n": n, "cap": cap, "parked_s": parked_s, "drain_s": drain_s,
                  "parked_rss_mib": parked_rss, "peak_rss_mib": rss,
                  "evictions": engine.evictions, "resident_peak": engine.resident_peak}}))
engine.shutdown()
"""


def run(n: int, cap: int | None, starters: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "residency.db")
        code = CHILD.format(root=root, n=n, cap=cap, starters=starters, db=db)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"n={n} cap={cap} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--starters", type=int, default=16, help="threads that start runs")
    parser.add_argument("--no-uncapped", action="store_true",
                        help="only the capped runs (1,000,000 uncapped needs ~15 GiB)")
    args = parser.parse_args()
    print(f"{'runs':>9} {'cap':>7} {'start+park s':>12} {'starts/s':>9} {'drain s':>8} "
          f"{'done/s':>8} {'RSS parked MiB':>15} {'peak RSS MiB':>13} {'KiB/run':>8} "
          f"{'evicted':>9} {'resident max':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        for cap in ((args.cap,) if args.no_uncapped else (None, args.cap)):
            r = run(n, cap, args.starters)
            print(f"{n:>9,} {str(cap):>7} {r['parked_s']:>12.1f} {n / r['parked_s']:>9,.0f} "
                  f"{r['drain_s']:>8.1f} {n / r['drain_s']:>8,.0f} {r['parked_rss_mib']:>15.0f} "
                  f"{r['peak_rss_mib']:>13.0f} {r['peak_rss_mib'] * 1024 / n:>8.2f} "
                  f"{r['evictions']:>9,} {r['resident_peak']:>13,}", flush=True)


if __name__ == "__main__":
    main()
