"""Child workflows: start, wait, failure, ids, timeouts around a child, the
end of a parent, repair of a missing child, and many parents at once."""
import json
import time
from datetime import timedelta

import gevent
import pytest
from conftest import SQLITE_ONLY, NativeGate, open_test_store, stop_with_runs_parked, wait_until

import aion_green as aion
from aion_green import store as store_module
from aion_green.core import events as ev
from aion_green.runtime import children as children_module


def types(history):
    return [e.type for e in history]


def double(x):
    return x * 2


@aion.workflow(name="test_children.doubler")
def doubler(ctx, x):
    return ctx.step(double, x)


@aion.workflow(name="test_children.broken")
def broken(ctx):
    raise ValueError("the child broke")


@aion.workflow(name="test_children.waiter")
def waiter(ctx):
    return ctx.receive("go")


def test_children_run_and_their_ends_are_recorded_in_the_parent(make_engine):
    @aion.workflow
    def parent(ctx, n):
        kids = [ctx.start_child(doubler, i) for i in range(n)]
        failing = ctx.start_child(broken)
        try:
            failing.result()
        except aion.WorkflowFailed as exc:
            failure = [exc.workflow_id, exc.error_type, exc.message]
        return {"kids": [k.result() for k in kids], "failure": failure,
                "ids": [k.workflow_id for k in kids]}

    engine = make_engine(parent, doubler, broken)
    result = engine.start(parent, 3, id="p").result(10)
    assert result == {"kids": [0, 2, 4], "failure": ["p/child-4", "ValueError", "the child broke"],
                      "ids": ["p/child-1", "p/child-2", "p/child-3"]}
    history = engine.history("p")
    started = [e for e in history if e.type == ev.CHILD_STARTED]
    assert [(e["child"], e["id"], e["workflow_type"], e["args"]) for e in started] == [
        (1, "p/child-1", "test_children.doubler", [0]), (2, "p/child-2", "test_children.doubler", [1]),
        (3, "p/child-3", "test_children.doubler", [2]), (4, "p/child-4", "test_children.broken", [])]
    ends = {e["id"]: e for e in history if e.type in (ev.CHILD_COMPLETED, ev.CHILD_FAILED)}
    assert len(ends) == 4 and types(history).count(ev.CHILD_COMPLETED) == 3
    assert ends["p/child-4"].type == ev.CHILD_FAILED and ends["p/child-4"]["status"] == "failed"
    for i in range(3):
        # The child's start is recorded in the parent before the child exists.
        child = engine.describe(f"p/child-{i + 1}")
        assert child.status == "completed" and child.result == 2 * i
        assert started[i].at <= child.created_at
        assert ends[f"p/child-{i + 1}"].seq > started[i].seq
    assert engine._epoch.child_tasks.armed_watch_count() == 0
    assert engine._epoch.child_tasks.armed_spawn_retry_count() == 0


def test_a_cancelled_child_raises_workflow_cancelled_in_the_parent(make_engine):
    @aion.workflow
    def parent(ctx):
        child = ctx.start_child(waiter, id="kid")
        try:
            child.result()
        except aion.WorkflowCancelled as exc:
            return ["cancelled", exc.workflow_id, exc.error.get("reason")]

    engine = make_engine(parent, waiter)
    handle = engine.start(parent, id="p")
    wait_until(lambda: ev.CHILD_STARTED in types(engine.history("p")))
    engine.cancel("kid", "not needed")
    assert handle.result(10) == ["cancelled", "kid", "not needed"]


def test_a_child_id_is_chosen_by_the_parent_and_a_clash_fails_the_child_only(make_engine):
    @aion.workflow
    def parent(ctx):
        mine = ctx.start_child(doubler, 21, id="the-kid")
        clash = ctx.start_child(doubler, 5, id="taken")
        try:
            clash.result()
        except aion.WorkflowFailed as exc:
            return [mine.result(), exc.error_type, exc.message]

    engine = make_engine(parent, doubler, waiter)
    engine.start(waiter, id="taken")
    result = engine.start(parent, id="p").result(10)
    assert result[:2] == [42, "WorkflowIdConflict"]
    assert "'taken' already names a run of test_children.waiter" in result[2]
    assert engine.describe("the-kid").result == 42
    assert engine.describe("taken").status == "running"  # the other run is untouched
    assert types(engine.history("taken")) == [ev.WORKFLOW_STARTED]


