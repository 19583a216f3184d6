"""Fairness of the hub under load: does it keep its own promises while it is
flooded?

(1) A 10 ms ticker greenlet on the engine's hub, while native threads flood
    the hub with commands as fast as they can (call_soon, unthrottled): how
    long each tick really waited (p50, p99, max). First with no flood (what
    the machine's own load costs a tick: the floor), then three times in the
    same process: as the hub runs now (the bounded drain,
    hub_thread._DRAIN_BATCH, and back-pressure on senders past
    hub_thread._QUEUE_LIMIT queued commands: issue 21), without the
    back-pressure (before issue 21), and with neither (before issue 16).
(2) The engine: 200 workflows doing tiny steps as fast as they can, and one
    workflow sleeping 50 ms 40 times: the lateness of its timers as
    recorded (TimerFired's time minus the recorded deadline: p50, p99, max).

    python bench/fairness.py [--flood-seconds 3] [--flooders 2] [--busy 200]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gevent  # noqa: E402
from gevent import monkey  # noqa: E402

import aion_green as aion  # noqa: E402
from aion_green import hub_thread  # noqa: E402

_start_new_thread = monkey.get_original("_thread", "start_new_thread")


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ticker_under_flood(seconds, flooders, batch, limit):
    hub_thread._DRAIN_BATCH = batch
    hub_thread._QUEUE_LIMIT = limit
    hub = hub_thread.HubThread(name="bench-hub").start()
    waits = []
    stop = [False]
    sent = [0]

    def ticker():
        while not stop[0]:
            began = time.perf_counter()
            gevent.sleep(0.010)
            waits.append((time.perf_counter() - began) * 1000)

    def noop():
        pass

    def flood():
        call_soon = hub.call_soon
        n = 0
        while not stop[0]:
            for _ in range(1000):
                call_soon(noop)
            n += 1000
        sent[0] += n

    hub.spawn(ticker)
    time.sleep(0.1)
    for _ in range(flooders):
        _start_new_thread(flood, ())
    time.sleep(seconds)
    stop[0] = True
    time.sleep(0.1)
    hub.shutdown()
    waits = waits[2:]  # the ticks before the flood began
    return waits, sent[0]


def tiny(i):
    return i


@aion.workflow(name="bench.fair.busy")
def busy(ctx, steps):
    for i in range(steps):
        ctx.step(tiny, i)
    return steps


@aion.workflow(name="bench.fair.sleeper")
def sleeper(ctx, naps):
    for _ in range(naps):
        ctx.sleep(0.05)
    return naps


def timers_under_steps(busy_runs, steps):
    folder = tempfile.mkdtemp(prefix="aion-fair-")
    try:
        with aion.Engine(f"sqlite:///{folder}/fair.db", workflows=[busy, sleeper]) as engine:
            for i in range(busy_runs):
                engine.start(busy, steps, id=f"busy-{i}")
            handle = engine.start(sleeper, 40, id="sleeper")
            handle.result(120)
            history = engine.history("sleeper")
            for i in range(busy_runs):
                engine.result(f"busy-{i}", timeout=300)
        deadlines = {e["timer"]: e["fire_at"] for e in history if e.type == "TimerStarted"}
        late = [(e.at - deadlines[e["timer"]]) * 1000 for e in history if e.type == "TimerFired"]
        return late
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=3.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--busy", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100, help="steps per busy workflow")
    args = parser.parse_args()
    bounded = hub_thread._DRAIN_BATCH
    limit = hub_thread._QUEUE_LIMIT
    print(f"(1) a 10 ms ticker on the hub, {args.flooders} native threads flooding it with "
          f"commands for {args.flood_seconds:g} s")
    for label, batch, queue_limit, flooders in (
            ("no flood (this machine's floor)", bounded, limit, 0),
            (f"back-pressure past {limit} (now)", bounded, limit, args.flooders),
            (f"bounded drain ({bounded}) only (before)", bounded, 10 ** 12, args.flooders),
            ("unbounded drain (before 16)", 10 ** 12, 10 ** 12, args.flooders)):
        waits, sent = ticker_under_flood(args.flood_seconds, flooders, batch, queue_limit)
        print(f"  {label:36s} ticks {len(waits):4d}  wait p50 {statistics.median(waits):6.1f} ms  "
              f"p99 {percentile(waits, 0.99):6.1f} ms  max {max(waits):6.1f} ms  "
              f"({sent / args.flood_seconds / 1000:.0f} k commands/s sent)")
    hub_thread._DRAIN_BATCH = bounded
    hub_thread._QUEUE_LIMIT = limit
    print(f"(2) one workflow sleeping 50 ms x 40 beside {args.busy} workflows of "
          f"{args.steps} tiny steps")
    late = timers_under_steps(args.busy, args.steps)
    print(f"  timer lateness p50 {statistics.median(late):6.1f} ms  p99 {percentile(late, 0.99):6.1f} ms"
          f"  max {max(late):6.1f} ms  ({len(late)} timers)")


if __name__ == "__main__":
    main()
