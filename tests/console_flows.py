"""Workflows for the console's tests (tests/test_console*.py), loaded by a
real ``aion-green worker`` process (its module argument)."""
import time

import aion_green as aion


def add(a, b):
    return a + b


def nap(seconds):
    time.sleep(seconds)
    return seconds


def boom(text):
    raise ValueError(text)


@aion.workflow(name="console.order")
def order(ctx, n):
    """A step, an attribute, then waits for "go"; a slow step; the answer."""
    ctx.set_query("progress", lambda: {"n": n, "stage": "waiting for go"})
    ctx.step(add, 1, n)
    ctx.upsert_search_attributes({"customer": f"c-{n}"})
    got = ctx.receive("go", timeout=3600)
    ctx.step(nap, 0.3)
    return {"n": n, "got": got}


@aion.workflow(name="console.fails")
def fails(ctx, text="no <b>luck</b>"):
    ctx.step(boom, text, retry=aion.Retry(max_attempts=2, initial_interval=0.01))


@aion.workflow(name="console.kid")
def kid(ctx, i):
    ctx.sleep(0.05)
    if i == 1:
        raise ValueError("kid 1 fails")
    return i


@aion.workflow(name="console.parent")
def parent(ctx):
    kids = [ctx.start_child(kid, i, id=f"{ctx.workflow_id}/kid-{i}") for i in range(3)]
    out = []
    for k in kids:
        try:
            out.append(k.result())
        except aion.WorkflowFailed:
            out.append(None)
    return out


@aion.workflow(name="console.many")
def many(ctx, steps, fail_every=0):
    """``steps`` one-line steps (two events each with a failure), for the
    timeline of a big run."""
    for i in range(steps):
        if fail_every and i % fail_every == 0:
            try:
                ctx.step(boom, f"step {i}", retry=aion.Retry(max_attempts=1))
            except aion.StepError:
                pass
        else:
            ctx.step(add, i, 1)
    return steps


@aion.workflow(name="console.chain")
def chain(ctx, n):
    """Continues as new ``n`` times, then returns."""
    ctx.step(add, n, 0)
    if n:
        ctx.continue_as_new(n - 1)
    return "end of chain"


@aion.workflow(name="console.flaky")
def flaky(ctx):
    """Fails in its first incarnation (a restart adds "-r1" to its id)."""
    if not ctx.workflow_id.endswith("-r1"):
        raise ValueError("first incarnation fails")
    return "second time lucky"


@aion.workflow(name="console.supervisor")
def supervisor(ctx):
    return ctx.supervise([aion.ChildSpec(flaky, restart="transient"),
                          aion.ChildSpec(kid, 0, restart="transient")], intensity=3)


@aion.workflow(name="console.hangs")
def hangs(ctx, seconds):
    """One quick step, then a step that takes ``seconds``."""
    ctx.step(add, 1, 1)
    return ctx.step(nap, seconds)


@aion.workflow(name="console.sleeper")
def sleeper(ctx, seconds):
    ctx.sleep(seconds)
    return seconds
