"""Durable timers at scale: N workflows each sleeping 1 s, started together
(from 50 client threads), on the SQLite store with durable commits.

Prints the wall time from the first start to the last end, the timer
lateness (TimerFired's recorded time minus the recorded deadline: p50, p99,
max), how late the last workflow ended after its deadline, and the peak RSS
of the process. Targets (issue 3): all done within 2 s of the deadline, p99
lateness under 100 ms.

    python bench/timers.py [--workflows 10000] [--sleep 1.0]
"""
import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from steps import in_threads  # noqa: E402

import aion_green as aion  # noqa: E402


@aion.workflow(name="bench.sleeper")
def sleeper(ctx, seconds):
    ctx.sleep(seconds)
    return seconds


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--sleep", type=float, default=1.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="aion-timers-")
    db = os.path.join(tmp, "timers.db")
    try:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with aion.Engine(f"sqlite:///{db}", workflows=[sleeper]) as engine:
            engine.start(sleeper, 0.0, id="warm-up").result(30)
            handles = []
            t0 = time.time()
            in_threads(50, lambda i: handles.append(engine.start(sleeper, args.sleep, id=f"s{i}")),
                       list(range(args.workflows)))
            started = time.time() - t0
            for handle in handles:
                handle.result(300)
            wall = time.time() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn = sqlite3.connect(db)
        rows = conn.execute(
            "SELECT workflow_id, type, at, data FROM events WHERE type IN "
            "('TimerStarted', 'TimerFired', 'WorkflowCompleted') AND workflow_id != 'warm-up'").fetchall()
        conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    deadline, fired, ended = {}, {}, {}
    for wid, kind, at, data in rows:
        if kind == "TimerStarted":
            deadline[wid] = json.loads(data)["fire_at"]
        elif kind == "TimerFired":
            fired[wid] = at
        else:
            ended[wid] = at
    lateness = [fired[w] - deadline[w] for w in deadline]
    end_after = [ended[w] - deadline[w] for w in deadline]
    print(f"aion_green {aion.__version__}, SQLite durable, {args.workflows:,} workflows x sleep {args.sleep} s")
    print(f"starts took      {started:6.2f} s ({args.workflows / started:,.0f} workflows/s from 50 threads)")
    print(f"wall to all done {wall:6.2f} s")
    print(f"timer lateness   p50 {statistics.median(lateness) * 1000:6.1f} ms   "
          f"p99 {percentile(lateness, 0.99) * 1000:6.1f} ms   max {max(lateness) * 1000:6.1f} ms"
          f"   (target p99 < 100 ms)")
    print(f"end after deadline, worst {max(end_after):.2f} s   (target: all done within 2 s of the deadline)")
    print(f"peak RSS         {rss / 1024:6.1f} MiB (before the engine: {rss_before / 1024:.1f} MiB; "
          f"{(rss - rss_before) * 1024 / args.workflows / 1024:.1f} KiB per sleeping workflow)")


if __name__ == "__main__":
    main()
