"""SQLite with ``?leases=on``: every engine of a file drives the runs it
starts and claims the runs nobody holds, under leases with fences, as on
PostgreSQL (the engine suite runs on it with AION_TEST_STORE=sqlite-leases,
and the engine processes of tests/test_postgres_engines.py on both stores).
Here: the URL option, the store's lease methods, and what an engine opened
one way finds beside engines opened the other way."""
import json
import time

import pytest
from conftest import wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import PARKED_LEASE, Append, CreateRun, SQLiteStore
from aion_green.stores import open_store
from aion_green.stores.sqlite.schema import sqlite_leases_from_url


@pytest.mark.parametrize("url, leases", [
    ("sqlite:///a.db", False), ("sqlite:///a.db?leases=on", True), ("sqlite:///a.db?leases=1", True),
    ("sqlite:///a.db?leases=off", False), ("sqlite:////abs/a.db?leases=true", True), ("a.db", False),
    (None, False)])
def test_leases_are_asked_for_in_the_url(url, leases):
    assert sqlite_leases_from_url(url) is leases


@pytest.mark.parametrize("url, named", [("sqlite:///a.db?lease=on", "'lease'"),
                                        ("sqlite:///a.db?leases=maybe", "'maybe'")])
def test_a_url_option_it_does_not_know_is_refused_by_name(tmp_path, url, named):
    with pytest.raises(aion.ConfigurationError, match=named):
        aion.Engine(url.replace("a.db", str(tmp_path / "a.db"))).list()
    assert not (tmp_path / "a.db").exists(), "the refused URL created the file"


def test_an_in_memory_database_refuses_leases():
    with pytest.raises(aion.ConfigurationError, match="in-memory"):
        open_store("sqlite:///:memory:?leases=on")


def _step(n):
    return [ev.NewEvent(ev.STEP_COMPLETED, time.time(), {"step": n, "result": n})]


def test_runs_are_claimed_once_each_with_a_new_fence_and_renewed_by_their_owner(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'l.db'}?leases=on")
    try:
        assert store.leases is True
        now = time.time()
        store.write_batch([CreateRun(f"a{k}", "t.a", "[]", f"r{k}", now) for k in range(5)]
                          + [CreateRun("b0", "t.b", "[]", "s0", now),
                             CreateRun("own", "t.a", "[]", "o", now, "me", now + 30)])
        own = store.get_run("own")
        assert own.fence > 0 and store.lease_of("own")[0] == "me"
        first = store.claim_runs("me", ["t.a"], now + 30, now, 3)
        second = store.claim_runs("other", ["t.a"], now + 30, now, 10)
        assert [i.workflow_id for i in first] == ["a0", "a1", "a2"]
        assert [i.workflow_id for i in second] == ["a3", "a4"]  # not b0, not a held run
        fences = [i.fence for i in first + second]
        assert len(set(fences)) == 5 and min(fences) > own.fence
        assert store.claim_runs("third", ["t.a"], now + 30, now, 10) == []
        # A lease that ran out is claimable again, under a new fence.
        store.renew_leases("other", ["a3"], now - 1)
        (again,) = store.claim_runs("third", ["t.a"], now + 30, now, 10)
        assert again.workflow_id == "a3" and again.fence > max(fences)
        # Renewals: only what the owner still holds.
        assert sorted(store.renew_leases("other", ["a3", "a4", "a0"], now + 60)) == ["a4"]
        assert store.count_leased("me", now) == 4  # a0-a2 and its own start
        store.release_leases("me", ["a0"])
        assert store.lease_of("a0") is None
        store.release_leases("me")
        assert store.count_leased("me", now) == 0
    finally:
        store.close()


