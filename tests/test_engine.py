"""The engine's public operations and steps."""
import time

import pytest
from conftest import SQLITE_ONLY, NativeGate, open_test_store, run_python, stop_with_runs_parked, wait_until
from gevent import monkey

import aion_green as aion
from aion_green.core import events as ev

native_ident = monkey.get_original("_thread", "get_ident")


def double(x):
    return 2 * x


@aion.workflow
def doubler(ctx, x):
    return ctx.step(double, x)


@aion.workflow(name="tests.named")
def named(ctx):
    return "named"


def test_workflow_names(make_engine):
    assert doubler.__aion_workflow__ == "test_engine.doubler"
    engine = make_engine(named)
    assert engine.start("tests.named", id="n").result(10) == "named"
    assert engine.describe("n").workflow_type == "tests.named"


def test_start_is_idempotent_by_id(make_engine):
    engine = make_engine(doubler)
    first = engine.start(doubler, 21, id="same")
    assert first.result(10) == 42
    again = engine.start(doubler, 21, id="same")
    assert again.result(10) == 42
    assert len([e for e in engine.history("same") if e.type == ev.STEP_COMPLETED]) == 1


def test_start_with_the_same_id_and_other_arguments_is_a_clear_error(make_engine):
    engine = make_engine(doubler, named)
    engine.start(doubler, 1, id="dup").result(10)
    with pytest.raises(aion.WorkflowIdConflict, match="'dup' already exists as test_engine.doubler"):
        engine.start(doubler, 2, id="dup")
    with pytest.raises(aion.WorkflowIdConflict):
        engine.start(named, id="dup")
    assert engine.result("dup", timeout=5) == 2


def test_describe_list_and_history(make_engine):
    engine = make_engine(doubler, named)
    for i in range(3):
        engine.start(doubler, i, id=f"d{i}").result(10)
    engine.start(named, id="x").result(10)
    info = engine.describe("d1")
    assert (info.status, info.result, info.args, info.finished) == ("completed", 2, [1], True)
    assert [r.workflow_id for r in engine.list()] == ["d0", "d1", "d2", "x"]
    assert [r.workflow_id for r in engine.list(workflow_type=doubler)] == ["d0", "d1", "d2"]
    assert [r.workflow_id for r in engine.list(workflow_type="tests.named")] == ["x"]
    assert engine.list(status="running") == []
    assert len(engine.list(status="completed", limit=2)) == 2
    assert [r.workflow_id for r in engine.list(after_id="d1")] == ["d2", "x"]
    history = engine.history("d2")
    assert [e.type for e in history] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.WORKFLOW_COMPLETED]
    assert history[1]["result"] == 4
    with pytest.raises(aion.ConfigurationError, match="choose one of running, completed"):
        engine.list(status="done")
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("nope")
    with pytest.raises(aion.WorkflowNotFound):
        engine.history("nope")


def test_engine_as_context_manager_and_closed_afterwards(db_url):
    with aion.Engine(db_url, workflows=[doubler]) as engine:
        assert engine.start(doubler, 5).result(10) == 10
    with pytest.raises(aion.EngineClosed):
        engine.start(doubler, 5)
    engine.shutdown()  # twice is fine


def test_result_timeout_leaves_the_run_going(make_engine):
    gate = NativeGate()

    def wait_gate():
        return gate.wait(10)

    @aion.workflow
    def gated(ctx):
        return ctx.step(wait_gate)

    engine = make_engine(gated)
    handle = engine.start(gated, id="g")
    with pytest.raises(aion.Timeout, match="goes on running"):
        handle.result(timeout=0.1)
    gate.set()
    assert handle.result(timeout=10) is True


def test_steps_run_on_pool_threads_never_the_hub_thread(make_engine):
    @aion.workflow
    def where(ctx):
        hub_ident = native_ident()
        return {"hub": hub_ident, "step": ctx.step(native_ident)}

    engine = make_engine(where)
    out = engine.start(where).result(10)
    assert out["hub"] != out["step"]
    assert native_ident() not in (out["hub"], out["step"])


