"""The store-wide event stream (issue 18): every run's events in commit
order behind one global cursor, in Python (``Engine.events``), over HTTP
against a real ``aion-green worker --http`` process (``GET /v1/events``, a
stream of server-sent events, and ``GET /v1/events/page``), through the
``Client`` and the CLI; the migration that numbers histories written
before; and, on PostgreSQL, the commit order of the cursor with several
writers at once."""
import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_until
from worker_process import WorkerProcess, call, request, worker_env

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


def double(x):
    return 2 * x


@aion.workflow(name="gev.steps")
def steps(ctx, x):
    return ctx.step(double, ctx.step(double, x))


@aion.workflow(name="gev.wait")
def wait(ctx):
    return ctx.receive("go", timeout=120)


@aion.workflow(name="gev.chain")
def chain(ctx, n):
    if n > 0:
        ctx.continue_as_new(n - 1)
    return n
'''

ns = {}
exec(compile(FLOWS, "gev_flows", "exec"), ns)
steps, wait, chain = ns["steps"], ns["wait"], ns["chain"]
TOKEN = "gev-token"


def everything(engine, after=0, **filters):
    """Every event after ``after``, page by page (small pages, to follow ``next``)."""
    found = []
    while True:
        page = engine.events(after, limit=3, **filters)
        found += page.events
        if page.next == after:
            return found
        after = page.next


# -- Python -----------------------------------------------------------------------------------
def test_every_run_s_events_come_once_in_commit_order_with_their_run(make_engine):
    engine = make_engine(steps, wait, chain)
    start = engine.events()  # no cursor: none yet, and the cursor of now
    assert start.events == [] and start.next == engine.event_head()
    assert engine.start(steps, 1, id="s").result(timeout=20) == 4
    assert engine.start(chain, 1, id="c").result(timeout=20) == 0
    engine.start(wait, id="w")
    engine.signal("w", "go", "now")
    assert engine.result("w", timeout=20) == "now"
    seen = everything(engine, start.next)
    positions = [e.position for e in seen]
    assert positions == sorted(set(positions)) and positions[-1] == engine.event_head()
    by_run = {}
    for event in seen:
        by_run.setdefault((event.workflow_id, event.run_id), []).append(event)
    assert sorted(wid for wid, _ in by_run) == ["c", "c", "s", "w"]  # two runs of the chain
    for (wid, run_id), events in by_run.items():
        history = engine.history(wid, run_id=run_id)
        assert [(e.seq, e.type, e.at, e.data) for e in events] == [
            (h.seq, h.type, h.at, h.data) for h in history]
    assert engine.events(positions[-1]).events == []


def test_filters_by_event_type_and_by_the_run_s_status_when_read(make_engine):
    engine = make_engine(steps, wait)
    engine.start(steps, 1, id="done").result(timeout=20)
    engine.start(wait, id="open")
    wait_until(lambda: engine.describe("open").head_seq >= 1, what="the open run")
    stepped = everything(engine, types=["StepCompleted"])
    assert [(e.workflow_id, e.data["result"]) for e in stepped] == [("done", 2), ("done", 4)]
    assert {e.workflow_id for e in everything(engine, statuses="running")} == {"open"}
    assert [e.type for e in everything(engine, types=ev.WORKFLOW_STARTED, statuses=["completed"])
            ] == [ev.WORKFLOW_STARTED]
    engine.signal("open", "go", 1)
    engine.result("open", timeout=20)
    # The status is the run's when the page is read: "open" has ended now.
    assert {e.workflow_id for e in everything(engine, statuses="running")} == set()
    assert {e.workflow_id for e in everything(engine, statuses="completed")} == {"done", "open"}


def test_bad_arguments_name_themselves_and_list_the_choices(make_engine):
    engine = make_engine(steps)
    engine.start(steps, 1, id="s").result(timeout=20)
    head = engine.event_head()
    for kwargs, words in [({"after": -1}, "events(after=...)"),
                          ({"after": head + 1}, f"to the last recorded ({head})"),
                          ({"after": "3"}, "events(after=...)"),
                          ({"after": 0, "types": ["StepDone"]}, "StepCompleted"),
                          ({"after": 0, "statuses": "over"}, "running"),
                          ({"after": 0, "limit": 0}, "events(limit=...)"),
                          ({"after": 0, "limit": 1001}, "1 to 1000")]:
        with pytest.raises(aion.ConfigurationError) as failure:
            engine.events(**kwargs)
        assert words in str(failure.value), kwargs


def test_a_namespace_s_stream_holds_its_runs_alone_shown_by_their_ids(make_engine):
    engine = make_engine(steps, chain)
    engine.start(steps, 1, id="same").result(timeout=20)
    engine.start(steps, 2, id="same", namespace="shop").result(timeout=20)
    engine.start(chain, 1, id="c", namespace="shop").result(timeout=20)
    shop = everything(engine, namespace="shop")
    assert {(e.namespace, e.workflow_id) for e in shop} == {("shop", "same"), ("shop", "c")}
    assert [e.data["result"] for e in shop if e.type == ev.STEP_COMPLETED] == [4, 8]
    default = everything(engine)
    assert {(e.namespace, e.workflow_id) for e in default} == {("default", "same")}
    assert [e.data["result"] for e in default if e.type == ev.STEP_COMPLETED] == [2, 4]
    with pytest.raises(aion.ConfigurationError, match="namespace"):
        engine.events(0, namespace="bad/name")


def test_a_purge_leaves_a_gap_the_cursor_steps_over_and_positions_go_on_above_it(make_engine):
    """Retention deletes old runs' events (the chain's archived ones too):
    the stream has a gap there, no position is given again, and a reader
    whose cursor was inside the gap reads on from it."""
    engine = make_engine(steps, chain)
    engine.start(chain, 1, id="old").result(timeout=20)
    middle = engine.event_head()
    engine.start(steps, 1, id="kept").result(timeout=20)
    kept = everything(engine, middle)
    head = engine.event_head()
    assert engine.purge(0, limit=1) == 1 and engine.count() == 1  # "old": the oldest end
    assert engine.event_head() == head
    assert [(e.position, e.workflow_id) for e in everything(engine)] == [
        (e.position, e.workflow_id) for e in kept]
    assert engine.events(middle - 1).events[0].position == kept[0].position
    engine.start(steps, 2, id="new").result(timeout=20)
    assert min(e.position for e in everything(engine, head)) == head + 1


def test_a_purge_of_the_newest_runs_gives_none_of_their_positions_again(make_engine):
    """Positions are drawn from the highest one recorded (no counter row
    is written per commit, issue 21): a purge that deletes the events
    holding the highest positions, archived ones included, must not let a
    later start take them again, or a reader past them would miss it."""
    engine = make_engine(steps, chain)
    engine.start(chain, 2, id="chain").result(timeout=20)
    engine.start(steps, 1, id="last").result(timeout=20)
    head = engine.event_head()
    seen = everything(engine)
    assert max(e.position for e in seen) == head
    assert engine.purge(0, limit=10) == 2 and engine.count() == 0
    assert engine.event_head() == head and everything(engine) == []
    engine.start(steps, 3, id="after").result(timeout=20)
    later = everything(engine, head)
    assert [e.workflow_id for e in later] == ["after"] * len(later) and len(later) >= 4
    assert min(e.position for e in later) == head + 1
    assert engine.event_head() == max(e.position for e in later)


def test_two_sqlite_connections_writing_in_turn_never_share_a_position(tmp_path):
    """Each connection knows the last position it gave only while no other
    has committed since: two stores on one file (two processes, in
    effect), writing in turn and in batches, number every event once and
    in commit order."""
    from aion_green.store import CreateRun
    from aion_green.stores.sqlite.store import SQLiteStore

    path = str(tmp_path / "two.db")
    first, second = SQLiteStore(path), SQLiteStore(path)
    try:
        heads = {}
        for i, store in enumerate([first, second] * 6):
            wid = f"w{i % 3}"
            if wid not in heads:
                store.write_batch([CreateRun(wid, "t.wf", "[]", f"r{i}", 1.0 + i)])
                heads[wid] = 1
            events = [ev.NewEvent(ev.STEP_COMPLETED, 2.0 + i, {"step": n}) for n in range(1 + i % 2)]
            heads[wid] = store.write_batch([Append(wid, heads[wid], events)])[0]
        events, _ = first.read_events(0, 1000)
        positions = [e.position for e in events]
        assert positions == list(range(1, len(positions) + 1))
        assert len(positions) == sum(heads.values()) == first.event_head() == second.event_head()
    finally:
        first.close()
        second.close()


# -- schema migration: histories written before get positions ---------------------------------
def _numbered_in_time_order(store):
    """The migrated store of the two tests below: run "a" continued as new
    (ra1 archived, ra2 current), "b" completed; every event numbered by its
    time (archived first on a tie), and new events numbered after them."""
    events, cursor = store.read_events(0, 100)
    assert [(e.position, e.workflow_id, e.run_id, e.seq) for e in events] == [
        (1, "a", "ra1", 1), (2, "b", "rb", 1), (3, "b", "rb", 2), (4, "a", "ra1", 2),
        (5, "a", "ra2", 1)]
    assert cursor == store.event_head() == 5
    store.write_batch([Append("a", 1, [ev.NewEvent(ev.STEP_COMPLETED, 40.0, {"step": 1})])])
    assert [(e.position, e.seq) for e in store.read_events(5, 100)[0]] == [(6, 2)]


def test_a_sqlite_file_of_schema_7_numbers_its_events_in_time_order(tmp_path):
    from aion_green.stores.sqlite.schema import _MIGRATIONS, SCHEMA_VERSION
    from aion_green.stores.sqlite.store import SQLiteStore

    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in (s for step in _MIGRATIONS[:7] for s in step):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=7")
    conn.executemany("INSERT INTO runs(workflow_id, run_id, workflow_type, status, args, "
                     "created_at) VALUES (?,?,?,?,?,?)",
                     [("a", "ra2", "m.wf", "running", "[]", 30.0),
                      ("b", "rb", "m.wf", "completed", "[]", 20.0)])
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?)", [
        ("a", 1, "WorkflowStarted", 30.0, '{"run_id":"ra2"}'),
        ("b", 1, "WorkflowStarted", 20.0, '{"run_id":"rb"}'),
        ("b", 2, "WorkflowCompleted", 25.0, '{"result":1}')])
    conn.executemany("INSERT INTO archived_events VALUES (?,?,?,?,?,?)", [
        ("a", "ra1", 1, "WorkflowStarted", 10.0, '{"run_id":"ra1"}'),
        ("a", "ra1", 2, "WorkflowContinuedAsNew", 30.0, '{"run_id":"ra2"}')])
    conn.close()
    store = SQLiteStore(str(path))
    try:
        _numbered_in_time_order(store)
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 9
    finally:
        store.close()


def test_a_postgres_schema_of_version_5_numbers_its_events_in_time_order(pg_url):
    import psycopg

    from aion_green.stores.postgres.schema import _MIGRATIONS, SCHEMA_VERSION
    from aion_green.stores.postgres.store import PostgresStore

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (s for step in _MIGRATIONS[:5] for s in step):
            conn.execute(statement)
        conn.execute("CREATE TABLE aion_schema(version INTEGER NOT NULL)")
        conn.execute("INSERT INTO aion_schema VALUES (5)")
        conn.execute("INSERT INTO aion_runs(workflow_id, run_id, workflow_type, status, args, "
                     "head_seq, created_at, updated_at) VALUES "
                     "('a', 'ra2', 'm.wf', 'running', '[]', 1, 30, 30), "
                     "('b', 'rb', 'm.wf', 'completed', '[]', 2, 20, 25)")
        conn.execute("INSERT INTO aion_events VALUES ('a', 1, 'WorkflowStarted', 30, '{}'), "
                     "('b', 1, 'WorkflowStarted', 20, '{}'), ('b', 2, 'WorkflowCompleted', 25, '{}')")
        conn.execute("INSERT INTO aion_archived_events VALUES "
                     "('a', 'ra1', 1, 'WorkflowStarted', 10, '{}'), "
                     "('a', 'ra1', 2, 'WorkflowContinuedAsNew', 30, '{}')")
    store = PostgresStore(pg_url)
    try:
        _numbered_in_time_order(store)
        assert store._query("SELECT version FROM aion_schema") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 7
    finally:
        store.close()


# -- PostgreSQL: the cursor is commit-ordered with several writers ----------------------------
def test_a_transaction_holding_positions_makes_later_writers_wait_for_its_commit(pg_url):
    """The failure window of a cursor given at insert (a sequence): writer A
    takes position p and has not committed; writer B takes p + 1 and
    commits; a reader sees p + 1, moves its cursor past p, and never sees
    A's event once A commits. Here B cannot take a position until A
    commits, and the reader following the cursor sees both, in order."""
    import psycopg

    from aion_green.stores.postgres.store import PostgresStore

    writer, reader = PostgresStore(pg_url), PostgresStore(pg_url)
    writer.create_run("a", "m.wf", "[]", "ra", 1.0)
    writer.create_run("b", "m.wf", "[]", "rb", 1.0)
    seen, cursor = [], 0
    page, cursor = reader.read_events(cursor, 100)
    seen += page
    slow = psycopg.connect(pg_url)  # writer A: an event inserted, not committed
    try:
        slow.execute("INSERT INTO aion_events(workflow_id, seq, type, at, data) "
                     "VALUES ('a', 2, 'StepCompleted', 2.0, '{}')")
        done = threading.Event()

        def writer_b():
            writer.write_batch([Append("b", 1, [ev.NewEvent(ev.STEP_COMPLETED, 3.0, {})])])
            done.set()

        thread = threading.Thread(target=writer_b)
        thread.start()
        assert not done.wait(0.5)  # B waits for A's commit
        page, cursor = reader.read_events(cursor, 100)
        assert page == [] and cursor == 2  # the reader sees neither
        slow.commit()
        thread.join(10)
        assert done.is_set()
    finally:
        slow.close()
    page, cursor = reader.read_events(cursor, 100)
    seen += page
    assert [(e.workflow_id, e.seq, e.position) for e in seen] == [
        ("a", 1, 1), ("b", 1, 2), ("a", 2, 3), ("b", 2, 4)]
    writer.close()
    reader.close()


def test_a_reader_following_the_cursor_misses_nothing_while_two_engines_commit(pg_url):
    """Two engines over one database drive runs at once (their group
    commits interleave); a reader follows the cursor page by page while
    they write. At the end it has seen every event once, in position
    order: none committed below its cursor after it moved past."""
    one = aion.Engine(pg_url, workflows=[steps])
    two = aion.Engine(pg_url, workflows=[steps])
    followed, stop = [], threading.Event()

    def follow():
        cursor = 0
        while True:
            last = stop.is_set()
            page = one.events(cursor, limit=7)
            followed.extend(page.events)
            cursor = page.next
            if last and not page.events:
                return

    reader = threading.Thread(target=follow)
    try:
        reader.start()
        handles = [(one if i % 2 else two).start(steps, i, id=f"r{i}") for i in range(60)]
        for handle in handles:
            handle.result(timeout=60)
    finally:
        stop.set()
        reader.join(60)
        one.shutdown()
        two.shutdown()
    with aion.Engine(pg_url, workflows=[steps]) as engine:
        every = everything(engine)
    assert len(every) == 60 * 4
    assert [e.position for e in followed] == [e.position for e in every]


# -- HTTP against a real worker process -------------------------------------------------------
TEAM = "gev-team-token"  # granted the namespace "team" alone


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gev")
    (directory / "gevflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'gev.db'}", "gevflows",
                           "--token", TOKEN, "--token", f"{TEAM}:team")
    yield served
    served.stop()


def frames(port, target, count, headers=None, timeout=20):
    """The first ``count`` frames of an SSE stream: [(id, event, data)]."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {TOKEN}",
                                             **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type").startswith("text/event-stream")
        found, fields = [], {}
        while len(found) < count:
            text = response.readline().decode().rstrip("\r\n")
            if text and not text.startswith(":"):
                key, _, value = text.partition(":")
                fields[key] = value.strip()
            elif fields:
                found.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
        return found
    finally:
        conn.close()


def start(worker, workflow, *args, wid):
    status, started = call(worker, "POST", "/v1/workflows", token=TOKEN,
                           body={"workflow": workflow, "args": list(args), "id": wid})
    assert status == 200, started
    return started["run_id"]


def test_over_http_the_stream_carries_every_run_s_events_behind_a_global_cursor(worker):
    client = Client(f"http://127.0.0.1:{worker.port}", token=TOKEN)
    run_id = start(worker, "gev.steps", 5, wid="h-1")
    assert client.result("h-1", timeout=20) == 20
    got = frames(worker.port, "/v1/events?after=0", 5)
    assert got[0][1] == "cursor" and got[0][2] == {"next": 0}
    events = [data for _, kind, data in got[1:]]
    assert [(e["workflow_id"], e["run_id"], e["seq"], e["type"]) for e in events] == [
        ("h-1", run_id, 1, "WorkflowStarted"), ("h-1", run_id, 2, "StepCompleted"),
        ("h-1", run_id, 3, "StepCompleted"), ("h-1", run_id, 4, "WorkflowCompleted")]
    assert [i for i, _, _ in got[1:]] == [e["position"] for e in events]
    assert [kind for _, kind, _ in got[1:]] == [e["type"] for e in events]
    assert events[1]["data"]["result"] == 10 and isinstance(events[1]["at"], float)
    # Filters: by type (several, comma-separated) and by the run's status now.
    typed = frames(worker.port, "/v1/events?after=0&type=StepCompleted,WorkflowCompleted", 4)
    assert [kind for _, kind, _ in typed[1:]] == ["StepCompleted", "StepCompleted",
                                                 "WorkflowCompleted"]
    status, page = call(worker, "GET", "/v1/events/page", token=TOKEN,
                        query={"after": 0, "status": "completed", "type": "StepCompleted"})
    assert status == 200 and [e["data"]["result"] for e in page["events"]] == [10, 20]
    assert page["next"] >= events[-1]["position"]
    # The Client: a page, and an iterator that reads to the head.
    first = client.event_page(0, types="StepCompleted", limit=1)
    assert [e.data["result"] for e in first.events] == [10]
    assert first.next == events[1]["position"]
    assert [(e.workflow_id, e.seq) for e in client.global_events(0, follow=False)
            if e.workflow_id == "h-1"] == [("h-1", s) for s in (1, 2, 3, 4)]


def test_over_http_no_cursor_is_a_live_tail_and_last_event_id_resumes(worker):
    import http.client

    start(worker, "gev.steps", 1, wid="t-old")
    wait_until(lambda: call(worker, "GET", "/v1/workflows/t-old", token=TOKEN)[1]["status"]
               == "completed", what="the old run's end")
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=20)
    conn.request("GET", "/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    head_frame = [response.readline() for _ in range(4)]  # retry, id, event, data
    now = int(head_frame[1].decode().split(":")[1])
    run_id = start(worker, "gev.wait", wid="t-new")
    cut = None
    while cut is None:
        text = response.readline().decode()
        if text.startswith("id:"):
            cut = int(text.split(":")[1])
    conn.close()  # cut after the new run's first event
    status, _ = call(worker, "POST", "/v1/workflows/t-new/signals/go", token=TOKEN,
                     body={"payload": "x"})
    assert status == 200
    rest = frames(worker.port, "/v1/events", 3, headers={"Last-Event-ID": str(cut)})
    assert rest[0][:2] == (cut, "cursor")
    assert [(d["workflow_id"], d["run_id"], d["seq"]) for _, _, d in rest[1:]] == [
        ("t-new", run_id, 2), ("t-new", run_id, 3)]
    assert now < cut < rest[1][0] < rest[2][0]
    # The Client follows: a stream from a cursor, resuming by itself.
    client = Client(f"http://127.0.0.1:{worker.port}", token=TOKEN)
    stream = client.global_events(now, types=["MessageReceived"])
    got = next(stream)
    stream.close()
    assert (got.workflow_id, got.type, got.data["payload"]) == ("t-new", "MessageReceived", "x")


def test_over_http_bad_cursors_and_filters_are_400s_naming_the_field(worker):
    start(worker, "gev.steps", 1, wid="b-1")
    status, page = call(worker, "GET", "/v1/events/page", token=TOKEN, query={"after": 0})
    head = page["next"]
    for target, headers, field in [
            ("/v1/events?after=-1", {}, "after"),
            (f"/v1/events?after={head + 1000}", {}, "after"),
            ("/v1/events", {"Last-Event-ID": str(head + 1000)}, "Last-Event-ID"),
            ("/v1/events?type=StepDone", {}, "type"),
            ("/v1/events?status=over", {}, "status"),
            ("/v1/events?type=", {}, "type"),
            ("/v1/events?limit=5", {}, "limit"),
            ("/v1/events/page?limit=0", {}, "limit"),
            ("/v1/events/page?after=x", {}, "after")]:
        status, _, body = request(worker.port, "GET", target, token=TOKEN, headers=headers)
        assert status == 400, (target, body)
        assert body["error"]["code"] == "invalid_argument", (target, body)
        assert body["error"].get("field") == field, (target, body)
    assert request(worker.port, "POST", "/v1/events", token=TOKEN)[0] == 405
    assert request(worker.port, "GET", "/v1/events/nope", token=TOKEN)[0] == 404
    assert request(worker.port, "GET", "/v1/events/page")[0] == 401


def test_the_cli_prints_the_events_and_follows(worker, tmp_path):
    start(worker, "gev.steps", 3, wid="cli-1")
    client = Client(f"http://127.0.0.1:{worker.port}", token=TOKEN)
    client.result("cli-1", timeout=20)
    base = [sys.executable, "-m", "aion_green", "--db", f"http://127.0.0.1:{worker.port}",
            "--token", TOKEN, "events"]
    out = subprocess.run([*base, "--after", "0", "--type", "StepCompleted", "--json"],
                         env=worker_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["data"]["result"] for e in lines if e["workflow_id"] == "cli-1"] == [6, 12]
    local = subprocess.run([sys.executable, "-m", "aion_green", "--db",
                            f"sqlite:///{worker.directory / 'gev.db'}", "events", "--json",
                            "--type", "StepCompleted,WorkflowCompleted"],
                           env=worker_env(), capture_output=True, text=True, timeout=60)
    assert local.returncode == 0, local.stderr
    assert [json.loads(line) for line in local.stdout.splitlines()] == [
        e for e in (json.loads(line) for line in subprocess.run(
            [*base, "--json", "--type", "StepCompleted", "--type", "WorkflowCompleted"],
            env=worker_env(), capture_output=True, text=True, timeout=60).stdout.splitlines())]
    bad = subprocess.run([*base, "--after", "-1"], env=worker_env(), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "after" in bad.stderr
    follower = subprocess.Popen([*base, "--follow", "--json"], env=worker_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # attached: a live tail
        start(worker, "gev.steps", 4, wid="cli-2")
        line = json.loads(follower.stdout.readline())
        assert (line["workflow_id"], line["seq"], line["type"]) == ("cli-2", 1, "WorkflowStarted")
    finally:
        follower.terminate()
        follower.communicate(timeout=30)


def test_over_http_a_stream_is_of_one_namespace_and_its_grant_holds(worker):
    status, _ = call(worker, "POST", "/v1/workflows", token=TEAM, query={"namespace": "team"},
                     body={"workflow": "gev.steps", "args": [7], "id": "ns-1"})
    assert status == 200
    start(worker, "gev.steps", 8, wid="ns-1")  # the same id in the default namespace
    team = Client(f"http://127.0.0.1:{worker.port}", token=TEAM, namespace="team")
    assert team.result("ns-1", timeout=20) == 28
    Client(f"http://127.0.0.1:{worker.port}", token=TOKEN).result("ns-1", timeout=20)
    seen = list(team.global_events(0, follow=False))
    assert {(e.namespace, e.workflow_id) for e in seen} == {("team", "ns-1")}
    assert [e.data["result"] for e in seen if e.type == "StepCompleted"] == [14, 28]
    got = frames(worker.port, "/v1/events?after=0&namespace=team&type=StepCompleted", 3,
                 headers={"Authorization": f"Bearer {TEAM}"})
    assert [(d["namespace"], d["workflow_id"], d["data"]["result"]) for _, _, d in got[1:]] == [
        ("team", "ns-1", 14), ("team", "ns-1", 28)]
    # The default namespace's stream has none of them; a token not granted it: 403.
    status, page = call(worker, "GET", "/v1/events/page", token=TOKEN, query={"after": 0})
    assert status == 200 and all(e["namespace"] == "default" for e in page["events"])
    for target in ("/v1/events/page?after=0", "/v1/events?after=0",
                   "/v1/events/page?after=0&namespace=other"):
        status, _, body = request(worker.port, "GET", target, token=TEAM)
        assert status == 403 and body["error"]["code"] == "namespace_denied", (target, body)
