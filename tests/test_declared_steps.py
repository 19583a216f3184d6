"""Ergonomics of issue 20: ``@aion.step(retry=..., timeout=...)`` declares a
step's options once (called in a workflow it is a durable step, anywhere
else the plain function); ``ctx.info`` says who a run is; a step's records
name its function, through ``functools.partial`` and callable objects too.
On the suite's store (SQLite, or PostgreSQL in the pg environments)."""
import functools
import threading
from datetime import datetime, timezone

import pytest
from conftest import LEASED, wait_until

import aion_green as aion
from aion_green.core import events as ev

CALLS = []
LOCK = threading.Lock()


def note(what):
    with LOCK:
        CALLS.append(what)


@aion.step(retry=aion.Retry(max_attempts=3, initial_interval=0.01), timeout=10)
def flaky_charge(order_id, amount):
    """Charges an order; fails its first two attempts."""
    note(("charge", order_id))
    if sum(1 for c in CALLS if c == ("charge", order_id)) < 3:
        raise ConnectionError("the payment service hiccupped")
    return {"order": order_id, "charged": amount}


@aion.step
def plain_step(x):
    note(("plain", x))
    return x * 2


@aion.step(name="billing.refund", retry=aion.Retry(max_attempts=1))
def refund(order_id):
    raise ValueError(f"no refund for {order_id}")


def add(a, b):
    return a + b


class Pricer:
    def __call__(self, n):
        return n * 10

    def quote(self, n):
        return n + 0.5


@aion.workflow(name="declared.checkout")
def checkout(ctx, order_id):
    charged = flaky_charge(order_id, 42)           # a step, retried as declared
    doubled = plain_step(21)
    try:
        refund(order_id)
    except aion.StepError as error:
        refused = str(error)
    return {"charged": charged, "doubled": doubled, "refused": refused}


@aion.workflow(name="declared.names")
def names(ctx):
    return [ctx.step(functools.partial(add, 1), 2), ctx.step(Pricer(), 3),
            ctx.step(Pricer().quote, 4), ctx.step(lambda: 5),
            ctx.step(plain_step, 6, name="explicit")]


@aion.workflow(name="declared.info")
def info(ctx, child):
    me = ctx.info
    kid = ctx.start_child(info, False, id=f"{ctx.workflow_id}/kid").result() if child else None
    if child is None:
        ctx.receive("go", timeout=60)
    return {"me": [me.workflow_id, me.run_id, me.namespace, me.workflow_type, me.attempt,
                   me.generation, me.parent_id, me.started_at.isoformat()],
            "kid": kid}


@aion.workflow(name="declared.chained")
def chained(ctx, n):
    if n:
        ctx.continue_as_new(n - 1)
    return [ctx.info.generation, ctx.info.attempt]


@aion.workflow(name="declared.fails_once")
def fails_once(ctx):
    attempt = ctx.info.attempt
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return attempt


def step_records(engine, wid):
    return [(e.type, e.data["name"], e.data["attempt"]) for e in engine.history(wid)
            if e.type in (ev.STEP_COMPLETED, ev.STEP_FAILED)]


def test_a_declared_step_runs_durably_with_its_options_in_a_workflow(make_engine):
    CALLS.clear()
    engine = make_engine(checkout)
    result = engine.start(checkout, "o-1", id="d-1").result(timeout=30)
    assert result["charged"] == {"order": "o-1", "charged": 42} and result["doubled"] == 42
    assert "billing.refund" in result["refused"] and "no refund for o-1" in result["refused"]
    assert step_records(engine, "d-1") == [
        ("StepFailed", "flaky_charge", 1), ("StepFailed", "flaky_charge", 2),
        ("StepCompleted", "flaky_charge", 3), ("StepCompleted", "plain_step", 1),
        ("StepFailed", "billing.refund", 1)]
    # Replayed, nothing runs again.
    before = list(CALLS)
    from aion_green.testing import check_replay
    assert check_replay(engine.url, ["d-1"], workflows=[checkout]) == 1
    assert CALLS == before


def test_outside_a_workflow_a_declared_step_is_the_plain_function():
    CALLS.clear()
    assert plain_step(4) == 8 and CALLS == [("plain", 4)]
    assert plain_step.__name__ == "plain_step" and plain_step.__wrapped__(1) == 2
    assert flaky_charge.__doc__.startswith("Charges an order")
    with pytest.raises(ValueError, match="no refund"):
        refund("o-9")
    # In another thread (a step's own, say) too.
    out = []
    thread = threading.Thread(target=lambda: out.append(plain_step(5)))
    thread.start()
    thread.join()
    assert out == [10]


