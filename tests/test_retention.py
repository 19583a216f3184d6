"""Retention (issue 18): finished runs older than an age are purged, by the
engine on a timer (``Engine(retention=...)``) and on demand
(``engine.purge``), with every row of theirs in the store; never a running
run, a chain only with its last run, a child by its own end but not while
its parent waits for it. A purged id is unknown afterwards and may be
started again. Over SQLite, purging the newest runs must not let a later
run take a mark a driver already saw. In Python against the suite's store
(SQLite, or PostgreSQL with ``AION_TEST_STORE=postgres``); the HTTP API,
the Client and the CLI are in tests/test_retention_api.py."""
import sqlite3
import time
from datetime import timedelta

import pytest
from conftest import SQLITE_ONLY, STORE, open_test_store, wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append, CreateRun


@aion.workflow(name="retention.done")
def done(ctx, n):
    ctx.upsert_search_attributes({"n": n})
    ctx.step(_double, n)
    return n


def _double(n):
    return 2 * n


@aion.workflow(name="retention.waits")
def waits(ctx):
    ctx.upsert_search_attributes({"who": "waits"})
    with ctx.timeout(timedelta(hours=1)):  # a pending timer row while it waits
        return ctx.receive("go")


@aion.workflow(name="retention.chain")
def chain(ctx, n):
    if n:
        ctx.continue_as_new(n - 1)
    return ctx.receive("go")


@aion.workflow(name="retention.parent")
def parent(ctx):
    got = ctx.start_child(done, 7, id=f"{ctx.workflow_id}/child").result()
    return [got, ctx.receive("go")]


ALL = (done, waits, chain, parent)


# -- looking into the store ------------------------------------------------------------------