def test_bad_child_arguments_fail_before_anything_is_recorded(make_engine):
    @aion.workflow
    def parent(ctx, what):
        try:
            if what == "args":
                ctx.start_child(doubler, object())
            elif what == "id":
                ctx.start_child(doubler, 1, id="")
            else:
                ctx.start_child("no.such.workflow")
        except (aion.SerializationError, ValueError, aion.WorkflowNotRegistered) as exc:
            return type(exc).__name__

    engine = make_engine(parent, doubler)
    assert engine.start(parent, "args", id="a").result(10) == "SerializationError"
    assert engine.start(parent, "id", id="b").result(10) == "ValueError"
    assert engine.start(parent, "name", id="c").result(10) == "WorkflowNotRegistered"
    for wid in "abc":
        assert ev.CHILD_STARTED not in types(engine.history(wid))
    assert [r.workflow_id for r in engine.list()] == ["a", "b", "c"]


def test_a_deadline_around_child_result_leaves_the_child_running_unrecorded(make_engine):
    """The block's deadline wins: Timeout at the ``with``, the child keeps
    running, and its end, when it comes, is not recorded in the parent while
    the parent waits on something else; asking for the result again watches
    the child anew and gets it."""
    @aion.workflow
    def parent(ctx):
        child = ctx.start_child(waiter, id="slow-kid")
        try:
            with ctx.timeout(timedelta(milliseconds=50)):
                child.result()
        except aion.Timeout:
            outcome = "timed out"
        ctx.receive("continue")
        return [outcome, child.result()]

    engine = make_engine(parent, waiter)
    handle = engine.start(parent, id="p")
    wait_until(lambda: ev.TIMER_FIRED in types(engine.history("p")))
    wait_until(lambda: engine._epoch.child_tasks.armed_watch_count() == 0, what="the watcher disarmed")
    engine.signal("slow-kid", "go", "child done")
    engine.result("slow-kid", timeout=10)
    time.sleep(0.1)
    assert ev.CHILD_COMPLETED not in types(engine.history("p"))
    assert engine.describe("slow-kid").status == "completed"
    engine.signal("p", "continue")
    assert handle.result(10) == ["timed out", "child done"]
    history = engine.history("p")
    assert types(history).count(ev.CHILD_COMPLETED) == 1
    fired = next(e for e in history if e.type == ev.TIMER_FIRED)
    assert next(e for e in history if e.type == ev.CHILD_COMPLETED).seq > fired.seq


def test_a_parent_that_ends_first_is_never_written_by_its_children(make_engine):
    @aion.workflow
    def parent(ctx):
        ctx.start_child(waiter, id="orphan")
        return "parent done"

    engine = make_engine(parent, waiter)
    assert engine.start(parent, id="p").result(10) == "parent done"
    assert engine._epoch.child_tasks.armed_watch_count() == 0
    at_end = engine.history("p")
    engine.signal("orphan", "go", 1)
    assert engine.result("orphan", timeout=10) == 1
    time.sleep(0.1)
    assert engine.history("p") == at_end
    assert types(at_end)[-1] == ev.WORKFLOW_COMPLETED


def test_sixteen_parents_parked_on_children_all_resolve(make_engine):
    @aion.workflow
    def parent(ctx, n):
        return ctx.start_child(waiter, id=f"kid-{n}").result() + n

    engine = make_engine(parent, waiter)
    handles = [engine.start(parent, n, id=f"p-{n}") for n in range(16)]
    wait_until(lambda: engine._epoch.child_tasks.armed_watch_count() == 16, what="16 watchers")
    for n in range(16):
        engine.signal(f"kid-{n}", "go", 100 * n)
    assert [h.result(10) for h in handles] == [101 * n for n in range(16)]
    assert engine._epoch.child_tasks.armed_watch_count() == 0


def test_a_parent_and_child_parked_across_a_restart_finish_once(make_engine, db_url):
    gate = NativeGate()
    calls = []

    def held(x):
        calls.append(x)
        gate.wait(10)
        return x + 1

    @aion.workflow(name="test_children.held_kid")
    def held_kid(ctx, x):
        return ctx.step(held, x)

    @aion.workflow(name="test_children.held_parent")
    def held_parent(ctx):
        return {"kid": ctx.start_child(held_kid, 1).result(), "now": ctx.now().isoformat()}

    first = make_engine(held_parent, held_kid)
    first.start(held_parent, id="p")
    wait_until(lambda: calls == [1], what="the child's step to start")
    stop_with_runs_parked(first, ["p"], gate)
    second = make_engine(held_parent, held_kid)
    result = second.result("p", timeout=10)
    assert result["kid"] == 2
    history = second.history("p")
    assert types(history).count(ev.CHILD_STARTED) == 1
    assert types(history).count(ev.CHILD_COMPLETED) == 1
    assert [r.workflow_id for r in second.list()] == ["p", "p/child-1"]


