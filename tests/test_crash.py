"""Crash durability: a real child process (``crash_child.py``) runs a 100-step
workflow on a real SQLite file and is SIGKILLed at a chosen point; a new
process resumes it. The resumed result must equal an uncrashed control run,
and no step that was recorded may run a second time (side effects are
counted in a file, one fsynced line per step start and end).

The control run is a fresh database whose run carries the crashed run's id
and run id (created through the store contract), so the seeded
``ctx.random()``/``ctx.uuid4()`` draw the same values and results compare in
full; it is never killed.
"""
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import PATCHED, run_python

import aion_green as aion

CHILD = Path(__file__).with_name("crash_child.py")
WID = "crash-1"
STEPS = 100
ALL_STEPS = range(1, STEPS + 1)
KILLED = -signal.SIGKILL


# -- helpers ------------------------------------------------------------------------------

def child_args(db, effects, *extra):
    return [str(CHILD), "--db", str(db), "--effects", str(effects), "--id", WID,
            "--steps", str(STEPS), *map(str, extra)]


def _describe(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def run_child(db, effects, *extra):
    """Run the child to completion; its workflow result."""
    proc = run_python(child_args(db, effects, *extra), timeout=60, check=False, patched=PATCHED)
    assert proc.returncode == 0, _describe(proc)
    output = json.loads(proc.stdout.strip().splitlines()[-1])
    assert output["patched"] == PATCHED, "the child did not run in the suite's gevent mode"
    return output["result"]


def crash_child(db, effects, *extra):
    """Run a child that must die by SIGKILL (it kills itself at the chosen point)."""
    proc = run_python(child_args(db, effects, *extra), timeout=60, check=False, patched=PATCHED)
    assert proc.returncode == KILLED, _describe(proc)


def child_env():
    """The environment run_python gives a child (for a child we must Popen)."""
    from crash_campaign import worker_env

    return worker_env(PATCHED)


def read_history(db):
    """The run's history as the store holds it (read with a fresh store)."""
    store = aion.SQLiteStore(str(db))
    try:
        return store.read(WID)
    finally:
        store.close()


def recorded_steps(history):
    return [e.data["step"] for e in history if e.type == "StepCompleted"]


def read_effects(effects):
    """``[(kind, step, key, attempt)]`` from the effects file."""
    if not Path(effects).exists():
        return []
    lines = []
    for line in Path(effects).read_text(encoding="utf-8").splitlines():
        kind, step, key, attempt = line.split(" ")
        lines.append((kind, int(step), key, int(attempt)))
    return lines


def step_done(effects, step):
    """Whether the effects file holds a complete ``done <step>`` line (the
    child may be writing the next line as we read)."""
    try:
        text = Path(effects).read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    return any(line.split(" ")[:2] == ["done", str(step)] for line in text.splitlines(True)
               if line.endswith("\n"))


def effect_counts(lines, kind):
    return Counter(step for k, step, _, _ in lines if k == kind)


def once_each(exceptions=None):
    """Expected per-step line counts: one for every step, but ``{step: count}``."""
    counts = Counter({step: 1 for step in ALL_STEPS})
    counts.update({step: count - 1 for step, count in (exceptions or {}).items()})
    return counts


def control_run(tmp_path, run_id):
    """The same workflow, same ids, in a fresh database, never killed."""
    db, effects = tmp_path / "control.db", tmp_path / "control.effects"
    result = run_child(db, effects, "--run-id", run_id)
    history = read_history(db)
    lines = read_effects(effects)
    assert effect_counts(lines, "start") == once_each()
    assert effect_counts(lines, "done") == once_each()
    assert_complete_history(history)
    return result, history


def assert_complete_history(history):
    """seqs 1..N with no gap or duplicate, one StepCompleted per ordinal in
    order, exactly one WorkflowCompleted, last."""
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    types = [e.type for e in history]
    assert types[0] == "WorkflowStarted"
    assert types.count("WorkflowStarted") == 1
    assert types.count("WorkflowCompleted") == 1 and types[-1] == "WorkflowCompleted"
    assert "StepFailed" not in types and "WorkflowFailed" not in types
    assert recorded_steps(history) == list(ALL_STEPS)
    assert len(history) == STEPS + 2
    for event in history:
        if event.type == "StepCompleted":
            assert event.data["name"] == "effect"
            assert event.data["attempt"] == 1
            assert event.data["result"]["key"] == f"{WID}/step-{event.data['step']}"


def assert_resumed_matches_control(tmp_path, result, at_kill, final):
    """The resumed run equals the control run, result and every step result,
    and kept every event recorded before the kill as it was."""
    assert_complete_history(final)
    assert final[:len(at_kill)] == at_kill, "events recorded before the kill were rewritten"
    run_id = at_kill[0].data["run_id"]
    control_result, control_history = control_run(tmp_path, run_id)
    assert result == control_result
    assert [e.data["result"] for e in final if e.type == "StepCompleted"] == [
        e.data["result"] for e in control_history if e.type == "StepCompleted"
    ]


def assert_recorded_ran_once(lines, at_kill):
    """Every step recorded at the moment of the kill ran exactly once overall."""
    done = effect_counts(lines, "done")
    started = effect_counts(lines, "start")
    for step in recorded_steps(at_kill):
        assert done[step] == 1, f"recorded step {step} ran {done[step]} times"
        assert started[step] == 1, f"recorded step {step} started {started[step]} times"


def assert_stable_keys(lines):
    """Every execution of a step, before or after the crash, saw the same
    idempotency key (and was its first attempt: a crash is not a retry)."""
    for _, step, key, attempt in lines:
        assert key == f"{WID}/step-{step}"
        assert attempt == 1


def crash_first_child(tmp_path, *kill_args):
    """Crash a first child where ``kill_args`` say; return the db, the
    effects file and the history as it stood at the kill."""
    db, effects = tmp_path / "crash.db", tmp_path / "crash.effects"
    crash_child(db, effects, *kill_args)
    at_kill = read_history(db)
    assert at_kill[0].type == "WorkflowStarted"
    return db, effects, at_kill


# -- tests ----------------------------------------------------------------------------------

def test_kill_at_step_50_resumes_to_control_result(tmp_path):
    """Failure window: anywhere around step 50, chosen from outside. The parent
    SIGKILLs the child as soon as the effects file shows step 50 done (later
    steps are slowed so the run cannot finish first); wherever the kill
    lands (inside a step, before its record, between record and wake), the
    resumed run matches the control run and only the step in flight at the
    kill may have run twice."""
    db, effects = tmp_path / "crash.db", tmp_path / "crash.effects"
    with subprocess.Popen([sys.executable, *child_args(db, effects, "--slow-after", 50, "--slow", 0.2)],
                          env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            deadline = time.monotonic() + 30
            while not step_done(effects, 50):
                if proc.poll() is not None:
                    out, err = proc.communicate()
                    pytest.fail(f"the child ended before step 50 was done: exit {proc.returncode}"
                                f"\n{out}\n{err}")
                if time.monotonic() > deadline:
                    pytest.fail("the child did not finish step 50 within 30 s")
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == KILLED, f"exit {proc.returncode}\n{out}\n{err}"

    at_kill = read_history(db)
    before = read_effects(effects)
    recorded = recorded_steps(at_kill)
    last = len(recorded)
    assert recorded == list(range(1, last + 1))
    assert 49 <= last < STEPS, f"the kill landed after step {last} was recorded"
    assert "WorkflowCompleted" not in [e.type for e in at_kill]
    # Record before wake: no step started before the previous one was recorded.
    assert max(step for _, step, _, _ in before) <= last + 1
    assert_recorded_ran_once(before, at_kill)

    result = run_child(db, effects)
    lines = read_effects(effects)
    in_flight = last + 1
    started_before = effect_counts(before, "start")[in_flight]
    done_before = effect_counts(before, "done")[in_flight]
    assert effect_counts(lines, "start") == once_each({in_flight: 1 + started_before})
    assert effect_counts(lines, "done") == once_each({in_flight: 1 + done_before})
    assert_recorded_ran_once(lines, at_kill)
    assert_stable_keys(lines)
    assert_resumed_matches_control(tmp_path, result, at_kill, read_history(db))


def test_kill_during_a_step_reruns_only_that_step(tmp_path):
    """Failure window: inside step 50, after it began its side effect and
    before it returned (so before anything of it was recorded). The resumed
    process starts step 50 again, finishes it once, and runs none of the 49
    recorded steps again."""
    db, effects, at_kill = crash_first_child(tmp_path, "--kill-in-step", 50)
    assert recorded_steps(at_kill) == list(range(1, 50))
    before = read_effects(effects)
    assert effect_counts(before, "start") == Counter({s: 1 for s in range(1, 51)})
    assert effect_counts(before, "done") == Counter({s: 1 for s in range(1, 50)})

    result = run_child(db, effects)
    lines = read_effects(effects)
    assert effect_counts(lines, "start") == once_each({50: 2})
    assert effect_counts(lines, "done") == once_each()
    assert_recorded_ran_once(lines, at_kill)
    assert_stable_keys(lines)
    assert_resumed_matches_control(tmp_path, result, at_kill, read_history(db))


def test_kill_between_step_end_and_record_reruns_only_that_step(tmp_path):
    """Failure window: step 50's side effect completed, and the process died
    as the store writer was about to commit its StepCompleted. Nothing
    recorded it, so the resumed process runs step 50 again (at least once,
    with the same idempotency key), while every recorded step ran exactly
    once."""
    db, effects, at_kill = crash_first_child(tmp_path, "--kill-before-record", 50)
    assert recorded_steps(at_kill) == list(range(1, 50))
    before = read_effects(effects)
    assert effect_counts(before, "start") == Counter({s: 1 for s in range(1, 51)})
    assert effect_counts(before, "done") == Counter({s: 1 for s in range(1, 51)})

    result = run_child(db, effects)
    lines = read_effects(effects)
    assert effect_counts(lines, "start") == once_each({50: 2})
    assert effect_counts(lines, "done") == once_each({50: 2})
    assert_recorded_ran_once(lines, at_kill)
    assert_stable_keys(lines)
    assert_resumed_matches_control(tmp_path, result, at_kill, read_history(db))


def test_kill_during_replay_resumes_again(tmp_path):
    """Failure window: a resumed process is killed while it replays the
    history of an earlier crash (at step 30's record). Replay runs no step
    and writes nothing, so the history and the effects are exactly as the
    first crash left them; a third process then resumes to the control
    result, rerunning only the step the first crash interrupted."""
    db, effects, at_kill = crash_first_child(tmp_path, "--kill-in-step", 50)
    assert recorded_steps(at_kill) == list(range(1, 50))
    effects_at_kill = Path(effects).read_bytes()

    crash_child(db, effects, "--kill-in-replay", 30)
    assert read_history(db) == at_kill, "the replaying process changed the history"
    assert Path(effects).read_bytes() == effects_at_kill, "the replaying process ran a step"

    result = run_child(db, effects)
    lines = read_effects(effects)
    assert effect_counts(lines, "start") == once_each({50: 2})
    assert effect_counts(lines, "done") == once_each()
    assert_recorded_ran_once(lines, at_kill)
    assert_stable_keys(lines)
    assert_resumed_matches_control(tmp_path, result, at_kill, read_history(db))
