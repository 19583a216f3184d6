"""Workflows whose recorded histories are kept under tests/histories/ (one
JSON file each, recorded by tests/histories/record.py with the release of the
day) and replayed by tests/test_golden_histories.py against today's code: a
change that breaks the replay of runs recorded by an earlier release fails
CI. Change these functions only as a deploy may: behind ctx.patched()."""
from datetime import timedelta

import aion_green as aion


def add(a, b):
    return a + b


def shout(text):
    return text.upper()


def flaky_once(key):
    if aion.step_info().attempt == 1:
        raise RuntimeError(f"{key}: the first attempt fails")
    return f"{key}: ok"


def refuses(key):
    raise aion.NonRetryableError(f"{key}: no")


@aion.workflow(name="golden.steps")
def steps(ctx, n):
    total = 0
    for i in range(n):
        total = ctx.step(add, total, i)
    word = ctx.step(shout, "done")
    again = ctx.step(flaky_once, "retried", retry=aion.Retry(max_attempts=3, initial_interval=0.01))
    try:
        ctx.step(refuses, "refused")
    except aion.StepError as exc:
        caught = exc.error_type
    return {"total": total, "word": word, "again": again, "caught": caught,
            "r": round(ctx.random(), 12), "u": str(ctx.uuid4())}


@aion.workflow(name="golden.timers")
def timers(ctx):
    ctx.sleep(timedelta(milliseconds=20))
    try:
        ctx.receive("never", timeout=0.02)
        waited = "message"
    except aion.Timeout:
        waited = "timeout"
    try:
        with ctx.timeout(0.02):
            ctx.sleep(5)
        scoped = "finished"
    except aion.Timeout:
        scoped = "timeout"
    return [waited, scoped]


@aion.workflow(name="golden.messages")
def messages(ctx, peer):
    first = ctx.receive("m")
    second = ctx.receive("m")
    ctx.send(peer, "ping", {"from": ctx.workflow_id})
    return [first, second]


@aion.workflow(name="golden.peer")
def peer(ctx):
    return ctx.receive("ping")


@aion.workflow(name="golden.child")
def child(ctx, x):
    return ctx.step(add, x, x)


@aion.workflow(name="golden.family")
def family(ctx):
    kid = ctx.start_child(child, 21)
    fanned = ctx.parallel([aion.Step(add, i, 1) for i in range(3)])
    return {"kid": kid.result(), "fanned": fanned}


@aion.workflow(name="golden.versioned")
def versioned(ctx):
    if ctx.patched("new-greeting"):
        return ctx.step(shout, "new")
    return ctx.step(shout, "old")


@aion.workflow(name="golden.chain")
def chain(ctx, left):
    ctx.step(add, left, 0)
    if left > 0:
        ctx.continue_as_new(left - 1)
    return "end of chain"


FLOWS = [steps, timers, messages, peer, child, family, versioned, chain]
