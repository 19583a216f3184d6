"""Every run has a way to end (issue 16): a run whose type no engine knows
stayed running for ever, a cancel of it was recorded but ended nothing, and
there was no way to remove it. ``terminate`` ends any running run now,
without cleanup; a cancel of a run that no code here can run ends it too."""
import json
import time

import pytest
from conftest import LEASED, NativeGate, run_python, wait_until
from test_http_api import call

import aion_green as aion
from aion_green.core import events as ev
from aion_green.transport.wsgi import WSGIApp

MARKS = []


def mark(tag):
    MARKS.append(tag)
    return tag


@aion.workflow(name="terminate.known")
def known(ctx):
    return ctx.step(mark, "known")


@aion.workflow(name="terminate.careful")
def careful(ctx):
    try:
        ctx.step(mark, "begin")
        ctx.receive("never")
    finally:
        ctx.step(mark, "cleanup")  # a cancel runs it; terminate must not


def _start_unknown_type(db_url, wid):
    """As `aion-green start ghost.type` does while no worker runs: a client
    that knows no types may start any name."""
    with aion.Engine(db_url, passive=True) as client:
        client.start("terminate.ghost", 1, id=wid)


@pytest.fixture
def sqlite_url(tmp_path):
    """Where one engine drives a store (SQLite): over PostgreSQL an engine
    claims only the types it knows, so no engine drives such a run."""
    return f"sqlite:///{tmp_path / 'drive.db'}"


def test_a_cancel_of_a_run_whose_type_the_driving_engine_does_not_know_ends_it(
        sqlite_url, make_engine):
    """Failure window: the run was created by name while no engine ran; the
    engine that drives the store later cannot run it, and before issue 16 a
    cancel was recorded but the run stayed running for ever."""
    _start_unknown_type(sqlite_url, "ghost-0")
    engine = make_engine(known, url=sqlite_url)
    engine.list(limit=1)  # started: it recovers the runs of the store
    wait_until(lambda: "ghost-0" in engine.unrunnable, what="recovery")
    engine.cancel("ghost-0", "not wanted")
    with pytest.raises(aion.WorkflowCancelled) as cancelled:
        engine.result("ghost-0", timeout=10)
    assert "without cleanup" in cancelled.value.message and "not registered" in cancelled.value.message
    assert [e.type for e in engine.history("ghost-0")] == [
        ev.WORKFLOW_STARTED, ev.CANCEL_REQUESTED, ev.WORKFLOW_CANCELLED]


def test_a_cancel_recorded_before_the_engine_found_the_type_unknown_ends_the_run(
        sqlite_url, make_engine):
    """Failure window: the cancel was queued while no engine drove (as
    `aion-green cancel` does), and the engine that starts later records it
    before or after it finds the type unknown."""
    _start_unknown_type(sqlite_url, "ghost-early")
    run_python(["-m", "aion_green", "--db", sqlite_url, "cancel", "ghost-early", "--reason", "early"])
    engine = make_engine(known, url=sqlite_url)
    with pytest.raises(aion.WorkflowCancelled, match="without cleanup"):
        engine.result("ghost-early", timeout=10)


def _ghost_that_outlives_a_cancel(ctx, n):
    try:
        ctx.receive("never")
    except aion.Cancelled:
        ctx.receive("cleanup-done")  # still cleaning up when its engine stops


def test_a_run_cancelled_under_old_code_whose_type_a_deploy_removed_ends(sqlite_url, make_engine):
    """Failure window: the cancel request is in the history before the engine
    that cannot run the type starts (a deploy removed it while the run was
    cleaning up)."""
    _ghost_that_outlives_a_cancel.__aion_workflow__ = "terminate.ghost"
    old = make_engine(_ghost_that_outlives_a_cancel, url=sqlite_url)
    old.start("terminate.ghost", 1, id="ghost-removed")
    old.cancel("ghost-removed", "before the deploy")
    wait_until(lambda: len(old.history("ghost-removed")) == 2, what="the cancel request")
    old.shutdown()
    engine = make_engine(known, url=sqlite_url)
    with pytest.raises(aion.WorkflowCancelled) as cancelled:
        engine.result("ghost-removed", timeout=10)
    assert "before the deploy" in cancelled.value.message


