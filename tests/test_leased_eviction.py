"""Memory without a knob where runs are leased (PostgreSQL, SQLite with
?leases=on): an idle run leaves memory as over a SQLite driver
(``evict_after``), but stays this engine's. Its lease is renewed with the
others, so no other engine claims it; what it waits for reaches it from any
engine (a signal goes through its owner's inbox, which brings it back); a
lease taken from it while it was out makes this engine forget it; at
shutdown its lease is given back with the others; ``max_resident`` counts it
among the runs held."""
import time

import pytest
from conftest import wait_until
from test_postgres_engines import _execute, _query, _store
from test_residency import _clear_effects, _effects, child, effect, listener  # noqa: F401

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import PARKED_LEASE, Append


@aion.workflow(name="tests.leased_evict_parent")
def parent(ctx, n):
    ctx.step(effect, f"{n}:parent")
    return ctx.start_child(child, n).result() + 1


def _out(engine):
    return engine._epoch.residency.out_of_memory()


def _park(engine, ids):
    """Start a listener for each id (its number: its place in ``ids``) and
    wait until every run this engine holds is out of memory."""
    for n, wid in enumerate(ids):
        engine.start(listener, n, id=wid)
    wait_until(lambda: _out(engine) == len(ids) and not engine._epoch.runs, timeout=15,
               what="the listeners to leave memory")


def _go(engine, ids, value):
    """Signal each listener ``value``; their results, in order."""
    for wid in ids:
        engine.signal(wid, "go", value)
    return [engine.result(wid, timeout=30) for wid in ids]


def test_evicted_runs_keep_their_leases_and_a_signal_from_another_engine_wakes_them(shared_url):
    first = aion.Engine(shared_url, workflows=[listener], evict_after=0.3, lease=1.0)
    second = None
    store = _store(shared_url)
    try:
        ids = [f"l-{n}" for n in range(10)]
        _park(first, ids)
        second = aion.Engine(shared_url, workflows=[listener], lease=1.0)
        assert second.driving
        time.sleep(2.5)  # two and a half leases: each renewed by its owner, out of memory
        now = time.time()
        for n in range(10):
            owner, until = store.lease_of(f"l-{n}")
            assert owner == first.engine_id and until > now, (n, owner, until - now)
        assert len(second._epoch.runs) == 0 and len(first._epoch.runs) == 0
        assert _go(second, ids, "x") == [f"{n}:x" for n in range(10)]
        assert sorted(_effects) == sorted([f"{n}:ready" for n in range(10)]
                                          + [f"{n}:x" for n in range(10)])
        assert first.evictions >= 10
    finally:
        if second is not None:
            second.shutdown()
        first.shutdown()
        store.close()


def test_a_query_and_a_signal_from_its_own_engine_reach_an_evicted_run(shared_url):
    with aion.Engine(shared_url, workflows=[listener], evict_after=0.3) as engine:
        _park(engine, ["own"])
        assert engine.query("own", "n", timeout=10) == 0
        assert _go(engine, ["own"], "y") == ["0:y"]
        assert _effects == ["0:ready", "0:y"]


def test_an_evicted_parent_is_woken_by_its_childs_end(shared_url):
    with aion.Engine(shared_url, workflows=[parent, child], evict_after=0.1) as engine:
        handle = engine.start(parent, 4, id="p")
        wait_until(lambda: engine.evictions >= 1, timeout=15, what="the parent to leave memory")
        assert handle.result(timeout=30) == 41
        assert _effects == ["4:parent"]


def test_at_shutdown_the_leases_of_evicted_runs_are_given_back(shared_url):
    """Released, not left to run out (10 s): the next engine drives them at once."""
    first = aion.Engine(shared_url, workflows=[listener], evict_after=0.3)
    ids = [f"s-{n}" for n in range(5)]
    _park(first, ids)
    first.shutdown()
    store = _store(shared_url)
    try:
        assert all(store.lease_of(wid) is None for wid in ids)
    finally:
        store.close()
    with aion.Engine(shared_url, workflows=[listener], evict_after=None) as second:
        began = time.monotonic()
        wait_until(lambda: len(second._epoch.runs) == 5, timeout=10,
                   what="the next engine to claim the released runs")
        assert time.monotonic() - began < 5
        assert _go(second, ids, "z") == [f"{n}:z" for n in range(5)]
    assert sorted(_effects) == sorted([f"{n}:ready" for n in range(5)]
                                      + [f"{n}:z" for n in range(5)])


