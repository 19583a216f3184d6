"""Schedule control (issue 18): pause, resume, trigger now and update, in
Python (freezegun moves the clock); each is recorded in the schedule's
history; a paused schedule fires nothing and catches up by its policy on
resume; a trigger goes through the overlap policy; an update's next fires
follow the new spec; describe and list show the spec and the paused state;
bad requests are refused before anything is recorded; and a schedule run
recorded without control (the previous release's code) still replays. The
HTTP API, the Client and the CLI are in tests/test_schedules_api.py."""
import time
from datetime import timedelta

import pytest
from conftest import wait_until
from test_schedules import fire_id, held, job, runs_of, wait_next_fire

import aion_green as aion
from aion_green.core import events as ev
from aion_green.runtime import schedules


def controls(engine, schedule_id):
    """The control messages of every run of the schedule, oldest first."""
    found = []
    current = engine.describe(schedule_id).run_id
    runs = [current]
    first = engine.history(schedule_id)[0]
    while first.data.get("continued_from"):
        runs.insert(0, first.data["continued_from"])
        first = engine.history(schedule_id, run_id=first.data["continued_from"])[0]
    for run_id in runs:
        found += [e["payload"]["op"] for e in engine.history(schedule_id, run_id=run_id)
                  if e.type == ev.MESSAGE_RECEIVED and e["name"] == schedules.CONTROL]
    return found


def test_a_paused_schedule_fires_nothing_and_catches_up_one_fire_on_resume(aion_engine, aion_time):
    t0 = aion_time.now()
    aion_engine.schedule("tick", job, "x", every=timedelta(minutes=10))
    wait_next_fire(aion_engine, "tick", t0 + timedelta(minutes=10))
    aion_engine.pause_schedule("tick", note="maintenance")
    wait_until(lambda: aion_engine.describe_schedule("tick").paused, what="the pause taken")
    info = aion_engine.describe_schedule("tick")
    assert (info.status, info.note, info.next_fire) == ("paused", "maintenance", None)
    assert [s.status for s in aion_engine.schedules()] == ["paused"]
    for _ in range(3):
        aion_time.advance(timedelta(minutes=10))
    assert runs_of(aion_engine, job) == {}
    aion_engine.resume_schedule("tick")
    # catch_up="one": the latest fire missed while paused starts, the others not.
    wait_next_fire(aion_engine, "tick", t0 + timedelta(minutes=40))
    assert list(runs_of(aion_engine, job)) == [fire_id("tick", t0 + timedelta(minutes=30))]
    info = aion_engine.describe_schedule("tick")
    assert (info.status, info.paused, info.note) == ("active", False, "")
    aion_time.advance(timedelta(minutes=10))
    wait_next_fire(aion_engine, "tick", t0 + timedelta(minutes=50))
    assert len(runs_of(aion_engine, job)) == 2
    assert controls(aion_engine, "tick") == ["pause", "resume"]
    # Its history, control and continuations included, replays as recorded.
    from aion_green.testing import check_replay

    assert check_replay(aion_engine.url, ["tick"], workflows=[job]) >= 1


def test_resume_with_catch_up_skip_starts_nothing_missed(aion_engine, aion_time):
    t0 = aion_time.now()
    aion_engine.schedule("skipper", job, "s", every=600, catch_up="skip")
    wait_next_fire(aion_engine, "skipper", t0 + timedelta(minutes=10))
    aion_engine.pause_schedule("skipper")
    wait_until(lambda: aion_engine.describe_schedule("skipper").paused, what="the pause")
    aion_time.advance(timedelta(minutes=25))
    aion_engine.resume_schedule("skipper")
    wait_next_fire(aion_engine, "skipper", t0 + timedelta(minutes=30))
    assert runs_of(aion_engine, job) == {}


