import os
import sqlite3

import pytest
from store_contract import StoreContract

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append, CreateRun, SQLiteStore, sqlite_path_from_url


class TestSQLiteStoreContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        store = SQLiteStore(str(tmp_path / "contract.db"))
        yield store
        store.close()


def test_sqlite_durable_by_default_and_optional_speed_mode(tmp_path):
    durable = SQLiteStore(str(tmp_path / "d.db"))
    fast = SQLiteStore(str(tmp_path / "f.db"), durable=False)
    try:
        assert durable._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert fast._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert durable._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        durable.close()
        fast.close()


def test_store_reopens_with_its_data(tmp_path):
    path = str(tmp_path / "re.db")
    store = SQLiteStore(path)
    store.create_run("w", "t", "[]", "r", 1.0)
    store.close()
    store = SQLiteStore(path)
    try:
        assert store.get_run("w").workflow_type == "t"
    finally:
        store.close()


@pytest.mark.parametrize("url, path", [
    (None, os.path.abspath("aion.db")),
    ("sqlite:///rel/x.db", "rel/x.db"),
    ("sqlite:////abs/x.db", "/abs/x.db"),
    ("plain.db", "plain.db"),
])
def test_sqlite_urls(url, path):
    assert sqlite_path_from_url(url) == path


def test_a_non_sqlite_url_is_a_clear_error():
    with pytest.raises(aion.ConfigurationError, match="sqlite:///"):
        sqlite_path_from_url("mysql://x/y")


def test_a_file_with_foreign_tables_is_refused(tmp_path):
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events(x)")
    conn.commit()
    conn.close()
    with pytest.raises(aion.StoreError, match="did not create"):
        SQLiteStore(str(path))


