"""ctx.parallel and ctx.race: steps at once, results in order, the first
recorded end winning a race, and the same outcome when the record is
replayed (records of a fan-out land in any order)."""
import time

import pytest
from conftest import NativeGate, open_test_store, stop_with_runs_parked, wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append


def types(history):
    return [e.type for e in history]


class Barrier:
    """Opens once ``n`` steps have arrived: proves the steps ran at once."""

    def __init__(self, n):
        from gevent import monkey

        self._lock = monkey.get_original("_thread", "allocate_lock")()
        self.arrived = 0
        self.n = n
        self.gate = NativeGate()

    def arrive(self):
        with self._lock:
            self.arrived += 1
            if self.arrived >= self.n:
                self.gate.set()
        return self.gate.wait(10)


def replay_as_new_run(engine, wid, workflow, make_engine):
    """Copy ``wid``'s history but its end into a new run with the same run id,
    and let a new engine replay it: its result and history."""
    history = engine.history(wid)
    run_id = engine.describe(wid).run_id
    url = engine.url
    engine.shutdown()
    store = open_test_store(url)
    store.create_run(f"{wid}-replay", history[0]["workflow_type"], "[]", run_id, time.time())
    store.write_batch([Append(f"{wid}-replay", 1,
                              [ev.NewEvent(e.type, e.at, e.data) for e in history[1:-1]])])
    store.close()
    again = make_engine(workflow)
    result = again.result(f"{wid}-replay", timeout=10)
    return result, again.history(f"{wid}-replay")


def test_parallel_runs_steps_at_once_and_returns_results_in_order(make_engine):
    barrier = Barrier(5)
    keys = []
    holder = []

    def part(i):
        keys.append(aion.step_info().idempotency_key)
        assert barrier.arrive(), "the steps of a parallel did not run at once"
        if i < 4:  # later items end first: wait for the next item's record
            wait_until(lambda: i + 3 in [e.data.get("step") for e in holder[0].history("sq")],
                       what=f"the record of item {i + 1}")
        return i * i

    @aion.workflow(name="test_fanout.squares")
    def squares(ctx):
        before = ctx.step(part_zero)
        return [before, ctx.parallel([aion.Step(part, i) for i in range(5)]), ctx.step(part_zero)]

    engine = make_engine(squares)
    holder.append(engine)
    assert engine.start(squares, id="sq").result(10) == [0, [0, 1, 4, 9, 16], 0]
    assert sorted(keys) == [f"sq/step-{n}" for n in range(2, 7)]
    history = engine.history("sq")
    steps = [e["step"] for e in history if e.type == ev.STEP_COMPLETED]
    assert steps[0] == 1 and sorted(steps[1:6]) == [2, 3, 4, 5, 6] and steps[6] == 7
    assert steps[1:6] == [6, 5, 4, 3, 2]
    result, replayed = replay_as_new_run(engine, "sq", squares, make_engine)
    assert result == [0, [0, 1, 4, 9, 16], 0]
    assert types(replayed) == types(history)  # nothing ran again: no extra record


def part_zero():
    return 0


def test_parallel_raises_the_first_recorded_failure_after_all_ended(make_engine):
    gate = NativeGate()
    ran = []

    def ok(x):
        gate.wait(10)
        ran.append(x)
        return x

    def bad(message):
        raise aion.NonRetryableError(message)

    @aion.workflow
    def mixed(ctx):
        try:
            ctx.parallel([aion.Step(ok, 1), aion.Step(bad, "first"), aion.Step(ok, 2)])
        except aion.StepError as exc:
            return [exc.step, exc.message, sorted(ran)]

    engine = make_engine(mixed)
    handle = engine.start(mixed, id="m")
    wait_until(lambda: ev.STEP_FAILED in types(engine.history("m")))
    gate.set()
    assert handle.result(10) == [2, "first", [1, 2]]  # raised only once the others ended


def test_parallel_retries_each_step_by_its_own_policy(make_engine):
    attempts = {}

    def flaky(name, fails):
        info = aion.step_info()
        attempts[name] = info.attempt
        if info.attempt <= fails:
            raise RuntimeError(f"{name} attempt {info.attempt}")
        return name

    @aion.workflow
    def retrying(ctx):
        fast = aion.Retry(max_attempts=4, initial_interval=0.01)
        return ctx.parallel([aion.Step(flaky, "a", 2, retry=fast), aion.Step(flaky, "b", 0),
                             aion.Step(flaky, "c", 3, retry=fast)])

    engine = make_engine(retrying)
    assert engine.start(retrying, id="r").result(10) == ["a", "b", "c"]
    assert attempts == {"a": 3, "b": 1, "c": 4}
    failed = [(e["step"], e["attempt"]) for e in engine.history("r") if e.type == ev.STEP_FAILED]
    assert sorted(failed) == [(1, 1), (1, 2), (3, 1), (3, 2), (3, 3)]