def test_trigger_starts_a_run_now_even_paused_and_obeys_overlap(aion_engine, aion_time):
    aion_engine.schedule("manual", held, cron="0 0 1 1 *", overlap="skip")
    aion_engine.pause_schedule("manual")
    now = aion_time.now()
    aion_engine.trigger_schedule("manual")
    wait_until(lambda: runs_of(aion_engine, held), what="the triggered run")
    (first,) = runs_of(aion_engine, held)
    assert first.startswith("manual@") and first >= fire_id("manual", now)
    # overlap="skip": a trigger while that run runs starts nothing.
    aion_engine.trigger_schedule("manual")
    wait_until(lambda: controls(aion_engine, "manual") == ["pause", "trigger", "trigger"],
               what="the second trigger taken")
    assert list(runs_of(aion_engine, held)) == [first]
    wait_until(lambda: aion_engine.describe_schedule("manual").running == first,
               what="the schedule to name the run it tracks")
    aion_engine.signal(first, "go", 1)
    assert aion_engine.result(first, timeout=10) == 1


def test_an_update_changes_the_next_fires_and_what_describe_shows(aion_engine, aion_time):
    t0 = aion_time.now()
    aion_engine.schedule("changing", job, "old", every=timedelta(hours=1))
    wait_next_fire(aion_engine, "changing", t0 + timedelta(hours=1))
    aion_engine.update_schedule("changing", every=timedelta(minutes=5), args=["new"],
                                overlap="allow_all")
    info = None

    def updated():
        nonlocal info
        info = aion_engine.describe_schedule("changing")
        return info.every == 300

    wait_until(updated, what="the update taken")
    assert (info.args, info.overlap, info.cron, info.status) == (["new"], "allow_all", None, "active")
    t1 = aion_time.now()
    wait_next_fire(aion_engine, "changing", t1 + timedelta(minutes=5))
    aion_time.advance(timedelta(minutes=5))
    wait_next_fire(aion_engine, "changing", t1 + timedelta(minutes=10))
    (wid,) = runs_of(aion_engine, job)
    assert aion_engine.result(wid, timeout=10) == ["new", wid]
    # A cron replaces the interval.
    aion_engine.update_schedule("changing", cron="30 * * * *")
    wait_until(lambda: aion_engine.describe_schedule("changing").cron == "30 * * * *",
               what="the second update")
    assert aion_engine.describe_schedule("changing").every is None
    assert controls(aion_engine, "changing") == ["update", "update"]


@pytest.mark.parametrize("call, error, says", [
    (lambda e: e.pause_schedule("nope"), aion.WorkflowNotFound, "nope"),
    (lambda e: e.pause_schedule("plain"), aion.WorkflowNotFound, "names a run of"),
    (lambda e: e.resume_schedule("gone"), aion.WorkflowNotRunning, "deleted"),
    (lambda e: e.trigger_schedule(""), aion.ConfigurationError, "non-empty"),
    (lambda e: e.pause_schedule("s", note=5), aion.ConfigurationError, "note"),
    (lambda e: e.update_schedule("s"), aion.ConfigurationError, "nothing to change"),
    (lambda e: e.update_schedule("s", cron="61 * * * *"), aion.ConfigurationError, "minute"),
    (lambda e: e.update_schedule("s", cron="* * * * *", every=5), aion.ConfigurationError,
     "not both"),
    (lambda e: e.update_schedule("s", overlap="sometimes"), aion.ConfigurationError, "overlap"),
    (lambda e: e.update_schedule("s", every=-1), aion.ConfigurationError, "positive"),
    (lambda e: e.update_schedule("s", args=[1, 2, 3]), aion.WorkflowArgumentsInvalid, "job"),
])
def test_bad_control_requests_are_refused_and_nothing_is_recorded(aion_engine, call, error, says):
    aion_engine.schedule("s", job, "x", every=3600)
    aion_engine.schedule("gone", job, "y", every=3600)
    aion_engine.unschedule("gone")
    aion_engine.start(job, "z", id="plain").result(timeout=10)
    before = len(aion_engine.history("s"))
    with pytest.raises(error, match=says):
        call(aion_engine)
    assert len(aion_engine.history("s")) == before
    assert controls(aion_engine, "s") == []