def test_disk_full_writes_nothing_of_the_batch_and_recovers(tmp_path):
    """SQLITE_FULL mid-batch (a page limit stands in for a full disk): the
    whole batch is refused with a clear error, nothing of it is written, and
    writes succeed again once there is room."""
    store = SQLiteStore(str(tmp_path / "full.db"))
    try:
        store.create_run("w", "t", "[]", "r", 1.0)
        (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
        store._conn.execute(f"PRAGMA max_page_count={pages}")
        big = ev.NewEvent(ev.STEP_COMPLETED, 2.0,
                          {"step": 1, "name": "s", "attempt": 1, "result": "x" * 20000})
        with pytest.raises(aion.StoreUnavailable, match="cannot be written"):
            store.write_batch([CreateRun("other", "t", "[]", "r2", 1.0), Append("w", 1, [big])])
        assert store.get_run("other") is None
        assert [e.seq for e in store.read("w")] == [1]
        assert store.get_run("w").head_seq == 1
        store._conn.execute("PRAGMA max_page_count=1073741823")
        assert store.write_batch([Append("w", 1, [big])]) == [2]
    finally:
        store.close()


def test_stores_opening_a_new_file_at_the_same_moment_all_come_up(tmp_path):
    """Two gunicorn workers open a new database at once: one migrates, the
    others find it done (the check for foreign tables runs under the lock)."""
    import threading

    def open_all(path):
        stores, errors = [], []
        gate = threading.Barrier(8)

        def open_one():
            gate.wait()
            try:
                stores.append(SQLiteStore(path))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for store in stores:
            store.close()
        return len(stores), errors

    for attempt in range(5):
        assert open_all(str(tmp_path / f"race-{attempt}.db")) == (8, [])


def test_heads_a_store_remembers_are_checked_against_other_writers(tmp_path):
    """A group commit knows the heads it wrote without reading them back;
    a write by another connection (another process, the CLI), or by any
    other kind of write of its own, must still give SequenceConflict for a
    stale expected_seq and accept the true head."""
    from store_contract import step_event

    from aion_green.core.errors import SequenceConflict

    path = str(tmp_path / "heads.db")
    mine, other = SQLiteStore(path), SQLiteStore(path)
    try:
        mine.write_batch([CreateRun("w", "t", "[]", "r", 1.0), CreateRun("v", "t", "[]", "r", 1.0)])
        assert mine.write_batch([Append("w", 1, (step_event(1, "a"),))]) == [2]
        assert mine._known_heads == {"w": 2, "v": 1}  # nothing is read back for the next batch
        # Another connection appends to w: w's head is 3 now, not the 2 remembered.
        assert other.write_batch([Append("w", 2, (step_event(2, "b"),))]) == [3]
        stale, right = mine.write_batch([Append("w", 2, (step_event(3, "c"),)),
                                         Append("v", 1, (step_event(1, "x"),))])
        assert isinstance(stale, SequenceConflict) and right == 2
        assert mine.write_batch([Append("w", 3, (step_event(3, "c"),))]) == [4]
        # A write of its own outside a batch (a message to a run no engine
        # drives here) moves a head too.
        assert mine.deliver_message("w", "m", "1", 2.0) == 5
        (stale,) = mine.write_batch([Append("w", 4, (step_event(4, "d"),))])
        assert isinstance(stale, SequenceConflict)
        assert mine.write_batch([Append("w", 5, (step_event(4, "d"),))]) == [6]
        assert [e.seq for e in other.read("w")] == [1, 2, 3, 4, 5, 6]
        # A run that ended is forgotten.
        end = ev.NewEvent(ev.WORKFLOW_COMPLETED, 3.0, {"result": 1})
        assert mine.write_batch([Append("v", 2, (end,))]) == [3]
        assert "v" not in mine._known_heads
    finally:
        mine.close()
        other.close()


def test_positions_a_store_remembers_are_checked_against_other_writers(tmp_path):
    """A group commit writes the counter of global positions without reading
    it while no one else has written since its last batch; a write by
    another connection, a write of its own outside a batch, a continuation
    (which takes positions of its own), a failed batch: after each, the next
    batch reads the counter again. No position is given twice, and the
    counter is the highest one."""
    from store_contract import step_event

    path = str(tmp_path / "positions.db")
    mine, other = SQLiteStore(path), SQLiteStore(path)
    try:
        mine.write_batch([CreateRun("w", "t", "[]", "r", 1.0), CreateRun("v", "t", "[]", "r", 1.0)])
        assert mine.write_batch([Append("w", 1, (step_event(1, "a"),))]) == [2]
        assert mine._known_position == other.event_head() == 3  # not read back next time
        assert other.write_batch([Append("w", 2, (step_event(2, "b"),))]) == [3]
        assert mine.write_batch([Append("v", 1, (step_event(1, "x"),))]) == [2]
        assert mine.deliver_message("w", "m", "1", 2.0) == 4
        assert mine._known_position is None
        assert mine.write_batch([Append("v", 2, (step_event(2, "y"),))]) == [3]
        more = ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, 3.0,
                           {"run_id": "r2", "args": [], "generation": 1})
        assert mine.write_batch([Append("v", 3, (more,))]) == [4]
        assert mine._known_position is None  # the next run's WorkflowStarted took one more
        assert mine.write_batch([Append("w", 4, (step_event(3, "c"),))]) == [5]
        assert mine._known_position == other.event_head() == 10
        # A batch that fails after taking its positions (a full disk) is rolled back.
        (pages,) = mine._conn.execute("PRAGMA page_count").fetchone()
        mine._conn.execute(f"PRAGMA max_page_count={pages}")
        big = ev.NewEvent(ev.STEP_COMPLETED, 4.0,
                          {"step": 4, "name": "s", "attempt": 1, "result": "x" * 20000})
        with pytest.raises(aion.StoreUnavailable):
            mine.write_batch([Append("w", 5, (big,))])
        assert mine._known_position is None
        mine._conn.execute("PRAGMA max_page_count=1073741823")
        assert mine.write_batch([Append("w", 5, (step_event(4, "d"),))]) == [6]
        assert mine._known_position == other.event_head() == 11
        events, head = other.read_events(0, 100)
        positions = [e.position for e in events]
        assert len(set(positions)) == len(positions) and max(positions) == head == other.event_head()
    finally:
        mine.close()
        other.close()