def test_a_run_whose_type_no_engine_knows_is_visible_and_ends_by_cancel_or_terminate(
        sqlite_url, make_engine):
    _start_unknown_type(sqlite_url, "ghost-1")
    _start_unknown_type(sqlite_url, "ghost-2")
    engine = make_engine(known, url=sqlite_url)
    wait_until(lambda: engine.describe("ghost-1").unrunnable is not None, what="recovery")
    info = engine.describe("ghost-1")
    assert info.status == ev.RUNNING and "'terminate.ghost' is not registered" in info.unrunnable
    status, _, body = call(WSGIApp(engine), "GET", "/v1/workflows/ghost-1", token=None)
    assert status == 200 and body["unrunnable"] == info.unrunnable
    engine.cancel("ghost-1", "not wanted")
    with pytest.raises(aion.WorkflowCancelled) as cancelled:
        engine.result("ghost-1", timeout=10)
    assert "without cleanup" in cancelled.value.message and "not wanted" in cancelled.value.message
    assert engine.describe("ghost-1").status == ev.CANCELLED
    engine.terminate("ghost-2", "stuck for ever")
    with pytest.raises(aion.WorkflowCancelled) as ended:
        engine.result("ghost-2", timeout=10)
    assert ended.value.error_type == "Terminated" and ended.value.error["reason"] == "stuck for ever"
    assert engine.describe("ghost-2").status == ev.CANCELLED
    assert engine.describe("ghost-2").unrunnable is None
    assert [e.type for e in engine.history("ghost-2")] == [ev.WORKFLOW_STARTED, ev.WORKFLOW_CANCELLED]
    engine.terminate("ghost-2")  # asking again is fine
    with pytest.raises(aion.WorkflowNotRunning):
        engine.terminate("ghost-1")  # cancelled, not terminated: nothing left to end


def test_terminate_ends_a_run_no_engine_can_run_on_every_store(db_url, make_engine):
    _start_unknown_type(db_url, "ghost-any")
    engine = make_engine(known)
    engine.terminate("ghost-any", "no such type")
    with pytest.raises(aion.WorkflowCancelled) as ended:
        engine.result("ghost-any", timeout=10)
    assert ended.value.error_type == "Terminated"
    assert [e.type for e in engine.history("ghost-any")] == [ev.WORKFLOW_STARTED, ev.WORKFLOW_CANCELLED]
    assert engine.list(status=ev.RUNNING) == []


def test_terminate_ends_a_run_driven_here_without_running_its_cleanup(make_engine):
    MARKS.clear()
    engine = make_engine(careful)
    engine.start(careful, id="careful")
    wait_until(lambda: MARKS == ["begin"], what="the first step")
    engine.terminate("careful", "operator")
    with pytest.raises(aion.WorkflowCancelled) as ended:
        engine.result("careful", timeout=10)
    assert ended.value.error_type == "Terminated"
    history = engine.history("careful")
    assert history[-1].type == ev.WORKFLOW_CANCELLED and history[-1]["error"]["terminated"] is True
    time.sleep(0.3)
    assert MARKS == ["begin"] and engine.history("careful") == history
    with pytest.raises(aion.WorkflowNotRunning):
        engine.signal("careful", "never")


GATE = NativeGate()


def held_step():
    MARKS.append("held")
    GATE.wait(10)
    return "late"


@aion.workflow(name="terminate.busy")
def busy(ctx):
    ctx.step(held_step)
    ctx.step(mark, "after")


def test_terminate_while_a_step_runs_records_nothing_of_the_run_after_its_end(make_engine):
    """Failure window: the step is running on the pool when the run is
    terminated; its result arrives after the terminal event."""
    MARKS.clear()
    engine = make_engine(busy)
    engine.start(busy, id="busy")
    wait_until(lambda: MARKS == ["held"], what="the step to run")
    engine.terminate("busy")
    GATE.set()
    with pytest.raises(aion.WorkflowCancelled):
        engine.result("busy", timeout=10)
    time.sleep(0.3)
    types = [e.type for e in engine.history("busy")]
    assert types == [ev.WORKFLOW_STARTED, ev.WORKFLOW_CANCELLED] and MARKS == ["held"]


def test_terminate_right_after_start_leaves_one_end_and_nothing_after_it(make_engine):
    """Failure window: the run was just created by start() and its greenlet
    may not be spawned yet, or be running its first step, when the
    terminate is recorded."""
    engine = make_engine(known)
    for i in range(20):
        engine.start(known, id=f"quick-{i}")
        try:
            engine.terminate(f"quick-{i}")
        except aion.WorkflowNotRunning:
            pass  # it completed first: first recorded wins
    histories = [engine.history(f"quick-{i}") for i in range(20)]
    time.sleep(0.3)
    for i, history in enumerate(histories):
        ends = [e for e in history if e.type in ev.TERMINAL_TYPES]
        assert len(ends) == 1 and ends[0] is history[-1], history
        assert engine.history(f"quick-{i}") == history  # nothing recorded after its end