def test_the_sweep_creates_a_recorded_but_missing_child_once(make_engine, tmp_path, db_url):
    """A parent whose ChildStarted is durable but whose child was never
    created (a crash in between): starting an engine creates the child, once."""
    @aion.workflow(name="test_children.repaired_parent")
    def repaired_parent(ctx):
        return ctx.start_child(doubler, 4).result()

    store = open_test_store(db_url)
    created, _ = store.create_run("p", "test_children.repaired_parent", "[]", "r1", time.time())
    assert created
    store.write_batch([store_module.Append("p", 1, [ev.NewEvent(ev.CHILD_STARTED, time.time(), {
        "child": 1, "id": "p/child-1", "workflow_type": "test_children.doubler", "args": [4]})])])
    assert types(store.read("p")) == [ev.WORKFLOW_STARTED, ev.CHILD_STARTED]
    assert store.get_run("p/child-1") is None
    store.close()

    engine = make_engine(repaired_parent, doubler)
    assert engine.result("p", timeout=10) == 8
    assert [r.workflow_id for r in engine.list()] == ["p", "p/child-1"]
    assert types(engine.history("p/child-1")).count(ev.WORKFLOW_STARTED) == 1


@SQLITE_ONLY
def test_child_creation_is_retried_while_the_store_refuses(make_engine, monkeypatch):
    """The spawn-recovery task retries with backoff: the first three
    attempts to create the child fail as if the database were locked."""
    refusals = []
    original = store_module.SQLiteStore.write_batch

    def flaky(self, ops):
        if any(isinstance(op, store_module.CreateRun) and op.workflow_id == "p/child-1"
               for op in ops) and len(refusals) < 3:
            refusals.append(time.monotonic())
            raise aion.StoreUnavailable("database is locked (injected)")
        return original(self, ops)

    monkeypatch.setattr(store_module.SQLiteStore, "write_batch", flaky)

    @aion.workflow
    def parent(ctx):
        return ctx.start_child(doubler, 5).result()

    engine = make_engine(parent, doubler)
    assert engine.start(parent, id="p").result(10) == 10
    assert len(refusals) == 3
    assert refusals[2] - refusals[1] >= refusals[1] - refusals[0] > 0  # backoff grows
    assert types(engine.history("p")).count(ev.CHILD_STARTED) == 1


def test_a_lost_doorbell_falls_back_to_polling(make_engine, monkeypatch):
    """The child's end reaches the watcher even when the wake from the
    child's run is lost: the watcher re-reads the child's status."""
    monkeypatch.setattr(children_module, "_WATCH_POLL", 0.05)

    @aion.workflow
    def parent(ctx):
        return ctx.start_child(doubler, 3, id="kid").result()

    engine = make_engine(parent, doubler)
    lost = []
    engine._ensure_started()
    original = engine._epoch.runner.complete_waiters

    def lossy(wid, info):
        if wid == "kid" and not lost:
            lost.append(wid in engine._epoch.child_tasks.parked_watch_children())
            engine._epoch.recently_finished[wid] = info  # the end is known; its doorbell is lost
            return
        original(wid, info)

    monkeypatch.setattr(engine._epoch.runner, "complete_waiters", lossy)
    assert engine.start(parent, id="p").result(10) == 6
    assert lost == [True], "the watch was not parked when the child ended"


def test_a_child_parked_out_of_memory_is_not_read_at_every_poll(make_engine, monkeypatch):
    """A watch whose child this engine drives learns of the child's end by
    the end of its run here, and never reads the child's status. Its
    watcher read it at every poll once the child was evicted: with 2,000
    parents and children parked out of memory, an idle engine spent 9 % of
    a core on those reads."""
    monkeypatch.setattr(children_module, "_WATCH_POLL", 0.02)

    @aion.workflow
    def parent(ctx):
        return ctx.start_child(waiter, id="kid").result()

    engine = make_engine(parent, waiter, evict_after=0.1)
    handle = engine.start(parent, id="p")
    wait_until(lambda: engine.evictions >= 2, 30, what="the parent and its child to be evicted")
    store = engine._epoch.reader.store
    reads = []
    get_run = store.get_run

    def counted(wid, *args, **kwargs):
        if wid == "kid":
            reads.append(time.monotonic())
        return get_run(wid, *args, **kwargs)

    monkeypatch.setattr(store, "get_run", counted)
    time.sleep(1.2)  # 60 polls
    assert len(reads) <= 1, len(reads)
    engine.signal("kid", "go", 5)  # the child is brought back, ends, and rings
    assert handle.result(30) == 5


