"""The PostgreSQL store against a real server (127.0.0.1:5432 by default;
AION_TEST_POSTGRES to point elsewhere): the store conformance suite, and
migrations raced by engines starting at once."""
import threading

import pytest
from store_contract import StoreContract

import aion_green as aion


class TestPostgresStoreContract(StoreContract):
    @pytest.fixture
    def store(self, pg_url):
        from aion_green.postgres import PostgresStore

        store = PostgresStore(pg_url)
        yield store
        store.close()


def test_stores_opened_at_the_same_moment_on_an_empty_schema_all_come_up(pg_url):
    from aion_green.postgres import SCHEMA_VERSION, PostgresStore

    stores, errors = [], []
    gate = threading.Barrier(6)

    def open_one():
        gate.wait()
        try:
            stores.append(PostgresStore(pg_url))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 6
        assert stores[0]._query("SELECT version FROM aion_schema") == [(SCHEMA_VERSION,)]
    finally:
        for store in stores:
            store.close()


def test_an_engine_on_postgres_runs_steps_timers_messages_and_children(pg_url):
    @aion.workflow(name="pg.kid")
    def kid(ctx, x):
        return ctx.step(lambda v: v + 1, x)

    @aion.workflow(name="pg.parent")
    def parent(ctx):
        first = ctx.step(lambda: 10)
        ctx.sleep(0.05)
        note = ctx.receive("note", timeout=30)
        kids = ctx.parallel([ctx.start_child(kid, i) for i in range(3)])
        return [first, note, kids]

    with aion.Engine(pg_url, workflows=[parent, kid]) as engine:
        assert engine.driving
        handle = engine.start(parent, id="p")
        engine.signal("p", "note", "hi")
        assert handle.result(timeout=30) == [10, "hi", [1, 2, 3]]
        assert [r.workflow_id for r in engine.list()] == ["p", "p/child-1", "p/child-2", "p/child-3"]
        with aion.Engine(pg_url, workflows=[parent, kid]) as client:
            assert not client.driving
            assert client.start(kid, 41, id="from-client").result(timeout=30) == 42


def _terminate_engine_sessions():
    """Cut every session of aion_green's stores (as a server restart does to
    them); the tests run one at a time, so these are this test's engine's."""
    import psycopg
    from conftest import PG_URL

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'aion_green' AND pid <> pg_backend_pid()").fetchall())


def test_sessions_cut_under_load_reconnect_and_lose_nothing(pg_url):
    """Every session of the engine is terminated while 40 workflows run their
    steps (what a server restart does to it): the engine reconnects, takes
    its driver lock again, and every workflow ends with each step recorded
    once."""
    import time as _time

    from aion_green import events as ev

    def slow_step(i):
        _time.sleep(0.01)
        return i

    @aion.workflow(name="pg.load")
    def load(ctx, n):
        return sum(ctx.step(slow_step, i) for i in range(n))

    with aion.Engine(pg_url, workflows=[load]) as engine:
        handles = [engine.start(load, 60, id=f"w{k}") for k in range(40)]
        _time.sleep(0.3)
        session = engine._store._conn
        assert len(engine.list(status="completed")) < 40, "the load ended before the cut"
        assert _terminate_engine_sessions() >= 2  # the writer's and the reader's
        assert [h.result(timeout=60) for h in handles] == [sum(range(60))] * 40
        assert engine._store._conn is not session, "the writer did not reconnect"
        assert engine.driving and not engine._store.fenced
        for k in range(40):
            steps = [e.data["step"] for e in engine.history(f"w{k}") if e.type == ev.STEP_COMPLETED]
            assert steps == list(range(1, 61))


def test_a_driver_cut_off_while_another_took_over_is_fenced_out(pg_url):
    """A's session ends (a cut connection); B takes the driver lock and
    resumes A's run; A's next write finds the lock taken on its new session
    and is refused with FencedOut: the history shows nothing of A's after
    the takeover."""
    import psycopg
    from conftest import PG_URL, wait_until

    from aion_green import events as ev

    @aion.workflow(name="pg.parked")
    def parked(ctx):
        return ctx.receive("go")

    a = aion.Engine(pg_url, workflows=[parked])
    b = aion.Engine(pg_url, workflows=[parked])
    try:
        a.start(parked, id="g")
        wait_until(lambda: "g" in a._runs)
        assert b.list() and not b.driving
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (a._store._conn.info.backend_pid,))
        wait_until(lambda: b.driving, timeout=10, what="B to take the driver lock")
        wait_until(lambda: "g" in b._runs, what="B to resume the run")
        before = b.history("g")
        with pytest.raises(aion.FencedOut, match="lost the driver lock"):
            a.signal("g", "go", "from the stale driver")
        assert b.history("g") == before
        b.signal("g", "go", "from the new driver")
        assert b.result("g", timeout=10) == "from the new driver"
        assert [e.type for e in b.history("g")].count(ev.MESSAGE_RECEIVED) == 1
    finally:
        a.shutdown()
        b.shutdown()
