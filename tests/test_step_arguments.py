"""A deploy that changes what a workflow passes to a recorded step is a
replay divergence (issue 16: step arguments were not compared on replay, so
the recorded result of the old call was silently returned for the new one).
Runs recorded before step records carried a digest still replay."""
import pytest
from conftest import wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append, SQLiteStore

CALLS = []


def charge(order_id, amount):
    CALLS.append((order_id, amount))
    return {"charged": amount}


def _v1(ctx, order_id):
    paid = ctx.step(charge, order_id, 10)
    ctx.receive("go")
    return paid


def _v2_new_amount(ctx, order_id):
    paid = ctx.step(charge, order_id, 20)  # the deploy changed the amount
    ctx.receive("go")
    return paid


def _v2_patched(ctx, order_id):
    if ctx.patched("amount-20"):
        paid = ctx.step(charge, order_id, 20)
    else:
        paid = ctx.step(charge, order_id, 10)
    ctx.receive("go")
    return paid


def _as(fn, name):
    fn.__aion_workflow__ = name
    return fn


def _park_v1(make_engine, wid):
    engine = make_engine(_as(_v1, "stepargs.checkout"))
    engine.start("stepargs.checkout", "o-1", id=wid)
    wait_until(lambda: any(e.type == ev.STEP_COMPLETED for e in engine.history(wid)),
               what="the step's record")
    engine.shutdown()


def test_a_deploy_that_changes_a_recorded_steps_arguments_fails_the_run_as_a_divergence(make_engine):
    """Failure window: v1 recorded charge('o-1', 10) and parked; v2 replays
    the run and reaches that step with charge('o-1', 20)."""
    CALLS.clear()
    _park_v1(make_engine, "changed")
    engine = make_engine(_as(_v2_new_amount, "stepargs.checkout"))
    with pytest.raises(aion.WorkflowFailed) as failed:
        engine.result("changed", timeout=10)
    error = failed.value.error
    assert error["kind"] == "nondeterminism" and error["seq"] == 2
    message = error["message"]
    assert "'changed'" in message and "seq 2" in message and "step 1 (charge)" in message
    assert "arguments that differ" in message and "ctx.patched" in message
    assert CALLS == [("o-1", 10)]  # the step did not run again with the new arguments
    assert [e.type for e in engine.history("changed")][-1] == ev.WORKFLOW_FAILED


def test_a_change_of_arguments_behind_patched_replays_the_old_branch(make_engine):
    CALLS.clear()
    _park_v1(make_engine, "guarded")
    engine = make_engine(_as(_v2_patched, "stepargs.checkout"))
    engine.signal("guarded", "go")
    assert engine.result("guarded", timeout=10) == {"charged": 10}
    assert engine.start("stepargs.checkout", "o-2", id="new").workflow_id == "new"
    engine.signal("new", "go")
    assert engine.result("new", timeout=10) == {"charged": 20}
    assert CALLS == [("o-1", 10), ("o-2", 20)]


def fetch(url, opts):
    CALLS.append(url)
    return url.upper()


def _fan_v1(ctx):
    got = ctx.parallel([aion.Step(fetch, "a", {"n": 1}), aion.Step(fetch, "b", {"n": 1})])
    ctx.receive("go")
    return got


def _fan_v2(ctx):
    got = ctx.parallel([aion.Step(fetch, "a", {"n": 1}), aion.Step(fetch, "b", {"n": 2})])
    ctx.receive("go")
    return got


def test_a_changed_argument_of_a_step_inside_parallel_is_a_divergence(make_engine):
    CALLS.clear()
    engine = make_engine(_as(_fan_v1, "stepargs.fan"))
    engine.start("stepargs.fan", id="fan")
    wait_until(lambda: sum(e.type == ev.STEP_COMPLETED for e in engine.history("fan")) == 2,
               what="both records")
    engine.shutdown()
    engine = make_engine(_as(_fan_v2, "stepargs.fan"))
    with pytest.raises(aion.WorkflowFailed) as failed:
        engine.result("fan", timeout=10)
    assert failed.value.error["kind"] == "nondeterminism"
    assert "step 2 (fetch)" in failed.value.message and "ctx.patched" in failed.value.message
    assert sorted(CALLS) == ["a", "b"]


def test_a_run_recorded_before_steps_carried_a_digest_still_replays(tmp_path, make_engine):
    """A history written by an earlier release: its step records carry no
    digest, so nothing is compared (even though the arguments differ)."""
    CALLS.clear()
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = SQLiteStore(str(tmp_path / "old.db"))
    try:
        store.create_run("old", "stepargs.checkout", '["o-1"]', "r1", 1.0)
        [head] = store.write_batch([Append("old", 1, [ev.NewEvent(
            ev.STEP_COMPLETED, 2.0, {"step": 1, "name": "charge", "attempt": 1,
                                     "result": {"charged": 5}})])])
        assert head == 2
    finally:
        store.close()
    engine = make_engine(_as(_v2_new_amount, "stepargs.checkout"), url=url)
    engine.signal("old", "go")
    assert engine.result("old", timeout=10) == {"charged": 5}
    assert CALLS == []


def refuse(order_id, amount):
    CALLS.append(("refuse", amount))
    raise aion.NonRetryableError("no")


def _failing_v1(ctx):
    try:
        ctx.step(refuse, "o-1", 1)
    except aion.StepError:
        pass
    return ctx.receive("go")


def _failing_v2(ctx):
    try:
        ctx.step(refuse, "o-1", 2)
    except aion.StepError:
        pass
    return ctx.receive("go")


def test_a_changed_argument_of_a_step_that_failed_is_a_divergence_too(make_engine):
    CALLS.clear()
    engine = make_engine(_as(_failing_v1, "stepargs.failing"))
    engine.start("stepargs.failing", id="failing")
    wait_until(lambda: any(e.type == ev.STEP_FAILED for e in engine.history("failing")),
               what="the failed step's record")
    engine.shutdown()
    engine = make_engine(_as(_failing_v2, "stepargs.failing"))
    with pytest.raises(aion.WorkflowFailed) as failed:
        engine.result("failing", timeout=10)
    assert failed.value.error["kind"] == "nondeterminism" and "step 1 (refuse)" in failed.value.message
    assert CALLS == [("refuse", 1)]
