"""ctx.supervise: OTP strategies and restart types, the restart intensity,
escalation to the parent, and the same decisions after a SIGKILL."""
import json
import signal
from pathlib import Path

import pytest
from conftest import PATCHED, run_python, wait_until

import aion_green as aion
from aion_green.core import events as ev


def incarnation(ctx):
    return int(ctx.workflow_id.rsplit("-r", 1)[1]) if "-r" in ctx.workflow_id else 0


@aion.workflow(name="test_supervision.flaky")
def flaky(ctx, name, fail_until):
    """Fails while its incarnation is below ``fail_until``."""
    if incarnation(ctx) < fail_until:
        raise RuntimeError(f"{name} failed in incarnation {incarnation(ctx)}")
    return f"{name}@{incarnation(ctx)}"


@aion.workflow(name="test_supervision.server")
def server(ctx, name):
    """Runs until told to stop (or cancelled)."""
    return f"{name}:{ctx.receive('stop')}@{incarnation(ctx)}"


@aion.workflow(name="test_supervision.sleepy")
def sleepy(ctx, name, seconds, fail):
    ctx.sleep(seconds)
    if fail:
        raise RuntimeError(f"{name} failed")
    return name


def restarts(history):
    return [(e["index"], e["incarnation"], e["reason"]) for e in history if e.type == ev.CHILD_RESTARTED]


def ended_order(history):
    """Child ids in the order their ends were recorded in the supervisor."""
    return [e["id"] for e in history if e.type in (ev.CHILD_COMPLETED, ev.CHILD_FAILED)]


def statuses(engine, prefix):
    return {r.workflow_id[len(prefix):]: r.status for r in engine.list(limit=1000)
            if r.workflow_id.startswith(prefix)}


def stop_servers(engine, prefix, payload="bye"):
    for run in engine.list(status="running", limit=1000):
        if run.workflow_id.startswith(prefix) and run.workflow_type == "test_supervision.server":
            engine.signal(run.workflow_id, "stop", payload)


ALL = [flaky, server, sleepy]


def test_one_for_one_restarts_only_the_failed_child(make_engine):
    @aion.workflow
    def sup(ctx):
        return ctx.supervise([aion.ChildSpec(flaky, "a", 2, restart="permanent"),
                              aion.ChildSpec(server, "b", restart="transient")],
                             strategy="one_for_one", intensity=5, period=60)

    engine = make_engine(sup, *ALL)
    handle = engine.start(sup, id="s")
    # a fails twice, then completes; being permanent it is restarted after
    # completing too, and completes again: 2 + 1 + 1... until the intensity.
    with pytest.raises(aion.WorkflowFailed, match="RestartIntensityExceeded"):
        handle.result(10)
    history = engine.history("s")
    assert restarts(history) == [(0, 1, "failed"), (0, 2, "failed"), (0, 3, "completed"),
                                 (0, 4, "completed"), (0, 5, "completed")]
    # b was never restarted, and was ended when the supervisor gave up.
    assert statuses(engine, "s/sup-1/")["1"] == "cancelled"
    assert "1-r1" not in statuses(engine, "s/sup-1/")


def test_transient_and_temporary_children_end_the_supervisor_when_done(make_engine):
    @aion.workflow
    def sup(ctx):
        return ctx.supervise([aion.ChildSpec(flaky, "a", 1, restart="transient"),
                              aion.ChildSpec(flaky, "t", 1, restart="temporary"),
                              aion.ChildSpec(server, "b", restart="transient")],
                             strategy="one_for_one", intensity=3, period=60)

    engine = make_engine(sup, *ALL)
    handle = engine.start(sup, id="s")
    wait_until(lambda: statuses(engine, "s/sup-1/").get("0-r1") == "completed")
    engine.cancel("s/sup-1/2", "not needed")  # a transient child cancelled: not restarted
    # a: failed, restarted, completed; t: failed, temporary, never restarted.
    assert handle.result(10) == ["a@1", None, None]
    assert restarts(engine.history("s")) == [(0, 1, "failed")]
    assert statuses(engine, "s/sup-1/") == {"0": "failed", "0-r1": "completed", "1": "failed",
                                           "2": "cancelled"}


