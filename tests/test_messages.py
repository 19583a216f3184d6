"""Messages: recorded in the target's history before delivery, kept until
received, each delivered exactly once, in order, across crashes."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from conftest import PATCHED, ROOT, open_test_store, run_python, wait_until
from freezegun import freeze_time

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import SQLiteStore


def types(history):
    return [e.type for e in history]


@aion.workflow(name="tests.inbox")
def inbox(ctx, n):
    return [ctx.receive("item") for _ in range(n)]


def test_messages_before_and_during_receive_arrive_once_each_in_order(make_engine):
    engine = make_engine(inbox)
    handle = engine.start(inbox, 4, id="box")
    engine.signal("box", "item", {"n": 1})          # likely before the first receive
    engine.signal("box", "item", "same")
    wait_until(lambda: sum(e.type == ev.MESSAGE_RECEIVED for e in engine.history("box")) == 2)
    time.sleep(0.05)                                 # the workflow now waits in receive
    engine.signal("box", "item", "same")             # the same payload twice: two messages
    engine.signal("box", "item", [4])
    assert handle.result(10) == [{"n": 1}, "same", "same", [4]]
    received = [e for e in engine.history("box") if e.type == ev.MESSAGE_RECEIVED]
    assert [(e["index"], e["payload"]) for e in received] == [
        (0, {"n": 1}), (1, "same"), (2, "same"), (3, [4])]


def test_signalling_a_finished_run_is_refused_and_records_nothing(make_engine):
    engine = make_engine(inbox)
    engine.start(inbox, 0, id="done").result(10)
    before = engine.history("done")
    with pytest.raises(aion.WorkflowNotRunning, match="has completed.*nothing was recorded"):
        engine.signal("done", "item", 1)
    assert engine.history("done") == before
    with pytest.raises(aion.WorkflowNotFound):
        engine.signal("nobody", "item", 1)
    with pytest.raises(aion.SerializationError):
        engine.signal("done", "item", object())


def test_a_repeated_signal_with_an_idempotency_key_is_recorded_once(make_engine):
    engine = make_engine(inbox)
    handle = engine.start(inbox, 2, id="idem")
    first = engine.signal("idem", "item", "a", idempotency_key="k1")
    again = engine.signal("idem", "item", "a", idempotency_key="k1")
    assert first == again
    engine.signal("idem", "item", "b")
    assert handle.result(10) == ["a", "b"]


def test_a_keyed_signal_repeated_after_it_ended_the_run_answers_its_seq(make_engine, db_url):
    """A retry after a lost reply: the first signal was recorded and ended
    the run, so the retry finds the run finished. It answers the recorded
    seq (from the driving engine and from a client), recording nothing;
    another key is refused."""
    engine = make_engine(inbox)
    handle = engine.start(inbox, 1, id="once")
    seq = engine.signal("once", "item", "a", idempotency_key="k1")
    assert handle.result(10) == ["a"]
    before = engine.history("once")
    assert engine.signal("once", "item", "a", idempotency_key="k1") == seq
    client = make_engine(inbox, url=db_url)
    assert client.signal("once", "item", "a", idempotency_key="k1") == seq
    for other in (engine, client):
        with pytest.raises(aion.WorkflowNotRunning, match="nothing was recorded"):
            other.signal("once", "item", "a", idempotency_key="k2")
        with pytest.raises(aion.WorkflowNotRunning):
            other.signal("once", "item", "a")
    assert engine.history("once") == before


def test_receive_timeout_and_a_late_message_kept_for_the_next_receive(make_engine):
    @aion.workflow
    def patient(ctx):
        try:
            ctx.receive("approval", timeout=timedelta(days=2))
            first = "approved"
        except aion.Timeout:
            first = "timed out"
        return [first, ctx.receive("approval")]

    engine = make_engine(patient)
    with freeze_time("2032-05-01") as clock:
        handle = engine.start(patient, id="patient")
        wait_until(lambda: ev.TIMER_STARTED in types(engine.history("patient")))
        clock.tick(timedelta(days=2, seconds=1))
        engine.poke()
        wait_until(lambda: ev.TIMER_FIRED in types(engine.history("patient")))
        engine.signal("patient", "approval", {"ok": True})
        assert handle.result(10) == ["timed out", {"ok": True}]


def test_a_message_that_wins_cancels_the_receive_timer(make_engine):
    @aion.workflow
    def quick(ctx):
        return ctx.receive("go", timeout=60)

    engine = make_engine(quick)
    handle = engine.start(quick, id="quick")
    wait_until(lambda: ev.TIMER_STARTED in types(engine.history("quick")))
    engine.signal("quick", "go", 7)
    assert handle.result(10) == 7
    assert types(engine.history("quick"))[-3:] == [ev.MESSAGE_RECEIVED, ev.TIMER_CANCELLED,
                                                   ev.WORKFLOW_COMPLETED]
    store = open_test_store(engine.url)
    assert store.due_timers(time.time() + 3600) == []
    store.close()


def test_workflows_send_each_other_messages_exactly_once(make_engine):
    @aion.workflow(name="tests.pinger")
    def pinger(ctx, target):
        for i in range(3):
            ctx.send(target, "item", i)
        return "sent"

    engine = make_engine(pinger, inbox)
    box = engine.start(inbox, 3, id="pings")
    assert engine.start(pinger, "pings", id="pinger").result(10) == "sent"
    assert box.result(10) == [0, 1, 2]
    sent = [e for e in engine.history("pinger") if e.type == ev.MESSAGE_SENT]
    assert [(e["to"], e["payload"]) for e in sent] == [("pings", 0), ("pings", 1), ("pings", 2)]


CHILD = r'''
import os, sys, json
if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey; monkey.patch_all()
import aion_green as aion

@aion.workflow(name="tests.crash_inbox")
def inbox(ctx):
    got = [ctx.receive("item") for _ in range(3)]
    return {"got": got, "r": ctx.random()}

with aion.Engine("sqlite:///" + os.environ["DB"], workflows=[inbox]) as engine:
    mode = sys.argv[1]
    if mode == "start":
        engine.start(inbox, id="inbox")
        engine.signal("inbox", "item", "before crash")
        print("ready", flush=True)
        import time; time.sleep(60)
    else:
        engine.signal("inbox", "item", "after crash")
        engine.signal("inbox", "item", "after crash")
        print(json.dumps(engine.result("inbox", timeout=30)), flush=True)
'''


def test_messages_across_a_crash_are_delivered_exactly_once_in_order(tmp_path):
    """Failure window: the process dies (SIGKILL) while the workflow waits
    in its second receive, after one message was recorded and received. A
    new process signals twice more: the run ends with the three messages,
    each once, in order."""
    db = tmp_path / "m.db"
    env = dict(os.environ, DB=str(db), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if PATCHED:
        env["AION_GEVENT_PATCH"] = "1"
    child = subprocess.Popen([sys.executable, "-c", CHILD, "start"], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    resumed = run_python(["-c", CHILD, "resume"], env_extra={"DB": str(db)}, patched=PATCHED)
    result = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert result["got"] == ["before crash", "after crash", "after crash"]
    store = SQLiteStore(str(db))
    history = store.read("inbox")
    store.close()
    received = [(e["index"], e["payload"]) for e in history if e.type == ev.MESSAGE_RECEIVED]
    assert received == [(0, "before crash"), (1, "after crash"), (2, "after crash")]
    assert [e.seq for e in history] == list(range(1, len(history) + 1))


RACE_CHILD = r'''
import os, sys, json, signal
if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey; monkey.patch_all()
import aion_green as aion

def die_once():
    marker = os.environ["MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"

@aion.workflow(name="tests.race")
def race(ctx):
    try:
        with ctx.timeout(float(os.environ["DEADLINE"])):
            branch = ["message", ctx.receive("reply")]
    except aion.Timeout:
        branch = ["timeout", None]
    return branch + [ctx.step(die_once)]

with aion.Engine("sqlite:///" + os.environ["DB"], workflows=[race]) as engine:
    handle = engine.start(race, id="race")
    if os.environ.get("SEND"):
        engine.signal("race", "reply", "in time")
    print(json.dumps(handle.result(30)), flush=True)
'''


@pytest.mark.parametrize("send, expected", [(True, ["message", "in time"]), (False, ["timeout", None])])
def test_timeout_against_completion_takes_the_same_branch_after_a_kill(tmp_path, send, expected):
    """Failure window: the race between a block's deadline and a message has
    been decided and recorded, then the process dies (SIGKILL in the next
    step). The resumed process replays the same branch, whichever won."""
    db, marker = tmp_path / "race.db", tmp_path / "marker"
    env = {"DB": str(db), "MARKER": str(marker), "DEADLINE": "0.5" if send else "0.1"}
    if send:
        env["SEND"] = "1"
    first = run_python(["-c", RACE_CHILD], env_extra=env, patched=PATCHED, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr
    store = SQLiteStore(str(db))
    recorded = types(store.read("race"))
    store.close()
    assert (ev.MESSAGE_RECEIVED if send else ev.TIMER_FIRED) in recorded
    env.pop("SEND", None)  # the resumed process only resumes
    env["DEADLINE"] = "30"  # and a changed deadline must not matter: the record decides
    second = run_python(["-c", RACE_CHILD], env_extra=env, patched=PATCHED)
    assert json.loads(second.stdout.strip().splitlines()[-1]) == expected + ["survived"]


def test_signals_right_after_start_are_never_lost(make_engine):
    """Failure window: a signal recorded after start() returned but before
    the new run's greenlet built its in-memory history. Many runs, each
    signalled at once, so the window is hit whatever the scheduling."""
    engine = make_engine(inbox)
    handles = []
    for i in range(100):
        handles.append(engine.start(inbox, 2, id=f"early-{i}"))
        engine.signal(f"early-{i}", "item", i)
        engine.signal(f"early-{i}", "item", -i)
    assert [h.result(20) for h in handles] == [[i, -i] for i in range(100)]