def test_an_append_under_a_stale_fence_is_refused_and_writes_nothing(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'f.db'}?leases=on")
    try:
        now = time.time()
        store.write_batch([CreateRun("w", "t", "[]", "r", now)])
        (old,) = store.claim_runs("a", ["t"], now - 1, now, 1)  # a lease that runs out at once
        assert store.write_batch([Append("w", 1, _step(1), fence=old.fence)]) == [2]
        (new,) = store.claim_runs("b", ["t"], now + 30, now, 1)
        outcomes = store.write_batch([Append("w", 1, _step(2), fence=old.fence),
                                      CreateRun("x", "t", "[]", "rx", now)])
        assert isinstance(outcomes[0], aion.FencedOut), outcomes
        assert outcomes[1][0] is True  # the rest of the batch is written
        head = store.get_run("w").head_seq
        assert store.write_batch([Append("w", head, _step(3), fence=new.fence)]) == [head + 1]
        assert [e.data["result"] for e in store.read("w") if e.type == ev.STEP_COMPLETED][-1] == 3
        # A resumed run is nobody's, under a new fence: its old owner is refused.
        store.write_batch([Append("w", head + 1, [ev.NewEvent(ev.WORKFLOW_FAILED, now, {
            "error": {"type": "X", "message": "x"}})], fence=new.fence)])
        resumed = store.restart_run("w", None, "r2", time.time())
        assert resumed.fence > new.fence and store.lease_of("w") is None
        refused = store.write_batch([Append("w", resumed.head_seq, _step(4), fence=new.fence)])
        assert isinstance(refused[0], aion.FencedOut)
    finally:
        store.close()


def test_claim_counts_weigh_claimable_and_held_runs_and_the_engines_that_share_the_types(shared_url):
    """What an engine weighs before it claims its fair share
    (runtime/leases.py), on both stores that lease: runs nobody holds, runs
    held under live leases (and its own), and the other live engines that
    run one of its types."""
    store = open_store(shared_url)
    try:
        now = time.time()
        assert store.claim_counts("me", ["t.a"], now, 100) == (0, 0, 0, 0)
        store.write_batch([CreateRun(f"a{k}", "t.a", "[]", f"r{k}", now) for k in range(10)]
                          + [CreateRun(f"b{k}", "t.b", "[]", f"s{k}", now) for k in range(4)])
        store.claim_runs("me", ["t.a"], now + 30, now, 3)
        store.claim_runs("other", ["t.a"], now + 30, now, 2)
        store.claim_runs("lapsed", ["t.a"], now - 1, now, 1)
        store.publish_engine("other", json.dumps({"t.a": None}), now + 30, now)
        store.publish_engine("b-only", json.dumps({"t.b": None}), now + 30, now)
        store.publish_engine("gone", json.dumps({"t.a": None}), now - 1, now)
        store.publish_engine("me", json.dumps({"t.a": None}), now + 30, now)
        # 4 unclaimed + 1 lapsed; 5 held, 3 of them mine; one other engine runs t.a.
        assert store.claim_counts("me", ["t.a"], now, 100) == (5, 1, 5, 3)
        assert store.claim_counts("me", ["t.a", "t.b"], now, 100) == (9, 2, 5, 3)
        # Counts stop at the cap: a bounded scan however many runs there are.
        assert store.claim_counts("me", ["t.a"], now, 2)[:3] == (2, 1, 2)
        assert sorted(store.live_engines(now)) == ["b-only", "me", "other"]
        store.forget_engine("other")
        assert sorted(store.live_engines(now)) == ["b-only", "me"]
    finally:
        store.close()


def test_claim_counts_on_sqlite_are_of_one_moment_though_another_engine_claims_meanwhile(tmp_path):
    """Failure window (issue 21, CI): SQLite counted the claimable runs and
    the held ones in two statements, each reading the file as it was then.
    Runs another engine claimed between the two were counted twice (as
    claimable, then as held), so the share came out too big: of 400 runs,
    four engines over one file drove 75, 100, 100 and 125 (three CI runs,
    under patch_all()). The counts now read one snapshot. (PostgreSQL
    counts in one statement.)"""
    url = f"sqlite:///{tmp_path / 'shared.db'}?leases=on"
    store, other = open_store(url), open_store(url)
    try:
        now = time.time()
        store.write_batch([CreateRun(f"a{k}", "t.a", "[]", f"r{k}", now) for k in range(10)])
        store.publish_engine("other", json.dumps({"t.a": None}), now + 30, now)
        real, claimed = store._conn, []

        class ClaimBetween:
            """The store's connection, but another engine claims four runs
            just before the count of held runs is read."""

            def execute(self, sql, params=()):
                if "lease_until >=" in sql and not claimed:
                    claimed.extend(other.claim_runs("other", ["t.a"], now + 30, now, 4))
                return real.execute(sql, params)

            def __getattr__(self, name):
                return getattr(real, name)

        store._conn = ClaimBetween()
        try:
            claimable, peers, held, mine = store.claim_counts("me", ["t.a"], now, 100)
        finally:
            store._conn = real
        assert len(claimed) == 4, "the other engine's claim did not run between the counts"
        assert (claimable, peers, held, mine) == (10, 1, 0, 0), \
            "the counts mix the store before and after the other engine's claim"
        # Read again: the claim is seen once, as held.
        assert store.claim_counts("me", ["t.a"], now, 100) == (6, 1, 4, 0)
    finally:
        store.close()
        other.close()