def test_one_for_all_ends_the_others_in_reverse_order_and_restarts_all(make_engine):
    @aion.workflow
    def sup(ctx):
        return ctx.supervise([aion.ChildSpec(server, "x", restart="transient"),
                              aion.ChildSpec(sleepy, "f", 0.2, True, restart="transient"),
                              aion.ChildSpec(server, "y", restart="transient"),
                              aion.ChildSpec(server, "tmp", restart="temporary")],
                             strategy="one_for_all", intensity=1, period=60)

    engine = make_engine(sup, *ALL)
    handle = engine.start(sup, id="s")
    wait_until(lambda: "2-r1" in statuses(engine, "s/sup-1/"), what="the restart")
    history = engine.history("s")
    # f failed; tmp, y, x were ended one after the other, last started first.
    assert ended_order(history) == ["s/sup-1/1", "s/sup-1/3", "s/sup-1/2", "s/sup-1/0"]
    assert [e["reason"] for e in history if e.type == ev.CHILD_RESTARTED] == ["failed"] * 3
    assert restarts(history) == [(0, 1, "failed"), (1, 1, "failed"), (2, 1, "failed")]
    started = [e["id"] for e in history if e.type == ev.CHILD_STARTED]
    assert started[4:] == ["s/sup-1/0-r1", "s/sup-1/1-r1", "s/sup-1/2-r1"]  # spec order; no tmp
    # The restarted f fails again within the period: past the intensity.
    with pytest.raises(aion.WorkflowFailed, match="RestartIntensityExceeded"):
        handle.result(10)
    final = statuses(engine, "s/sup-1/")
    assert final == {"0": "cancelled", "1": "failed", "2": "cancelled", "3": "cancelled",
                     "0-r1": "cancelled", "1-r1": "failed", "2-r1": "cancelled"}
    assert ended_order(engine.history("s"))[4:] == ["s/sup-1/1-r1", "s/sup-1/2-r1", "s/sup-1/0-r1"]


def test_rest_for_one_restarts_the_failed_child_and_those_after_it(make_engine):
    @aion.workflow
    def sup(ctx):
        return ctx.supervise([aion.ChildSpec(server, "x", restart="transient"),
                              aion.ChildSpec(sleepy, "f", 0.2, False, restart="permanent"),
                              aion.ChildSpec(server, "y", restart="transient")],
                             strategy="rest_for_one", intensity=1, period=60)

    engine = make_engine(sup, *ALL)
    handle = engine.start(sup, id="s")
    wait_until(lambda: "2-r1" in statuses(engine, "s/sup-1/"), what="the restart")
    history = engine.history("s")
    assert restarts(history) == [(1, 1, "completed"), (2, 1, "completed")]
    assert statuses(engine, "s/sup-1/")["0"] == "running"  # before the failed one: untouched
    assert statuses(engine, "s/sup-1/")["2"] == "cancelled"
    with pytest.raises(aion.WorkflowFailed, match="RestartIntensityExceeded"):
        handle.result(10)  # f is permanent: it ends again within the period


def test_the_intensity_counts_restarts_within_the_period_only(make_engine):
    """f fails at once, then after a long sleep, then at once: with a short
    period the slow failure falls outside the window of the first restart;
    the quick one right after it does not."""
    @aion.workflow(name="test_supervision.paced")
    def paced(ctx):
        n = incarnation(ctx)
        if n == 1:
            ctx.sleep(1.0)
        raise RuntimeError(f"failure {n}")

    @aion.workflow
    def sup(ctx, period):
        return ctx.supervise([aion.ChildSpec(paced, restart="transient")],
                             intensity=1, period=period)

    engine = make_engine(sup, paced)
    with pytest.raises(aion.WorkflowFailed, match="after 1 restart"):
        engine.start(sup, 0.5, id="short").result(10)
    assert [r[1] for r in restarts(engine.history("short"))] == [1, 2]
    with pytest.raises(aion.WorkflowFailed, match="after 1 restart"):
        engine.start(sup, 60, id="long").result(10)
    assert [r[1] for r in restarts(engine.history("long"))] == [1]