def per_run_tables(store):
    """The store's tables that hold rows of a workflow id (every table with
    a workflow_id column)."""
    if hasattr(store, "_conn") and isinstance(store._conn, sqlite3.Connection):
        names = [r[0] for r in store._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")]
        return sorted(n for n in names if any(
            c[1] == "workflow_id" for c in store._conn.execute(f"PRAGMA table_info({n})")))
    rows = store._query("SELECT table_name FROM information_schema.columns WHERE "
                        "column_name='workflow_id' AND table_schema = current_schema()")
    return sorted(r[0] for r in rows)


def rows_of(store, wid):
    """{table: rows of ``wid``} over every per-run table, empty ones left out."""
    found = {}
    for table in per_run_tables(store):
        if hasattr(store, "_conn") and isinstance(store._conn, sqlite3.Connection):
            (n,) = store._conn.execute(f"SELECT count(*) FROM {table} WHERE workflow_id=?",
                                       (wid,)).fetchone()
        else:
            ((n,),) = store._query(f"SELECT count(*) FROM {table} WHERE workflow_id=%s", (wid,))
        if n:
            found[table] = n
    return found


@pytest.fixture
def store(db_url):
    s = open_test_store(db_url)
    yield s
    s.close()


def test_the_purge_covers_every_table_that_holds_rows_of_a_run(store):
    """A table added later that holds a run's rows must be purged too."""
    module = __import__(type(store).__module__, fromlist=["_PER_RUN_TABLES"])
    assert sorted(module._PER_RUN_TABLES) == per_run_tables(store)


def test_a_purge_removes_every_row_of_a_finished_run_and_keeps_running_ones(make_engine, db_url,
                                                                            store):
    engine = make_engine(*ALL)
    engine.start(chain, 2, id="chain")  # two runs archived, the third waits
    engine.start(waits, id="waits")
    wait_until(lambda: engine.describe("waits").search_attributes, what="waits' upsert")
    wait_until(lambda: engine.history("chain")[0].data.get("generation") == 3,
               what="the chain's third run")
    before = {wid: rows_of(store, wid) for wid in ("chain", "waits")}
    assert "archived_events" in str(before["chain"]) and "timers" in str(before["waits"])
    assert engine.purge(0) == 0  # running: nothing goes
    assert {wid: rows_of(store, wid) for wid in ("chain", "waits")} == before
    engine.signal("chain", "go", 1)
    engine.signal("waits", "go", 2)
    assert (engine.result("chain", timeout=20), engine.result("waits", timeout=20)) == (1, 2)
    assert rows_of(store, "chain") and rows_of(store, "waits")
    assert engine.purge(older_than=timedelta(0)) == 2
    assert rows_of(store, "chain") == {} and rows_of(store, "waits") == {}
    assert engine.count() == 0


def test_older_than_counts_from_the_end_of_a_run(make_engine):
    engine = make_engine(*ALL)
    engine.start(done, 1, id="early").result(timeout=20)
    engine.start(waits, id="late")  # started long before it ends
    time.sleep(1.2)
    engine.signal("late", "go", 1)
    engine.result("late", timeout=20)
    assert engine.purge(older_than=1.0) == 1
    assert [r.workflow_id for r in engine.list()] == ["late"]
    assert engine.purge(older_than=timedelta(hours=1)) == 0
    assert engine.purge(0) == 1


def test_a_purged_id_is_not_found_and_can_be_started_again(make_engine):
    engine = make_engine(*ALL)
    assert engine.start(done, 1, id="again").result(timeout=20) == 1
    assert engine.result("again") == 1  # remembered by the engine that ran it
    assert engine.purge(0) == 1
    for call in (lambda: engine.result("again", timeout=5), lambda: engine.describe("again"),
                 lambda: engine.history("again")):
        with pytest.raises(aion.WorkflowNotFound):
            call()
    # Other arguments: no conflict with what was purged.
    assert engine.start(done, 5, id="again").result(timeout=20) == 5
    assert [e.type for e in engine.history("again")][0] == ev.WORKFLOW_STARTED
    assert engine.describe("again").args == [5]


def test_a_child_goes_by_its_own_end_while_its_parent_runs(make_engine):
    engine = make_engine(*ALL)
    engine.start(parent, id="p")
    wait_until(lambda: any(e.type == ev.CHILD_COMPLETED for e in engine.history("p")),
               what="the child's end recorded in the parent")
    assert engine.purge(0) == 1
    assert [r.workflow_id for r in engine.list()] == ["p"]
    engine.signal("p", "go", "x")
    assert engine.result("p", timeout=20) == [7, "x"]  # its history still holds the child's end


def test_a_child_stays_while_its_parents_current_run_waits_to_record_its_end(store):
    """The failure window: a child ended, its parent (running) has not yet
    recorded that end. Purged then, the parent's replay would find its
    child missing and create it anew: it would run twice."""
    now = time.time()
    store.write_batch([CreateRun("p", "retention.parent", "[]", "rp", now - 100),
                       CreateRun("p/child", "retention.done", "[7]", "rc", now - 100,
                                 parent_id="p"),
                       CreateRun("other", "retention.done", "[1]", "ro", now - 100)])
    started = ev.NewEvent(ev.CHILD_STARTED, now - 99, {"id": "p/child", "workflow_type":
                                                      "retention.done", "args": [7]})
    ended = ev.NewEvent(ev.WORKFLOW_COMPLETED, now - 98, {"result": 7})
    store.write_batch([Append("p", 1, [started]), Append("p/child", 1, [ended]),
                       Append("other", 1, [ended])])
    assert store.purge_finished(now) == ["other"]
    store.write_batch([Append("p", 2, [ev.NewEvent(ev.CHILD_COMPLETED, now - 1,
                                                   {"id": "p/child", "result": 7})])])
    assert store.purge_finished(now) == ["p/child"]
    assert store.get_run("p").status == ev.RUNNING


def test_a_purge_runs_in_batches_of_500_and_stops_at_its_limit(make_engine, store):
    now = time.time()
    ops = [CreateRun(f"r{i:04d}", "retention.done", "[1]", f"run{i}", now - 60) for i in range(1200)]
    store.write_batch(ops)
    store.write_batch([Append(f"r{i:04d}", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, now - 50 + i / 100,
                                                          {"result": 1})]) for i in range(1200)])
    engine = make_engine(*ALL)
    engine._ensure_started()
    batches = []
    purge_finished = engine._epoch.store.purge_finished

    def counted(before, limit, namespace=None):
        wids = purge_finished(before, limit, namespace)
        batches.append((limit, len(wids)))
        return wids

    engine._epoch.store.purge_finished = counted
    assert engine.purge(30, limit=700) == 700
    assert batches == [(500, 500), (200, 200)]
    assert engine.count() == 500 and engine.list(limit=1)[0].workflow_id == "r0700"  # oldest first
    batches.clear()
    assert engine.purge(0) == 500
    assert batches == [(500, 500), (500, 0)]
    assert engine.metrics.runs_purged == 1200


@pytest.mark.parametrize("call, says", [
    (lambda e: e.purge(-1), "0 or more"),
    (lambda e: e.purge("30d"), "a duration is a timedelta or a number"),
    (lambda e: e.purge(float("nan")), "finite"),
    (lambda e: e.purge(10, limit=0), "limit=0"),
    (lambda e: e.purge(10, limit=2.5), "limit=2.5"),
])
def test_bad_purge_arguments_are_refused_naming_them(make_engine, call, says):
    engine = make_engine(*ALL)
    with pytest.raises(aion.ConfigurationError, match=says):
        call(engine)


@pytest.mark.parametrize("retention, says", [
    (0, "more than 0"), (-5, "more than 0"), ("30d", "timedelta or a number"),
    (timedelta(0), "more than 0")])