def _parked(store, ids):
    """Whether the leases of ``ids`` are parked (store.PARKED_LEASE)."""
    rows = _query(store, "SELECT workflow_id, lease_until FROM aion_runs "
                         "WHERE workflow_id IN (%s)" % ", ".join(f"'{wid}'" for wid in ids))
    return len(rows) == len(ids) and all(until >= PARKED_LEASE for _, until in rows)


def test_an_evicted_run_whose_lease_was_taken_is_forgotten_when_woken(shared_url):
    """Another engine took the lease while the run was out of memory (this
    one was paused past its entry among the engines, say). A parked lease is
    not renewed, so this engine finds out when the run wakes: it checks the
    lease before it reads the history, forgets the run, and the signal that
    woke it goes to the new owner's inbox; nothing is appended here."""
    engine = aion.Engine(shared_url, workflows=[listener], evict_after=0.3, lease=1.0)
    store = _store(shared_url)
    try:
        _park(engine, ["taken", "kept"])
        wait_until(lambda: _parked(store, ["taken", "kept"]), timeout=10,
                   what="the heartbeat to park the leases")
        head = len(store.read("taken"))
        _execute(store, "UPDATE aion_runs SET owner = 'someone-else', lease_until = 1e12, "
                        "fence = fence + 100 WHERE workflow_id = 'taken'")
        engine.signal("taken", "go", "late")  # recorded for its new owner
        wait_until(lambda: not engine._epoch.residency.absent_here("taken")
                   and "taken" not in engine._epoch.runs, timeout=10,
                   what="the taken run to be forgotten")
        assert engine._epoch.residency.absent_here("kept")
        assert len(store.read("taken")) == head, "an engine without the lease appended"
        assert [(wid, kind) for _, wid, kind, _, _ in store.read_inbox()] == [("taken", "message")]
        assert store.lease_of("taken")[0] == "someone-else"
        assert store.lease_of("kept")[0] == engine.engine_id
    finally:
        engine.shutdown()
        store.close()


def test_a_run_back_from_eviction_reads_its_lease_and_takes_back_one_that_ran_out(shared_url):
    """The check a run makes when it comes back from eviction
    (``Leases.read_if_held``): a lease of this engine that holds (parked
    under the engine's entry) is only read, no commit of its own per wake
    (the next heartbeat renews it with the runs in memory); one still this
    engine's that ran out (freed after a pause
    past the entry's end, not claimed by another yet) is renewed; one that
    another engine holds answers None. The run's type is not registered
    here, so no claim pass or heartbeat of this engine touches it."""
    engine = aion.Engine(shared_url, workflows=[listener], evict_after=None, lease=30.0)
    store = _store(shared_url)
    engine.list(limit=1)  # (the engine opens on first use)
    epoch = engine._epoch

    def check():  # (what _drive calls, on the hub)
        return epoch.hub.submit(epoch.leases.read_if_held, "out").result(timeout=10)

    def lease_until():
        return _query(store, "SELECT lease_until FROM aion_runs WHERE workflow_id = 'out'")[0][0]

    try:
        store.create_run("out", "tests.not_here", "[]", "r1", time.time())
        _execute(store, f"UPDATE aion_runs SET owner = '{engine.engine_id}', "
                        f"lease_until = {PARKED_LEASE} WHERE workflow_id = 'out'")
        history = check()
        assert [e.type for e in history] == ["WorkflowStarted"]
        assert lease_until() >= PARKED_LEASE, "a held lease was written at the wake"

        _execute(store, "UPDATE aion_runs SET lease_until = 0 WHERE workflow_id = 'out'")
        before = time.time()
        assert [e.type for e in check()] == ["WorkflowStarted"]
        assert before + 20 < lease_until() < PARKED_LEASE, "a lapsed lease of ours was not taken back"

        _execute(store, "UPDATE aion_runs SET owner = 'someone-else', lease_until = 0 "
                        "WHERE workflow_id = 'out'")
        assert check() is None
        assert store.lease_of("out") == ("someone-else", 0)
    finally:
        engine.shutdown()
        store.close()


