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
