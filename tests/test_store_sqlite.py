import os
import sqlite3

import pytest
from store_contract import StoreContract

import aion_green as aion
from aion_green import events as ev
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
