"""Durable timers: recorded deadlines, firings recorded before the wake,
restarts, the startup sweep, and time travel with freezegun."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
from conftest import ROOT, SQLITE_ONLY, open_test_store, run_python, wait_until
from freezegun import freeze_time

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import SQLiteStore


def echo(x):
    return x


@aion.workflow(name="tests.napper")
def napper(ctx, seconds):
    before = ctx.step(echo, "before")
    t0 = ctx.now()
    ctx.sleep(timedelta(seconds=seconds))
    after = ctx.step(echo, "after")
    return {"steps": [before, after], "slept": (ctx.now() - t0).total_seconds() >= seconds}


def types(history):
    return [e.type for e in history]


def test_sleep_records_its_deadline_and_its_firing(make_engine):
    engine = make_engine(napper)
    started = time.time()
    assert engine.start(napper, 0.2, id="nap").result(10) == {"steps": ["before", "after"], "slept": True}
    assert time.time() - started >= 0.2
    history = engine.history("nap")
    assert types(history) == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.TIMER_STARTED, ev.TIMER_FIRED,
                              ev.STEP_COMPLETED, ev.WORKFLOW_COMPLETED]
    timer_started, fired = history[2], history[3]
    assert timer_started["timer"] == fired["timer"] == "t1"
    assert timer_started["fire_at"] == pytest.approx(timer_started.at + 0.2, abs=0.05)
    assert fired.at >= timer_started["fire_at"]


def test_a_thirty_day_sleep_driven_by_moving_the_clock(make_engine):
    @aion.workflow
    def monthly(ctx):
        t0 = ctx.now()
        ctx.sleep(timedelta(days=30))
        return (ctx.now() - t0).days

    engine = make_engine(monthly)
    with freeze_time("2031-03-01 12:00:00") as clock:
        handle = engine.start(monthly, id="monthly")
        wait_until(lambda: ev.TIMER_STARTED in types(engine.history("monthly")))
        engine.poke()
        with pytest.raises(aion.Timeout):
            handle.result(timeout=0.3)  # not due: nothing fires
        clock.tick(timedelta(days=30))
        engine.poke()
        assert handle.result(timeout=10) == 30
    assert types(engine.history("monthly")).count(ev.TIMER_FIRED) == 1


def test_sleep_until_an_aware_datetime_and_a_naive_one_is_refused(make_engine):
    @aion.workflow
    def until(ctx, iso):
        ctx.sleep_until(datetime.fromisoformat(iso))
        return ctx.now().isoformat()

    engine = make_engine(until)
    with freeze_time("2031-01-01 00:00:00") as clock:
        handle = engine.start(until, "2031-01-02T00:00:00+00:00", id="until")
        wait_until(lambda: ev.TIMER_STARTED in types(engine.history("until")))
        clock.move_to("2031-01-02 00:00:01")
        engine.poke()
        assert handle.result(timeout=10) == "2031-01-02T00:00:01+00:00"
    with pytest.raises(aion.WorkflowFailed, match="timezone-aware"):
        engine.start(until, "2031-01-02T00:00:00", id="naive").result(10)


def test_timers_of_many_runs_fire_in_deadline_order(make_engine):
    @aion.workflow
    def waits(ctx, seconds):
        ctx.sleep(seconds)
        return seconds

    engine = make_engine(waits)
    handles = [engine.start(waits, s, id=f"w{s}") for s in (0.3, 0.1, 0.2, 0.0)]
    assert [h.result(10) for h in handles] == [0.3, 0.1, 0.2, 0.0]
    fired_at = {h.workflow_id: engine.history(h.workflow_id)[2].at for h in handles}
    assert fired_at["w0.0"] <= fired_at["w0.1"] <= fired_at["w0.2"] <= fired_at["w0.3"]


def test_a_timer_that_came_due_while_no_engine_ran_fires_once_at_start(make_engine):
    engine = make_engine(napper)
    engine.start(napper, 0.5, id="offline")
    wait_until(lambda: ev.TIMER_STARTED in types(engine.history("offline")))
    engine.shutdown()
    time.sleep(0.6)  # the deadline passes with no engine running
    for _ in range(2):  # two engines in a row: each sweeps; the timer fires once
        again = make_engine(napper)
        assert again.result("offline", timeout=10)["slept"] is True
        again.shutdown()
    store = open_test_store(again.url)
    try:
        history = store.read("offline")
    finally:
        store.close()
    assert types(history).count(ev.TIMER_FIRED) == 1


def test_store_fires_a_pending_timer_once(tmp_path):
    store = SQLiteStore(str(tmp_path / "t.db"))
    try:
        store.create_run("w", "t", "[]", "r", 1.0)
        store.write_batch([aion.store.Append("w", 1, [ev.NewEvent(ev.TIMER_STARTED, 1.0,
                                                                  {"timer": "t1", "fire_at": 5.0})])])
        assert store.due_timers(4.9) == []
        assert store.due_timers(5.0) == [("w", "t1", 5.0)]
        assert store.fire_timer("w", "t1", 6.0) == 3
        assert store.fire_timer("w", "t1", 7.0) is None
        assert store.due_timers(10.0) == []
        assert types(store.read("w")) == [ev.WORKFLOW_STARTED, ev.TIMER_STARTED, ev.TIMER_FIRED]
    finally:
        store.close()


@SQLITE_ONLY
def test_timers_of_an_unregistered_workflow_fire_and_wait_for_it(make_engine):
    """A run whose type no engine here knows still gets its due timer
    recorded by the sweep; once its workflow is registered it goes on."""
    @aion.workflow(name="tests.later")
    def later(ctx):
        ctx.sleep(0.3)
        return "woke"

    first = make_engine(later)
    first.start(later, id="later")
    wait_until(lambda: ev.TIMER_STARTED in types(first.history("later")))
    first.shutdown()
    from aion_green.core import registry

    registry._DECORATED.pop("tests.later")
    second = make_engine(step_workers=2)
    second.list()
    time.sleep(0.3)

    def fired():
        second.poke()  # sweep the store now rather than at the next interval
        return ev.TIMER_FIRED in types(second.history("later"))

    wait_until(fired, what="the sweep to fire the timer of the unregistered run")
    assert second.describe("later").status == "running"
    assert second.start(later, id="later").result(10) == "woke"
    assert types(second.history("later")).count(ev.TIMER_FIRED) == 1


CHILD = r'''
import os, sys, json
if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey; monkey.patch_all()
from datetime import timedelta
import aion_green as aion

def effect(tag):
    with open(os.environ["EFFECTS"], "a") as f:
        f.write(tag + "\n"); f.flush(); os.fsync(f.fileno())
    return tag

@aion.workflow(name="tests.crash_sleeper")
def sleeper(ctx):
    a = ctx.step(effect, "before")
    ctx.sleep(timedelta(seconds=1))
    b = ctx.step(effect, "after")
    return {"steps": [a, b], "r": ctx.random()}

with aion.Engine("sqlite:///" + os.environ["DB"], workflows=[sleeper]) as engine:
    h = engine.start(sleeper, id="sleeper")
    print(json.dumps(h.result(30)), flush=True)
'''


def test_kill_while_sleeping_then_restart_after_the_deadline(tmp_path):
    """Failure window: the process dies (SIGKILL) after TimerStarted is
    recorded and before the deadline. A new process started after the
    deadline fires the timer once, at once, and the run ends as an
    uncrashed run does; the step before the sleep does not run again."""
    from conftest import PATCHED

    db, effects = tmp_path / "s.db", tmp_path / "effects"
    env = dict(os.environ, DB=str(db), EFFECTS=str(effects),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
    try:
        def sleeping():
            if not db.exists():
                return False
            try:
                store = SQLiteStore(str(db))
            except aion.StoreError:
                return False
            try:
                return any(e.type == ev.TIMER_STARTED for e in store.read("sleeper"))
            except aion.StoreError:
                return False
            finally:
                store.close()
        wait_until(sleeping, what="the child to record TimerStarted")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    store = SQLiteStore(str(db))
    fire_at = [e for e in store.read("sleeper") if e.type == ev.TIMER_STARTED][0]["fire_at"]
    store.close()
    time.sleep(max(0.0, fire_at - time.time()) + 0.1)
    started = time.time()
    resumed = run_python(CHILD, env_extra={"DB": str(db), "EFFECTS": str(effects)}, patched=PATCHED)
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert time.time() - started < 5  # fired at once, not another second of sleep
    assert result["steps"] == ["before", "after"]
    assert effects.read_text().splitlines() == ["before", "after"]
    store = SQLiteStore(str(db))
    history = store.read("sleeper")
    run_id = store.get_run("sleeper").run_id
    store.close()
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert types(history).count(ev.TIMER_FIRED) == 1
    assert types(history)[-1] == ev.WORKFLOW_COMPLETED
    # Control: the same run (same ids, so the same seeded random) never killed.
    control_db = tmp_path / "control.db"
    control = SQLiteStore(str(control_db))
    control.create_run("sleeper", "tests.crash_sleeper", "[]", run_id, time.time())
    control.close()
    control_result = run_python(CHILD, env_extra={"DB": str(control_db), "EFFECTS": str(tmp_path / "c")},
                                patched=PATCHED)
    assert json.loads(control_result.stdout.strip().splitlines()[-1]) == result
