"""Bounds on a run (issue 18), in the engine: an execution timeout ends a
run with status ``timed_out`` (recorded, durable, spanning continue-as-new),
and a paused run starts no step, fires no timer and takes no message until
it is unpaused (both recorded, and the pause holds across a restart)."""
import math
import time
from datetime import timedelta

import pytest
from conftest import NativeGate, wait_until

import aion_green as aion
from aion_green.core import events as ev

MARKS = []


def mark(tag):
    MARKS.append(tag)
    return tag


@pytest.fixture(autouse=True)
def _fresh_marks():
    MARKS.clear()
    yield


def types(engine, wid):
    return [e.type for e in engine.history(wid)]


# -- the execution timeout ---------------------------------------------------------------------
@aion.workflow(name="bounds.long")
def long_flow(ctx):
    mark("begin")
    ctx.step(mark, "first")
    ctx.sleep(timedelta(days=1))
    ctx.step(mark, "after a day")
    ctx.sleep(timedelta(days=5))
    ctx.step(mark, "after six days")  # past the deadline: never runs
    return "done"


def test_a_run_past_its_execution_timeout_ends_timed_out_and_result_says_so(aion_engine,
                                                                              aion_time):
    started = time.time()
    handle = aion_engine.start(long_flow, id="late", execution_timeout=timedelta(days=2))
    deadline = aion_engine.describe("late").execution_deadline
    assert deadline == pytest.approx(started + 2 * 86400, abs=5)
    aion_time.advance(timedelta(days=1))
    wait_until(lambda: "after a day" in MARKS, what="the step after the first day")
    assert aion_engine.describe("late").status == "running"
    aion_time.advance(timedelta(days=1, seconds=1))
    aion_engine.poke()
    with pytest.raises(aion.WorkflowTimedOut) as raised:
        handle.result(timeout=10)
    assert isinstance(raised.value, aion.WorkflowFailed)  # an except WorkflowFailed sees it too
    assert raised.value.deadline == deadline and "execution timeout" in str(raised.value)
    info = aion_engine.describe("late")
    assert info.status == ev.TIMED_OUT == "timed_out" and info.error["type"] == "TimedOut"
    history = aion_engine.history("late")
    assert history[-1].type == ev.WORKFLOW_TIMED_OUT
    assert history[-1].data["execution_deadline"] == deadline
    assert history[0].data["execution_deadline"] == deadline
    # Nothing of it ran after its end. (Its body's own mark comes again each
    # time it is replayed: by default a run a day from its next wake leaves
    # memory and is replayed when its timer fires.)
    assert [m for m in MARKS if m != "begin"] == ["first", "after a day"]
    assert MARKS[0] == "begin"
    assert aion_engine.list(status="timed_out")[0].workflow_id == "late"
    assert aion_engine.count_by_status()["timed_out"] == 1


@aion.workflow(name="bounds.quick")
def quick(ctx, n):
    return ctx.step(mark, n)


def test_a_run_that_ends_before_its_deadline_is_unaffected(make_engine):
    engine = make_engine(quick)
    handle = engine.start(quick, 7, id="quick", execution_timeout=1.0)
    assert handle.result(timeout=10) == 7
    time.sleep(1.5)  # its deadline passes after its end
    engine.poke()
    time.sleep(0.2)
    assert types(engine, "quick") == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED,
                                      ev.WORKFLOW_COMPLETED]
    assert engine.describe("quick").status == "completed"
    # Without a timeout, a run has no deadline.
    engine.start(quick, 8, id="unbounded").result(timeout=10)
    assert engine.describe("unbounded").execution_deadline is None


@aion.workflow(name="bounds.hops")
def hops(ctx, n):
    ctx.sleep(timedelta(hours=20))
    mark(f"hop {n}")
    ctx.continue_as_new(n + 1)


def test_the_execution_timeout_spans_the_runs_of_a_chain(aion_engine, aion_time):
    """Continue-as-new begins a new run under the same id; the deadline set
    at the start bounds the whole chain, as Temporal's execution timeout."""
    aion_engine.start(hops, 0, id="chain", execution_timeout=timedelta(days=2))
    deadline = aion_engine.describe("chain").execution_deadline
    for _ in range(2):
        aion_time.advance(timedelta(hours=20))
    wait_until(lambda: MARKS == ["hop 0", "hop 1"], what="two runs of the chain")
    third = aion_engine.describe("chain")
    assert third.status == "running" and third.execution_deadline == deadline
    aion_time.advance(timedelta(hours=9))  # 49 h in: past the deadline, before the third hop
    aion_engine.poke()
    with pytest.raises(aion.WorkflowTimedOut):
        aion_engine.result("chain", timeout=10)
    assert aion_engine.history("chain")[0].data["continued_from"]
    assert aion_engine.history("chain")[-1].type == ev.WORKFLOW_TIMED_OUT
    assert MARKS == ["hop 0", "hop 1"]


