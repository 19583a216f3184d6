"""The workflow mix of the crash campaign (``test_crash_fuzz.py``,
``bench/crash.py``), and the worker process that drives it.

The mix touches every kind of durable outcome: step chains (with a retried
step and a timeout scope that never fires), durable timers, a receive that
always times out, messages from the outside (signals with idempotency
keys) and from another workflow (``ctx.send``), children with fan-out,
continue_as_new loops that start a child in each run, and a supervision
tree (a root over a ``one_for_one`` supervisor whose first child fails in
its first two incarnations). Every result is a function of the workflow's
arguments alone, so a run that was killed again and again must end with
the result, and every child with the result, of an uncrashed control run.

``ctx.random()``/``ctx.uuid4()`` depend on run ids, which differ from the
control run's; each chain therefore checks them itself: it draws both,
has a step echo them (recorded), and returns whether the echo still equals
its own draw, which it does only if replay draws what the first run drew.

Every step execution appends one line to the effects file before it
returns (``O_APPEND``, fsynced, so it survives SIGKILL)::

    <idempotency key> <epoch> <attempt> <token>

and returns ``{"v": value, "t": token}``; the workflow uses only ``v``, and
the history keeps the token, so the campaign can tell which execution a
``StepCompleted`` recorded (see ``crash_campaign.check_steps``).

Worker usage (one process = one epoch; it resumes whatever is unfinished)::

    python crash_mix.py --db PATH --effects PATH --epoch N [--scale S]
        [--die-at-batch N [--after-commit]]   # SIGKILL itself at the Nth store batch
        [--max-resident N]                    # the engine keeps at most N runs in memory

It prints ``up`` once its engine exists, starts the mix (idempotent by id), sends the signals (idempotent by
key), waits for every result and prints ``{"results": ..., "batches": <group
commits>, "patched": ...}``.
With ``AION_GEVENT_PATCH=1`` it runs under ``gevent.monkey.patch_all()``.
"""
import os

if os.environ.get("AION_GEVENT_PATCH") == "1" and __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import faulthandler  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

from gevent import monkey as _monkey  # noqa: E402

import aion_green as aion  # noqa: E402
from aion_green import store as _store  # noqa: E402

# Steps run on native pool threads: a patched time.sleep there would build
# a gevent hub per thread.
_native_sleep = _monkey.get_original("time", "sleep")

EFFECTS_PATH = ""
EPOCH = 0
_tokens = itertools.count(1)
_jitter = random.Random()  # step durations only: never part of a result


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pragma: no cover - SIGKILL cannot be caught
        _native_sleep(1)