def test_race_returns_the_first_recorded_end_and_drops_the_losers(make_engine):
    gate = NativeGate()

    def slow(x):
        gate.wait(10)
        return x

    def quick(x):
        return x

    @aion.workflow(name="test_fanout.loser_kid")
    def loser_kid(ctx):
        return ctx.receive("never")

    @aion.workflow(name="test_fanout.racer")
    def racer(ctx):
        kid = ctx.start_child(loser_kid, id="loser")
        won = ctx.race([aion.Step(slow, "slow"), kid, aion.Step(quick, "quick")])
        after = ctx.step(quick, "after")
        ctx.receive("finish")
        return [won, after]

    engine = make_engine(racer, loser_kid)
    handle = engine.start(racer, id="race")
    wait_until(lambda: ev.STEP_COMPLETED in types(engine.history("race")), what="the quick step")
    with pytest.raises(aion.WorkflowCancelled, match="lost a race"):
        engine.result("loser", timeout=10)
    gate.set()  # the losing step ends now: its record lands late and is passed over
    wait_until(lambda: "slow" in [e.data.get("result") for e in engine.history("race")],
               what="the losing step's late record")
    engine.signal("race", "finish")
    assert handle.result(10) == [[2, "quick"], "after"]
    history = engine.history("race")
    assert ev.CHILD_COMPLETED not in types(history) and ev.CHILD_FAILED not in types(history)
    result, replayed = replay_as_new_run(engine, "race", racer, make_engine)
    assert result == [[2, "quick"], "after"]
    assert types(replayed) == types(history)


def test_a_child_can_win_a_race_against_a_step(make_engine):
    gate = NativeGate()

    def slow():
        gate.wait(10)
        return "step"

    @aion.workflow(name="test_fanout.quick_kid")
    def quick_kid(ctx):
        return "child"

    @aion.workflow
    def racer(ctx):
        return ctx.race([aion.Step(slow), ctx.start_child(quick_kid)])

    engine = make_engine(racer, quick_kid)
    try:
        assert engine.start(racer, id="cr").result(10) == [1, "child"]
    finally:
        gate.set()


def test_a_cancel_abandons_a_fan_out_and_cleanup_steps_still_match(make_engine):
    gate = NativeGate()
    started = []

    def held(x):
        started.append(x)
        gate.wait(10)
        return x

    def cleanup():
        return "cleaned"

    @aion.workflow(name="test_fanout.cancelled_fan")
    def cancelled_fan(ctx):
        try:
            return ctx.parallel([aion.Step(held, 1), aion.Step(held, 2)])
        finally:
            ctx.step(cleanup)

    engine = make_engine(cancelled_fan)
    handle = engine.start(cancelled_fan, id="cf")
    wait_until(lambda: len(started) == 2, what="both steps running")
    engine.cancel("cf", "stop")
    with pytest.raises(aion.WorkflowCancelled):
        handle.result(10)
    gate.set()
    history = engine.history("cf")
    assert types(history)[-3:] == [ev.CANCEL_REQUESTED, ev.STEP_COMPLETED, ev.WORKFLOW_CANCELLED]
    assert history[-2]["step"] == 3 and history[-2]["result"] == "cleaned"


def test_a_deadline_around_a_race_raises_timeout(make_engine):
    gate = NativeGate()

    def held():
        gate.wait(10)
        return "late"

    @aion.workflow
    def bounded(ctx):
        try:
            with ctx.timeout(0.1):
                return ctx.race([aion.Step(held), aion.Step(held)])
        except aion.Timeout:
            return "timed out"

    engine = make_engine(bounded)
    try:
        assert engine.start(bounded, id="b").result(10) == "timed out"
    finally:
        gate.set()


def test_a_restart_mid_parallel_runs_only_the_unrecorded_steps(make_engine):
    gate = NativeGate()
    runs = []

    def part(i):
        runs.append(i)
        if i == 1:
            gate.wait(10)
        return i

    @aion.workflow(name="test_fanout.resumed")
    def resumed(ctx):
        return ctx.parallel([aion.Step(part, i) for i in range(3)])

    first = make_engine(resumed)
    first.start(resumed, id="mid")
    stop_with_runs_parked(first, ["mid"], gate, events=3)  # steps 0 and 2 recorded
    assert sorted(runs) == [0, 1, 2]
    second = make_engine(resumed)
    assert second.result("mid", timeout=10) == [0, 1, 2]
    assert sorted(runs) == [0, 1, 1, 2]  # only the unrecorded one ran again
    assert types(second.history("mid")).count(ev.STEP_COMPLETED) == 3


def test_changed_steps_in_a_recorded_parallel_fail_that_run(make_engine):
    gate = NativeGate()

    def a(x):
        return x

    def b(x):
        gate.wait(10)
        return x

    @aion.workflow(name="test_fanout.versioned")
    def v1(ctx):
        return ctx.parallel([aion.Step(a, 1), aion.Step(b, 2)])

    first = make_engine(v1)
    first.start(v1, id="v")
    stop_with_runs_parked(first, ["v"], gate, events=2)

    @aion.workflow(name="test_fanout.versioned")
    def v2(ctx):
        return ctx.parallel([aion.Step(b, 1), aion.Step(a, 2)])

    second = make_engine(v2)
    with pytest.raises(aion.WorkflowFailed) as failure:
        second.result("v", timeout=10)
    assert failure.value.error["kind"] == "nondeterminism"
    assert failure.value.error["expected"].endswith(".b)")
    assert types(second.history("v")).count(ev.WORKFLOW_FAILED) == 1


def test_bad_fan_out_items_are_refused_before_anything_is_recorded(make_engine):
    @aion.workflow
    def bad_items(ctx, which):
        try:
            if which == "plain":
                ctx.parallel([part_zero])
            else:
                ctx.race([])
        except (TypeError, ValueError) as exc:
            return str(exc)

    engine = make_engine(bad_items)
    assert "item 0 is <function part_zero" in engine.start(bad_items, "plain", id="x").result(10)
    assert "at least one item" in engine.start(bad_items, "race", id="y").result(10)
    assert types(engine.history("x")) == [ev.WORKFLOW_STARTED, ev.WORKFLOW_COMPLETED]
    assert ctx_free_step_repr() == "<Step part_zero(1,)>"


def ctx_free_step_repr():
    return repr(aion.Step(part_zero, 1))
