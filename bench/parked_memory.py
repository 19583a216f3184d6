"""What one run parked in memory costs: bytes (tracemalloc) and objects the
cyclic GC tracks, per kind of wait, counted without the clock.

Eviction is off, so every parked run stays in memory. For each kind of wait
N runs are started and the script waits until each has parked on it; the
growth of ``tracemalloc``'s traced memory and of ``gc.get_objects()`` over
the N runs, divided by N, is what one parked run keeps. Also printed: how
many of the parked runs' contexts have a dict of their own (CPython keeps a
context's attributes inline only while every name it sets is among its
class's shared keys: issue 21).

With ``--mixed M`` the process first runs M workflows that use every
feature (children, a supervisor, sends, timeout blocks, cancels, queries,
``ctx.random``, versioning, search attributes, continue-as-new, fan-out):
what a long-lived worker's process looks like, where the names its runs
set are many. With ``--simple K`` it first runs K one-step workflows: a
process whose first runs were simple, and whose later runs wait in ways
those did not.

    python bench/parked_memory.py
    python bench/parked_memory.py --runs 5000 --kinds receive --mixed 50
    python bench/parked_memory.py --simple 100
    python bench/parked_memory.py --evicted --kinds receive,child
    python bench/parked_memory.py --long 1000,10000,100000 [--shape fanout]

With ``--long S,...``: one run that does S sequential steps (``--shape
fanout``: S steps in fan-outs, five a round) and then parks on a message, per size, in an engine of its own: what it keeps in memory
(bytes, GC objects, per step), its steps/s, and how long the next engine
takes to replay it to its wait (a run in memory kept its whole history
until issue 21: a loop of a million steps, ~400 MB).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aion_green as aion  # noqa: E402


def double(n):
    return 2 * n


@aion.workflow(name="bench.mem.kid")
def kid(ctx, n):
    return ctx.step(double, n)


@aion.workflow(name="bench.mem.long_kid")
def long_kid(ctx):
    return ctx.receive("go")


@aion.workflow(name="bench.mem.mailbox")
def mailbox(ctx):
    return ctx.receive("m")


@aion.workflow(name="bench.mem.busy")
def busy(ctx, round_, mailbox_id):
    out = [ctx.random(), str(ctx.uuid4()), ctx.patched("p1")]
    ctx.upsert_search_attributes({"customer": "c1"})
    ctx.set_query("round", lambda: round_)
    with ctx.timeout(30):
        out.append(ctx.step(double, 1))
    out.append(ctx.start_child(kid, 2).result())
    if round_ == 1:
        ctx.send(mailbox_id, "m", round_)
    out.append(ctx.supervise([aion.ChildSpec(kid, 3, restart="transient")]))
    out.append(ctx.parallel([aion.Step(double, 4), ctx.start_child(kid, 5)]))
    if round_ == 1:
        ctx.continue_as_new(2, mailbox_id)
    try:
        ctx.receive("stop")
    except aion.Cancelled:
        out.append("cancelled")
    return out


@aion.workflow(name="bench.mem.waiter")
def waiter(ctx, kind):
    if kind == "receive":
        return ctx.receive("go")
    if kind == "receive-timeout":
        return ctx.receive("go", timeout=3600)
    if kind == "sleep":
        return ctx.sleep(3600)
    if kind == "timeout-block":
        with ctx.timeout(3600):
            return ctx.receive("go")
    if kind == "child":
        return ctx.start_child(long_kid).result()
    raise ValueError(kind)


@aion.workflow(name="bench.mem.looper")
def looper(ctx, steps):
    total = 0
    for i in range(steps):
        total += ctx.step(double, i)
    return [total, ctx.receive("go")]


@aion.workflow(name="bench.mem.fanner")
def fanner(ctx, rounds):
    """Five steps a round: two side by side, a race of two, one alone."""
    total = 0
    for i in range(rounds):
        a, b = ctx.parallel([aion.Step(double, i), aion.Step(double, i)])
        _, won = ctx.race([aion.Step(double, i), aion.Step(double, i)])
        total += a + b + won + ctx.step(double, i)
    return [total, ctx.receive("go")]


WORKFLOWS = [kid, long_kid, mailbox, busy, waiter, looper, fanner]


def wait_parked(engine, ids, timeout=600.0):
    runs = engine._epoch.runs
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        pending = [wid for wid in pending
                   if (ctx := runs.get(wid)) is None or not ctx._parked
                   or ctx._cursor.replaying]
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} runs did not park in {timeout} s")
        time.sleep(0.05)


def mixed(engine, count):
    """Runs that use every feature, to their end (cancelled out of a receive)."""
    for n in range(count):
        box = f"mix-box-{n}"
        engine.start(mailbox, id=box)
        wid = f"mix-{n}"
        engine.start(busy, 1, box, id=wid)
        deadline = time.monotonic() + 60
        while True:
            try:
                if engine.query(wid, "round") == 2:
                    break
            except aion.AionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{wid} did not reach its second round: "
                                 f"{engine.describe(wid)}")
            time.sleep(0.01)
        engine.cancel(wid)
        try:
            engine.result(wid, timeout=60)  # (the cancel may reach it in a step)
        except aion.WorkflowCancelled:
            pass
        engine.result(box, timeout=60)


def own_dicts(engine, ids):
    runs = engine._epoch.runs
    count = 0
    for wid in ids:
        ctx = runs.get(wid)
        if any(type(ref) is dict and "_key" in ref for ref in gc.get_referents(ctx)):
            count += 1
    return count


def evicted(runs, kinds):
    """Per kind, in an engine of its own: N runs parked and evicted; what
    stays per run (bytes, GC objects, greenlets), and the engine's CPU over
    10 s of idling with them out of memory."""
    from greenlet import greenlet

    print(f"python {sys.version.split()[0]}, {runs} runs per kind, evicted (evict_after=0.5)")
    print(f"{'wait':>16} {'bytes/run':>10} {'GC objs/run':>12} {'greenlets/run':>14} "
          f"{'idle CPU':>9}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            engine = aion.Engine(f"sqlite:///{tmp}/mem.db", workflows=WORKFLOWS, evict_after=0.5)
            try:
                engine.start(waiter, kind, id="first")
                per = 2 if kind == "child" else 1  # (a child is a run too)
                deadline = time.monotonic() + 60
                while engine.evictions < per:
                    assert time.monotonic() < deadline, "the first run was not evicted"
                    time.sleep(0.05)
                gc.collect()
                objects = len(gc.get_objects())
                greenlets = sum(1 for o in gc.get_objects() if isinstance(o, greenlet))
                tracemalloc.start()
                traced = tracemalloc.get_traced_memory()[0]
                for n in range(runs):
                    engine.start(waiter, kind, id=f"{kind}-{n}")
                deadline = time.monotonic() + 600
                while engine.evictions < per * (runs + 1):
                    assert time.monotonic() < deadline, "the runs were not all evicted"
                    time.sleep(0.1)
                time.sleep(1.0)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - traced
                tracemalloc.stop()
                per_objects = (len(gc.get_objects()) - objects) / runs
                per_greenlets = (sum(1 for o in gc.get_objects() if isinstance(o, greenlet))
                                 - greenlets) / runs
                cpu, wall = time.process_time(), time.monotonic()
                time.sleep(10)
                idle = (time.process_time() - cpu) / (time.monotonic() - wall)
                label = kind + (" (+child)" if kind == "child" else "")
                print(f"{label:>16} {grown / runs:>10,.0f} {per_objects:>12.1f} "
                      f"{per_greenlets:>14.2f} {idle:>8.1%}")
            finally:
                engine.shutdown()


def long_runs(sizes, shape="steps"):
    """``shape``: ``steps``, one after another; ``fanout``, five a round
    (ctx.parallel of two, ctx.race of two, one alone; S/5 rounds)."""
    workflow = looper if shape == "steps" else fanner
    print(f"python {sys.version.split()[0]}: one run of S steps ({shape}), then parked on a message")
    print(f"{'steps':>9} {'steps/s':>9} {'bytes/step':>11} {'GC objs/step':>13} "
          f"{'replay s':>9} {'replayed steps/s':>17}")
    for steps in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/mem.db"
            engine = aion.Engine(url, workflows=WORKFLOWS, evict_after=None)
            try:
                engine.start(workflow, 10 if shape == "steps" else 2, id="first")
                wait_parked(engine, ["first"])
                gc.collect()
                objects = len(gc.get_objects())
                tracemalloc.start()
                traced = tracemalloc.get_traced_memory()[0]
                t0 = time.perf_counter()
                engine.start(workflow, steps if shape == "steps" else steps // 5, id="long")
                # (wait_parked: parked, not replaying; a step parks too; a
                # race's loser records its step too, late: S records either way)
                while engine.count(status="running") < 2 or engine.history(
                        "long", after_seq=steps)[-1:] == []:
                    time.sleep(0.01)
                wait_parked(engine, ["long"])
                took = time.perf_counter() - t0
                time.sleep(0.5)
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - traced
                tracemalloc.stop()
                per_objects = (len(gc.get_objects()) - objects) / steps
            finally:
                engine.shutdown()
            t1 = time.perf_counter()
            engine = aion.Engine(url, workflows=WORKFLOWS, evict_after=None)
            try:
                engine.list(limit=1)  # (the engine starts, and recovers the run)
                runs = engine._epoch.runs
                while (ctx := runs.get("long")) is None or not ctx._parked or ctx._cursor.replaying:
                    time.sleep(0.005)
                replay = time.perf_counter() - t1
                engine.signal("long", "go", 1)
                expected = steps * (steps - 1) if shape == "steps" else 4 * (steps // 5) * (steps // 5 - 1)
                assert engine.result("long", timeout=60) == [expected, 1]
            finally:
                engine.shutdown()
        print(f"{steps:>9,} {steps / took:>9,.0f} {grown / steps:>11,.1f} {per_objects:>13.3f} "
              f"{replay:>9.2f} {steps / replay:>17,.0f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs parked per kind")
    parser.add_argument("--kinds", default="receive,receive-timeout,sleep,timeout-block,child")
    parser.add_argument("--mixed", type=int, default=0,
                        help="workflows using every feature run first")
    parser.add_argument("--simple", type=int, default=0,
                        help="one-step workflows run first (before --mixed)")
    parser.add_argument("--evicted", action="store_true",
                        help="what a run keeps once evicted (evict_after=0.5), its greenlets, "
                             "and the idle engine's CPU with them all out of memory")
    parser.add_argument("--long", default="",
                        help="sizes (steps) of one long run each, e.g. 1000,10000,100000")
    parser.add_argument("--shape", choices=("steps", "fanout"), default="steps",
                        help="--long's steps: one after another, or five a round in fan-outs")
    args = parser.parse_args()
    if args.long:
        long_runs([int(x) for x in args.long.split(",")], args.shape)
        return
    if args.evicted:
        evicted(args.runs, args.kinds.split(","))
        return
    kinds = args.kinds.split(",")
    print(f"python {sys.version.split()[0]}, {args.runs} runs per kind, "
          f"{args.simple} one-step and {args.mixed} mixed workflows first")
    print(f"{'wait':>16} {'bytes/run':>10} {'GC objs/run':>12} {'own dict':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        engine = aion.Engine(f"sqlite:///{tmp}/mem.db", workflows=WORKFLOWS, evict_after=None)
        try:
            for handle in [engine.start(kid, n, id=f"simple-{n}") for n in range(args.simple)]:
                handle.result(60)
            mixed(engine, args.mixed)
            # One run of each kind first: what first use caches (type hints,
            # ABC checks, the hub's pools) is not a parked run's.
            firsts = [f"first-{kind}" for kind in kinds]
            for kind, wid in zip(kinds, firsts):
                engine.start(waiter, kind, id=wid)
            wait_parked(engine, firsts)
            for kind in kinds:
                ids = [f"{kind}-{n}" for n in range(args.runs)]
                gc.collect()
                objects = len(gc.get_objects())
                tracemalloc.start()
                traced = tracemalloc.get_traced_memory()[0]
                for wid in ids:
                    engine.start(waiter, kind, id=wid)
                wait_parked(engine, ids)
                if kind == "child":
                    wait_parked(engine, [f"{wid}/child-1" for wid in ids])
                time.sleep(0.5)  # the writer's and the hub's queues drain
                gc.collect()
                grown = tracemalloc.get_traced_memory()[0] - traced
                tracemalloc.stop()
                per_objects = (len(gc.get_objects()) - objects) / args.runs
                label = kind + (" (+child)" if kind == "child" else "")
                print(f"{label:>16} {grown / args.runs:>10,.0f} {per_objects:>12.1f} "
                      f"{own_dicts(engine, ids):>9}")
        finally:
            engine.shutdown()


if __name__ == "__main__":
    main()
