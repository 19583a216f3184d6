"""A workflow body driven against a fake host: no engine, no store, no hub
thread. The context reaches the outside only through the Host and RunLog of
``aion_green.workflows.host`` (issue 17), so an in-memory double of each is
enough to run a workflow, replay its history and catch a divergence.

The fakes do what the engine does, without its parts: the log numbers each
append after the history's head and hands it to the context on the next turn
of the hub loop, as ``runtime/runs.py`` delivers a record once the store
committed it (record before wake: the context waits for it); a step runs
in the calling greenlet and its outcome is recorded with the event
``workflows/steps.py`` builds for the step pool; a timer fires at once, as
if the clock had jumped to its deadline."""
import json
import time
from datetime import timedelta

import gevent
import pytest
from conftest import PATCHED, run_python
from gevent.hub import Waiter

from aion_green.core import events as ev
from aion_green.core.errors import EngineClosed, NonDeterminismError
from aion_green.workflows.context import WorkflowContext
from aion_green.workflows.steps import attempt_event

WORKFLOW_ID = "order-7"
RUN_ID = "run-1"
WORKFLOW_TYPE = "tests.checkout"


class FakeLog:
    """A :class:`~aion_green.workflows.host.RunLog` in memory."""

    def __init__(self, head):
        self.head = head  # the seq of the last event, recorded or given
        self.events = []  # what this log recorded, in order
        self.closed = False
        self.ctx = None  # the context it delivers to (set once it exists)

    def submit(self, build, *, final=False):
        events = build(self)
        return self.submit_events(events, final=final) if events else None

    def submit_events(self, events, final=False):
        if self.closed:
            raise EngineClosed(f"workflow {WORKFLOW_ID!r} has ended; nothing more is recorded")
        self.closed = final
        recorded = []
        for event in events:
            self.head += 1
            # As a store keeps it: the data's JSON, read back.
            recorded.append(ev.Event(self.head, event.type, event.at, json.loads(event.data_json())))
        self.events.extend(recorded)
        gevent.get_hub().loop.run_callback(self.ctx._on_recorded, recorded)
        return self.head


class FakeHost:
    """A :class:`~aion_green.workflows.host.Host` in memory, for workflows
    of steps and timers (no children, no messages to other runs)."""

    tracks_parking = False
    closing = False

    def __init__(self):
        self.ctx = None
        self.steps = []  # StepInfo of each attempt run
        self.timers = []  # (workflow id, key, fire_at) of each timer armed

    def register(self, fn):
        raise AssertionError("these workflows start no child")

    def require_registered(self, name):
        raise AssertionError("these workflows start no child")

    def run_step(self, log, fn, args, info, policy, limit=None):
        self.steps.append(info)
        log.submit_events([attempt_event(fn, args, info, policy)])

    def arm_timer(self, fire_at, workflow_id, key):
        self.timers.append((workflow_id, key, fire_at))
        # At once, with the clock at the deadline: ctx._timer_due records
        # the firing only for a timer that is due at ``now``.
        gevent.get_hub().loop.run_callback(self.ctx._timer_due, key, fire_at)

    def spawn(self, fn, *args, name=None):
        gevent.spawn(fn, *args)

    def parked(self, ctx):
        raise AssertionError("tracks_parking is false")

    unparked = parked

    def native_waiter(self):
        waiter = Waiter()

        def done(value, error):
            if error is None:
                waiter.switch(value)
            else:
                waiter.throw(error)

        return waiter, done

    def route_message(self, workflow_id, name, payload, at, dedup, done):
        raise AssertionError("these workflows send no message")

    def route_cancel(self, workflow_id, reason, done):
        raise AssertionError("these workflows cancel no run")

    def ensure_child(self, parent, data):
        raise AssertionError("these workflows start no child")

    watch_child = abort_watch = ensure_child


# -- the workflow ---------------------------------------------------------------------------
CALLS = []  # (step name, args) of every step function call


def price_of(order_id):
    CALLS.append(("price_of", order_id))
    return 40


def charge(order_id, amount):
    CALLS.append(("charge", order_id, amount))
    return {"charged": amount + 2}


def quote(order_id):
    CALLS.append(("quote", order_id))
    return 41


def checkout(ctx, order_id):
    amount = ctx.step(price_of, order_id)
    ctx.sleep(timedelta(hours=1))
    slept_until = ctx.now().isoformat()  # the recorded time of the timer's firing
    receipt = ctx.step(charge, order_id, amount)
    return {"order": order_id, "receipt": receipt, "slept_until": slept_until}


def checkout_changed(ctx, order_id):
    """``checkout`` after a deploy that prices with another step."""
    amount = ctx.step(quote, order_id)
    ctx.sleep(timedelta(hours=1))
    return {"order": order_id, "receipt": ctx.step(charge, order_id, amount)}