def test_declared_options_are_checked_when_declared():
    with pytest.raises(TypeError, match="aion.Retry"):
        aion.step(retry=3)
    with pytest.raises(ValueError, match="timeout"):
        aion.step(timeout=-1)
    with pytest.raises(TypeError, match="name"):
        aion.step(name="")


def test_records_name_the_function_through_partials_and_callable_objects(make_engine):
    engine = make_engine(names)
    assert engine.start(names, id="n-1").result(timeout=30) == [3, 30, 4.5, 5, 12]
    assert [name for _, name, _ in step_records(engine, "n-1")] == [
        "add", "Pricer", "Pricer.quote", "names.<locals>.<lambda>", "explicit"]


def test_ctx_info_says_who_the_run_is(make_engine):
    engine = make_engine(info)
    handle = engine.start(info, True, id="i-1", namespace="team")
    out = handle.result(timeout=30)
    wid, run_id, ns, wtype, attempt, generation, parent, started = out["me"]
    assert (wid, run_id, ns, wtype, attempt, generation, parent) == (
        "i-1", handle.run_id, "team", "declared.info", 1, 1, None)
    first = engine.history("i-1", namespace="team")[0]
    assert datetime.fromisoformat(started) == datetime.fromtimestamp(first.at, tz=timezone.utc)
    kid = out["kid"]["me"]
    assert kid[0] == "i-1/kid" and kid[2] == "team" and kid[6] == "i-1"


def test_ctx_info_is_the_same_after_an_eviction_and_counts_generations(make_engine, db_url):
    # (Over PostgreSQL max_resident caps the runs an engine leases, so one
    # engine with a parked run would never claim another: no eviction there.)
    sqlite = not LEASED
    engine = make_engine(info, chained, **({"max_resident": 1} if sqlite else {}))
    handle = engine.start(info, None, id="i-2")
    wait_until(lambda: engine.describe("i-2").head_seq >= 2, what="i-2 to wait")
    assert engine.start(chained, 2, id="c-1").result(timeout=30) == [3, 1]
    if sqlite:
        wait_until(lambda: engine.evictions >= 1, what="i-2 to be evicted")
    engine.signal("i-2", "go", 1)  # it replays, and its info is what it was
    me = handle.result(timeout=30)["me"]
    assert me[:7] == ["i-2", handle.run_id, "default", "declared.info", 1, 1, None]


def test_a_resumed_run_is_its_next_attempt(make_engine):
    engine = make_engine(fails_once)
    with pytest.raises(aion.WorkflowFailed, match="first attempt fails"):
        engine.start(fails_once, id="f-1").result(timeout=30)
    engine.resume("f-1")
    wait_until(lambda: engine.describe("f-1").status == "completed", what="the resumed run")
    assert engine.result("f-1", timeout=10) == 2


@aion.workflow(name="declared.naps")
def naps(ctx):
    def slow():
        import time as _time
        _time.sleep(0.3)
        return 1
    return ctx.step(slow)


def test_the_python_api_gives_times_as_aware_datetimes(make_engine):
    engine = make_engine(naps, info)
    before = datetime.now(timezone.utc)
    handle = engine.start(naps, id="t-1")
    wait_until(lambda: engine.describe("t-1").steps_running, what="the step to run")
    running = engine.describe("t-1")
    assert running.started.tzinfo is timezone.utc and before.replace(microsecond=0) <= running.started
    assert running.ended is None and running.deadline is None
    assert running.steps_running[0].started >= running.started
    handle.result(timeout=30)
    done = engine.describe("t-1")
    assert done.ended == done.updated and done.ended >= done.started
    assert engine.list()[0].started == done.started
    page = engine.events(0)
    assert all(e.time.tzinfo is timezone.utc for e in page.events)
    assert page.events[0].time == datetime.fromtimestamp(page.events[0].at, tz=timezone.utc)
    timed = engine.start(info, None, id="t-2", execution_timeout=60)
    assert timed.describe().deadline > datetime.now(timezone.utc)
    engine.signal("t-2", "go", 1)
    timed.result(timeout=30)


CONTEXTS = []


@aion.workflow(name="declared.remembers")
def remembers(ctx, n):
    import weakref

    CONTEXTS.append(weakref.ref(ctx))
    return plain_step(n)  # a declared step: the run's greenlet is known by the table


def test_a_finished_run_leaves_nothing_behind(make_engine):
    """The table that knows each run's greenlet (for @aion.step) holds
    neither the greenlet nor the context: both go when the run ends (they
    did not, and every run's frames stayed in memory)."""
    import gc

    CONTEXTS.clear()
    engine = make_engine(remembers)
    for n in range(50):
        assert engine.start(remembers, n, id=f"gone-{n}").result(timeout=30) == n * 2
    wait_until(lambda: gc.collect() >= 0 and not any(ref() for ref in CONTEXTS),
               what="every finished run's context to be freed")
