"""Bounds survive a crash (issue 18): a real process starts a run with an
execution timeout (or pauses one) and is SIGKILLed; the engine that starts
next over the same SQLite file ends the run at its deadline (or keeps it
paused), as an uncrashed process does."""
import json
import signal
import time

import pytest
from conftest import run_python, wait_until

import aion_green as aion
from aion_green.core import events as ev

MARKS = []


def mark(tag):
    MARKS.append(tag)
    return tag


# The same workflow, by name, in the child process (FLOWS) and here.
@aion.workflow(name="bounds_crash.sleeper")
def sleeper(ctx):
    ctx.step(mark, "began")
    ctx.sleep(2.0)
    ctx.step(mark, "woke")
    ctx.sleep(3600)
    return "never"


FLOWS = '''
import json, os, signal, sys, time
import aion_green as aion


def mark(tag):
    return tag


@aion.workflow(name="bounds_crash.sleeper")
def sleeper(ctx):
    ctx.step(mark, "began")
    ctx.sleep(2.0)
    ctx.step(mark, "woke")
    ctx.sleep(3600)
    return "never"


db, what = sys.argv[1], sys.argv[2]
engine = aion.Engine(db, workflows=[sleeper])
if what == "timeout" or what == "control":
    engine.start(sleeper, id="bounded", execution_timeout=3.0)
    deadline = engine.describe("bounded").execution_deadline
else:
    engine.start(sleeper, id="paused")
    deadline = None
wid = "bounded" if deadline else "paused"
while "TimerStarted" not in [e.type for e in engine.history(wid)]:
    time.sleep(0.01)
if what == "pause":
    engine.pause(wid, "before the crash")
print(json.dumps({"deadline": deadline}), flush=True)
if what == "control":  # not crashed: it ends the run itself
    try:
        engine.result(wid, timeout=30)
    except aion.WorkflowTimedOut:
        pass
    engine.shutdown()
    sys.exit(0)
os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture(autouse=True)
def _fresh_marks():
    MARKS.clear()
    yield


@pytest.fixture
def flows(tmp_path):
    path = tmp_path / "crashflows.py"
    path.write_text(FLOWS)
    return path


def _child(flows, db, what):
    proc = run_python([str(flows), db, what], check=False, timeout=90)
    return proc, json.loads(proc.stdout.splitlines()[0])


def test_a_deadline_recorded_before_a_sigkill_ends_the_run_as_without_the_crash(tmp_path, flows):
    """Failure window: the process that started the run (and armed its
    deadline in memory) dies by SIGKILL before the deadline; only what the
    history holds is left. The next engine ends the run at the deadline with
    the same history an uncrashed process writes."""
    control_db = f"sqlite:///{tmp_path / 'control.db'}"
    proc, _ = _child(flows, control_db, "control")
    assert proc.returncode == 0, proc.stderr
    with aion.Engine(control_db, workflows=[sleeper]) as engine:
        control = engine.history("bounded")
    crashed_db = f"sqlite:///{tmp_path / 'crashed.db'}"
    proc, said = _child(flows, crashed_db, "timeout")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    deadline = said["deadline"]
    assert deadline > time.time() - 1  # killed before its deadline passed (3 s after start)
    with aion.Engine(crashed_db, workflows=[sleeper]) as engine:
        with pytest.raises(aion.WorkflowTimedOut) as raised:
            engine.result("bounded", timeout=30)
        assert raised.value.deadline == deadline
        crashed = engine.history("bounded")
        assert engine.describe("bounded").status == "timed_out"
    assert [e.type for e in crashed] == [e.type for e in control] == [
        ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.TIMER_STARTED, ev.TIMER_FIRED,
        ev.STEP_COMPLETED, ev.TIMER_STARTED, ev.WORKFLOW_TIMED_OUT]
    for history in (crashed, control):
        assert history[-1].at >= history[0].data["execution_deadline"]


def test_a_pause_recorded_before_a_sigkill_holds_in_the_next_engine(tmp_path, flows):
    db = f"sqlite:///{tmp_path / 'paused.db'}"
    proc, _ = _child(flows, db, "pause")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    time.sleep(2.5)  # its 2 s timer is due
    with aion.Engine(db, workflows=[sleeper]) as engine:
        assert engine.describe("paused").paused
        time.sleep(1.0)
        engine.poke()
        time.sleep(0.3)
        assert ev.TIMER_FIRED not in [e.type for e in engine.history("paused")]
        assert MARKS == []  # the step after the timer did not run here
        engine.unpause("paused")
        wait_until(lambda: MARKS == ["woke"], what="the step after the timer")
        kinds = [e.type for e in engine.history("paused")]
        assert kinds.index(ev.WORKFLOW_UNPAUSED) < kinds.index(ev.TIMER_FIRED)