@aion.workflow(name="bounds.sleepy")
def sleepy(ctx):
    ctx.step(mark, "began")
    ctx.sleep(3600)
    return "woke"


def test_the_deadline_holds_across_an_engine_restart(make_engine):
    """Failure window: the engine that started the run (and armed its
    deadline) stops before the deadline; the next one must end the run from
    what is recorded."""
    first = make_engine(sleepy)
    first.start(sleepy, id="restart", execution_timeout=1.5)
    wait_until(lambda: ev.TIMER_STARTED in types(first, "restart"), what="the run's sleep")
    first.shutdown()
    second = make_engine(sleepy)
    began = time.monotonic()
    with pytest.raises(aion.WorkflowTimedOut):
        second.result("restart", timeout=15)
    assert time.monotonic() - began < 10
    assert types(second, "restart")[-1] == ev.WORKFLOW_TIMED_OUT
    assert MARKS == ["began"]


@pytest.mark.parametrize("value", [0, -1, 0.0, "5", True, None.__class__, math.nan, math.inf,
                                   timedelta(0), timedelta(seconds=-3)])
def test_a_bad_execution_timeout_is_refused_naming_it_and_records_nothing(make_engine, value):
    engine = make_engine(quick)
    with pytest.raises(aion.ConfigurationError, match="execution_timeout"):
        engine.start(quick, 1, id="bad", execution_timeout=value)
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("bad")


@aion.workflow(name="bounds.child")
def child_flow(ctx):
    return ctx.receive("go")


@aion.workflow(name="bounds.parent")
def parent_flow(ctx):
    child = ctx.start_child(child_flow, id="bounds-kid")
    return child.result()


def test_the_children_of_a_timed_out_run_run_on_as_after_terminate(make_engine):
    """The policy of terminate (runtime/termination.py): a parent that ends
    without cleanup leaves its children running; end them by their ids."""
    engine = make_engine(parent_flow, child_flow)
    engine.start(parent_flow, id="parent", execution_timeout=1.0)
    with pytest.raises(aion.WorkflowTimedOut):
        engine.result("parent", timeout=15)
    assert engine.describe("bounds-kid").status == "running"
    engine.signal("bounds-kid", "go", "still here")
    assert engine.result("bounds-kid", timeout=10) == "still here"


# -- pause and unpause ---------------------------------------------------------------------------
GATE = {}


def held_step():
    GATE["open"].wait(10)
    MARKS.append("held step ended")
    return "held"


@aion.workflow(name="bounds.stepper")
def stepper(ctx):
    ctx.step(mark, "one")
    ctx.step(held_step)
    ctx.step(mark, "two")
    ctx.step(mark, "three")
    return list(MARKS)


def test_a_step_in_flight_finishes_but_no_new_step_starts_until_unpause(make_engine):
    GATE["open"] = NativeGate()
    engine = make_engine(stepper)
    handle = engine.start(stepper, id="stepper")
    wait_until(lambda: engine.steps_running("stepper"), what="the held step")
    seq = engine.pause("stepper", "maintenance")
    assert engine.history("stepper")[seq - 1].type == ev.WORKFLOW_PAUSED
    assert engine.history("stepper")[seq - 1].data["reason"] == "maintenance"
    info = engine.describe("stepper")
    assert info.paused and info.status == "running"
    GATE["open"].set()
    wait_until(lambda: types(engine, "stepper")[-1] == ev.STEP_COMPLETED, what="the held step")
    time.sleep(0.5)
    assert MARKS == ["one", "held step ended"]  # its record landed; "two" did not start
    assert types(engine, "stepper")[-1] == ev.STEP_COMPLETED
    engine.unpause("stepper")
    assert handle.result(timeout=10) == ["one", "held step ended", "two", "three"]
    assert not engine.describe("stepper").paused


@aion.workflow(name="bounds.napper")
def napper(ctx):
    ctx.step(mark, "before")
    ctx.sleep(0.3)
    ctx.step(mark, "after")
    return "rested"


def test_a_timer_due_while_paused_fires_at_the_unpause(make_engine):
    engine = make_engine(napper)
    handle = engine.start(napper, id="napper")
    wait_until(lambda: ev.TIMER_STARTED in types(engine, "napper"), what="the sleep")
    engine.pause("napper")
    time.sleep(1.0)  # the timer came due 0.7 s ago
    engine.poke()
    time.sleep(0.2)
    assert ev.TIMER_FIRED not in types(engine, "napper")
    assert MARKS == ["before"]
    engine.unpause("napper")
    assert handle.result(timeout=10) == "rested"
    kinds = types(engine, "napper")
    assert kinds.index(ev.WORKFLOW_UNPAUSED) < kinds.index(ev.TIMER_FIRED)
    assert MARKS == ["before", "after"]


