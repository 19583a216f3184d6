"""Listing and search (issue 18): list and count filters (type, status, the
run's start, its parent, search attributes), per-status counts, summaries
that name their parent, and ``ctx.upsert_search_attributes``: recorded
(replay-safe), indexed in the store in the transaction of its event, and
filterable. In Python against the suite's store (SQLite, or PostgreSQL with
``AION_TEST_STORE=postgres``), over HTTP against a real ``aion-green worker
--http`` process with a plain HTTP client and the ``Client``, through the
command line, and over a database created by the previous schema."""
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess
from worker_process import call as worker_call

import aion_green as aion
from aion_green.core import events as ev
from aion_green.testing import ReplayMismatch, check_replay
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


@aion.workflow(name="search.order")
def order(ctx, customer, total, items=0):
    ctx.upsert_search_attributes({"customer": customer, "total": total})
    for i in range(items):
        ctx.start_child(item, i, id=f"{ctx.workflow_id}/item-{i}").result()
    return total


@aion.workflow(name="search.item")
def item(ctx, i):
    ctx.upsert_search_attributes({"item": i, "even": i % 2 == 0})
    return i


@aion.workflow(name="search.waits")
def waits(ctx, customer):
    """Upserts, waits for 'go', upserts again (a vip flag and a score),
    removes the customer's tier, and returns what it holds."""
    ctx.upsert_search_attributes({"customer": customer, "tier": "gold"})
    got = ctx.receive("go", timeout=120)
    ctx.upsert_search_attributes({"vip": True, "score": 1.5, "tier": None})
    return {"got": got, "held": ctx.search_attributes}


@aion.workflow(name="search.bad")
def bad(ctx, kind):
    value = {"list": [1], "dict": {"a": 1}, "nan": float("nan"), "big": 2 ** 70,
             "long": "x" * 1001, "set": {1}}.get(kind, kind)
    try:
        ctx.upsert_search_attributes({"x": value})
    except aion.ConfigurationError as exc:
        return "refused: " + str(exc)
    return "accepted"


@aion.workflow(name="search.chain")
def chain(ctx, n):
    if n:
        ctx.upsert_search_attributes({"generation": n})
        if n == 2:
            ctx.upsert_search_attributes({"customer": "c-chain"})
        ctx.continue_as_new(n - 1)
    return ctx.search_attributes