def test_a_schedule_recorded_without_control_replays_and_is_refused_control(
        aion_engine, aion_time, monkeypatch, tmp_path):
    """The previous release's schedule code: no marker, no control. Its
    history must replay under this code (versioning), and control is
    refused until it continues as new, with nothing recorded."""
    from aion_green.testing import check_replay
    from aion_green.workflows.context import WorkflowContext

    real = WorkflowContext.patched

    def old_code(ctx, change_id):
        return False if change_id == schedules.CONTROL_PATCH else real(ctx, change_id)

    monkeypatch.setattr(WorkflowContext, "patched", old_code)
    t0 = aion_time.now()
    aion_engine.schedule("legacy", job, "l", every=600)
    for k in (1, 2):
        wait_next_fire(aion_engine, "legacy", t0 + timedelta(minutes=10 * k))
        aion_time.advance(timedelta(minutes=10))
    wait_next_fire(aion_engine, "legacy", t0 + timedelta(minutes=30))
    assert not any(e.type == ev.PATCH_MARKER for e in aion_engine.history("legacy"))
    monkeypatch.setattr(WorkflowContext, "patched", real)
    check_replay(aion_engine.url)
    before = len(aion_engine.history("legacy"))
    with pytest.raises(aion.ConfigurationError, match="without schedule control"):
        aion_engine.pause_schedule("legacy")
    assert len(aion_engine.history("legacy")) == before


def test_a_control_message_its_run_did_not_take_before_continuing_is_taken_by_the_next(tmp_path):
    """The failure window: a control message recorded in a schedule's run
    after the run's last look, just before it continued as new. Messages do
    not carry over a continuation; the next run reads the ones its
    predecessor did not take (a recorded step) and takes them first."""
    import uuid

    from aion_green.store import Append
    from aion_green.stores import open_store

    url = f"sqlite:///{tmp_path / 'carry.db'}"
    with aion.Engine(url, workflows=[job]) as engine:
        engine.schedule("carried", job, "c", cron="0 0 1 1 *")
        wait_until(lambda: any(e.type == ev.TIMER_STARTED for e in engine.history("carried")),
                   what="the schedule to wait")
        info = engine.describe("carried")
        spec = engine.history("carried")[0]["args"][0]
    store = open_store(url)
    try:
        now = time.time()
        head = store.get_run("carried").head_seq
        state = {"cursor": aion_iso(now), "anchor": None, "running": None, "pending": None,
                 "paused": False, "note": "", "from_run": info.run_id, "taken": 0}
        store.write_batch([Append("carried", head, [
            ev.NewEvent(ev.MESSAGE_RECEIVED, now, {"name": schedules.CONTROL, "index": 0,
                                                   "payload": {"op": "pause", "note": "late"}}),
            ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, now, {
                "run_id": uuid.uuid4().hex, "args": [spec, state], "generation": 2})])])
    finally:
        store.close()
    with aion.Engine(url, workflows=[job]) as engine:
        wait_until(lambda: engine.describe_schedule("carried").paused, what="the carried pause")
        assert engine.describe_schedule("carried").note == "late"
        steps = [e for e in engine.history("carried", run_id=engine.history("carried")[0][
            "continued_from"]) if e.type == ev.STEP_COMPLETED]
        assert [s["result"] for s in steps] == [[{"op": "pause", "note": "late"}]]


def aion_iso(at):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat()


def test_schedules_are_controlled_within_their_namespace(aion_engine, aion_time):
    aion_engine.schedule("ns-sched", job, "d", cron="0 0 1 1 *")
    aion_engine.schedule("ns-sched", job, "s", cron="0 0 1 1 *", namespace="shop")
    aion_engine.pause_schedule("ns-sched", note="shop only", namespace="shop")
    wait_until(lambda: aion_engine.describe_schedule("ns-sched", namespace="shop").paused,
               what="the pause in shop")
    assert not aion_engine.describe_schedule("ns-sched").paused
    aion_engine.update_schedule("ns-sched", args=["s2"], namespace="shop")
    wait_until(lambda: aion_engine.describe_schedule("ns-sched", namespace="shop").args == ["s2"],
               what="the update in shop")
    assert aion_engine.describe_schedule("ns-sched").args == ["d"]
    aion_engine.trigger_schedule("ns-sched", namespace="shop")
    wait_until(lambda: aion_engine.list(workflow_type=job, namespace="shop"),
               what="the triggered run in shop")
    assert aion_engine.list(workflow_type=job) == []
    with pytest.raises(aion.WorkflowNotFound):
        aion_engine.resume_schedule("ns-sched", namespace="ops")