def test_a_bad_retention_is_refused_at_the_engines_creation(db_url, retention, says):
    with pytest.raises(aion.ConfigurationError, match=r"Engine\(retention=...\).*" + says):
        aion.Engine(db_url, retention=retention)


def test_the_engine_purges_what_its_retention_lets_go_on_a_timer(make_engine):
    from aion_green.runtime.retention import purge_every

    assert purge_every(30 * 86400) == 3600 and purge_every(600) == 60 and purge_every(1) == 0.5
    engine = make_engine(*ALL, retention=1.0)
    assert engine.retention == 1.0
    engine.start(done, 1, id="goes").result(timeout=20)
    engine.start(waits, id="stays")
    wait_until(lambda: engine.count() == 1, timeout=15, what="the periodic purge")
    assert [r.workflow_id for r in engine.list()] == ["stays"]
    with pytest.raises(aion.WorkflowNotFound):
        engine.result("goes", timeout=1)
    assert engine.metrics.runs_purged == 1
    assert make_engine(*ALL, url=None).retention is None  # (the default keeps every run)


def test_a_result_asked_once_the_purge_committed_never_gives_the_purged_run(make_engine):
    """The window between a purge's commit (a reader already sees the run
    gone: a list, a count) and the engine forgetting the runs it remembers
    ended: result() answered the purged run's result from memory (CI, once
    in a few hundred: a count saw it gone, result() still gave it). The
    purge's commit is held open here, after the store deleted the run."""
    import threading

    from conftest import NativeGate

    engine = make_engine(*ALL)
    assert engine.start(done, 1, id="goes").result(timeout=20) == 1
    writer_store = engine._epoch.store
    real = writer_store.purge_finished
    committed, release = NativeGate(), NativeGate()

    def held(*args):
        wids = real(*args)
        committed.set()
        release.wait(20)
        return wids

    writer_store.purge_finished = held
    purged = []
    purger = threading.Thread(target=lambda: purged.append(engine.purge(0)))
    purger.start()
    try:
        assert committed.wait(20)
        assert engine.count() == 0  # the store says it is gone...
        with pytest.raises(aion.WorkflowNotFound):  # ...and so does result()
            engine.result("goes", timeout=2)
    finally:
        release.set()
        purger.join(20)
        writer_store.purge_finished = real
    assert purged == [1]
    with pytest.raises(aion.WorkflowNotFound):
        engine.result("goes", timeout=1)


# -- SQLite: marks are never given twice --------------------------------------------------------

@SQLITE_ONLY
def test_a_mark_seen_before_a_purge_is_never_given_to_a_later_run(store):
    now = time.time()
    store.write_batch([CreateRun(f"m{i}", "t", "[]", f"r{i}", now) for i in range(3)])
    store.write_batch([Append("m2", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, now, {"result": 1})])])
    seen = max(row.mark for row in store.new_runs(0))
    assert store.purge_finished(now + 1) == ["m2"]  # the newest row goes
    store.create_run("m3", "t", "[]", "r3", now)
    assert [row.workflow_id for row in store.new_runs(seen)] == ["m3"]


@SQLITE_ONLY
def test_a_resumed_run_takes_a_mark_no_later_run_gets(store):
    now = time.time()
    store.write_batch([CreateRun("a", "t", "[]", "ra", now), CreateRun("b", "t", "[]", "rb", now)])
    store.write_batch([Append("a", 1, [ev.NewEvent(ev.WORKFLOW_FAILED, now,
                                                   {"error": {"type": "X", "message": "x"}})]),
                       Append("b", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, now, {"result": 1})])])
    store.restart_run("a", None, "ra2", now)
    seen = max(row.mark for row in store.new_runs(0))
    assert [row.workflow_id for row in store.new_runs(seen - 1)] == ["a"]
    store.write_batch([Append("a", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, now, {"result": 1})])])
    assert sorted(store.purge_finished(now + 1)) == ["a", "b"]
    store.create_run("c", "t", "[]", "rc", now)
    assert [row.workflow_id for row in store.new_runs(seen)] == ["c"]


@SQLITE_ONLY
def test_a_run_a_client_starts_after_the_newest_were_purged_is_driven(make_engine, db_url):
    """The driver's watch for new runs remembers the last mark it saw
    (recover=False: no sweep over unfinished runs would find a run it
    missed). Were that mark given again once its run was purged, a run a
    client process starts would never be driven."""
    driver = make_engine(*ALL, recover=False)
    assert driver.driving
    driver.start(done, 1, id="newest").result(timeout=20)
    time.sleep(0.5)  # the watch has seen its mark
    assert driver.purge(0) == 1
    client = make_engine(*ALL)
    assert not client.driving
    client.start(done, 2, id="after")
    assert client.result("after", timeout=10) == 2