def test_retry_with_backoff_then_success(make_engine):
    calls = []

    def flaky():
        calls.append((time.monotonic(), aion.step_info()))
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    @aion.workflow
    def retrying(ctx):
        return ctx.step(flaky, retry=aion.Retry(max_attempts=5, initial_interval=0.05, backoff=2))

    engine = make_engine(retrying)
    assert engine.start(retrying, id="r").result(10) == "ok"
    assert [info.attempt for _, info in calls] == [1, 2, 3]
    assert {info.idempotency_key for _, info in calls} == {"r/step-1"}
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:])]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095
    kinds = [(e.type, e.data.get("attempt"), e.data.get("retryable")) for e in engine.history("r")[1:-1]]
    assert kinds == [(ev.STEP_FAILED, 1, True), (ev.STEP_FAILED, 2, True), (ev.STEP_COMPLETED, 3, None)]
    assert engine.history("r")[1]["error"] == {"type": "ConnectionError", "message": "try 1"}


def test_backoff_grows_exponentially_to_its_cap():
    policy = aion.Retry(max_attempts=9, initial_interval=1, backoff=2, max_interval=5)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    with pytest.raises(ValueError, match="at least 1 attempt"):
        aion.Retry(max_attempts=0)


class PaymentDeclined(Exception):
    pass


def test_non_retryable_error_fails_at_once_and_can_be_caught(make_engine):
    calls = []

    def charge():
        calls.append(1)
        raise PaymentDeclined("card refused")

    def refuse():
        raise aion.NonRetryableError("never")

    @aion.workflow
    def paying(ctx):
        policy = aion.Retry(max_attempts=5, initial_interval=0.01, non_retryable=(PaymentDeclined,))
        try:
            ctx.step(charge, retry=policy)
        except aion.StepError as exc:
            caught = {"type": exc.error_type, "message": exc.message, "attempts": exc.attempts}
        else:
            caught = None
        ctx.step(refuse, retry=aion.Retry(max_attempts=5))
        return caught

    engine = make_engine(paying)
    with pytest.raises(aion.WorkflowFailed) as failure:
        engine.start(paying, id="p").result(10)
    assert failure.value.error_type == "aion_green.errors.StepError"
    assert calls == [1]
    failed = [e for e in engine.history("p") if e.type == ev.STEP_FAILED]
    assert [(e["step"], e["attempt"], e["retryable"]) for e in failed] == [(1, 1, False), (2, 1, False)]
    assert failed[0]["error"]["type"] == "test_engine.PaymentDeclined"


def test_retries_exhausted_raise_step_error(make_engine):
    def always_fails():
        raise RuntimeError("down")

    @aion.workflow
    def exhausted(ctx):
        return ctx.step(always_fails, retry=aion.Retry(max_attempts=3, initial_interval=0.001))

    engine = make_engine(exhausted)
    with pytest.raises(aion.WorkflowFailed, match=r"step 1 \(.*always_fails\) failed after 3 attempt"):
        engine.start(exhausted).result(10)


def test_step_info_outside_a_step_is_a_clear_error():
    with pytest.raises(RuntimeError, match="only available inside a running step"):
        aion.step_info()


def test_now_random_and_uuid_come_from_history(make_engine, db_url):
    """A run stopped mid-way and resumed by another engine sees the same
    now(), random() and uuid4() values as before the stop."""
    gate = NativeGate()
    seen = []

    def remember(values):
        seen.append(values)
        return len(seen)

    def wait_gate():
        gate.wait(10)
        return "through"

    @aion.workflow(name="tests.deterministic")
    def deterministic(ctx):
        values = {"now": ctx.now().isoformat(), "r": ctx.random(), "u": str(ctx.uuid4())}
        ctx.step(remember, values)
        after = ctx.now().isoformat()
        ctx.step(wait_gate)
        return {**values, "after": after}

    first = make_engine(deterministic, step_grace=0)  # its held step is abandoned, not awaited
    first.start(deterministic, id="det")
    deadline = time.monotonic() + 10
    while len(seen) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # let the first step's record land
    first.shutdown()
    gate.set()
    second = make_engine(deterministic)
    result = second.result("det", timeout=10)
    assert {k: result[k] for k in ("now", "r", "u")} == seen[0]
    assert len(seen) == 1  # the recorded step did not run again
    recorded_step_at = [e for e in second.history("det") if e.type == ev.STEP_COMPLETED][0].time
    assert result["after"] == recorded_step_at.isoformat()