def test_runs_back_from_eviction_together_are_read_together_each_with_its_own_history(
        shared_url):
    """Runs woken at once (a wave of timers due) wait for one read of their
    leases and histories (one statement for the group, not a round trip
    each); each gets its own history, a run another engine holds gets None,
    and one woken twice gets its history twice."""
    import gevent

    engine = aion.Engine(shared_url, workflows=[listener], evict_after=None, lease=30.0)
    store = _store(shared_url)
    engine.list(limit=1)  # (the engine opens on first use)
    epoch, leases = engine._epoch, engine._epoch.leases
    groups = []
    read_now = leases._reads._read_now  # (runtime/batched_reads.py)
    leases._reads._read_now = lambda ids: (groups.append(list(ids)), read_now(ids))[1]
    try:
        ids = [f"w{k}" for k in range(6)]
        for k, wid in enumerate(ids):  # (a type not registered here: nothing else reads them)
            store.create_run(wid, "tests.not_here", "[]", f"r{k}", time.time())
            if k:
                store.write_batch([Append(wid, 1, [ev.NewEvent(ev.STEP_COMPLETED, time.time(),
                                                               {"step": "s", "result": k})] * k)])
        _execute(store, f"UPDATE aion_runs SET owner = '{engine.engine_id}', "
                        f"lease_until = {PARKED_LEASE} WHERE workflow_id <> 'w5'")
        _execute(store, "UPDATE aion_runs SET owner = 'someone-else', lease_until = 1e12 "
                        "WHERE workflow_id = 'w5'")

        def wake_all():  # (on the hub, as _drive calls it)
            readers = [gevent.spawn(leases.read_if_held, wid) for wid in [*ids, "w2"]]
            gevent.joinall(readers, raise_error=True)
            return [reader.value for reader in readers]

        got = epoch.hub.submit(wake_all).result(timeout=10)
        assert groups == [ids], "the runs woken together were not read in one group"
        for k, history in enumerate(got[:5]):
            assert [e.seq for e in history] == list(range(1, k + 2))
            assert all(e.data["result"] == k for e in history[1:])
        assert got[5] is None  # another engine's
        assert got[6] == got[2] and got[6] is not got[2]
        assert not leases._reads._waiting and not leases._reads._reading
    finally:
        engine.shutdown()
        store.close()


_PARKED_ENGINE = """
import sys, time
import aion_green as aion

@aion.workflow(name="tests.leased_parked")
def parked(ctx, n):
    return f"{n}:" + ctx.receive("go")

engine = aion.Engine(sys.argv[1], workflows=[parked], evict_after=0.2, lease=1.0)
for n in range(6):
    engine.start(parked, n, id=f"k-{n}")
print("started", engine.engine_id, flush=True)
time.sleep(600)
"""


@aion.workflow(name="tests.leased_parked")
def parked(ctx, n):
    return f"{n}:" + ctx.receive("go")