def _append_effect(line: str) -> None:
    fd = os.open(EFFECTS_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def effect(kind, *args):
    """A step: counted in the effects file, then a value that depends only
    on its arguments. ``flaky`` fails its first attempt."""
    info = aion.step_info()
    token = f"{EPOCH}.{next(_tokens)}"
    _append_effect(f"{info.idempotency_key} {EPOCH} {info.attempt} {token}\n")
    _native_sleep(_jitter.random() * 0.01)  # widen the window a kill can land in
    if kind == "flaky" and info.attempt == 1:
        # The token in the message tells the campaign which execution the
        # StepFailed recorded.
        raise RuntimeError(f"{info.idempotency_key}: first attempt fails [{token}]")
    if kind == "echo":
        value = list(args)
    else:
        value = zlib.crc32(json.dumps([kind, *args]).encode()) % 1_000_003
    return {"v": value, "t": token}


def step(ctx, kind, *args, **kwargs):
    return ctx.step(effect, kind, *args, name=kind, **kwargs)["v"]


# -- workflows ------------------------------------------------------------------------------

@aion.workflow(name="crash_mix.chain")
def chain(ctx, n):
    r, u = ctx.random(), str(ctx.uuid4())
    echo = step(ctx, "echo", r, u)
    total = 0
    for i in range(n):
        total = step(ctx, "add", total, i)
        if i == n // 2:
            total = step(ctx, "flaky", total, retry=aion.Retry(max_attempts=3, initial_interval=0.02))
    with ctx.timeout(600):  # never fires: a scope opened and closed
        total = step(ctx, "scoped", total)
    return {"total": total, "rng_ok": echo == [r, u]}


@aion.workflow(name="crash_mix.sleeper")
def sleeper(ctx, rounds, pause):
    total = 0
    for i in range(rounds):
        total = step(ctx, "tick", total, i)
        ctx.sleep(pause)
    try:
        ctx.receive("never", timeout=pause)
        timed_out = False
    except aion.Timeout:
        timed_out = True
    return {"total": total, "timed_out": timed_out}


@aion.workflow(name="crash_mix.inbox")
def inbox(ctx, signals, peer_messages):
    got = [ctx.receive("m") for _ in range(signals)]
    total = step(ctx, "fold", got)
    peers = [ctx.receive("p") for _ in range(peer_messages)]
    return {"signals": got, "peers": peers, "total": step(ctx, "fold", total, peers)}


@aion.workflow(name="crash_mix.peer")
def peer(ctx, target, count):
    for i in range(count):
        value = step(ctx, "peer", target, i)
        ctx.send(target, "p", value)
        ctx.sleep(0.02)
    return count


@aion.workflow(name="crash_mix.kid")
def kid(ctx, c, steps):
    total = c
    for i in range(steps):
        total = step(ctx, "kid", total, i)
    ctx.sleep(0.03)
    return {"kid": c, "total": total}


@aion.workflow(name="crash_mix.family")
def family(ctx, kids):
    children = [ctx.start_child(kid, c, 3) for c in range(kids)]
    fanned = ctx.parallel([aion.Step(effect, "par", c) for c in range(kids)])
    with ctx.timeout(600):
        results = [child.result() for child in children]
    return {"kids": results, "fanned": [f["v"] for f in fanned]}


@aion.workflow(name="crash_mix.loop")
def loop(ctx, gen, last, acc):
    acc = step(ctx, "loop", gen, acc)
    child = ctx.start_child(kid, 100 + gen, 2).result()
    ctx.sleep(0.02)
    if gen < last:
        ctx.continue_as_new(gen + 1, last, [acc, child["total"]])
    return {"gens": gen, "acc": acc, "child": child}


def incarnation(ctx) -> int:
    match = re.search(r"-r(\d+)$", ctx.workflow_id)
    return int(match.group(1)) if match else 0


@aion.workflow(name="crash_mix.failing")
def failing(ctx, name, fail_until):
    value = step(ctx, "failing", name, incarnation(ctx))
    if incarnation(ctx) < fail_until:
        raise RuntimeError(f"{name} fails in incarnation {incarnation(ctx)}")
    return {"name": name, "incarnation": incarnation(ctx), "value": value}


@aion.workflow(name="crash_mix.tree")
def tree(ctx, width):
    specs = [aion.ChildSpec(failing, "a", 2, restart="transient")]
    specs += [aion.ChildSpec(kid, 200 + i, 2, restart="transient") for i in range(width)]
    specs.append(aion.ChildSpec(kid, 300, 1, restart="temporary"))
    return ctx.supervise(specs, strategy="one_for_one", intensity=10, period=600)


@aion.workflow(name="crash_mix.root")
def root(ctx, width):
    return {"tree": ctx.start_child(tree, width).result(), "after": step(ctx, "root", width)}


WORKFLOWS = [chain, sleeper, inbox, peer, kid, family, loop, failing, tree, root]


def mix(scale: int):
    """The top-level runs, in start order: ``(workflow id, fn, args)``. An
    inbox starts before its peer, so the peer's sends find it."""
    runs = []
    for i in range(scale):
        runs += [
            (f"chain-{i}", chain, (12 + 4 * i,)),
            (f"sleeper-{i}", sleeper, (3, 0.1)),
            (f"inbox-{i}", inbox, (3, 2)),
            (f"peer-{i}", peer, (f"inbox-{i}", 2)),
            (f"family-{i}", family, (3,)),
            (f"loop-{i}", loop, (1, 3, 0)),
            (f"root-{i}", root, (1,)),
        ]
    return runs


def signals(scale: int):
    """The signals the worker sends: ``(workflow id, name, key, payload)``."""
    return [(f"inbox-{i}", "m", f"inbox-{i}/m-{j}", {"j": j, "i": i})
            for i in range(scale) for j in range(3)]


# -- the worker ------------------------------------------------------------------------------

BATCHES = [0]


def _count_batches(die_at: int, after_commit: bool) -> None:
    """Count the store's group commits; with ``die_at``, SIGKILL this process
    as the writer is about to commit that batch (or right after the commit,
    before anyone is woken)."""
    original = _store.SQLiteStore.write_batch

    def write_batch(self, ops):
        BATCHES[0] += 1
        if BATCHES[0] == die_at:
            if after_commit:
                original(self, ops)
            _die()
        return original(self, ops)

    _store.SQLiteStore.write_batch = write_batch


def _outcome(engine, wid):
    try:
        return {"result": engine.result(wid, timeout=120)}
    except aion.WorkflowFailed as exc:
        return {"failed": type(exc).__name__}


def main(argv=None) -> int:
    global EFFECTS_PATH, EPOCH
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--die-at-batch", type=int, default=0)
    parser.add_argument("--after-commit", action="store_true")
    parser.add_argument("--max-resident", type=int, default=None)
    args = parser.parse_args(argv)
    EFFECTS_PATH, EPOCH = os.path.abspath(args.effects), args.epoch
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stuck worker shows its threads
    _count_batches(args.die_at_batch, args.after_commit)

    with aion.Engine(f"sqlite:///{os.path.abspath(args.db)}", workflows=WORKFLOWS,
                     max_resident=args.max_resident) as engine:
        print("up", flush=True)  # the campaign's kill delay counts from here
        runs = mix(args.scale)
        for wid, fn, fn_args in runs:
            engine.start(fn, *fn_args, id=wid)
        for wid, name, key, payload in signals(args.scale):
            try:
                engine.signal(wid, name, payload, idempotency_key=key)
            except aion.WorkflowNotRunning:
                pass  # it received them all in an earlier epoch and ended
            time.sleep(0.01)  # spread the signals over the window a kill can hit
        results = {wid: _outcome(engine, wid) for wid, _, _ in runs}
    print(json.dumps({"results": results, "batches": BATCHES[0],
                      "patched": _monkey.is_module_patched("threading")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
