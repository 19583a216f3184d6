"""Cancellation, queries, and deadlines over blocks of workflow code."""
import logging
import time
from datetime import timedelta

import pytest
from conftest import NativeGate, open_test_store, wait_until
from freezegun import freeze_time

import aion_green as aion
from aion_green.core import events as ev


def types(history):
    return [e.type for e in history]


def echo(x):
    return x


def test_cancel_reaches_a_sleeping_workflow_and_cleanup_runs_steps(make_engine):
    @aion.workflow
    def cancellable(ctx):
        try:
            ctx.sleep(timedelta(days=1))
        finally:
            ctx.step(echo, "cleaned up")

    engine = make_engine(cancellable)
    handle = engine.start(cancellable, id="c1")
    wait_until(lambda: ev.TIMER_STARTED in types(engine.history("c1")))
    engine.cancel("c1", "customer asked")
    with pytest.raises(aion.WorkflowCancelled, match="customer asked"):
        handle.result(10)
    history = engine.history("c1")
    assert types(history)[-3:] == [ev.CANCEL_REQUESTED, ev.STEP_COMPLETED, ev.WORKFLOW_CANCELLED]
    assert history[-2]["result"] == "cleaned up"
    assert engine.describe("c1").status == "cancelled"
    engine.cancel("c1")  # again, after the end it caused: nothing to do, no error
    assert types(engine.history("c1")).count(ev.CANCEL_REQUESTED) == 1

    @aion.workflow
    def quick(ctx):
        return 1

    engine.start(quick, id="finished").result(10)
    with pytest.raises(aion.WorkflowNotRunning, match="nothing left to cancel"):
        engine.cancel("finished")


def test_cancel_during_a_running_step_does_not_await_its_result(make_engine):
    gate, in_step = NativeGate(), NativeGate()

    def slow():
        in_step.set()
        gate.wait(10)
        return "late"

    @aion.workflow
    def stepping(ctx):
        try:
            return ctx.step(slow)
        except aion.Cancelled:
            return "gave up"

    engine = make_engine(stepping)
    handle = engine.start(stepping, id="c2")
    assert in_step.wait(10)
    engine.cancel("c2")
    assert handle.result(10) == "gave up"  # did not wait for the step
    gate.set()
    time.sleep(0.3)  # the step returns now; its record comes after the run's end
    history = engine.history("c2")
    assert types(history) == [ev.WORKFLOW_STARTED, ev.CANCEL_REQUESTED, ev.WORKFLOW_COMPLETED]


def test_cancel_is_recorded_once_and_seen_by_the_next_wait(make_engine):
    @aion.workflow
    def waiting(ctx):
        try:
            ctx.receive("never")
        except aion.Cancelled as exc:
            return f"cancelled: {exc.reason}"

    engine = make_engine(waiting)
    handle = engine.start(waiting, id="c3")
    engine.cancel("c3", "twice")
    engine.cancel("c3", "twice")
    assert handle.result(10) == "cancelled: twice"
    assert types(engine.history("c3")).count(ev.CANCEL_REQUESTED) == 1


def test_queries_while_parked_in_each_kind_of_wait(make_engine):
    gate = NativeGate()

    def blocked():
        return gate.wait(10)

    @aion.workflow
    def asked(ctx):
        state = {"phase": "start"}
        ctx.set_query("phase", lambda: state["phase"])
        ctx.set_query("plus", lambda a, b: a + b)
        ctx.set_query("broken", lambda: 1 / 0)
        state["phase"] = "sleeping"
        ctx.sleep(0.3)
        state["phase"] = "receiving"
        ctx.receive("go")
        state["phase"] = "stepping"
        ctx.step(blocked)
        return "done"

    engine = make_engine(asked)
    handle = engine.start(asked, id="q")

    def phase():
        try:
            return engine.query("q", "phase")
        except aion.QueryFailed:  # asked before the workflow set its query
            return None

    wait_until(lambda: phase() == "sleeping")
    assert engine.query("q", "plus", 2, 3) == 5
    wait_until(lambda: phase() == "receiving")
    engine.signal("q", "go")
    wait_until(lambda: phase() == "stepping")
    with pytest.raises(aion.QueryFailed, match="ZeroDivisionError"):
        engine.query("q", "broken")
    with pytest.raises(aion.QueryFailed, match="has no query 'nope'.*broken, phase, plus"):
        engine.query("q", "nope")
    before = engine.history("q")
    gate.set()
    assert handle.result(10) == "done"
    assert all(e.type != "Query" for e in before)  # queries are never recorded
    with pytest.raises(aion.WorkflowNotRunning, match="answers no queries"):
        engine.query("q", "phase")