'''

ns = {}
exec(compile(FLOWS, "search_flows", "exec"), ns)
order, item, waits, bad, chain = (ns[k] for k in ("order", "item", "waits", "bad", "chain"))
ALL = (order, item, waits, bad, chain)


def ids(runs):
    return [r.workflow_id for r in runs]


def upserts(engine, wid, run_id=None):
    return [e.data["attributes"] for e in engine.history(wid, run_id=run_id)
            if e.type == ev.SEARCH_ATTRIBUTES_UPSERTED]


# -- Python, against the suite's store ---------------------------------------------------------

def test_upserted_attributes_are_described_listed_and_matched_by_text_form(make_engine):
    engine = make_engine(*ALL)
    assert engine.start(order, "c-1", 42, id="o-1").result(timeout=20) == 42
    assert engine.start(order, "c-2", 42.0, id="o-2").result(timeout=20) == 42.0
    assert engine.start(order, "42", 7, id="o-3").result(timeout=20) == 7
    info = engine.describe("o-1")
    assert info.search_attributes == {"customer": "c-1", "total": 42}
    assert type(info.search_attributes["total"]) is int
    assert type(engine.describe("o-2").search_attributes["total"]) is float
    assert upserts(engine, "o-1") == [{"customer": "c-1", "total": 42}]
    # Listed summaries carry them too.
    assert {r.workflow_id: r.search_attributes["customer"] for r in engine.list()} == {
        "o-1": "c-1", "o-2": "c-2", "o-3": "42"}
    assert ids(engine.list(attributes={"customer": "c-1"})) == ["o-1"]
    # The text form: 42 and "42" match the int 42 (and the string "42"), not 42.0.
    assert ids(engine.list(attributes={"total": 42})) == ["o-1"]
    assert ids(engine.list(attributes={"total": "42"})) == ["o-1"]
    assert ids(engine.list(attributes={"total": 42.0})) == ["o-2"]
    assert ids(engine.list(attributes={"customer": 42})) == ["o-3"]
    # Several attributes: all must match.
    assert ids(engine.list(attributes={"customer": "c-2", "total": 42.0})) == ["o-2"]
    assert ids(engine.list(attributes={"customer": "c-2", "total": 42})) == []
    assert ids(engine.list(attributes={"nobody": "x"})) == []
    assert engine.count() == 3
    assert engine.count(attributes={"total": "42"}) == 1
    assert engine.count_by_status() == {"running": 0, "completed": 3, "failed": 0,
                                        "cancelled": 0, "continued": 0,
                                        "timed_out": 0}


def test_a_removed_attribute_is_gone_and_booleans_and_floats_match_by_their_json(make_engine):
    engine = make_engine(*ALL)
    engine.start(waits, "c-9", id="w-9")
    wait_until(lambda: engine.describe("w-9").search_attributes.get("tier") == "gold",
               what="the first upsert")
    assert ids(engine.list(attributes={"tier": "gold"})) == ["w-9"]
    assert engine.count_by_status(attributes={"customer": "c-9"})["running"] == 1
    engine.signal("w-9", "go", 1)
    assert engine.result("w-9", timeout=20) == {
        "got": 1, "held": {"customer": "c-9", "vip": True, "score": 1.5}}
    assert engine.describe("w-9").search_attributes == {"customer": "c-9", "vip": True,
                                                        "score": 1.5}
    assert ids(engine.list(attributes={"tier": "gold"})) == []
    assert ids(engine.list(attributes={"vip": True})) == ["w-9"]
    assert ids(engine.list(attributes={"vip": "true"})) == ["w-9"]
    assert ids(engine.list(attributes={"vip": 1})) == []
    assert ids(engine.list(attributes={"score": 1.5})) == ["w-9"]
    assert engine.count_by_status(attributes={"customer": "c-9"})["completed"] == 1


def test_children_name_their_parent_and_are_listed_by_it(make_engine):
    engine = make_engine(*ALL)
    engine.start(order, "c-1", 1, 3, id="p-1").result(timeout=30)
    engine.start(order, "c-2", 2, 1, id="p-2").result(timeout=30)
    assert engine.describe("p-1").parent_id is None
    assert engine.describe("p-1/item-0").parent_id == "p-1"
    assert ids(engine.list(parent="p-1")) == ["p-1/item-0", "p-1/item-1", "p-1/item-2"]
    assert ids(engine.list(parent="p-2")) == ["p-2/item-0"]
    assert all(r.parent_id == "p-1" for r in engine.list(parent="p-1"))
    assert engine.list(parent="p-1/item-0") == []
    assert engine.count(parent="p-1") == 3
    assert ids(engine.list(parent="p-1", attributes={"even": True})) == ["p-1/item-0", "p-1/item-2"]
    assert engine.count(parent="p-1", workflow_type=item, status="completed") == 3
    assert engine.count(parent="p-1", workflow_type=order) == 0


def test_the_start_window_is_half_open_and_takes_datetimes_or_seconds(make_engine):
    engine = make_engine(*ALL)
    engine.start(order, "c-1", 1, id="early").result(timeout=20)
    time.sleep(0.05)
    middle = time.time()
    time.sleep(0.05)
    engine.start(order, "c-2", 2, id="late").result(timeout=20)
    created = engine.describe("late").created_at
    aware = datetime.fromtimestamp(middle, tz=timezone.utc)
    assert ids(engine.list(started_after=middle)) == ["late"]
    assert ids(engine.list(started_after=aware)) == ["late"]
    assert ids(engine.list(started_before=aware)) == ["early"]
    assert ids(engine.list(started_after=created)) == ["late"]  # at or after
    assert ids(engine.list(started_before=created)) == ["early"]  # strictly before
    assert engine.count(started_after=aware - timedelta(hours=1),
                        started_before=aware + timedelta(hours=1)) == 2
    assert engine.count(started_after=time.time() + 60) == 0


def test_filters_combine_and_pages_follow_them(make_engine):
    engine = make_engine(*ALL)
    handles = [engine.start(order, f"c-{i % 3}", i, id=f"r-{i:02d}") for i in range(12)]
    for handle in handles:
        handle.result(timeout=30)
    engine.start(waits, "c-0", id="r-99")
    wait_until(lambda: engine.describe("r-99").search_attributes, what="r-99's upsert")
    wanted = [f"r-{i:02d}" for i in range(12) if i % 3 == 0] + ["r-99"]
    assert ids(engine.list(attributes={"customer": "c-0"})) == wanted
    pages, after = [], None
    while True:
        page = engine.list(attributes={"customer": "c-0"}, limit=2, after_id=after)
        pages.append(ids(page))
        if len(page) < 2:
            break
        after = page[-1].workflow_id
    assert [w for page in pages for w in page] == wanted and max(map(len, pages)) == 2
    assert engine.count(attributes={"customer": "c-0"}) == len(wanted)
    assert ids(engine.list(status="running", attributes={"customer": "c-0"})) == ["r-99"]
    assert ids(engine.list(workflow_type=order, attributes={"customer": "c-0"}, limit=3,
                           after_id="r-03")) == ["r-06", "r-09"]
    assert engine.count_by_status(attributes={"customer": "c-0"}) == {
        "running": 1, "completed": 4, "failed": 0, "cancelled": 0, "continued": 0,
        "timed_out": 0}
    engine.signal("r-99", "go", 0)
    engine.result("r-99", timeout=20)


def test_an_id_prefix_filters_lists_and_counts_literally_per_namespace(make_engine):
    engine = make_engine(*ALL)
    for wid in ("a-1", "a-2", "ab", "b-1", "a%", "a_x", "ä-1"):
        engine.start(order, "c", 1, id=wid).result(timeout=20)
    engine.start(order, "c", 1, id="a-9", namespace="other").result(timeout=20)
    assert ids(engine.list(id_prefix="a-")) == ["a-1", "a-2"]
    # LIKE's wildcards are plain characters here.
    assert ids(engine.list(id_prefix="a%")) == ["a%"]
    assert ids(engine.list(id_prefix="a_")) == ["a_x"]
    assert ids(engine.list(id_prefix="ä")) == ["ä-1"]
    assert engine.count(id_prefix="a") == 5
    assert engine.count_by_status(id_prefix="b")["completed"] == 1
    assert ids(engine.list(id_prefix="a-", namespace="other")) == ["a-9"]
    assert ids(engine.list(id_prefix="a", limit=2, after_id="a-2")) == ["a_x", "ab"]
    with pytest.raises(aion.ConfigurationError, match="id_prefix"):
        engine.list(id_prefix="")


def test_bad_attributes_are_refused_at_the_call_and_nothing_is_recorded(make_engine):
    engine = make_engine(*ALL)
    for kind, says in (("list", "type list"), ("dict", "type dict"), ("set", "type set"),
                       ("nan", "not a finite number"), ("big", "64 bits"),
                       ("long", "1001 characters")):
        wid = f"b-{kind}"
        answer = engine.start(bad, kind, id=wid).result(timeout=20)
        assert answer.startswith("refused: ") and says in answer, answer
        assert "'x'" in answer  # the message names the attribute
        assert upserts(engine, wid) == [] and engine.describe(wid).search_attributes == {}
    assert engine.start(bad, "fine", id="b-ok").result(timeout=20) == "accepted"

    @aion.workflow(name="search.names")
    def names(ctx, attrs):
        try:
            ctx.upsert_search_attributes(attrs)
        except aion.ConfigurationError as exc:
            return str(exc)
        return "accepted"

    too_many = {f"a{i}": i for i in range(ev.MAX_SEARCH_ATTRIBUTES + 1)}
    for attrs, says in (({"a=b": 1}, "'='"), ({"n" * 101: 1}, "at most 100"),
                        ({"": 1}, "non-empty"), (too_many, "at most 64")):
        answer = engine.start(names, attrs, id=f"n-{len(attrs)}-{len(next(iter(attrs)))}"
                              ).result(timeout=20)
        assert says in answer, answer
    assert engine.count(attributes={"a0": 0}) == 0
    # Bad filters: refused before anything is read, naming the argument.
    for call, says in ((lambda: engine.list(started_after=datetime(2024, 1, 1)), "naive"),
                       (lambda: engine.list(started_before="2024-01-01"), "started_before"),
                       (lambda: engine.count(attributes={"x": [1]}), "type list"),
                       (lambda: engine.count(attributes={"x": None}), "is None"),
                       (lambda: engine.list(attributes={"a=b": 1}), "'='"),
                       (lambda: engine.list(parent=""), "parent"),
                       (lambda: engine.count(status="lost"), "unknown status")):
        with pytest.raises(aion.ConfigurationError, match=says):
            call()


def test_a_replay_matches_recorded_upserts_and_records_them_once(make_engine, db_url):
    """Failure window: the engine stops between two upserts; the next
    engine replays the first (records nothing) and records the second live."""
    first = make_engine(*ALL)
    first.start(waits, "c-r", id="replayed")
    wait_until(lambda: upserts(first, "replayed"), what="the first upsert")
    first.shutdown()
    second = make_engine(*ALL)
    wait_until(lambda: second.describe("replayed").status == ev.RUNNING)
    second.signal("replayed", "go", "after")
    assert second.result("replayed", timeout=30)["held"] == {"customer": "c-r", "vip": True,
                                                              "score": 1.5}
    assert upserts(second, "replayed") == [{"customer": "c-r", "tier": "gold"},
                                          {"vip": True, "score": 1.5, "tier": None}]
    assert ids(second.list(attributes={"customer": "c-r", "vip": True})) == ["replayed"]
    # The replay checker agrees; a changed upsert is a divergence.
    assert check_replay(db_url, ["replayed"], workflows=list(ALL)) == 1

    @aion.workflow(name="search.waits")
    def changed(ctx, customer):
        ctx.upsert_search_attributes({"customer": customer.upper(), "tier": "gold"})
        return ctx.receive("go")

    with pytest.raises(ReplayMismatch, match="upsert_search_attributes"):
        check_replay(db_url, ["replayed"], workflows=[changed])


def test_attributes_carry_over_a_continuation_and_into_a_fork(make_engine):
    engine = make_engine(*ALL)
    held = engine.start(chain, 2, id="ch").result(timeout=30)
    assert held == {"generation": 1, "customer": "c-chain"}
    info = engine.describe("ch")
    assert info.search_attributes == held and info.status == ev.COMPLETED
    # Each run of the chain says what it held when it ended.
    middle = engine.history("ch", run_id=info.run_id)[0].data["continued_from"]
    first = engine.history("ch", run_id=middle)[0].data["continued_from"]
    assert engine.describe("ch", run_id=middle).search_attributes == held
    assert engine.describe("ch", run_id=first).search_attributes == {
        "generation": 2, "customer": "c-chain"}
    assert upserts(engine, "ch", run_id=first) == [{"generation": 2}, {"customer": "c-chain"}]
    assert upserts(engine, "ch", run_id=middle) == [{"generation": 1}]
    assert ids(engine.list(attributes={"customer": "c-chain"})) == ["ch"]
    # A fork's history carries what its cut holds.
    engine.start(order, "c-f", 5, id="src").result(timeout=20)
    forked = engine.fork("src", 2, id="src-fork")
    assert forked.result(timeout=20) == 5
    assert engine.describe("src-fork").search_attributes == {"customer": "c-f", "total": 5}
    assert ids(engine.list(attributes={"customer": "c-f"})) == ["src", "src-fork"]


# -- a database created by the previous schema -----------------------------------------------

def test_a_sqlite_file_of_the_previous_schema_is_migrated_and_its_runs_listed(tmp_path):
    from aion_green.stores.sqlite.schema import _MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in (s for step in _MIGRATIONS[:5] for s in step):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=5")
    conn.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)", [
        ("old-a", "ra", "search.order", "completed", '["c-1", 1]', "1", None, 10.0),
        ("old-b", "rb", "search.order", "completed", '["c-2", 2]', "2", None, 20.0)])
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?)", [
        ("old-a", 1, "WorkflowStarted", 10.0,
         '{"workflow_type":"search.order","run_id":"ra","args":["c-1",1]}'),
        ("old-a", 2, "WorkflowCompleted", 11.0, '{"result":1}'),
        ("old-b", 1, "WorkflowStarted", 20.0,
         '{"workflow_type":"search.order","run_id":"rb","args":["c-2",2]}'),
        ("old-b", 2, "WorkflowCompleted", 21.0, '{"result":2}')])
    conn.close()
    with aion.Engine(f"sqlite:///{path}", workflows=list(ALL)) as engine:
        runs = engine.list()
        assert [(r.workflow_id, r.parent_id, r.search_attributes, r.head_seq) for r in runs] == [
            ("old-a", None, {}, 2), ("old-b", None, {}, 2)]
        assert engine.count(started_before=15.0) == 1
        assert engine.count_by_status()["completed"] == 2
        engine.start(order, "c-3", 3, 1, id="new").result(timeout=20)
        assert ids(engine.list(parent="new")) == ["new/item-0"]
        assert ids(engine.list(attributes={"customer": "c-3"})) == ["new"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 6
    conn.close()


def test_a_postgres_schema_of_the_previous_version_is_migrated_and_its_runs_listed(pg_url):
    import psycopg

    from aion_green.stores.postgres.schema import _MIGRATIONS, SCHEMA_VERSION
    from aion_green.stores.postgres.store import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (s for step in _MIGRATIONS[:3] for s in step):
            conn.execute(statement)
        conn.execute("CREATE TABLE aion_schema(version INTEGER NOT NULL)")
        conn.execute("INSERT INTO aion_schema VALUES (3)")
        conn.execute("INSERT INTO aion_runs(workflow_id, run_id, workflow_type, status, args, "
                     "result, head_seq, created_at, updated_at) VALUES "
                     "('old-a', 'ra', 'search.order', 'completed', '[\"c-1\", 1]', '1', 2, 10, 11)")
    store = PostgresStore(pg_url)
    try:
        (info,) = store.list_runs()
        assert (info.workflow_id, info.parent_id, info.search_attributes) == ("old-a", None, {})
        assert store.count_runs_by_status()["completed"] == 1
        assert store._query("SELECT version FROM aion_schema") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 4
    finally:
        store.close()
    with aion.Engine(pg_url, workflows=list(ALL)) as engine:
        engine.start(order, "c-2", 2, 1, id="new").result(timeout=30)
        assert ids(engine.list(parent="new")) == ["new/item-0"]
        assert ids(engine.list(attributes={"customer": "c-2"})) == ["new"]
        assert engine.count() == 3


# -- over HTTP, against a real worker; and through the command line ---------------------------

TOKEN = "search-token"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("search")
    (directory / "searchflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'search.db'}", "searchflows",
                           "--token", TOKEN)
    try:
        served.db = f"sqlite:///{directory / 'search.db'}"
        client = Client(served.http, token=TOKEN)
        for customer, total, items, wid in (("c-1", 42, 2, "h-1"), ("c-2", 42.0, 0, "h-2"),
                                            ("c-1", 7, 0, "h-3")):
            client.start("search.order", customer, total, items, id=wid)
        for wid in ("h-1", "h-2", "h-3"):
            client.result(wid, timeout=30)
        served.middle = time.time()
        time.sleep(0.05)
        client.start("search.waits", "c-3", id="h-4")
        wait_until(lambda: client.describe("h-4").search_attributes, what="h-4's upsert")
        yield served
        client.signal("h-4", "go", 1)
        assert client.result("h-4", timeout=30)["got"] == 1
    finally:
        served.stop()


def call(worker, path, query=None):
    return worker_call(worker, "GET", path, query, token=TOKEN)


def listed(worker, **query):
    status, doc = call(worker, "/v1/workflows", query)
    assert status == 200, doc
    return [r["workflow_id"] for r in doc["runs"]]


def test_over_http_lists_filter_and_summaries_name_parent_and_attributes(worker):
    status, doc = call(worker, "/v1/workflows", {"parent": "h-1"})
    assert status == 200 and [r["workflow_id"] for r in doc["runs"]] == ["h-1/item-0", "h-1/item-1"]
    assert {r["parent_id"] for r in doc["runs"]} == {"h-1"}
    assert doc["runs"][0]["search_attributes"] == {"item": 0, "even": True}
    status, doc = call(worker, "/v1/workflows/h-1")
    assert doc["parent_id"] is None and doc["search_attributes"] == {"customer": "c-1", "total": 42}
    assert listed(worker, **{"attr.customer": "c-1"}) == ["h-1", "h-3"]
    assert listed(worker, **{"attr.customer": "c-1", "attr.total": "42"}) == ["h-1"]
    assert listed(worker, **{"attr.total": "42.0"}) == ["h-2"]
    assert listed(worker, **{"attr.even": "true", "type": "search.item"}) == ["h-1/item-0"]
    after = datetime.fromtimestamp(worker.middle, tz=timezone.utc).isoformat()
    assert listed(worker, started_after=after) == ["h-4"]
    assert listed(worker, started_after=after.replace("+00:00", "Z")) == ["h-4"]
    assert listed(worker, started_before=after, status="completed", limit=2) == ["h-1", "h-1/item-0"]
    assert listed(worker, started_before=after, status="completed", limit=2,
                  after="h-1/item-0") == ["h-1/item-1", "h-2"]
    assert listed(worker, status="running", **{"attr.customer": "c-3"}) == ["h-4"]
    assert listed(worker, id_prefix="h-1") == ["h-1", "h-1/item-0", "h-1/item-1"]
    assert listed(worker, id_prefix="h-1/") == ["h-1/item-0", "h-1/item-1"]
    assert call(worker, "/v1/workflows/count", {"id_prefix": "h-"}) == (200, {"count": 6})


def test_over_http_counts_with_the_same_filters_and_per_status(worker):
    assert call(worker, "/v1/workflows/count") == (200, {"count": 6})
    assert call(worker, "/v1/workflows/count", {"attr.customer": "c-1"}) == (200, {"count": 2})
    assert call(worker, "/v1/workflows/count", {"parent": "h-1", "status": "completed"}) == (
        200, {"count": 2})
    status, doc = call(worker, "/v1/workflows/count", {"by": "status"})
    assert status == 200 and doc == {"counts": {"running": 1, "completed": 5, "failed": 0,
                                                "cancelled": 0, "continued": 0,
                                                "timed_out": 0}}
    status, doc = call(worker, "/v1/workflows/count", {"by": "status", "type": "search.item"})
    assert doc["counts"]["completed"] == 2 and doc["counts"]["running"] == 0


@pytest.mark.parametrize("path, query, field", [
    ("/v1/workflows", {"started_after": "yesterday"}, "started_after"),
    ("/v1/workflows/count", {"started_before": "2024-13-01"}, "started_before"),
    ("/v1/workflows", {"owner": "me"}, "owner"),
    ("/v1/workflows/count", {"by": "type"}, "by"),
    ("/v1/workflows/count", {"by": "status", "status": "running"}, "status"),
    ("/v1/workflows", {"attr.a=b": "1"}, "attr.a=b"),
    ("/v1/workflows", {"attr.": "1"}, "attr."),
    ("/v1/workflows", {"attr.customer": "x" * 1001}, "attr.customer"),
    ("/v1/workflows", {"status": "lost"}, "status"),
    ("/v1/workflows", {"parent": ""}, "parent"),
    ("/v1/workflows", {"id_prefix": ""}, "id_prefix"),
    ("/v1/workflows", {"limit": "0"}, "limit"),
])
def test_over_http_a_bad_filter_is_a_400_naming_its_field(worker, path, query, field):
    status, doc = call(worker, path, query)
    assert status == 400, doc
    assert doc["error"]["code"] == "invalid_argument" and doc["error"]["field"] == field, doc


def test_the_client_mirrors_the_engine(worker):
    client = Client(worker.http, token=TOKEN)
    assert ids(client.list(parent="h-1")) == ["h-1/item-0", "h-1/item-1"]
    assert client.list(parent="h-1")[0].parent_id == "h-1"
    assert ids(client.list(attributes={"total": 42})) == ["h-1"]
    assert ids(client.list(attributes={"even": True})) == ["h-1/item-0"]
    middle = datetime.fromtimestamp(worker.middle, tz=timezone.utc)
    assert ids(client.list(started_after=middle)) == ["h-4"]
    assert ids(client.list(started_after=worker.middle)) == ["h-4"]
    assert client.count(started_before=middle) == 5
    assert client.count(workflow_type="search.order", attributes={"customer": "c-1"}) == 2
    assert client.count_by_status(parent="h-1") == {"running": 0, "completed": 2, "failed": 0,
                                                    "cancelled": 0, "continued": 0,
                                                    "timed_out": 0}
    assert client.describe("h-4").search_attributes == {"customer": "c-3", "tier": "gold"}
    assert ids(client.list(id_prefix="h-1/")) == ["h-1/item-0", "h-1/item-1"]
    assert client.count(id_prefix="h-1") == 3
    assert client.count_by_status(id_prefix="h-4")["running"] == 1
    with pytest.raises(aion.ConfigurationError, match="naive"):
        client.list(started_after=datetime(2024, 1, 1))
    with pytest.raises(aion.ConfigurationError, match="a filter matches a value"):
        client.count(attributes={"x": [1]})


def cli(*args, rc=0):
    proc = run_python(["-m", "aion_green", *args], check=False, timeout=60)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.mark.parametrize("where", ["store", "http"])
def test_the_command_line_lists_and_counts_with_filters(worker, where):
    db = worker.db if where == "store" else worker.http
    base = ["--db", db, "--token", TOKEN, "--json"]

    def cli_ids(*args):
        return [r["workflow_id"] for r in json.loads(cli(*base, "list", *args).stdout)]

    assert cli_ids("--parent", "h-1") == ["h-1/item-0", "h-1/item-1"]
    assert cli_ids("--prefix", "h-1/") == ["h-1/item-0", "h-1/item-1"]
    assert cli_ids("--attr", "customer=c-1") == ["h-1", "h-3"]
    assert cli_ids("--attr", "customer=c-1", "--attr", "total=42") == ["h-1"]
    after = datetime.fromtimestamp(worker.middle, tz=timezone.utc).isoformat()
    assert cli_ids("--started-after", after) == ["h-4"]
    assert cli_ids("--started-before", after, "--type", "search.order") == ["h-1", "h-2", "h-3"]
    assert json.loads(cli(*base, "count", "--attr", "customer=c-1").stdout) == {"count": 2}
    assert json.loads(cli(*base, "count", "--by-status", "--parent", "h-1").stdout) == {
        "counts": {"running": 0, "completed": 2, "failed": 0, "cancelled": 0, "continued": 0,
                   "timed_out": 0}}
    text = cli("--db", db, "--token", TOKEN, "count", "--by-status").stdout
    assert "running" in text and "completed" in text and " 5" in text
    # Bad input: usage errors (exit 2) naming the option.
    bad = cli(*base, "list", "--started-after", "soon", rc=2)
    assert "--started-after" in bad.stderr
    bad = cli(*base, "count", "--attr", "novalue", rc=2)
    assert "NAME=VALUE" in bad.stderr