def test_terminate_over_http_and_its_refusals(make_engine):
    engine = make_engine(careful, known)
    app = WSGIApp(engine, token=None)
    engine.start(careful, id="h-careful")
    status, _, body = call(app, "POST", "/v1/workflows/h-careful/terminate", {"reason": 5}, token=None)
    assert status == 400 and "'reason' must be a string" in body["error"]["message"]
    status, _, body = call(app, "POST", "/v1/workflows/h-careful/terminate", {"reason": "x"},
                           token=None)
    assert (status, body) == (200, {"workflow_id": "h-careful", "terminated": True})
    status, _, body = call(app, "GET", "/v1/workflows/h-careful/result", token=None)
    assert status == 409 and body["error"]["code"] == "cancelled"
    engine.start(known, id="h-done").result(10)
    status, _, body = call(app, "POST", "/v1/workflows/h-done/terminate", {}, token=None)
    assert status == 409 and body["error"]["code"] == "not_running"
    status, _, body = call(app, "POST", "/v1/workflows/nope/terminate", {}, token=None)
    assert status == 404


def test_the_command_line_terminates_a_run_of_an_unknown_type_with_no_worker(tmp_path):
    """The issue's own steps: `start unknown.type` while no worker runs,
    then no way to end the run; now `terminate` ends it."""
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    run_python(["-m", "aion_green", "--db", db, "start", "unknown.type", "--id", "u1"])
    done = run_python(["-m", "aion_green", "--db", db, "terminate", "u1", "--reason", "typo",
                       "--json"])
    assert json.loads(done.stdout) == {"workflow_id": "u1", "terminated": True}
    shown = json.loads(run_python(["-m", "aion_green", "--db", db, "show", "u1", "--json"]).stdout)
    assert shown["run"]["status"] == "cancelled" and shown["run"]["error"]["type"] == "Terminated"
    again = run_python(["-m", "aion_green", "--db", db, "result", "u1"], check=False)
    assert again.returncode == 3


@aion.workflow(name="terminate.child")
def waiting_child(ctx):
    return ctx.receive("go")


@aion.workflow(name="terminate.parent")
def parent(ctx):
    return ctx.start_child(waiting_child, id="the-child").result()


def test_the_children_of_a_terminated_run_run_on(make_engine):
    engine = make_engine(parent, waiting_child)
    engine.start(parent, id="the-parent")
    wait_until(lambda: any(r.workflow_id == "the-child" for r in engine.list()), what="the child")
    engine.terminate("the-parent")
    with pytest.raises(aion.WorkflowCancelled):
        engine.result("the-parent", timeout=10)
    assert engine.describe("the-child").status == ev.RUNNING
    engine.signal("the-child", "go", 7)
    assert engine.result("the-child", timeout=10) == 7
    assert engine.history("the-parent")[-1].type == ev.WORKFLOW_CANCELLED  # its end not recorded there


@aion.workflow(name="terminate.parked")
def parked(ctx):
    ctx.step(mark, "parked")
    return ctx.receive("go")


def test_terminate_asked_of_another_engine_ends_the_run_where_it_is_driven(make_engine):
    """Failure window: the run is parked in the engine that drives it (the
    SQLite driver; its lease holder over PostgreSQL) and the terminate is
    asked of another engine: an end appended under the parked run left its
    greenlet, and the result waiters of its engine, waiting."""
    owner = make_engine(parked)
    owner.start(parked, id="elsewhere")
    wait_until(lambda: len(owner.history("elsewhere")) >= 2, what="the run to park")
    other = make_engine(parked)
    other.terminate("elsewhere", "from another engine")
    with pytest.raises(aion.WorkflowCancelled) as ended:
        owner.result("elsewhere", timeout=10)
    assert ended.value.error_type == "Terminated"
    with pytest.raises(aion.WorkflowNotRunning):
        owner.signal("elsewhere", "go", 1)
    types = [e.type for e in owner.history("elsewhere")]
    assert types == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.WORKFLOW_CANCELLED]


def test_a_cancel_of_a_run_no_engine_holds_returns_on_every_store(db_url, make_engine):
    """Failure window (PostgreSQL): no engine claims a run of a type none of
    them knows, so a cancel posted for its owner was never read, and
    cancel() waited for ever."""
    import threading

    _start_unknown_type(db_url, "ghost-unheld")
    engine = make_engine(known)
    engine.list(limit=1)
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(engine.cancel("ghost-unheld", "x")),
                              daemon=True)
    caller.start()
    caller.join(15)
    assert outcome == [None], "cancel() did not return"
    assert ev.CANCEL_REQUESTED in [e.type for e in engine.history("ghost-unheld")]
    if LEASED:
        # An engine that knows the type may yet claim it (and clean up);
        # terminate is what ends it meanwhile.
        engine.terminate("ghost-unheld")
    else:
        # A SQLite driver that cannot run it ends it on the cancel, once the
        # request reaches it (terminate raced that end: WorkflowNotRunning).
        wait_until(lambda: engine.describe("ghost-unheld").status != ev.RUNNING,
                   what="the driver to end the run on its cancel")
    assert engine.describe("ghost-unheld").status == ev.CANCELLED