@pytest.fixture(autouse=True)
def _fresh_calls():
    CALLS.clear()


def started(order_id):
    return ev.Event(1, ev.WORKFLOW_STARTED, time.time(),
                    {"workflow_type": WORKFLOW_TYPE, "run_id": RUN_ID, "args": [order_id]})


def drive(body, history):
    """What the engine's run driver does for one run, minus the engine: in a
    greenlet, build the context over ``history``, call the body with the
    arguments of its ``WorkflowStarted``, check that the code did all the
    history recorded, and record ``WorkflowCompleted``. Returns the
    result, the host and the log."""
    host, log = FakeHost(), FakeLog(head=history[-1].seq)

    def run():
        ctx = WorkflowContext(host, WORKFLOW_ID, RUN_ID, WORKFLOW_TYPE, history, recorder=log)
        host.ctx = log.ctx = ctx
        result = body(ctx, *history[0].data["args"])
        ctx._finish_check("the workflow to return")
        value, text = ev.encode_decoded(result, "the result")
        ctx._record(ev.completed(time.time(), value, text), final=True)
        return value

    outcome = {}

    def guarded():  # (a greenlet that dies of an exception prints it: hand it over instead)
        try:
            outcome["result"] = run()
        except BaseException as exc:  # noqa: B036 - re-raised below, in the test
            outcome["error"] = exc

    gevent.spawn(guarded).get(timeout=10)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], host, log


def recorded_run():
    """A first run of ``checkout``: its result and its whole history."""
    first = started("o-7")
    result, _host, log = drive(checkout, [first])
    return result, [first, *log.events]


# -- the tests -----------------------------------------------------------------------------
def test_two_steps_and_a_sleep_return_the_result_and_record_each_outcome_in_order():
    first = started("o-7")
    result, host, log = drive(checkout, [first])

    assert [(e.seq, e.type) for e in log.events] == [
        (2, ev.STEP_COMPLETED), (3, ev.TIMER_STARTED), (4, ev.TIMER_FIRED),
        (5, ev.STEP_COMPLETED), (6, ev.WORKFLOW_COMPLETED)]
    price, timer, fired, charged, completed = log.events
    assert {k: price.data[k] for k in ("step", "name", "attempt", "result")} == {
        "step": 1, "name": "price_of", "attempt": 1, "result": 40}
    assert timer.data["timer"] == "t1"
    assert timer.data["fire_at"] == pytest.approx(timer.at + 3600, abs=1)
    assert fired.data == {"timer": "t1"} and fired.at == timer.data["fire_at"]
    assert {k: charged.data[k] for k in ("step", "name", "attempt", "result")} == {
        "step": 2, "name": "charge", "attempt": 1, "result": {"charged": 42}}
    assert result == {"order": "o-7", "receipt": {"charged": 42}, "slept_until": fired.time.isoformat()}
    assert completed.data == {"result": result}
    assert CALLS == [("price_of", "o-7"), ("charge", "o-7", 40)]
    assert [(i.step, i.name, i.attempt) for i in host.steps] == [(1, "price_of", 1), (2, "charge", 1)]
    assert host.timers == [(WORKFLOW_ID, "t1", timer.data["fire_at"])]
    assert log.closed


def test_a_replay_of_the_recorded_history_returns_the_same_result_and_runs_no_step():
    """Failure window: the run ended (crashed, say) after its last step was
    recorded and before its end was; a replay from the top must return
    the recorded outcomes, not run the steps (or a timer) again."""
    result, history = recorded_run()
    calls = list(CALLS)
    unfinished = history[:-1]  # all but WorkflowCompleted

    replayed, host, log = drive(checkout, unfinished)

    assert replayed == result
    assert CALLS == calls  # no step function ran again
    assert host.steps == [] and host.timers == []
    assert [(e.seq, e.type) for e in log.events] == [(6, ev.WORKFLOW_COMPLETED)]


def test_a_changed_workflow_replaying_the_history_raises_non_determinism():
    _result, history = recorded_run()
    CALLS.clear()

    with pytest.raises(NonDeterminismError) as caught:
        drive(checkout_changed, history[:-1])

    error = caught.value
    assert (error.workflow_id, error.seq) == (WORKFLOW_ID, 2)
    assert "quote" in error.expected and "price_of" in error.found
    assert CALLS == []  # the changed step did not run


def test_importing_the_workflow_context_loads_neither_the_runtime_nor_a_store():
    """The layer rule of issue 17: workflows/ reaches its engine through
    workflows/host.py only, so importing it loads no engine and no store."""
    out = run_python(
        "import json, sys\n"
        "import aion_green.workflows.context\n"
        "print(json.dumps(sorted(sys.modules)))\n", patched=PATCHED).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "aion_green.workflows.context" in loaded
    assert [m for m in loaded if m.startswith(("aion_green.runtime", "aion_green.stores"))] == []
