"""Replay that diverges from history fails that run alone, with exactly one
WorkflowFailed event naming the workflow id, seq, expected and found."""
import time

from conftest import NativeGate, open_test_store, stop_with_runs_parked

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append


def step_a():
    return "a"


def step_b(gate):
    gate.wait(10)
    return "b"


def step_c():
    return "c"


def park_run(make_engine, workflow, ids, gate):
    """Start runs; stop the engine once each recorded its first step and is
    parked in its second: the runs stay unfinished."""
    engine = make_engine(workflow)
    for wid in ids:
        engine.start(workflow, id=wid)
    stop_with_runs_parked(engine, ids, gate)


def test_changed_workflow_code_fails_that_run_only(make_engine):
    gate = NativeGate()

    @aion.workflow(name="tests.versioned")
    def v1(ctx):
        first = ctx.step(step_a)
        return first + ctx.step(step_b, gate)

    @aion.workflow(name="tests.stable")
    def stable(ctx):
        first = ctx.step(step_a)
        return first + ctx.step(step_b, gate)

    park_run(make_engine, v1, ["changed"], NativeGate())
    park_run(make_engine, stable, ["unchanged"], gate)

    @aion.workflow(name="tests.versioned")
    def v2(ctx):  # the deploy reordered the steps
        first = ctx.step(step_c)
        return first + ctx.step(step_a)

    engine = make_engine(v2, stable)
    assert engine.result("unchanged", timeout=10) == "ab"
    try:
        engine.result("changed", timeout=10)
    except aion.WorkflowFailed as failure:
        error = failure.error
    else:
        raise AssertionError("the changed run should fail")
    assert error["kind"] == "nondeterminism"
    assert error["seq"] == 2
    assert "step_c" in error["expected"] and "step_a" in error["found"]
    assert "'changed'" in error["message"] and "deterministic" in error["message"]
    history = engine.history("changed")
    assert [e.type for e in history].count(ev.WORKFLOW_FAILED) == 1
    assert history[-1].type == ev.WORKFLOW_FAILED
    assert history[1].type == ev.STEP_COMPLETED and history[1]["result"] == "a"  # nothing lost


def test_nondeterminism_cannot_be_swallowed_by_the_workflow(make_engine):
    @aion.workflow(name="tests.swallow")
    def v1(ctx):
        return ctx.step(step_a)

    engine = make_engine(v1)
    engine.start(v1, id="sw").result(10)

    @aion.workflow(name="tests.swallow2")
    def v2(ctx):
        try:
            ctx.step(step_c)
        except Exception:
            pass
        return "swallowed"

    engine.shutdown()
    # An unfinished run whose history holds step_a where v2 now calls step_c:
    # copy the recorded step into a new run of v2's type.
    store = open_test_store(engine.url)
    store.create_run("sw2", "tests.swallow2", "[]", "run-sw2", time.time())
    step = [e for e in store.read("sw") if e.type == ev.STEP_COMPLETED][0]
    store.write_batch([Append("sw2", 1, [ev.NewEvent(step.type, step.at, step.data)])])
    store.close()
    second = make_engine(v2)
    try:
        second.result("sw2", timeout=10)
    except aion.WorkflowFailed as failure:
        assert failure.error["kind"] == "nondeterminism"
    else:
        raise AssertionError("a swallowed NonDeterminismError must still fail the run")
    assert [e.type for e in second.history("sw2")].count(ev.WORKFLOW_FAILED) == 1


def test_workflow_that_now_does_less_than_recorded_is_nondeterministic(make_engine):
    gate = NativeGate()

    @aion.workflow(name="tests.shrinking")
    def v1(ctx):
        ctx.step(step_a)
        return ctx.step(step_b, gate)

    park_run(make_engine, v1, ["shrink"], gate)

    @aion.workflow(name="tests.shrinking")
    def v2(ctx):
        return "done early"

    engine = make_engine(v2)
    try:
        engine.result("shrink", timeout=10)
    except aion.WorkflowFailed as failure:
        assert failure.error["kind"] == "nondeterminism"
        assert failure.error["seq"] == 2
        assert "the workflow to return" in failure.error["expected"]
    else:
        raise AssertionError("should fail")