@aion.workflow(name="bounds.listener")
def listener(ctx):
    ctx.step(mark, "listening")
    got = ctx.receive("note")
    ctx.step(mark, f"got {got}")
    return got


def test_a_message_sent_while_paused_is_recorded_and_delivered_after_the_unpause(make_engine):
    engine = make_engine(listener)
    handle = engine.start(listener, id="listener")
    wait_until(lambda: MARKS == ["listening"], what="the first step")
    engine.pause("listener")
    seq = engine.signal("listener", "note", "hello")
    assert engine.history("listener")[seq - 1].type == ev.MESSAGE_RECEIVED  # recorded, not lost
    time.sleep(0.5)
    assert MARKS == ["listening"]  # not delivered: its receive has not returned
    engine.unpause("listener")
    assert handle.result(timeout=10) == "hello"
    assert MARKS == ["listening", "got hello"]


def test_a_pause_holds_across_a_restart(make_engine):
    """Replay restores the paused state from the history: the next engine
    neither fires the timer nor runs the step after it."""
    first = make_engine(napper)
    first.start(napper, id="napper-2")
    wait_until(lambda: ev.TIMER_STARTED in types(first, "napper-2"), what="the sleep")
    first.pause("napper-2", "deploy")
    first.shutdown()
    time.sleep(0.5)  # the timer is due
    second = make_engine(napper)
    assert second.describe("napper-2").paused
    time.sleep(1.0)
    second.poke()
    time.sleep(0.2)
    assert ev.TIMER_FIRED not in types(second, "napper-2") and MARKS == ["before"]
    second.unpause("napper-2")
    assert second.result("napper-2", timeout=10) == "rested"
    assert MARKS == ["before", "after"]


def test_pausing_a_finished_or_unknown_run_is_refused_and_records_nothing(make_engine):
    engine = make_engine(quick)
    engine.start(quick, 1, id="over").result(timeout=10)
    before = engine.history("over")
    for operation in (engine.pause, engine.unpause):
        with pytest.raises(aion.WorkflowNotRunning, match="completed"):
            operation("over")
        with pytest.raises(aion.WorkflowNotFound):
            operation("never-started")
    assert engine.history("over") == before
    with pytest.raises(aion.ConfigurationError, match="reason"):
        engine.pause("over", reason=5)


def test_terminate_and_the_execution_timeout_end_a_paused_run(make_engine):
    engine = make_engine(listener)
    engine.start(listener, id="paused-ends", execution_timeout=1.5)
    wait_until(lambda: MARKS == ["listening"], what="the first step")
    engine.pause("paused-ends")
    with pytest.raises(aion.WorkflowTimedOut):
        engine.result("paused-ends", timeout=15)
    engine.start(listener, id="paused-terminated")
    wait_until(lambda: len(MARKS) == 2, what="the first step")
    engine.pause("paused-terminated")
    engine.terminate("paused-terminated", "no longer needed")
    with pytest.raises(aion.WorkflowCancelled):
        engine.result("paused-terminated", timeout=10)


@aion.workflow(name="bounds.monthly")
def monthly(ctx):
    ctx.sleep(timedelta(days=30))
    return ctx.step(mark, "a month later")


def test_time_travel_fires_no_timer_of_a_paused_run_until_its_unpause(aion_engine, aion_time):
    handle = aion_engine.start(monthly, id="monthly")
    aion_time.settle()
    aion_engine.pause("monthly")
    aion_time.advance(timedelta(days=31))  # due, but paused: advance() does not wait for it
    assert ev.TIMER_FIRED not in types(aion_engine, "monthly") and MARKS == []
    aion_engine.unpause("monthly")
    assert handle.result(timeout=10) == "a month later"


def test_bounds_work_by_namespace_as_every_operation_does(make_engine):
    """The same id in two namespaces names two runs: a pause and a deadline
    reach the run of the namespace named, and an error names the id (not
    the key the engine stores it under)."""
    engine = make_engine(listener)
    engine.start(listener, id="twin", namespace="blue", execution_timeout=1.0)
    engine.start(listener, id="twin")
    wait_until(lambda: MARKS == ["listening", "listening"], what="both first steps")
    engine.pause("twin", namespace="blue")
    assert engine.describe("twin", namespace="blue").paused
    assert not engine.describe("twin").paused
    with pytest.raises(aion.WorkflowTimedOut) as raised:
        engine.result("twin", timeout=15, namespace="blue")
    assert "'twin'" in str(raised.value) and "\x1f" not in str(raised.value)
    assert engine.describe("twin").status == "running"
    engine.signal("twin", "note", "default's")
    assert engine.result("twin", timeout=10) == "default's"
    with pytest.raises(aion.WorkflowNotRunning):
        engine.unpause("twin", namespace="blue")
