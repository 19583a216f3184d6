"""Child workflows survive SIGKILL: a real process (``crash_family.py``) runs a
parent with three children of four steps on a real SQLite file, and kills
itself at a chosen point; a new process resumes. The resumed result equals
an uncrashed control run (a fresh database whose parent has the crashed
parent's run id), every recorded step ran once, and every child exists once.
"""
import json
import signal
from collections import Counter
from pathlib import Path

from conftest import PATCHED, run_python

import aion_green as aion

SCRIPT = Path(__file__).with_name("crash_family.py")
WID = "fam-1"
KIDS, STEPS = 3, 4
KILLED = -signal.SIGKILL
ALL_KEYS = [f"{WID}/child-{c}/step-{i}" for c in range(1, KIDS + 1) for i in range(1, STEPS + 1)]


def _run(db, effects, *extra):
    args = [str(SCRIPT), "--db", str(db), "--effects", str(effects), "--id", WID, *map(str, extra)]
    return run_python(args, timeout=90, check=False, patched=PATCHED)


def _describe(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def finish(db, effects, *extra):
    proc = _run(db, effects, *extra)
    assert proc.returncode == 0, _describe(proc)
    output = json.loads(proc.stdout.strip().splitlines()[-1])
    assert output["patched"] == PATCHED
    return output["result"]


def crash(db, effects, *extra):
    proc = _run(db, effects, *extra)
    assert proc.returncode == KILLED, _describe(proc)


def read_store(db):
    store = aion.SQLiteStore(str(db))
    try:
        runs = store.list_runs(None, None, 100, None)
        return runs, {run.workflow_id: store.read(run.workflow_id) for run in runs}
    finally:
        store.close()


def effects_of(effects):
    if not Path(effects).exists():
        return Counter(), Counter()
    lines = [line.split(" ") for line in Path(effects).read_text(encoding="utf-8").splitlines()]
    return (Counter(key for kind, key in lines if kind == "start"),
            Counter(key for kind, key in lines if kind == "done"))


def recorded_keys(histories):
    return [f"{wid}/step-{e.data['step']}"
            for wid, history in histories.items() for e in history if e.type == "StepCompleted"]


def assert_effects_resumed(before, recorded_before, after):
    """Each step recorded before the kill ran once in all; each other step
    ran once more after the kill, whether or not it was in flight (started,
    and perhaps done, but not recorded) when the process died."""
    (started_before, done_before), (started, done) = before, after
    for key in ALL_KEYS:
        if key in recorded_before:
            assert started[key] == done[key] == 1, f"recorded step {key} ran again"
        else:
            assert started[key] == started_before[key] + 1, key
            assert done[key] == done_before[key] + 1, key


def control(tmp_path, run_id):
    db, effects = tmp_path / "control.db", tmp_path / "control.effects"
    result = finish(db, effects, "--run-id", run_id)
    started, done = effects_of(effects)
    assert started == done == Counter(ALL_KEYS)
    return result


def assert_family_done(db):
    """One parent and KIDS children, all completed, each history without a
    gap; the parent recorded each child's start and end exactly once."""
    runs, histories = read_store(db)
    assert sorted(r.workflow_id for r in runs) == sorted(
        [WID] + [f"{WID}/child-{c}" for c in range(1, KIDS + 1)])
    assert all(r.status == "completed" for r in runs), runs
    for history in histories.values():
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
    types = Counter(e.type for e in histories[WID])
    assert types["ChildStarted"] == types["ChildCompleted"] == KIDS
    assert types["WorkflowCompleted"] == 1
    return histories


def test_kill_while_parent_waits_on_a_child_resumes_to_control(tmp_path):
    """The process dies inside step 3 of child 2, while the parent is parked
    on its children. A new process resumes parent and children: the result
    equals the control run, every step recorded before the kill ran once,
    and only the step in flight ran again."""
    db, effects = tmp_path / "crash.db", tmp_path / "crash.effects"
    crash(db, effects, "--kill-in-step", "2:3")
    _, at_kill = read_store(db)
    assert [e.type for e in at_kill[WID]].count("ChildStarted") == KIDS
    assert "WorkflowCompleted" not in [e.type for e in at_kill[WID]]
    recorded_before = recorded_keys(at_kill)
    assert f"{WID}/child-2/step-3" not in recorded_before
    before = effects_of(effects)
    assert before[0][f"{WID}/child-2/step-3"] == 1 and before[1][f"{WID}/child-2/step-3"] == 0

    result = finish(db, effects)
    histories = assert_family_done(db)
    assert_effects_resumed(before, recorded_before, effects_of(effects))
    for wid, history in at_kill.items():
        assert histories[wid][:len(history)] == history, f"{wid}: recorded events were rewritten"
    assert result == control(tmp_path, at_kill[WID][0].data["run_id"])


def test_kill_between_child_started_and_creation_creates_it_once(tmp_path):
    """The process dies as the writer is about to create child 2, whose
    ChildStarted is already durable in the parent. On the next start the
    parent's history load repairs it: child 2 is created exactly once, and
    the family ends as the control run does."""
    db, effects = tmp_path / "crash.db", tmp_path / "crash.effects"
    crash(db, effects, "--kill-before-create", 2)
    runs, at_kill = read_store(db)
    started_ids = [e.data["id"] for e in at_kill[WID] if e.type == "ChildStarted"]
    assert started_ids == [f"{WID}/child-1", f"{WID}/child-2"]
    assert f"{WID}/child-2" not in {r.workflow_id for r in runs}, "child 2 exists before the repair"
    before = effects_of(effects)
    assert not any(key.startswith(f"{WID}/child-2/") for key in before[0])

    result = finish(db, effects)
    histories = assert_family_done(db)
    assert [e.data["id"] for e in histories[WID] if e.type == "ChildStarted"] == [
        f"{WID}/child-{c}" for c in range(1, KIDS + 1)]
    assert_effects_resumed(before, recorded_keys(at_kill), effects_of(effects))
    assert result == control(tmp_path, at_kill[WID][0].data["run_id"])