def test_a_parked_lease_holds_while_its_engine_does_and_is_freed_once_its_entry_ran_out(shared_url):
    """A run out of memory keeps its lease parked (no renewal per run): not
    claimable while its owner's entry among the engines is live; freed by
    the next publish of any engine once that entry ran out, or at once when
    the owner is forgotten; ``lease_of`` answers with the entry's end."""
    store = open_store(shared_url)
    try:
        now = time.time()
        store.write_batch([CreateRun(f"a{k}", "t.a", "[]", f"r{k}", now) for k in range(6)])
        store.publish_engine("e1", json.dumps({"t.a": None}), now + 30, now)
        store.publish_engine("e2", json.dumps({"t.a": None}), now + 30, now)
        store.claim_runs("e1", ["t.a"], now + 30, now, 4)  # a0-a3
        store.claim_runs("e2", ["t.a"], now + 30, now, 2)  # a4, a5
        # Parked: "renewed" to a time no clock reaches; a4 is e2's.
        assert sorted(store.renew_leases("e1", ["a0", "a1", "a4"], PARKED_LEASE)) == ["a0", "a1"]
        assert sorted(store.renew_leases("e2", ["a4", "a5"], PARKED_LEASE)) == ["a4", "a5"]
        later = now + 100  # every lease granted above ran out; the parked ones hold
        assert store.lease_of("a0") == ("e1", now + 30)
        assert store.claim_counts("e3", ["t.a"], later, 100)[0] == 2  # a2, a3
        assert sorted(i.workflow_id for i in store.claim_runs("e3", ["t.a"], later + 30, later,
                                                               10)) == ["a2", "a3"]
        # e1's entry ran out (killed): the next publish frees its parked runs, not e2's.
        store.publish_engine("e2", json.dumps({"t.a": None}), later + 30, later)
        store.publish_engine("e3", json.dumps({"t.a": None}), later + 30, later)
        assert store.lease_of("a0") == ("e1", 0.0)  # nobody's word holds it any more
        assert sorted(i.workflow_id for i in store.claim_runs("e3", ["t.a"], later + 30, later,
                                                               10)) == ["a0", "a1"]
        assert store.lease_of("a4") == ("e2", later + 30)
        # A forgotten engine leaves nothing parked under it.
        store.forget_engine("e2")
        assert sorted(i.workflow_id for i in store.claim_runs("e3", ["t.a"], later + 30, later,
                                                               10)) == ["a4", "a5"]
        # A renewal brings a parked lease back to a plain one.
        assert store.renew_leases("e3", ["a0"], PARKED_LEASE) == ["a0"]
        assert store.renew_leases("e3", ["a0"], later + 60) == ["a0"]
        assert store.lease_of("a0") == ("e3", later + 60)
    finally:
        store.close()


def test_read_leased_answers_the_held_runs_leases_and_histories_in_one_read(shared_url):
    """``read_leased(owner, ids)``, what runs back from eviction read: for
    each run ``owner`` holds, its lease's end (a parked lease's: its
    owner's entry's) and its history, in order; runs another engine holds,
    or nobody, or that do not exist, are left out; nothing is written. More
    ids than one statement of SQLite takes are read in parts."""
    store = open_store(shared_url)
    try:
        now = time.time()
        store.write_batch([CreateRun(f"a{k}", "t.a", "[]", f"r{k}", now) for k in range(3)])
        store.write_batch([Append("a0", 1, [ev.NewEvent(ev.STEP_COMPLETED, now,
                                                        {"step": "s", "result": 0})])])
        store.publish_engine("e1", json.dumps({"t.a": None}), now + 30, now)
        store.publish_engine("e2", json.dumps({"t.a": None}), now + 30, now)
        store.claim_runs("e1", ["t.a"], now + 20, now, 2)  # a0, a1
        store.claim_runs("e2", ["t.a"], now + 20, now, 1)  # a2
        assert store.renew_leases("e1", ["a1"], PARKED_LEASE) == ["a1"]
        found = store.read_leased("e1", ["a0", "a1", "a2", "nope"])
        assert sorted(found) == ["a0", "a1"]
        until, history = found["a0"]
        assert until == now + 20
        assert [(e.seq, e.type) for e in history] == [(1, ev.WORKFLOW_STARTED),
                                                      (2, ev.STEP_COMPLETED)]
        assert history[1].data["result"] == 0
        until, history = found["a1"]
        assert until == now + 30  # parked: the entry's end
        assert [e.type for e in history] == [ev.WORKFLOW_STARTED]
        assert store.lease_of("a1") == ("e1", now + 30)  # left as it was
        assert store.read_leased("e2", ["a0", "a1"]) == {}
        assert sorted(store.read_leased("e2", [f"x{k}" for k in range(1200)] + ["a2"])) == ["a2"]
        assert store.read_leased("e1", []) == {}
    finally:
        store.close()