def test_unfinished_runs_resume_when_an_engine_starts(make_engine):
    gate = NativeGate()
    runs = []

    def count_and_wait(i):
        runs.append(i)
        return gate.wait(10)

    @aion.workflow(name="tests.resumable")
    def resumable(ctx, i):
        ctx.step(double, i)
        return ctx.step(count_and_wait, i)

    first = make_engine(resumable)
    for i in range(5):
        first.start(resumable, i, id=f"res-{i}")
    stop_with_runs_parked(first, [f"res-{i}" for i in range(5)], gate)
    second = make_engine(resumable)
    assert [second.result(f"res-{i}", timeout=10) for i in range(5)] == [True] * 5
    for i in range(5):
        doubled = [e for e in second.history(f"res-{i}") if e.type == ev.STEP_COMPLETED and e["step"] == 1]
        assert len(doubled) == 1


def test_forty_greenlet_callers_in_a_patched_process_overlap():
    """40 greenlets of a patched main thread each start a workflow whose step
    takes 0.2 s and wait for its result: the waits overlap (about one wait,
    not forty), and the caller's hub keeps serving other greenlets."""
    code = r'''
from gevent import monkey; monkey.patch_all()
import sys, time, tempfile, os, gevent
import aion_green as aion

def slow(i):
    time.sleep(0.2)
    return i

@aion.workflow
def one(ctx, i):
    return ctx.step(slow, i)

ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic()); gevent.sleep(0.05)

db = os.path.join(tempfile.mkdtemp(), "g.db")
with aion.Engine("sqlite:///" + db, workflows=[one], step_workers=64) as engine:
    engine.start(one, -1).result(10)  # warm up
    t = gevent.spawn(ticker)
    t0 = time.monotonic()
    callers = [gevent.spawn(lambda i=i: engine.start(one, i).result(30)) for i in range(40)]
    gevent.joinall(callers)
    elapsed = time.monotonic() - t0
    t.kill()
    assert sorted(g.value for g in callers) == list(range(40)), [g.exception for g in callers]
    during = [x for x in ticks if t0 <= x <= t0 + elapsed]
    print("ELAPSED", elapsed, "TICKS", len(during))
'''
    proc = run_python(code, timeout=60)
    line = [out for out in proc.stdout.splitlines() if out.startswith("ELAPSED")][0]
    elapsed, ticks = float(line.split()[1]), int(line.split()[3])
    assert elapsed < 1.5, f"40 waits of 0.2 s took {elapsed:.2f} s: they did not overlap"
    assert ticks >= 3, "the caller's hub froze while greenlets waited"


def test_result_waiters_are_released_when_the_engine_shuts_down(make_engine):
    gate = NativeGate()

    def wait_gate():
        return gate.wait(10)

    @aion.workflow
    def parked(ctx):
        return ctx.step(wait_gate)

    engine = make_engine(parked, step_grace=0)  # its held step is abandoned, not awaited
    handle = engine.start(parked, id="parked")
    import gevent

    waiter = gevent.spawn(handle.result, 30)
    gevent.sleep(0.1)
    engine.shutdown()
    waiter.join(5)
    gate.set()
    assert isinstance(waiter.exception, aion.EngineClosed)
    assert "resumes when an engine starts" in str(waiter.exception)


