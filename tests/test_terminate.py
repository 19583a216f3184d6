"""Every run has a way to end (issue 16): a run whose type no engine knows
stayed running for ever, a cancel of it was recorded but ended nothing, and
there was no way to remove it. ``terminate`` ends any running run now,
without cleanup; a cancel of a run that no code here can run ends it too."""
import json
import time

import pytest
from conftest import NativeGate, run_python, wait_until
from test_http_api import call

import aion_green as aion
from aion_green import events as ev
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


def test_a_run_whose_type_no_engine_knows_is_visible_and_ends_by_cancel_or_terminate(
        db_url, make_engine):
    """Failure window: the run was created by name while no engine ran; the
    engine that drives the store later cannot run it, and before issue 16 a
    cancel was recorded but the run stayed running for ever."""
    _start_unknown_type(db_url, "ghost-1")
    _start_unknown_type(db_url, "ghost-2")
    engine = make_engine(known)
    wait_until(lambda: engine.describe("ghost-1").unrunnable is not None, what="recovery")
    info = engine.describe("ghost-1")
    assert info.status == ev.RUNNING and "'terminate.ghost' is not registered" in info.unrunnable
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