def test_a_run_s_end_time_is_written_with_its_status_and_a_continuation_has_none(tmp_path):
    """runs.ended_at (what retention measures age by) is the time of the
    run's terminal event, set in the statement that sets its status; a run
    that continued as new has not ended, and its chain's next run has no end
    time until it ends."""
    store = SQLiteStore(str(tmp_path / "ends.db"))

    def ended_at(wid):
        return store._conn.execute("SELECT ended_at FROM runs WHERE workflow_id=?", (wid,)).fetchone()[0]

    try:
        store.write_batch([CreateRun("c", "t", "[]", "r", 1.0), CreateRun("f", "t", "[]", "r", 1.0)])
        more = ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, 2.0, {"run_id": "r2", "args": [], "generation": 1})
        failed = ev.NewEvent(ev.WORKFLOW_FAILED, 3.0, {"error": {"type": "E", "message": "m"}})
        assert store.write_batch([Append("c", 1, (more,)), Append("f", 1, (failed,))]) == [2, 2]
        assert (ended_at("c"), ended_at("f")) == (None, 3.0)
        assert store.get_run("f").status == ev.FAILED
        done = ev.NewEvent(ev.WORKFLOW_COMPLETED, 4.0, {"result": 1})
        assert store.write_batch([Append("c", 1, (done,))]) == [2]
        assert ended_at("c") == 4.0 and store.get_run("c").status == ev.COMPLETED
    finally:
        store.close()


def test_a_file_of_schema_4_is_upgraded_with_its_runs_and_their_heads(tmp_path):
    """Schema 5 reads a run's head from its events (schema 4 kept it in
    runs.head_seq and updated it on every append). A file written by an
    older aion_green is rebuilt in place: its runs, their order of
    creation (the rowids new_runs() reports) and their heads survive, and
    appends go on at the true head."""
    from store_contract import step_event

    from aion_green.core.errors import SequenceConflict
    from aion_green.stores.sqlite.schema import _MIGRATIONS, SCHEMA_VERSION

    path = str(tmp_path / "v4.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in (s for step in _MIGRATIONS[:4] for s in step):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=4")
    rows = [("b", "rb", "t", "running", "[1]", None, None, 3, 10.0, 12.0),
            ("a", "ra", "t", "completed", "[]", "7", None, 2, 20.0, 21.0)]
    conn.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    events = [("b", 1, "WorkflowStarted", 10.0, '{"workflow_type":"t","run_id":"rb","args":[1]}'),
              ("b", 2, "StepCompleted", 11.0, '{"step":1,"name":"s","attempt":1,"result":1}'),
              ("b", 3, "StepCompleted", 12.0, '{"step":2,"name":"s","attempt":1,"result":2}'),
              ("a", 1, "WorkflowStarted", 20.0, '{"workflow_type":"t","run_id":"ra","args":[]}'),
              ("a", 2, "WorkflowCompleted", 21.0, '{"result":7}')]
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?)", events)
    conn.close()

    store = SQLiteStore(path)
    try:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        b, a = store.get_run("b"), store.get_run("a")
        assert (b.run_id, b.status, b.args, b.head_seq, b.created_at, b.updated_at) == (
            "rb", "running", [1], 3, 10.0, 12.0)
        assert (a.status, a.result, a.head_seq, a.updated_at) == ("completed", 7, 2, 21.0)
        assert [(r.workflow_id, r.head_seq) for r in store.list_runs()] == [("a", 2), ("b", 3)]
        assert [(n.mark, n.workflow_id) for n in store.new_runs()] == [(1, "b"), (2, "a")]
        assert [r.workflow_id for r in store.list_runs(status="running")] == ["b"]
        assert isinstance(store.write_batch([Append("b", 2, [step_event(3, 3)])])[0], SequenceConflict)
        assert store.write_batch([Append("b", 3, [step_event(3, 3)])]) == [4]
        assert store.get_run("b").head_seq == 4
        assert [e.seq for e in store.read("b")] == [1, 2, 3, 4]
    finally:
        store.close()


def test_a_page_of_runs_of_a_status_is_a_range_of_an_index(tmp_path):
    """Recovery reads every running run, a page of 500 at a time: each page
    must be a range of an index in id order, not a sort of every run of that
    status (which made recovering N runs cost N^2/500). Checked on the SQL
    that list_runs really runs, with SQLite's own query plan."""
    store = SQLiteStore(str(tmp_path / "plan.db"))
    try:
        for i in range(3):
            store.create_run(f"w-{i}", "t", "[]", f"r{i}", 1.0)
        seen = []
        store._conn.set_trace_callback(seen.append)
        page = store.list_runs(ev.RUNNING, None, 2, "w-0")
        store._conn.set_trace_callback(None)
        assert [r.workflow_id for r in page] == ["w-1", "w-2"]
        (sql,) = [s for s in seen if "FROM runs" in s]
        plan = [row[-1] for row in store._conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert any("USING INDEX runs_by_status (status=? AND workflow_id>?)" in line
                   for line in plan), plan
    finally:
        store.close()