@SQLITE_ONLY
def test_a_file_of_the_previous_schema_keeps_its_marks_and_gets_its_end_times(tmp_path):
    from aion_green.stores.sqlite.schema import _MIGRATIONS, SCHEMA_VERSION
    from aion_green.stores.sqlite.store import SQLiteStore

    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in (s for step in _MIGRATIONS[:6] for s in step):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=6")
    conn.executemany("INSERT INTO runs(rowid, workflow_id, run_id, workflow_type, status, args, "
                     "result, error, created_at) VALUES (?,?,?,?,?,?,?,?,?)", [
                         (4, "old-done", "ra", "t", "completed", "[]", "1", None, 10.0),
                         (9, "old-running", "rb", "t", "running", "[]", None, None, 20.0)])
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?)", [
        ("old-done", 1, "WorkflowStarted", 10.0, '{"workflow_type":"t","run_id":"ra","args":[]}'),
        ("old-done", 2, "WorkflowCompleted", 11.0, '{"result":1}'),
        ("old-running", 1, "WorkflowStarted", 20.0, '{"workflow_type":"t","run_id":"rb","args":[]}')])
    conn.close()
    store = SQLiteStore(str(path))
    try:
        assert [(r.mark, r.workflow_id) for r in store.new_runs(0)] == [(4, "old-done"),
                                                                        (9, "old-running")]
        assert store._conn.execute("SELECT workflow_id, ended_at FROM runs ORDER BY mark").fetchall(
        ) == [("old-done", 11.0), ("old-running", None)]
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 7
        assert store.purge_finished(12.0) == ["old-done"]
        store.create_run("new", "t", "[]", "rn", 30.0)
        assert [r.mark for r in store.new_runs(9)] == [10]
    finally:
        store.close()


@pytest.mark.skipif(STORE != "postgres", reason="the PostgreSQL migration; run with "
                    "AION_TEST_STORE=postgres")
def test_a_postgres_schema_of_the_previous_version_gets_its_end_times(pg_url):
    import psycopg

    from aion_green.stores.postgres.schema import _MIGRATIONS, SCHEMA_VERSION
    from aion_green.stores.postgres.store import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (s for step in _MIGRATIONS[:4] for s in step):
            conn.execute(statement)
        conn.execute("CREATE TABLE aion_schema(version INTEGER NOT NULL)")
        conn.execute("INSERT INTO aion_schema VALUES (4)")
        conn.execute("INSERT INTO aion_runs(workflow_id, run_id, workflow_type, status, args, "
                     "result, head_seq, created_at, updated_at) VALUES "
                     "('old-a', 'ra', 't', 'completed', '[]', '1', 2, 10, 11), "
                     "('old-b', 'rb', 't', 'running', '[]', NULL, 1, 20, 20)")
    store = PostgresStore(pg_url)
    try:
        assert store._query("SELECT workflow_id, ended_at FROM aion_runs ORDER BY workflow_id") == [
            ("old-a", 11.0), ("old-b", None)]
        assert store._query("SELECT version FROM aion_schema") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 5
        assert store.purge_finished(12.0) == ["old-a"]
    finally:
        store.close()


@pytest.mark.skipif(STORE != "postgres", reason="engines purging one PostgreSQL database at once")
def test_engines_purging_at_once_purge_each_run_once(make_engine, store):
    import threading

    now = time.time()
    store.write_batch([CreateRun(f"r{i:04d}", "t", "[]", f"run{i}", now - 60) for i in range(1500)])
    store.write_batch([Append(f"r{i:04d}", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, now - 50,
                                                          {"result": 1})]) for i in range(1500)])
    engines = [make_engine(*ALL) for _ in range(3)]
    counts = []
    threads = [threading.Thread(target=lambda e=e: counts.append(e.purge(0))) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == 1500 and len(counts) == 3
    assert store.count_runs() == 0


def test_a_purge_may_be_kept_to_one_namespace(make_engine, store):
    engine = make_engine(*ALL)
    for ns in ("default", "shop", "ops"):
        engine.start(done, 1, id="same", namespace=ns).result(timeout=20)
    assert engine.purge(0, namespace="shop") == 1
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("same", namespace="shop")
    assert engine.describe("same").status == engine.describe("same", namespace="ops").status == \
        ev.COMPLETED
    assert engine.purge(0, namespace="default") == 1
    assert engine.describe("same", namespace="ops").status == ev.COMPLETED
    assert engine.purge(0) == 1  # every namespace
    assert engine.count(namespace="ops") == 0
    with pytest.raises(aion.ConfigurationError, match="namespace"):
        engine.purge(0, namespace="no such/name")