def test_a_file_of_the_previous_schema_is_upgraded_and_its_running_runs_claimed(tmp_path):
    path = str(tmp_path / "old.db")
    store = SQLiteStore(path)
    store.write_batch([CreateRun("old", "t", "[]", "r", time.time())])
    conn = store._conn
    conn.execute("DROP INDEX runs_parked")  # (schema 11's, on the columns of 10)
    conn.execute("DROP INDEX runs_claimable")
    for column in ("owner", "lease_until", "fence"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("DROP TABLE lease_fences")
    conn.execute("DROP TABLE engines")
    conn.execute("PRAGMA user_version=9")
    store.close()
    store = open_store(f"sqlite:///{path}?leases=on")
    try:
        now = time.time()
        assert store.get_run("old").fence == 0
        (claimed,) = store.claim_runs("me", ["t"], now + 30, now, 10)
        assert claimed.workflow_id == "old" and claimed.fence == 1
    finally:
        store.close()


@aion.workflow(name="leases.wait")
def waits(ctx, tag):
    return [tag, ctx.receive("go")]


def test_each_engine_drives_the_runs_it_starts_and_hears_the_others_signals(tmp_path):
    url = f"sqlite:///{tmp_path / 'two.db'}?leases=on"
    first = aion.Engine(url, workflows=[waits])
    second = aion.Engine(url, workflows=[waits])
    store = open_store(url)
    try:
        a = first.start(waits, "a", id="a")
        b = second.start(waits, "b", id="b")
        wait_until(lambda: store.get_run("a").head_seq >= 1 and store.get_run("b").head_seq >= 1)
        assert store.lease_of("a")[0] == first.engine_id
        assert store.lease_of("b")[0] == second.engine_id
        # A signal from the engine that does not hold the run reaches it
        # through the inbox its owner drains.
        second.signal("a", "go", 1)
        first.signal("b", "go", 2)
        assert a.result(timeout=30) == ["a", 1]
        assert second.result("a", timeout=30) == ["a", 1]
        assert b.result(timeout=30) == ["b", 2]
        wait_until(lambda: {e.engine_id for e in first.engines()} >= {first.engine_id,
                                                                      second.engine_id},
                   what="both engines to publish themselves")
    finally:
        first.shutdown()
        second.shutdown()
        store.close()


def test_a_leased_engine_refuses_a_file_driven_without_leases(tmp_path):
    path = tmp_path / "mixed.db"
    driver = aion.Engine(f"sqlite:///{path}", workflows=[waits])
    try:
        driver.list(limit=1)  # it takes the driver lock
        with pytest.raises(aion.ConfigurationError, match="without leases"):
            aion.Engine(f"sqlite:///{path}?leases=on", workflows=[waits]).list(limit=1)
    finally:
        driver.shutdown()


def test_an_engine_without_leases_beside_leased_ones_is_their_client(tmp_path):
    path = tmp_path / "client.db"
    leased = aion.Engine(f"sqlite:///{path}?leases=on", workflows=[waits])
    client = aion.Engine(f"sqlite:///{path}", workflows=[waits])
    try:
        leased.list(limit=1)
        assert not client.driving, "an engine without leases drove a file that leased engines share"
        handle = client.start(waits, "c", id="c")
        store = open_store(f"sqlite:///{path}")
        try:
            wait_until(lambda: (store.lease_of("c") or ("",))[0] == leased.engine_id,
                       what="a leased engine to claim the client's run")
        finally:
            store.close()
        client.signal("c", "go", 3)
        assert handle.result(timeout=30) == ["c", 3]
    finally:
        client.shutdown()
        leased.shutdown()
