"""Engine.fork and Engine.resume: new runs that reuse a run's recorded
outcomes up to a chosen event. Side effects are counted in a file (steps
run on pool threads, in both gevent modes), so "did not run again" is
checked, not assumed."""
from pathlib import Path

import pytest
from conftest import SQLITE_ONLY, wait_until

import aion_green as aion
from aion_green.core import events as ev


def work(tally, n):
    with open(tally, "a") as f:
        f.write(f"{n}\n")
    return n * 10


def fragile(tally, n):
    work(tally, n)
    if Path(f"{tally}.broken").exists():
        raise RuntimeError(f"step {n} is broken")
    return n * 10


def ran(tally):
    return [int(line) for line in Path(tally).read_text().split()] if Path(tally).exists() else []


@aion.workflow(name="test_fork_resume.pipeline")
def pipeline(ctx, tally):
    drawn = ctx.random()  # from the run's seeded generator: a fork goes on from its source's
    total = 0
    for n in (1, 2, 3):
        total += ctx.step(work, tally, n)
    total += ctx.step(fragile, tally, 4)
    total += ctx.step(work, tally, 5)
    return {"total": total, "drawn": drawn}


@aion.workflow(name="test_fork_resume.waits")
def waits(ctx, tally):
    ctx.step(work, tally, 1)
    return ctx.receive("go")


@aion.workflow(name="test_fork_resume.kid")
def kid(ctx, tally):
    return ctx.step(work, tally, 7)


@aion.workflow(name="test_fork_resume.parent")
def parent(ctx, tally):
    child = ctx.start_child(kid, tally)
    got = child.result()
    return got + ctx.step(work, tally, 8)


def types(history):
    return [e.type for e in history]


def broken(tmp_path, name="tally"):
    tally = str(tmp_path / name)
    Path(f"{tally}.broken").touch()
    return tally


def test_resume_after_a_fix_runs_only_the_failed_step_and_after(make_engine, tmp_path):
    engine = make_engine(pipeline)
    tally = broken(tmp_path)
    handle = engine.start(pipeline, tally, id="p")
    with pytest.raises(aion.WorkflowFailed, match="step 4 is broken"):
        handle.result(10)
    assert ran(tally) == [1, 2, 3, 4]
    failed = engine.history("p")
    assert types(failed)[-2:] == [ev.STEP_FAILED, ev.WORKFLOW_FAILED]
    Path(f"{tally}.broken").unlink()  # the fix

    resumed = engine.resume("p")
    assert resumed.workflow_id == "p"
    result = resumed.result(10)
    control = engine.start(pipeline, str(tmp_path / "control"), id="control").result(10)
    assert result["total"] == control["total"] == 150
    assert ran(tally) == [1, 2, 3, 4, 4, 5]  # steps 1-3 were replayed, not run
    # The new run: a WorkflowStarted naming the old run and the cut, the
    # old run's events 2..4 as they were, then what ran live.
    history = engine.history("p")
    old_run = failed[0]["run_id"]
    assert history[0]["resumed_from"]["run_id"] == old_run
    assert history[0]["resumed_from"]["seq"] == 4  # the StepFailed and the end were dropped
    assert [(e.seq, e.type, e.data) for e in history[1:4]] == [
        (e.seq, e.type, e.data) for e in failed[1:4]]
    assert types(history)[4:] == [ev.STEP_COMPLETED, ev.STEP_COMPLETED, ev.WORKFLOW_COMPLETED]
    info = engine.describe("p")
    assert (info.status, info.run_id) == ("completed", history[0]["run_id"])
    assert engine.history("p", run_id=old_run) == failed  # the archived run is still readable
    assert engine.result("p") == result


def test_fork_from_a_mid_seq_replays_the_prefix_under_a_new_id(make_engine, tmp_path):
    engine = make_engine(pipeline)
    tally = str(tmp_path / "tally")
    source = engine.start(pipeline, tally, id="src").result(10)
    before = engine.history("src")
    handle = engine.fork("src", 3)  # WorkflowStarted, steps 1 and 2
    assert handle.workflow_id.startswith("src/fork-")
    forked = handle.result(10)
    assert forked == source  # the same total, and the same draw of ctx.random()
    assert ran(tally) == [1, 2, 3, 4, 5, 3, 4, 5]
    history = handle.history()
    assert history[0]["forked_from"] == {"workflow_id": "src", "run_id": before[0]["run_id"],
                                         "seq": 3, "at": history[0]["forked_from"]["at"]}
    assert [(e.type, e.data) for e in history[1:3]] == [(e.type, e.data) for e in before[1:3]]
    assert engine.history("src") == before  # the source is not changed
    # A chosen id; then that id is taken.
    assert engine.fork("src", 6, id="src-b").result(10) == source  # every step copied
    assert ran(tally) == [1, 2, 3, 4, 5, 3, 4, 5]
    with pytest.raises(aion.WorkflowIdConflict, match="'src-b'"):
        engine.fork("src", 2, id="src-b")