def test_the_poller_lets_the_hub_turn_while_it_looks_through_many_parked_watches(
        make_engine, monkeypatch):
    """Every poll looks through all parked watches for the children no run
    here will ring for. In one go that held the hub: with 200,000 parents
    parked on children, ~30 ms every 5 s, and a 10 ms timer of any other
    run fired that late. It goes in slices, and the hub's loop (its timers
    and I/O, not only its callbacks) turns between them: a timer ticking on
    the hub advances while one look is under way (it never did before)."""
    monkeypatch.setattr(children_module, "_WATCH_POLL", 0.05)
    monkeypatch.setattr(children_module, "_SCAN_SLICE", 64)
    engine = make_engine()
    engine._ensure_started()
    epoch = engine._epoch
    ticks = [0]
    looks = []  # per look: the ticks seen while it went through the watches

    def ticker():
        while True:
            gevent.sleep(0.0001)
            ticks[0] += 1

    def evicted(wid):  # every watched child is this engine's, out of memory: never read
        looks[-1].add(ticks[0])
        return True

    listing = epoch.child_tasks.parked_watch_children

    def listed():
        looks.append(set())
        return listing()

    monkeypatch.setattr(epoch.residency, "absent_here", evicted)
    monkeypatch.setattr(epoch.child_tasks, "parked_watch_children", listed)

    def park():
        for i in range(20_000):
            assert epoch.child_tasks._park_here((f"p{i}", "run"), f"c{i}")
        epoch.hub.spawn(ticker, name="test-ticker")
        epoch.children._poll_now()

    try:
        epoch.hub.submit(park).result(10)
        wait_until(lambda: len(looks) >= 3, 30, what="two looks through the parked watches")
        assert len(looks[1]) >= 20, f"the hub's timers ran {len(looks[1]) - 1} times during a look"
    finally:
        def unpark():
            epoch.child_tasks._parked.clear()
            epoch.child_tasks._parked_of.clear()
            epoch.child_tasks._parked_count = 0
        epoch.hub.submit(unpark).result(10)


@pytest.mark.parametrize("replays", [1, 3])
def test_replay_of_a_parent_creates_no_second_child(make_engine, replays):
    gate = NativeGate()

    def hold():
        gate.wait(10)
        return "held"

    @aion.workflow(name="test_children.replayed_parent")
    def replayed_parent(ctx):
        first = ctx.start_child(doubler, 1).result()
        ctx.step(hold)
        return first

    for _ in range(replays):
        engine = make_engine(replayed_parent, doubler)
        engine.start(replayed_parent, id="p")
        wait_until(lambda e=engine: ev.CHILD_COMPLETED in types(e.history("p")))
        engine.shutdown()
    gate.set()
    engine = make_engine(replayed_parent, doubler)
    assert engine.result("p", timeout=10) == 2
    assert [r.workflow_id for r in engine.list()] == ["p", "p/child-1"]
    assert types(engine.history("p")).count(ev.CHILD_COMPLETED) == 1
    assert json.loads(json.dumps(engine.describe("p/child-1").result)) == 2


def test_a_childs_end_is_recorded_once_however_often_it_is_reported(make_engine):
    """Duplicates are suppressed: a second report of the same child's end
    (a re-armed watcher, a repair racing a watcher) records nothing."""
    @aion.workflow
    def parent(ctx):
        kid = ctx.start_child(doubler, 2, id="kid")
        first = kid.result()
        ctx.receive("finish")
        return [first, kid.result()]

    engine = make_engine(parent, doubler)
    handle = engine.start(parent, id="p")
    wait_until(lambda: ev.CHILD_COMPLETED in types(engine.history("p")))
    run_id = engine.describe("p").run_id
    for result in (4, 99):  # the second carries another result: it must not land
        epoch = engine._epoch
        epoch.hub.submit(epoch.children._record_child_end, ("p", run_id), "kid",
                         ev.CHILD_COMPLETED, {"id": "kid", "result": result}).result(5)
    engine.signal("p", "finish")
    assert handle.result(10) == [4, 4]
    assert types(engine.history("p")).count(ev.CHILD_COMPLETED) == 1