def test_exceeding_the_intensity_escalates_to_the_parent(make_engine):
    @aion.workflow(name="test_supervision.middle")
    def middle(ctx):
        return ctx.supervise([aion.ChildSpec(server, "s1"), aion.ChildSpec(flaky, "bad", 99),
                              aion.ChildSpec(server, "s2")], intensity=2, period=60)

    @aion.workflow
    def top(ctx):
        try:
            return ctx.start_child(middle, id="mid").result()
        except aion.WorkflowFailed as exc:
            return [exc.workflow_id, exc.error_type]

    engine = make_engine(top, middle, *ALL)
    assert engine.start(top, id="top").result(10) == [
        "mid", "aion_green.errors.RestartIntensityExceeded"]
    # The supervisor ended its children, the last started first, before failing.
    history = engine.history("mid")
    assert ended_order(history)[-2:] == ["mid/sup-1/2", "mid/sup-1/0"]
    assert statuses(engine, "mid/sup-1/") == {"0": "cancelled", "1": "failed", "1-r1": "failed",
                                              "1-r2": "failed", "2": "cancelled"}


def test_cancelling_a_supervisor_ends_its_children_first(make_engine):
    @aion.workflow
    def sup(ctx):
        return ctx.supervise([aion.ChildSpec(server, "a"), aion.ChildSpec(server, "b")])

    engine = make_engine(sup, *ALL)
    handle = engine.start(sup, id="s")
    wait_until(lambda: len(statuses(engine, "s/sup-1/")) == 2)
    engine.cancel("s", "shutting down")
    with pytest.raises(aion.WorkflowCancelled):
        handle.result(10)
    assert statuses(engine, "s/sup-1/") == {"0": "cancelled", "1": "cancelled"}
    assert ended_order(engine.history("s")) == ["s/sup-1/1", "s/sup-1/0"]


def test_bad_supervisor_arguments_are_refused(make_engine):
    @aion.workflow
    def sup(ctx, case):
        kwargs = {"strategy": dict(strategy="one_for_some"), "intensity": dict(intensity=-1),
                  "period": dict(period=0)}.get(case, {})
        try:
            if case == "spec":
                ctx.supervise([flaky])
            elif case == "restart":
                aion.ChildSpec(flaky, restart="sometimes")
            else:
                ctx.supervise([aion.ChildSpec(flaky, "a", 0)], **kwargs)
        except (TypeError, ValueError) as exc:
            return str(exc)

    engine = make_engine(sup, *ALL)
    for case, text in [("strategy", "choose one of one_for_one"), ("intensity", "0 or more"),
                       ("period", "must be positive"), ("spec", "pass aion.ChildSpec"),
                       ("restart", "choose one of permanent")]:
        assert text in engine.start(sup, case, id=case).result(10)
        assert ev.CHILD_STARTED not in [e.type for e in engine.history(case)]


SCRIPT = Path(__file__).with_name("crash_supervisor.py")


def _supervise(db, *extra):
    return run_python([str(SCRIPT), "--db", str(db), "--id", "tree", *extra], timeout=90,
                      check=False, patched=PATCHED)


def _decisions(db):
    store = aion.SQLiteStore(str(db))
    try:
        history = store.read("tree")
    finally:
        store.close()
    return history, [(e.type, e.data.get("id") or e.data.get("index")) for e in history
                     if e.type in (ev.CHILD_STARTED, ev.CHILD_RESTARTED, ev.WORKFLOW_COMPLETED)]


@pytest.mark.parametrize("kill_at", ["ChildRestarted:2", "ChildStarted:5"])
def test_a_kill_mid_restart_replays_to_the_same_decisions(tmp_path, kill_at):
    """SIGKILL as the second restart decision is about to be recorded, or
    between a recorded decision and the start of the child it restarts:
    the resumed supervisor keeps what was recorded, takes the same
    decisions as an uncrashed control run, and ends with its result."""
    control = _supervise(tmp_path / "control.db")
    assert control.returncode == 0, control.stderr
    expected = json.loads(control.stdout.strip().splitlines()[-1])
    assert expected == {"result": ["a@2", "b@2", "c@2"], "patched": PATCHED}
    _, control_decisions = _decisions(tmp_path / "control.db")

    db = tmp_path / "crash.db"
    killed = _supervise(db, "--kill-at", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    at_kill, _ = _decisions(db)
    assert ev.WORKFLOW_COMPLETED not in [e.type for e in at_kill]
    resumed = _supervise(db)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == expected
    final, decisions = _decisions(db)
    assert final[:len(at_kill)] == at_kill, "recorded events were rewritten"
    assert decisions == control_decisions