def test_a_process_that_exits_without_shutdown_does_not_hang():
    """The atexit backstop asks the threads to stop and never blocks, even
    with a step still running on the pool."""
    code = r'''
import os, sys, tempfile, time
import aion_green as aion

def slow():
    time.sleep(30)

@aion.workflow
def hangs(ctx):
    return ctx.step(slow)

engine = aion.Engine("sqlite:///" + os.path.join(tempfile.mkdtemp(), "x.db"), workflows=[hangs])
engine.start(hangs, id="h")
time.sleep(0.2)
print("leaving", flush=True)
'''
    started = time.monotonic()
    proc = run_python(code, timeout=20)
    assert "leaving" in proc.stdout
    assert time.monotonic() - started < 10


@SQLITE_ONLY
def test_starting_an_unrunnable_run_again_with_its_workflow_resumes_it(make_engine, db_url):
    gate = NativeGate()

    def wait_gate():
        return gate.wait(10)

    @aion.workflow(name="tests.late_registered")
    def late(ctx, x):
        ctx.step(double, x)
        return ctx.step(wait_gate)

    first = make_engine(late)
    first.start(late, 4, id="late")
    stop_with_runs_parked(first, ["late"], gate)
    from aion_green.core import registry

    registry._DECORATED.pop("tests.late_registered")
    second = make_engine()
    second.list()  # the first call starts the engine (and its recovery)
    wait_until(lambda: "late" in second.unrunnable, what="recovery to give up on 'late'")
    assert second.start(late, 4, id="late").result(10) is True
    assert "late" not in second.unrunnable


def test_appends_of_concurrent_runs_share_commits(make_engine):
    """Group commit: 200 runs stepping at once need far fewer transactions
    than appends, and each run still sees every one of its own records."""
    @aion.workflow
    def five(ctx, i):
        return [ctx.step(double, i + k) for k in range(5)]

    engine = make_engine(five)
    engine.start(five, -1).result(10)
    writer = engine._epoch.writer
    batches, writes = writer.batches, writer.writes
    handles = [engine.start(five, i, id=f"g{i}") for i in range(200)]
    assert [h.result(30) for h in handles] == [[2 * (i + k) for k in range(5)] for i in range(200)]
    new_writes = writer.writes - writes
    new_batches = writer.batches - batches
    assert new_writes == 200 * 7  # create + 5 steps + end, per run
    assert new_batches < new_writes / 3, (new_batches, new_writes)


def test_nothing_of_an_epoch_is_appended_after_shutdown_returns(make_engine):
    """Failure window: steps are still running on the pool, and timers are
    about to fire, when shutdown() returns. Their results must not reach any
    history afterwards: a successor engine must be the only writer."""
    gate = NativeGate()
    in_steps = []

    def held(i):
        in_steps.append(i)
        gate.wait(10)
        return i

    @aion.workflow
    def busy(ctx, i):
        if i % 2:
            ctx.sleep(0.2)
        return ctx.step(held, i)

    engine = make_engine(busy, step_grace=0)  # the held steps are abandoned, not awaited
    for i in range(10):
        engine.start(busy, i, id=f"busy-{i}")
    wait_until(lambda: len(in_steps) == 5, what="the even runs to be in their steps")
    engine.shutdown()
    store = open_test_store(engine.url)
    snapshot = {f"busy-{i}": len(store.read(f"busy-{i}")) for i in range(10)}
    store.close()
    gate.set()  # the steps return now, and the odd runs' timers come due
    time.sleep(0.5)
    store = open_test_store(engine.url)
    try:
        assert {wid: len(store.read(wid)) for wid in snapshot} == snapshot
    finally:
        store.close()


@SQLITE_ONLY
def test_a_passive_engine_starts_and_looks_but_drives_nothing(make_engine):
    looker = make_engine(doubler, passive=True)
    looker.start(doubler, 21, id="seen-not-run")
    time.sleep(0.3)  # long enough for a driving engine to have finished it
    assert looker.describe("seen-not-run").status == ev.RUNNING
    assert [e.type for e in looker.history("seen-not-run")] == [ev.WORKFLOW_STARTED]
    driver = make_engine(doubler)
    assert driver.result("seen-not-run", timeout=10) == 42
    assert driver.driving  # the store's lock was left free for it