def test_a_block_deadline_abandons_the_wait_and_raises_timeout(make_engine):
    @aion.workflow
    def bounded(ctx):
        try:
            with ctx.timeout(timedelta(hours=1)):
                ctx.receive("reply")
                outcome = "replied"
        except aion.Timeout:
            outcome = "timed out"
        return outcome

    engine = make_engine(bounded)
    with freeze_time("2033-01-01") as clock:
        handle = engine.start(bounded, id="t1")
        wait_until(lambda: ev.TIMER_STARTED in types(engine.history("t1")))
        clock.tick(timedelta(hours=1, seconds=1))
        engine.poke()
        assert handle.result(10) == "timed out"
    quick = engine.start(bounded, id="t2")
    wait_until(lambda: ev.TIMER_STARTED in types(engine.history("t2")))
    engine.signal("t2", "reply")
    assert quick.result(10) == "replied"
    assert ev.TIMER_CANCELLED in types(engine.history("t2"))


def test_a_block_deadline_around_a_step_and_replay_takes_the_same_branch(make_engine):
    """The deadline fires while the step runs: the step's wait is abandoned
    (Timeout at the block), and the step's record, landing later, is passed
    over by a replay of the whole history, which takes the same branch."""
    gate, late_recorded = NativeGate(), NativeGate()

    def slow():
        gate.wait(10)
        return "finished"

    def fallback():
        late_recorded.wait(10)
        return "fallback"

    @aion.workflow(name="tests.bounded_step")
    def bounded_step(ctx):
        try:
            with ctx.timeout(0.2):
                return ctx.step(slow)
        except aion.Timeout:
            return ctx.step(fallback)

    engine = make_engine(bounded_step)
    handle = engine.start(bounded_step, id="bs")
    wait_until(lambda: ev.TIMER_FIRED in types(engine.history("bs")))
    gate.set()
    wait_until(lambda: [e.data.get("result") for e in engine.history("bs")].count("finished") == 1,
               what="the abandoned step's late record")
    late_recorded.set()
    assert handle.result(10) == "fallback"
    history = engine.history("bs")
    assert types(history) == [ev.WORKFLOW_STARTED, ev.TIMER_STARTED, ev.TIMER_FIRED, ev.STEP_COMPLETED,
                              ev.STEP_COMPLETED, ev.WORKFLOW_COMPLETED]
    assert [history[3]["step"], history[4]["step"]] == [1, 2]
    run_id = engine.describe("bs").run_id
    engine.shutdown()
    # Replay that history (all but its end) as a new run of the same code.
    from aion_green.store import Append
    store = open_test_store(engine.url)
    store.create_run("bs-replay", "tests.bounded_step", "[]", run_id, time.time())
    store.write_batch([Append("bs-replay", 1, [ev.NewEvent(e.type, e.at, e.data) for e in history[1:-1]])])
    store.close()
    again = make_engine(bounded_step)
    assert again.result("bs-replay", timeout=10) == "fallback"
    assert types(again.history("bs-replay")) == types(history)


def test_a_step_returning_while_the_cancelled_end_is_being_written_changes_nothing(make_engine,
                                                                                  caplog):
    """The run's end (WorkflowCancelled) is submitted, and while the writer
    commits it the step it abandoned returns: its record is refused (nothing
    follows an end) and dropped. Before, that refusal stopped the run as if
    the store had failed: result() raised EngineClosed (about 1 in 15 when a
    cancel met a running step) and an error was logged."""
    gate, in_step = NativeGate(), NativeGate()
    writing_end, let_end_go = NativeGate(), NativeGate()

    def slow():
        in_step.set()
        gate.wait(10)
        return "late"

    @aion.workflow
    def stepping_on(ctx):
        ctx.step(slow)
        return "never"

    engine = make_engine(stepping_on)
    engine.list(limit=1)
    store = engine._epoch.store
    write_batch = store.write_batch

    def held_write_batch(ops):
        if any(getattr(e, "type", None) == ev.WORKFLOW_CANCELLED
               for op in ops for e in (getattr(op, "events", None) or ())):
            writing_end.set()
            let_end_go.wait(10)
        return write_batch(ops)

    store.write_batch = held_write_batch
    handle = engine.start(stepping_on, id="c-late")
    assert in_step.wait(10)
    engine.cancel("c-late")
    assert writing_end.wait(10)  # the end is on its way to the disk
    gate.set()  # the step returns now: its record comes after the end
    time.sleep(0.3)
    let_end_go.set()
    began = time.monotonic()
    with pytest.raises(aion.WorkflowCancelled):
        handle.result(10)
    assert time.monotonic() - began < 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert types(engine.history("c-late")) == [ev.WORKFLOW_STARTED, ev.CANCEL_REQUESTED,
                                               ev.WORKFLOW_CANCELLED]
