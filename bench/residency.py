"""Residency: peak RSS and wall time for N workflows parked on a timer,
with and without a cap on resident runs (``Engine(max_resident=...)``).

Each configuration runs in its own process (peak RSS is per process): N
workflows are started by a pool of threads (group commit), each sleeps
durably until a common deadline a few seconds after the last start, then
ends. Printed per configuration: start rate, wall time from the first start
to the last result, peak RSS, runs evicted, most runs resident at once.

    python bench/residency.py                     # 10k and 100k, cap off and 10k
    python bench/residency.py --sizes 10000,100000,1000000 --cap 10000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
sys.path.insert(0, {root!r})
import aion_green as aion

@aion.workflow(name="bench.parked")
def parked(ctx, until):
    ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
    return 1

n, cap, starters, margin = {n}, {cap}, {starters}, {margin}
engine = aion.Engine("sqlite:///" + {db!r}, workflows=[parked], max_resident=cap)
engine.list(limit=1)
# The common deadline: after the last start (estimated from a first slice).
t0 = time.monotonic()
until = time.time() + 3600  # replaced below; every run reads its own argument
probe = min(n, 2000)
deadline = [None]
def start(i):
    engine.start(parked, deadline[0], id=f"w{{i}}")
t_probe = time.time()
deadline[0] = t_probe + 30.0  # provisional for the probe slice
with ThreadPoolExecutor(starters) as pool:
    list(pool.map(start, range(probe)))
rate = probe / max(time.time() - t_probe, 1e-6)
deadline[0] = time.time() + (n - probe) / rate * 1.3 + margin
with ThreadPoolExecutor(starters) as pool:
    list(pool.map(start, range(probe, n)))
started = time.monotonic()
start_rate = n / (started - t0)
while engine.list(status="running", limit=1):  # every run has ended
    time.sleep(0.05)
wall = time.monotonic() - t0
late_by = time.time() - deadline[0]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"n": n, "cap": cap, "start_rate": start_rate, "wall": wall,
                  "after_deadline": late_by, "peak_rss_mib": rss,
                  "evictions": engine.evictions, "resident_peak": engine.resident_peak}}))
engine.shutdown()
"""


def run(n: int, cap: int | None, starters: int, margin: float) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "residency.db")
        code = CHILD.format(root=root, n=n, cap=cap, starters=starters, margin=margin, db=db)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"n={n} cap={cap} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--cap", type=int, default=10_000)
    parser.add_argument("--starters", type=int, default=16, help="threads that start runs")
    parser.add_argument("--margin", type=float, default=3.0,
                        help="seconds between the estimated last start and the deadline")
    args = parser.parse_args()
    print(f"{'runs':>9} {'cap':>7} {'starts/s':>9} {'wall s':>8} {'done after deadline s':>22} "
          f"{'peak RSS MiB':>13} {'KiB/run':>8} {'evicted':>8} {'resident max':>13}")
    for n in (int(s) for s in args.sizes.split(",")):
        for cap in (None, args.cap):
            r = run(n, cap, args.starters, args.margin)
            print(f"{n:>9,} {str(cap):>7} {r['start_rate']:>9,.0f} {r['wall']:>8.1f} "
                  f"{r['after_deadline']:>22.1f} {r['peak_rss_mib']:>13.0f} "
                  f"{r['peak_rss_mib'] * 1024 / n:>8.2f} {r['evictions']:>8,} "
                  f"{r['resident_peak']:>13,}", flush=True)


if __name__ == "__main__":
    main()