def test_bad_cuts_and_a_resume_of_a_finished_run_are_refused_and_write_nothing(make_engine,
                                                                               tmp_path):
    engine = make_engine(pipeline, waits)
    tally = str(tmp_path / "tally")
    engine.start(pipeline, tally, id="done").result(10)
    engine.start(waits, tally, id="live")
    wait_until(lambda: len(engine.history("live")) >= 2, what="the live run's step")
    before = {i.workflow_id: (i, engine.history(i.workflow_id)) for i in engine.list()}
    with pytest.raises(aion.ConfigurationError, match=r"from 1 to 6; seq 7 is its end"):
        engine.fork("done", 7)
    with pytest.raises(aion.ConfigurationError, match="from_seq must be"):
        engine.fork("done", 0)
    with pytest.raises(aion.ConfigurationError, match="from_seq must be"):
        engine.resume("done", True)
    with pytest.raises(aion.ConfigurationError, match="has completed.*fork it"):
        engine.resume("done")
    with pytest.raises(aion.ConfigurationError, match="still running.*fork it"):
        engine.resume("live")
    with pytest.raises(aion.WorkflowNotFound, match="'nope'"):
        engine.fork("nope", 1)
    with pytest.raises(aion.WorkflowNotFound, match="'nope'"):
        engine.resume("nope")
    after = {i.workflow_id: (i, engine.history(i.workflow_id)) for i in engine.list()}
    assert after.keys() == before.keys()
    assert after["done"] == before["done"]
    assert after["live"][1] == before["live"][1]
    assert ran(tally) == [1, 2, 3, 4, 5, 1]
    engine.signal("live", "go", 1)
    assert engine.result("live", timeout=10) == 1


def test_resume_of_a_cancelled_run_undoes_the_cancel(make_engine, tmp_path):
    engine = make_engine(waits)
    tally = str(tmp_path / "tally")
    handle = engine.start(waits, tally, id="w")
    wait_until(lambda: len(engine.history("w")) >= 2, what="the step")
    engine.cancel("w", "oops")
    with pytest.raises(aion.WorkflowCancelled):
        handle.result(10)
    engine.resume("w")
    assert types(engine.history("w")) == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED]
    engine.signal("w", "go", "yes")
    assert handle.result(10) == "yes"
    assert ran(tally) == [1]


def test_a_fork_keeps_a_child_whose_end_it_copies_and_refuses_one_it_would_share(make_engine,
                                                                                 tmp_path):
    engine = make_engine(parent, kid)
    tally = str(tmp_path / "tally")
    assert engine.start(parent, tally, id="par").result(10) == 150
    history = engine.history("par")
    start = types(history).index(ev.CHILD_STARTED) + 1
    end = types(history).index(ev.CHILD_COMPLETED) + 1
    with pytest.raises(aion.ConfigurationError, match=f"choose a from_seq before {start}, or "
                                                      f"from {end} on"):
        engine.fork("par", start)
    assert [i.workflow_id for i in engine.list()] == ["par", "par/child-1"]
    assert engine.fork("par", end, id="par2").result(10) == 150
    assert ran(tally) == [7, 8, 8]  # the child did not run again
    assert [i.workflow_id for i in engine.list()] == ["par", "par/child-1", "par2"]


@SQLITE_ONLY
def test_a_client_resumes_and_the_driving_engine_picks_the_run_up(make_engine, tmp_path):
    driver = make_engine(pipeline)
    driver.list()
    client = make_engine(pipeline)
    client.list()
    assert driver.driving and not client.driving
    tally = broken(tmp_path)
    with pytest.raises(aion.WorkflowFailed):
        client.start(pipeline, tally, id="c").result(10)
    with pytest.raises(aion.WorkflowFailed):
        driver.result("c", 10)  # the driver now remembers the failure
    Path(f"{tally}.broken").unlink()
    assert client.resume("c").result(10)["total"] == 150
    assert driver.result("c", 10)["total"] == 150
    fork = client.fork("c", 2)
    assert fork.result(10) == client.result("c")
    assert ran(tally) == [1, 2, 3, 4, 4, 5, 2, 3, 4, 5]


@aion.workflow(name="test_fork_resume.naps")
def naps(ctx, tally):
    ctx.step(work, tally, 1)
    ctx.sleep(0.3)
    return ctx.step(work, tally, 2)


def test_a_fork_of_a_running_run_keeps_its_pending_timer(make_engine, tmp_path):
    engine = make_engine(naps)
    tally = str(tmp_path / "tally")
    source = engine.start(naps, tally, id="nap")
    wait_until(lambda: ev.TIMER_STARTED in types(engine.history("nap")), what="the timer")
    cut = len(engine.history("nap"))  # WorkflowStarted, the step, TimerStarted
    fork = engine.fork("nap", cut, id="nap2")
    assert fork.result(10) == source.result(10) == 20
    assert sorted(ran(tally)) == [1, 2, 2]  # the first step ran once
    timer = engine.history("nap2")[cut - 1]
    assert timer.type == ev.TIMER_STARTED and timer == engine.history("nap")[cut - 1]
    assert types(engine.history("nap2"))[cut:] == [ev.TIMER_FIRED, ev.STEP_COMPLETED,
                                                   ev.WORKFLOW_COMPLETED]