def test_parked_leases_hold_while_their_engine_lives_and_are_taken_over_once_it_is_killed(
        shared_url):
    """An engine's runs out of memory cost no renewal each (their leases are
    parked under the engine's own entry), and hold while it lives: another
    engine claims none in 2.5 leases. SIGKILLed, its entry runs out: the
    other engine claims them within about a lease and they go on there."""
    import subprocess
    import sys

    from crash_campaign import worker_env

    ids = [f"k-{n}" for n in range(6)]
    store = _store(shared_url)
    proc = subprocess.Popen([sys.executable, "-c", _PARKED_ENGINE, shared_url],
                            env=worker_env(False), stdout=subprocess.PIPE, text=True)
    second = None
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["started"], f"the engine process did not start: {line}"
        first_id = line[1]
        wait_until(lambda: _parked(store, ids), timeout=15, what="the leases to be parked")
        second = aion.Engine(shared_url, workflows=[parked], lease=1.0)
        assert second.driving
        time.sleep(2.5)
        now = time.time()
        for wid in ids:
            owner, until = store.lease_of(wid)  # a parked lease holds as long as its engine
            assert owner == first_id and now < until < now + 2, (wid, owner, until - now)
        assert _parked(store, ids), "a parked lease was renewed one by one"
        assert len(second._epoch.runs) == 0
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        wait_until(lambda: all(store.lease_of(wid)[0] == second.engine_id for wid in ids),
                   timeout=15, what="the other engine to take the killed one's parked runs")
        taken_after = time.monotonic() - killed
        assert taken_after < 4.0, taken_after  # its entry's lease (1 s), a heartbeat, a claim
        assert _go(second, ids, "on") == [f"{n}:on" for n in range(6)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if second is not None:
            second.shutdown()
        store.close()


def test_a_run_claimed_back_by_its_own_engine_and_then_evicted_keeps_the_new_fence(shared_url):
    """Its lease ran out while it was in memory (a paused process) and this
    engine's claim took it back under a new fence; then it left memory. Woken
    by a signal, it writes under the new fence: it goes on, nothing dropped
    (CI found it woken under the fence it was first driven with, fenced out
    by its own engine's claim)."""
    store = _store(shared_url)
    engine = aion.Engine(shared_url, workflows=[listener], evict_after=2.0, lease=30.0)
    try:
        engine.start(listener, 0, id="back")
        old = store.get_run("back").fence
        _execute(store, "UPDATE aion_runs SET lease_until = 0 WHERE workflow_id = 'back'")
        wait_until(lambda: store.get_run("back").fence > old, timeout=5,
                   what="the engine to claim its own run back")
        # Claimed back while still in memory (eviction comes 2 s after it parked).
        assert "back" in engine._epoch.runs and not engine._epoch.residency.absent_here("back")
        wait_until(lambda: _out(engine) == 1, timeout=10, what="the run to leave memory")
        assert _go(engine, ["back"], "w") == ["0:w"]
        assert engine.metrics.leases.lost == 0
        assert _effects == ["0:ready", "0:w"]
    finally:
        engine.shutdown()
        store.close()


def test_max_resident_counts_evicted_runs_among_those_held(shared_url):
    """A cap of 3: three runs held here, in memory or not; the rest are left
    for other engines, and claimed by one."""
    first = aion.Engine(shared_url, workflows=[listener], evict_after=0.2, max_resident=3)
    second = None
    store = _store(shared_url)
    try:
        ids = [f"c-{n}" for n in range(6)]
        _park(first, ids[:3])
        for n in range(3, 6):
            first.start(listener, n, id=f"c-{n}")
        time.sleep(1.0)  # (its claim loop comes round: it has no room)
        owners = [(store.lease_of(f"c-{n}") or (None,))[0] for n in range(6)]
        assert owners[:3] == [first.engine_id] * 3 and owners[3:] == [None] * 3, owners
        second = aion.Engine(shared_url, workflows=[listener])
        assert second.driving
        wait_until(lambda: len(second._epoch.runs) == 3, timeout=10,
                   what="the other engine to claim the runs left over")
        assert _go(second, ids, "w") == [f"{n}:w" for n in range(6)]
    finally:
        if second is not None:
            second.shutdown()
        first.shutdown()
        store.close()


@pytest.mark.parametrize("sender", ["own", "other"])
def test_cancel_terminate_and_pause_reach_evicted_runs(shared_url, sender):
    """From the engine that holds them and from another one: a cancel ends
    a run out of memory as cancelled, a terminate as terminated, and a
    pause then an unpause are recorded in order and the run goes on."""
    first = aion.Engine(shared_url, workflows=[listener], evict_after=0.3)
    other = None
    try:
        _park(first, ["cancel", "term", "pause"])
        if sender == "other":
            other = aion.Engine(shared_url, workflows=[listener])
        engine = other or first
        engine.cancel("cancel", "no more")
        engine.terminate("term", "stop")
        engine.pause("pause", "hold")
        engine.unpause("pause", "go on")
        with pytest.raises(aion.WorkflowCancelled):
            engine.result("cancel", timeout=30)
        with pytest.raises(aion.WorkflowCancelled):
            engine.result("term", timeout=30)
        assert _go(engine, ["pause"], "on") == ["2:on"]
        assert engine.describe("cancel").status == "cancelled"
        kinds = [e.type for e in engine.history("pause")]
        assert kinds.index("WorkflowPaused") < kinds.index("WorkflowUnpaused") < kinds.index(
            "MessageReceived")
        # None of them is held out of memory any more (nor renewed).
        wait_until(lambda: _out(first) == 0, timeout=10, what="the ended runs to be forgotten")
    finally:
        if other is not None:
            other.shutdown()
        first.shutdown()
