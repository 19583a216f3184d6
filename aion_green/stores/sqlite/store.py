"""The embedded SQLite store: one file, WAL, durable commits by default.

Implements :class:`~aion_green.store.IEventStore`; see that contract for what
each method promises.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from zope.interface import implementer

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import (
    ConfigurationError,
    StoreError,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from aion_green.store import (
    PARKED_LEASE_SQL,
    Append,
    BatchOutcome,
    CreateRun,
    EventFilter,
    GlobalEvent,
    IEventStore,
    InboxRow,
    NewRun,
    RunFilter,
    RunInfo,
)
from aion_green.stores.batch import (
    BatchPlan,
    attribute_rows,
    copied_attributes,
    inbox_why_not,
    next_run_started,
    purge_candidates,
    purge_parameters,
    require_running,
    run_filters,
    started_json,
)
from aion_green.stores.cut import Copy, opt_run, plan_copy, require_resumable, resume_point
from aion_green.stores.global_events import events_query, page
from aion_green.stores.leases import histories_by_run, leased_histories, leased_read_sql
from aion_green.stores.sqlite.file import FileIdentity, canonical_path, is_file, refuse_hard_links
from aion_green.stores.sqlite.schema import (
    _FAULTS,
    _MIGRATIONS,
    _RUN_COLUMNS,
    HEAD_OF,
    SCHEMA_VERSION,
    _run_info,
    _translate,
    run_select,
)
from aion_green.stores.sqlite.write_queue import WriteQueue

_KNOWN_HEADS_MAX = 100_000
# Every table that holds rows of a workflow id: a purge empties each of them
# (tests/test_retention.py checks this list against the file's tables).
_PER_RUN_TABLES = ("events", "archived_events", "timers", "inbox", "search_attributes", "runs")


# The last global position given: the highest of the events' and the
# archived events' (each read off its index's last entry) and of the floor
# event_positions.n, which a purge raises before it deletes (schema 9).
_LAST_POSITION = ("SELECT max(coalesce((SELECT max(pos) FROM events), 0), "
                  "coalesce((SELECT max(pos) FROM archived_events), 0), "
                  "(SELECT n FROM event_positions))")


def _positions(conn: sqlite3.Connection, count: int, known: Optional[int] = None) -> int:
    """The first of ``count`` new global positions (stores/global_events.py),
    taken inside the write transaction (under its write lock). Invariant:
    every insert into events takes its positions here, and a position once
    given is never given again: events keep theirs when archived, and a
    purge, the only delete of events (archived or not), raises the floor
    first (:func:`_raise_floor`).

    Nothing is written for them: the last position given is read off the
    indexes of ``pos``, whose last pages the insert writes anyway. Before
    schema 9 a one-row counter was updated by every commit: one more page
    in each commit's WAL write (a step's record wrote 3.65 pages, a start's
    8; issue 21). ``known``: the last position as this connection last
    committed it, when no other connection has committed since
    (SQLiteStore._known_position): then nothing is read either."""
    if known is None:
        (known,) = conn.execute(_LAST_POSITION).fetchone()
    return int(known) + 1


def _chunks(ids: Sequence[str]) -> Iterator[tuple[list[str], str]]:
    """``ids`` 500 at a time, each chunk with its ``?,?,...`` for an IN list
    (under SQLite's oldest limit of 999 variables)."""
    for i in range(0, len(ids), 500):
        chunk = list(ids[i:i + 500])
        yield chunk, ",".join("?" * len(chunk))


def _by_id(conn: sqlite3.Connection, select: str, wids: set[str], tail: str = "") -> dict[str, int]:
    """``{workflow id: value}`` of ``select`` (``SELECT workflow_id, VALUE
    FROM ...``) over ``wids``."""
    found: dict[str, int] = {}
    for chunk, marks in _chunks(list(wids)):
        found.update(conn.execute(f"{select} WHERE workflow_id IN ({marks}) {tail}", chunk).fetchall())
    return found


def _raise_floor(conn: sqlite3.Connection) -> None:
    """Before events are deleted: keep the last position given in the
    floor, so no position is given twice (a later start would otherwise
    be numbered below what a reader of the stream has already seen)."""
    conn.execute(f"UPDATE event_positions SET n = ({_LAST_POSITION})")


@implementer(IEventStore)
class SQLiteStore:
    """One SQLite file in WAL mode; durable commits (``synchronous=FULL``) by
    default, ``durable=False`` trades the fsync per commit for speed.

    Thread contract: a SQLiteStore is used by one thread at a time (the
    engine's store writer, or a step pool thread that holds the writer's
    commit lock: ``inline_commits``); it is opened on the caller's thread so
    that a corrupt or locked file is reported by the constructor.
    """

    # A step's record may be committed by the pool thread that ran it
    # (runtime/writer.py begin_inline): a commit here is local I/O, and the
    # hand-off to the writer thread cost a sequential step ~45 us of ~340.
    inline_commits = True

    def __init__(self, path: str, durable: bool = True, busy_timeout: float = 5.0,
                 leases: bool = False) -> None:
        self.path = path
        # Runs leased to the file's engines (``?leases=on``; see the lease
        # methods below) instead of driven by one driver (runtime/sharing.py).
        self.leases = leases
        if leases and not is_file(path):
            raise ConfigurationError(
                "?leases=on shares a SQLite file among processes; an in-memory database has "
                "one engine and no file: leave the option out")
        # Every name of the file leads to one (issue 16; see _sqlite_file).
        self.real_path = canonical_path(path)
        refuse_hard_links(path, self.real_path)
        self._file = FileIdentity(path, self.real_path)
        # Write transactions of aion_green's processes on this file queue
        # for it, instead of polling SQLite's lock (write_queue.py).
        self._queue = WriteQueue(self.real_path if is_file(path) else None)
        self._busy_timeout = busy_timeout
        self.durable = durable
        # Heads of runs as this connection last committed them, valid while
        # _data_version is the file's (see _batch_heads).
        self._known_heads: dict[str, int] = {}
        self._data_version: Optional[int] = None
        # Invariant: when not None, the event_positions counter as this
        # connection's last batch committed it, and no write has been made
        # since, through this connection or another; it goes with
        # _known_heads (cleared where they are) and is set only after a
        # batch's commit.
        self._known_position: Optional[int] = None
        try:
            self._conn = sqlite3.connect(
                self.real_path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            self._queue.close()
            raise _translate(exc, path) from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._enter_wal(busy_timeout)
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # A small WAL that is checkpointed often is rewound and overwritten
            # in place, and an overwrite syncs faster than a growing file: on
            # this project's machine, mean commit 250 us at 200 pages against
            # 285 us at SQLite's default of 1000 (and 409 us at 10000).
            self._conn.execute("PRAGMA wal_autocheckpoint=200")
            self._migrate()
            self._file.take()
        except BaseException as exc:
            # Any refusal (a file of another program, a newer schema), not
            # only SQLite's: the connection is closed here or never (Python
            # 3.13 warns of it, ResourceWarning, whenever the GC finds it).
            self._conn.close()
            self._queue.close()
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, path) from None
            raise

    def _enter_wal(self, busy_timeout: float) -> None:
        """Switch a new file to WAL. SQLite answers "locked" at once, without
        its busy handler, when another connection switches it at the same
        moment (processes opening a new file together): retry a while."""
        deadline = _clock.monotonic() + busy_timeout
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or _clock.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _migrate(self) -> None:
        conn = self._conn
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite file {self.path!r} has schema version {version}, newer than this "
                f"aion_green understands ({SCHEMA_VERSION}); upgrade aion_green"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated
            # meanwhile (two gunicorn workers opening a new file at once).
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0 and conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('runs', 'events')"
            ).fetchone()[0]:
                raise StoreError(
                    f"the SQLite file {self.path!r} already has tables named runs/events that "
                    "aion_green did not create; point the engine at another file"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- writes ----------------------------------------------------------------------------
    def create_run(
        self, workflow_id: str, workflow_type: str, args_json: str, run_id: str, at: float
    ) -> tuple[bool, RunInfo]:
        outcome = self.write_batch([CreateRun(workflow_id, workflow_type, args_json, run_id, at)])[0]
        assert isinstance(outcome, tuple)
        return outcome

    @contextmanager
    def _write(self, batch: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction: ``BEGIN IMMEDIATE`` (the write lock, so what
        is read inside stays true until the commit), commit on success,
        rollback on any error; SQLite errors become store errors. Any write
        but a batch's may move heads that this connection knows."""
        conn = self._conn
        if not batch:
            self._known_heads.clear()
            self._known_position = None
        queued = self._queue.enter(self._busy_timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                # Under the write lock, just before the commit: a file
                # deleted under the engine gets nothing more (issue 16).
                self._file.check(commit=True)
                conn.execute("COMMIT")
            except BaseException:
                self._known_heads.clear()
                self._known_position = None
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        finally:
            if queued:
                self._queue.leave()

    def _batch_heads(self, conn: sqlite3.Connection, wids: set[str]) -> dict[str, int]:
        """The heads of ``wids``, read under the write lock. Heads this
        connection wrote are known without a read while no other connection
        has committed since (``PRAGMA data_version`` moves only for theirs);
        a group commit of hundreds of appends then reads nothing."""
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        known = self._known_heads
        if version != self._data_version or len(known) > _KNOWN_HEADS_MAX:
            known.clear()
            self._known_position = None
            self._data_version = version
        heads = {wid: known[wid] for wid in wids & known.keys()}
        if len(heads) < len(wids):
            heads.update(self._heads(wids - heads.keys()))
        return heads

    def _insert_at_head(self, conn: sqlite3.Connection, workflow_id: str, head: int,
                        event_type: str, at: float, data: dict[str, Any]) -> int:
        seq = head + 1
        conn.execute("INSERT INTO events(workflow_id, seq, type, at, data, pos) VALUES (?,?,?,?,?,?)",
                     (workflow_id, seq, event_type, at, json.dumps(data), _positions(conn, 1)))
        return seq

    def write_batch(self, ops: Sequence[Union[Append, CreateRun]]) -> list[BatchOutcome]:
        outcomes: list[BatchOutcome] = []
        plan = BatchPlan()
        position: Optional[int] = None
        with self._write(batch=True) as conn:
            # Read under the write lock: no other writer can move a head
            # between this check and the commit.
            heads = self._batch_heads(conn, {op.workflow_id for op in ops if type(op) is Append})
            # Leases: the fences of the runs appended to under one, read
            # under the write lock as the heads are (another process may have
            # claimed a run since this one last wrote).
            fenced = {op.workflow_id for op in ops if type(op) is Append and op.fence is not None}
            fences = _by_id(conn, "SELECT workflow_id, fence FROM runs", fenced) if fenced else None
            # The fences of the starts leased to their engine, drawn at once.
            owned = sum(1 for op in ops if type(op) is CreateRun and op.owner is not None)
            fence = self._draw_fences(conn, owned) if owned else 0
            created = []
            # A second start of an id in the batch is told of the first's
            # run, whose WorkflowStarted is not written yet (_get_run would
            # not find it: the batch failed, and the writer split it).
            started: dict[str, RunInfo] = {}
            for op in ops:
                if type(op) is Append:
                    outcomes.append(plan.append(op, heads, fences))
                elif op.workflow_id in started:
                    outcomes.append((False, started[op.workflow_id]))
                else:
                    assert isinstance(op, CreateRun)
                    outcome = self._create_one(op, plan.rows, fence)
                    if op.owner is not None:
                        fence += 1
                    heads.setdefault(op.workflow_id, outcome[1].head_seq)
                    outcomes.append(outcome)
                    if outcome[0]:
                        created.append(op.workflow_id)
                        started[op.workflow_id] = outcome[1]
            # (A run's head is its last event: nothing to update in runs.)
            if plan.timers_started:
                conn.executemany(
                    "INSERT OR REPLACE INTO timers(workflow_id, timer_key, fire_at) VALUES (?,?,?)",
                    plan.timers_started,
                )
            if plan.timers_ended:
                conn.executemany(
                    "DELETE FROM timers WHERE workflow_id=? AND timer_key=?", plan.timers_ended
                )
            if plan.finals:
                # The end time in the same statement (a run continued as new
                # has none: its ended_at stays as it was); a second UPDATE
                # was one more statement per run.
                ends = {wid: at for at, wid in plan.ends}
                conn.executemany(
                    "UPDATE runs SET status=?, result=?, error=?, ended_at=coalesce(?, ended_at) "
                    "WHERE workflow_id=?",
                    [(status, result, error, ends.get(wid), wid)
                     for status, result, error, wid in plan.finals])
                # A finished run has no pending timer.
                conn.executemany("DELETE FROM timers WHERE workflow_id=?",
                                 [f[3:] for f in plan.finals])
            if plan.rows:
                first = _positions(conn, len(plan.rows), self._known_position)
                position = first + len(plan.rows) - 1
                conn.executemany(
                    "INSERT INTO events(workflow_id, seq, type, at, data, pos) VALUES (?,?,?,?,?,?)",
                    [(*row, pos) for pos, row in enumerate(plan.rows, first)])
            if plan.attributes:
                upserts, removed = attribute_rows(plan.attributes)
                conn.executemany("INSERT OR REPLACE INTO search_attributes(workflow_id, name, value, "
                                 "text) VALUES (?,?,?,?)", upserts)
                conn.executemany("DELETE FROM search_attributes WHERE workflow_id=? AND name=?",
                                 removed)
            for wid, data, at in plan.rollovers:
                self._roll_over(conn, wid, data, at)
        # Committed: remember the heads moved, forget the runs that ended;
        # and the counter of positions, unless a continuation took more.
        if position is not None:
            self._known_position = None if plan.rollovers else position
        known = self._known_heads
        for wid in created:
            known[wid] = 1
        for head, _, wid in plan.moved.values():
            known[wid] = head
        for final in plan.finals:
            known.pop(final[3], None)
        return outcomes

    def _roll_over(self, conn: sqlite3.Connection, wid: str, data: dict[str, Any], at: float) -> None:
        """The run of ``wid`` continued as new (its last event was just
        inserted): archive its history and begin the next run at seq 1. The
        run row keeps the arguments the workflow id was started with (an
        idempotent start compares against them); the next run's own are in
        its WorkflowStarted."""
        (old_run_id, wtype) = conn.execute(
            "SELECT run_id, workflow_type FROM runs WHERE workflow_id=?", (wid,)).fetchone()
        conn.execute(
            "INSERT INTO archived_events(workflow_id, run_id, seq, type, at, data, pos) "
            "SELECT workflow_id, ?, seq, type, at, data, pos FROM events WHERE workflow_id=?",
            (old_run_id, wid))
        conn.execute("DELETE FROM events WHERE workflow_id=?", (wid,))
        started = next_run_started(wtype, old_run_id, data)
        conn.execute("INSERT INTO events(workflow_id, seq, type, at, data, pos) VALUES (?,1,?,?,?,?)",
                     (wid, ev.WORKFLOW_STARTED, at, json.dumps(started), _positions(conn, 1)))
        conn.execute(
            "UPDATE runs SET run_id=?, status=?, result=NULL, error=NULL, created_at=? "
            "WHERE workflow_id=?", (data["run_id"], ev.RUNNING, at, wid))

    def _heads(self, wids: set[str]) -> dict[str, int]:
        return _by_id(self._conn, "SELECT workflow_id, max(seq) FROM events", wids,
                      "GROUP BY workflow_id")

    def _create_one(self, op: CreateRun, rows: list[tuple[str, int, str, float, str]],
                    fence: int) -> tuple[bool, RunInfo]:
        """``fence``: the run's if ``op`` leases it to its engine (drawn by
        the caller, a batch's at once), else unused."""
        if op.owner is None:
            cursor = self._conn.execute(
                f"INSERT OR IGNORE INTO runs({_RUN_COLUMNS}, parent_id) "
                "VALUES (?,?,?,?,?,NULL,NULL,?,?)",
                (op.workflow_id, op.run_id, op.workflow_type, ev.RUNNING, op.args_json, op.at,
                 op.parent_id),
            )
            fence = 0
        else:  # leased to the engine that starts it, under its fence
            cursor = self._conn.execute(
                f"INSERT OR IGNORE INTO runs({_RUN_COLUMNS}, parent_id, owner, lease_until, fence) "
                "VALUES (?,?,?,?,?,NULL,NULL,?,?,?,?,?)",
                (op.workflow_id, op.run_id, op.workflow_type, ev.RUNNING, op.args_json, op.at,
                 op.parent_id, op.owner, op.lease_until, fence),
            )
        if cursor.rowcount == 0:
            existing = self._get_run(op.workflow_id)
            assert existing is not None
            return False, existing
        rows.append((op.workflow_id, 1, ev.WORKFLOW_STARTED, op.at, started_json(op)))
        return True, RunInfo(
            op.workflow_id, op.run_id, op.workflow_type, ev.RUNNING, json.loads(op.args_json),
            None, None, 1, op.at, op.at, fence, parent_id=op.parent_id,
            execution_deadline=op.execution_deadline,
        )

    @staticmethod
    def _draw_fences(conn: sqlite3.Connection, count: int) -> int:
        """The first of ``count`` new fencing tokens (under the write lock)."""
        conn.execute("UPDATE lease_fences SET n = n + ?", (count,))
        (last,) = conn.execute("SELECT n FROM lease_fences").fetchone()
        return int(last) - count + 1


    # -- reads -------------------------------------------------------------------------------
    def read(self, workflow_id: str, after_seq: int = 0, limit: Optional[int] = None,
             run_id: Optional[str] = None) -> list[ev.Event]:
        self._file.check(commit=False)
        sql = "SELECT seq, type, at, data FROM events WHERE workflow_id=? AND seq>? ORDER BY seq"
        params: tuple[Union[str, int], ...] = (workflow_id, after_seq)
        if run_id is not None:
            sql = ("SELECT seq, type, at, data FROM events WHERE workflow_id=? AND seq>? "
                   "AND ? = (SELECT run_id FROM runs WHERE workflow_id=?) "
                   "UNION ALL SELECT seq, type, at, data FROM archived_events "
                   "WHERE workflow_id=? AND seq>? AND run_id=? ORDER BY seq")
            params = (workflow_id, after_seq, run_id, workflow_id, workflow_id, after_seq, run_id)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        try:
            rows = self._conn.execute(sql, params).fetchall()
            return [ev.Event(seq, typ, at, json.loads(data)) for seq, typ, at, data in rows]
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def last_of_types(self, workflow_id: str, types: Sequence[str]) -> Optional[str]:
        self._file.check(commit=False)
        marks = ",".join("?" * len(types))
        try:
            row = self._conn.execute(
                f"SELECT type FROM events WHERE workflow_id=? AND type IN ({marks}) "
                "ORDER BY seq DESC LIMIT 1", (workflow_id, *types)).fetchone()
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        return None if row is None else str(row[0])

    def get_run(self, workflow_id: str) -> Optional[RunInfo]:
        self._file.check(commit=False)
        try:
            info = self._get_run(workflow_id)
            return None if info is None else self._with_attributes([info])[0]
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def _with_attributes(self, infos: list[RunInfo]) -> list[RunInfo]:
        """``infos``, each with its search attributes (one read per 500)."""
        found: dict[str, dict[str, Any]] = {}
        for chunk, marks in _chunks([info.workflow_id for info in infos]):
            rows = self._conn.execute(
                "SELECT workflow_id, name, value FROM search_attributes WHERE workflow_id IN "
                f"({marks}) ORDER BY workflow_id, name", chunk).fetchall()
            for wid, name, value in rows:
                found.setdefault(wid, {})[name] = json.loads(value)
        if not found:
            return infos
        return [dataclasses.replace(info, search_attributes=found[info.workflow_id])
                if info.workflow_id in found else info for info in infos]

    def _get_run(self, workflow_id: str) -> Optional[RunInfo]:
        row = self._conn.execute(
            run_select("WHERE workflow_id=?"), (workflow_id,)
        ).fetchone()
        return None if row is None else _run_info(row)

    def list_runs(
        self,
        status: Optional[str] = None,
        workflow_type: Optional[str] = None,
        limit: int = 100,
        after_id: Optional[str] = None,
        *,
        filters: Optional[RunFilter] = None,
    ) -> list[RunInfo]:
        self._file.check(commit=False)
        where, params = run_filters(status, workflow_type, after_id, "?", "workflow_id>?",
                                    filters, "search_attributes")
        try:
            rows = self._conn.execute(
                run_select(where, "ORDER BY workflow_id LIMIT ?"),
                (*params, limit),
            ).fetchall()
            return self._with_attributes([_run_info(row) for row in rows])
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def count_runs(self, status: Optional[str] = None, workflow_type: Optional[str] = None, *,
                   filters: Optional[RunFilter] = None) -> int:
        self._file.check(commit=False)
        where, params = run_filters(status, workflow_type, None, "?", "", filters,
                                    "search_attributes")
        try:
            (count,) = self._conn.execute(f"SELECT count(*) FROM runs {where}", params).fetchone()
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        return int(count)

    def count_runs_by_status(self, workflow_type: Optional[str] = None, *,
                             filters: Optional[RunFilter] = None) -> dict[str, int]:
        self._file.check(commit=False)
        where, params = run_filters(None, workflow_type, None, "?", "", filters,
                                    "search_attributes")
        try:
            rows = self._conn.execute(
                f"SELECT status, count(*) FROM runs {where} GROUP BY status", params).fetchall()
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        return {**dict.fromkeys(ev.STATUSES, 0), **{status: int(n) for status, n in rows}}

    # -- several processes over one file ---------------------------------------------------
    def post_inbox(self, workflow_id: str, kind: str, data_json: str, at: float) -> int:
        with self._write() as conn:
            run = conn.execute("SELECT status FROM runs WHERE workflow_id=?", (workflow_id,)).fetchone()
            require_running(workflow_id, run and run[0], self.path, inbox_why_not(kind))
            cursor = conn.execute("INSERT INTO inbox(workflow_id, kind, data, at) VALUES (?,?,?,?)",
                                  (workflow_id, kind, data_json, at))
            return int(cursor.lastrowid or 0)

    def read_inbox(self, after_id: int = 0, limit: int = 500,
                   owner: Optional[str] = None) -> list[InboxRow]:
        self._file.check(commit=False)
        try:
            if owner is None:
                rows = self._conn.execute(
                    "SELECT id, workflow_id, kind, data, at FROM inbox WHERE id>? ORDER BY id LIMIT ?",
                    (after_id, limit)).fetchall()
            else:  # the requests for runs this owner holds (leases)
                rows = self._conn.execute(
                    "SELECT i.id, i.workflow_id, i.kind, i.data, i.at FROM inbox i "
                    "JOIN runs r ON r.workflow_id = i.workflow_id "
                    "WHERE i.id>? AND r.owner=? ORDER BY i.id LIMIT ?",
                    (after_id, owner, limit)).fetchall()
            return [(i, wid, kind, json.loads(data), at) for i, wid, kind, data, at in rows]
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def delete_inbox(self, ids: Sequence[int]) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM inbox WHERE id=?", [(i,) for i in ids])

    def new_runs(self, after: int = 0, limit: int = 500) -> list[NewRun]:
        self._file.check(commit=False)
        try:
            rows = self._conn.execute(
                "SELECT rowid, workflow_id, status FROM runs WHERE rowid>? ORDER BY rowid LIMIT ?",
                (after, limit)).fetchall()
            return [NewRun(*row) for row in rows]
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def last_run_mark(self) -> int:
        try:
            (mark,) = self._conn.execute("SELECT coalesce(max(rowid), 0) FROM runs").fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from None
        return int(mark)

    def purge_finished(self, before: float, limit: int = 500,
                       namespace: Optional[str] = None) -> list[str]:
        with self._write() as conn:
            wids = [row[0] for row in conn.execute(
                # By end time: the oldest ends first, and a purge reads the
                # runs it deletes, not every finished run (without ANALYZE
                # statistics SQLite chose the status index and sorted them all).
                purge_candidates("?", "runs", "events", "json_extract({a}.data, '$.id')",
                                 hint="INDEXED BY runs_by_end", namespace=namespace),
                purge_parameters(before, limit, namespace)).fetchall()]
            if wids:
                # One statement per table (the inbox has no index by run: one
                # scan of it, not one per run).
                marks = ",".join("?" * len(wids))
                _raise_floor(conn)
                for table in _PER_RUN_TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE workflow_id IN ({marks})", wids)
        return wids

    def find_event(self, workflow_id: str, event_type: str, dedup: Optional[str] = None) -> Optional[int]:
        if dedup is None:
            sql = "SELECT seq FROM events WHERE workflow_id=? AND type=? ORDER BY seq LIMIT 1"
            params: tuple[str, ...] = (workflow_id, event_type)
        else:
            # The current run first; the run that recorded it may have
            # continued as new since (its seq is then that run's).
            sql = ("SELECT seq FROM (SELECT seq, 0 AS old FROM events WHERE workflow_id=? "
                   "AND type=? AND json_extract(data, '$.dedup')=? UNION ALL "
                   "SELECT seq, 1 FROM archived_events WHERE workflow_id=? AND type=? "
                   "AND json_extract(data, '$.dedup')=?) ORDER BY old, seq LIMIT 1")
            params = (workflow_id, event_type, dedup) * 2
        try:
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from None
        return None if row is None else int(row[0])

    def due_timers(self, now: float, limit: int = 1000) -> list[tuple[str, str, float]]:
        self._file.check(commit=False)
        try:
            rows = self._conn.execute(
                "SELECT workflow_id, timer_key, fire_at FROM timers WHERE fire_at <= ? "
                "ORDER BY fire_at LIMIT ?", (now, limit)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from None
        return [(wid, key, fire_at) for wid, key, fire_at in rows]

    def fire_timer(self, workflow_id: str, timer_key: str, at: float) -> Optional[int]:
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {HEAD_OF} FROM timers t JOIN runs r ON r.workflow_id = t.workflow_id "
                "WHERE t.workflow_id=? AND t.timer_key=? AND r.status=?",
                (workflow_id, workflow_id, timer_key, ev.RUNNING)).fetchone()
            if row is None:
                return None
            seq = self._insert_at_head(conn, workflow_id, row[0], ev.TIMER_FIRED, at, {"timer": timer_key})
            conn.execute("DELETE FROM timers WHERE workflow_id=? AND timer_key=?",
                         (workflow_id, timer_key))
            return seq

    def deliver_message(self, workflow_id: str, name: str, payload_json: str, at: float,
                        dedup: Optional[str] = None) -> int:
        def build(conn: sqlite3.Connection) -> Union[int, dict[str, Any]]:
            if dedup is not None:
                seen = conn.execute(
                    "SELECT seq FROM events WHERE workflow_id=? AND type=? "
                    "AND json_extract(data, '$.dedup')=?",
                    (workflow_id, ev.MESSAGE_RECEIVED, dedup)).fetchone()
                if seen is not None:
                    return int(seen[0])
            (index,) = conn.execute(
                "SELECT count(*) FROM events WHERE workflow_id=? AND type=? "
                "AND json_extract(data, '$.name')=?",
                (workflow_id, ev.MESSAGE_RECEIVED, name)).fetchone()
            data = {"name": name, "index": index, "payload": json.loads(payload_json)}
            if dedup is not None:
                data["dedup"] = dedup
            return data

        return self._append_at_head(workflow_id, ev.MESSAGE_RECEIVED, at, build,
                                    f"a message {name!r} to it would never be read")

    def request_cancel(self, workflow_id: str, reason: str, at: float) -> int:
        def build(conn: sqlite3.Connection) -> Union[int, dict[str, Any]]:
            seen = conn.execute("SELECT seq FROM events WHERE workflow_id=? AND type=?",
                                (workflow_id, ev.CANCEL_REQUESTED)).fetchone()
            return int(seen[0]) if seen is not None else {"reason": reason}

        return self._append_at_head(workflow_id, ev.CANCEL_REQUESTED, at, build,
                                    "there is nothing left to cancel")

    def _append_at_head(self, workflow_id: str, event_type: str, at: float,
                        build: Callable[[sqlite3.Connection], Union[int, dict[str, Any]]],
                        why_not: str) -> int:
        """One event at the head of a run no engine drives here, in one
        transaction; ``build`` gives its data, or the seq of an earlier
        equal event (then nothing is written)."""
        with self._write() as conn:
            run = conn.execute(f"SELECT {HEAD_OF}, status FROM runs WHERE workflow_id=?",
                               (workflow_id, workflow_id)).fetchone()
            require_running(workflow_id, run and run[1], self.path, why_not)
            head = run[0]
            data = build(conn)
            if isinstance(data, int):
                return data
            return self._insert_at_head(conn, workflow_id, head, event_type, at, data)

    # -- the store-wide event stream (stores/global_events.py) ---------------------------
    def event_head(self) -> int:
        self._file.check(commit=False)
        try:
            (head,) = self._conn.execute(_LAST_POSITION).fetchone()
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        return int(head)

    def read_events(self, after: int, limit: int,
                    filters: EventFilter = EventFilter()) -> tuple[list[GlobalEvent], int]:
        head = self.event_head()  # first: every event at or below it is committed
        sql, params = events_query(filters, after, head, limit, "?", events="events",
                                   archive="archived_events", runs="runs")
        try:
            return page(self._conn.execute(sql, params).fetchall(), limit, max(head, after))
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    def close(self) -> None:
        # (Typed as open: a call after close() is a bug, and fails on the None.)
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.close()
        self._queue.close()

    # -- leases (``?leases=on``: runtime/leases.py) --------------------------------------
    # As PostgreSQL's: a running run's row holds its owner, lease_until and
    # fence. A write transaction holds the file's write lock, so a claim
    # needs no row locks: no other engine reads the same claimable rows
    # until it commits.
    def claim_runs(self, owner: str, workflow_types: Sequence[str], lease_until: float, now: float,
                   limit: int) -> list[RunInfo]:
        """Take up to ``limit`` running runs of these types that nobody holds
        (no owner, or a lease that ran out), each with a new fence."""
        types = list(workflow_types)
        if not types or limit <= 0:
            return []
        with self._write() as conn:
            wids = [wid for (wid,) in conn.execute(
                # (The literal status: the partial index runs_claimable.
                # A run nobody owns has lease_until 0.)
                f"SELECT workflow_id FROM runs INDEXED BY runs_claimable WHERE "
                f"status='{ev.RUNNING}' AND lease_until < ? "
                f"AND workflow_type IN ({','.join('?' * len(types))}) "
                "ORDER BY mark LIMIT ?", (now, *types, limit)).fetchall()]
            if not wids:
                return []
            first = self._draw_fences(conn, len(wids))
            fences = {wid: first + i for i, wid in enumerate(wids)}
            conn.executemany("UPDATE runs SET owner=?, lease_until=?, fence=? WHERE workflow_id=?",
                             [(owner, lease_until, fence, wid) for wid, fence in fences.items()])
            infos: list[RunInfo] = []
            for chunk, marks in _chunks(wids):
                infos.extend(_run_info(row) for row in conn.execute(
                    run_select(f"WHERE workflow_id IN ({marks})"), chunk))
        return infos

    def claim_counts(self, owner: str, workflow_types: Sequence[str], now: float,
                     cap: int) -> tuple[int, int, int, int]:
        """``(claimable, peers, held, mine)``, as PostgreSQL's (runtime/leases.py)."""
        types = list(workflow_types)
        if not types:
            return 0, 0, 0, 0
        marks = ",".join("?" * len(types))
        self._file.check(commit=False)
        conn = self._conn
        try:
            # One read transaction, so that the counts are of one moment (as
            # PostgreSQL's one statement). Statement by statement, each read
            # its own snapshot: a claim another engine committed between the
            # count of claimable runs and that of held ones was counted in
            # both, and this engine's share came out too big (four engines
            # over one file drove 75, 100, 100 and 125 of 400 runs, in CI).
            conn.execute("BEGIN")
            try:
                (claimable,) = conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM runs INDEXED BY runs_claimable "
                    f"WHERE status='{ev.RUNNING}' "
                    f"AND lease_until < ? AND workflow_type IN ({marks}) LIMIT ?)",
                    (now, *types, cap)).fetchone()
                if not claimable:
                    return 0, 0, 0, 0
                held, mine = conn.execute(
                    f"SELECT count(*), coalesce(sum(owner = ?), 0) FROM (SELECT owner FROM runs "
                    f"WHERE status=? AND workflow_type IN ({marks}) AND owner IS NOT NULL "
                    "AND lease_until >= ? LIMIT ?)",
                    (owner, ev.RUNNING, *types, now, cap)).fetchone()
                engines = conn.execute(
                    "SELECT workflow_types FROM engines WHERE seen_until >= ? AND engine_id <> ?",
                    (now, owner)).fetchall()
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # (a read: nothing to keep)
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None
        wanted = set(types)
        peers = sum(1 for (known,) in engines if wanted & set(json.loads(known)))
        return int(claimable), peers, int(held), int(mine)

    def renew_leases(self, owner: str, workflow_ids: Sequence[str], lease_until: float) -> list[str]:
        """Extend this owner's leases; the ids it still holds."""
        kept: list[str] = []
        with self._write() as conn:
            for chunk, marks in _chunks(workflow_ids):
                where = f"owner=? AND workflow_id IN ({marks})"
                conn.execute(f"UPDATE runs SET lease_until=? WHERE {where}",
                             (lease_until, owner, *chunk))
                kept.extend(wid for (wid,) in conn.execute(
                    f"SELECT workflow_id FROM runs WHERE {where}", (owner, *chunk)))
        return kept

    def publish_engine(self, engine_id: str, types_json: str, until: float, now: float) -> None:
        """Say that engine ``engine_id`` runs these workflow types (a JSON
        object: type -> parameters) until ``until``; free the parked runs
        of engines whose entry ran out; forget engines gone a day."""
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO engines(engine_id, workflow_types, seen_until) "
                         "VALUES (?,?,?)", (engine_id, types_json, until))
            conn.execute(f"UPDATE runs INDEXED BY runs_parked SET lease_until=0 "
                         f"WHERE lease_until >= {PARKED_LEASE_SQL} "
                         "AND owner IN (SELECT engine_id FROM engines WHERE seen_until < ?)", (now,))
            conn.execute("DELETE FROM engines WHERE seen_until < ?", (now - 86400,))

    def forget_engine(self, engine_id: str) -> None:
        """As PostgreSQL's: no run stays parked under a forgotten engine."""
        with self._write() as conn:
            conn.execute(f"UPDATE runs INDEXED BY runs_parked SET lease_until=0 "
                         f"WHERE lease_until >= {PARKED_LEASE_SQL} AND owner=?", (engine_id,))
            conn.execute("DELETE FROM engines WHERE engine_id=?", (engine_id,))

    def live_engines(self, now: float) -> dict[str, dict[str, Any]]:
        """The engines whose word is still good at ``now``: their types."""
        rows = self._read_all("SELECT engine_id, workflow_types FROM engines WHERE seen_until >= ?",
                              (now,))
        return {engine_id: json.loads(types) for engine_id, types in rows}

    def engines_at_work(self, now: float) -> list[tuple[str, float, list[str], int]]:
        """The engines whose word is still good at ``now``, each with until
        when, its workflow types and how many running runs it leases now."""
        rows = self._read_all(
            "SELECT e.engine_id, e.seen_until, e.workflow_types, (SELECT count(*) FROM runs r "
            "WHERE r.owner = e.engine_id AND r.status = ? AND r.lease_until >= ?) "
            "FROM engines e WHERE e.seen_until >= ? ORDER BY e.engine_id", (ev.RUNNING, now, now))
        return [(engine_id, float(until), sorted(json.loads(types)), int(leased))
                for engine_id, until, types, leased in rows]

    def count_leased(self, owner: str, now: float) -> int:
        """How many running runs ``owner`` holds under a lease still good at ``now``."""
        rows = self._read_all("SELECT count(*) FROM runs WHERE owner=? AND status=? "
                              "AND lease_until >= ?", (owner, ev.RUNNING, now))
        return int(rows[0][0])

    def release_leases(self, owner: str, workflow_ids: Optional[Sequence[str]] = None) -> None:
        """Give back the runs this owner holds (all of them at a clean
        shutdown, or ``workflow_ids``): others may claim them at once."""
        with self._write() as conn:
            if workflow_ids is None:
                conn.execute("UPDATE runs SET owner=NULL, lease_until=0 WHERE owner=? AND status=?",
                             (owner, ev.RUNNING))
            else:
                conn.executemany("UPDATE runs SET owner=NULL, lease_until=0 "
                                 "WHERE owner=? AND workflow_id=?",
                                 [(owner, wid) for wid in workflow_ids])

    def lease_of(self, workflow_id: str) -> Optional[tuple[str, float]]:
        """``(owner, lease_until)`` of a run some engine holds, else None."""
        rows = self._read_all(f"SELECT owner, CASE WHEN lease_until >= {PARKED_LEASE_SQL} THEN "
                              "coalesce((SELECT seen_until FROM engines WHERE engine_id = owner), 0) "
                              "ELSE lease_until END FROM runs WHERE workflow_id=? "
                              "AND owner IS NOT NULL", (workflow_id,))
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def read_many(self, workflow_ids: Sequence[str]) -> dict[str, list[ev.Event]]:
        found: dict[str, list[ev.Event]] = {}
        for chunk, marks in _chunks(workflow_ids):
            rows = self._read_all("SELECT workflow_id, seq, type, at, data FROM events "
                                  f"WHERE workflow_id IN ({marks}) ORDER BY workflow_id, seq", chunk)
            try:
                histories_by_run(rows, found)
            except _FAULTS as exc:  # (a damaged record: StoreCorrupt, as read says)
                raise _translate(exc, self.path) from None
        return found

    def read_leased(self, owner: str,
                    workflow_ids: Sequence[str]) -> dict[str, tuple[float, list[ev.Event]]]:
        """``{id: (lease_until, history)}`` of the runs among
        ``workflow_ids`` that ``owner`` holds; a parked lease ends with its
        owner's entry. A run another engine holds, or nobody, is left out."""
        found: dict[str, tuple[float, list[ev.Event]]] = {}
        for chunk, marks in _chunks(workflow_ids):
            rows = self._read_all(leased_read_sql("runs", "events", "engines", f"IN ({marks})", "?"),
                                  (*chunk, owner))
            try:
                leased_histories(rows, found)
            except _FAULTS as exc:  # (a damaged record: StoreCorrupt, as read says)
                raise _translate(exc, self.path) from None
        return found

    def _read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        self._file.check(commit=False)
        try:
            return self._conn.execute(sql, params).fetchall()
        except _FAULTS as exc:
            raise _translate(exc, self.path) from None

    # -- fork and resume ------------------------------------------------------------

    def fork_run(self, source_id: str, from_seq: int, new_id: str, run_id: str, at: float,
                 source_run_id: Optional[str] = None) -> RunInfo:
        with self._write() as conn:
            history = self._source(conn, source_id, source_run_id)
            if conn.execute("SELECT 1 FROM runs WHERE workflow_id=?", (new_id,)).fetchone():
                raise WorkflowIdConflict(
                    f"cannot fork {source_id!r} as {new_id!r}: that workflow id exists in "
                    f"{self.path}; pass another id. Nothing was written")
            copy = plan_copy("fork", source_id, history, from_seq, run_id, at, self.path)
            (wtype, args) = copy.started["workflow_type"], json.dumps(copy.started["args"])
            conn.execute(f"INSERT INTO runs({_RUN_COLUMNS}) VALUES (?,?,?,?,?,NULL,NULL,?)",
                         (new_id, run_id, wtype, ev.RUNNING, args, at))
            self._write_copy(conn, new_id, copy)
        return RunInfo(new_id, run_id, wtype, ev.RUNNING, copy.started["args"], None, None,
                       copy.head, at, at)

    def restart_run(self, workflow_id: str, from_seq: Optional[int], run_id: str,
                    at: float) -> RunInfo:
        with self._write() as conn:
            history = self._source(conn, workflow_id, None)
            info = self._get_run(workflow_id)
            assert info is not None
            require_resumable(info, self.path)
            cut = resume_point(workflow_id, history) if from_seq is None else from_seq
            copy = plan_copy("resume", workflow_id, history, cut, run_id, at, self.path)
            conn.execute(
                "INSERT INTO archived_events(workflow_id, run_id, seq, type, at, data, pos) "
                "SELECT workflow_id, ?, seq, type, at, data, pos FROM events WHERE workflow_id=?",
                (info.run_id, workflow_id))
            conn.execute("DELETE FROM events WHERE workflow_id=?", (workflow_id,))
            # A new mark: the driving process notices resumed runs as it
            # notices created ones (new_runs, sharing.py's _watch). Taken
            # from the AUTOINCREMENT sequence, as an insert would, so that
            # no later run gets it again (see the schema's version 7).
            (mark,) = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name='runs'), 0), "
                "coalesce((SELECT max(mark) FROM runs), 0)) + 1").fetchone()
            conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name='runs'", (mark,))
            # Leases: nobody holds the resumed run; a new fence, so that an
            # engine still driving its old run is refused.
            fence = self._draw_fences(conn, 1)
            conn.execute(
                "UPDATE runs SET run_id=?, status=?, result=NULL, error=NULL, created_at=?, "
                "ended_at=NULL, mark=?, owner=NULL, lease_until=0, fence=? WHERE workflow_id=?",
                (run_id, ev.RUNNING, at, mark, fence, workflow_id))
            self._write_copy(conn, workflow_id, copy)
        return dataclasses.replace(info, run_id=run_id, status=ev.RUNNING, result=None, error=None,
                                   head_seq=copy.head, created_at=at, updated_at=at, fence=fence)

    def _source(self, conn: sqlite3.Connection, workflow_id: str,
                run_id: Optional[str]) -> list[ev.Event]:
        history = self.read(workflow_id, run_id=run_id)
        if not history:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}{opt_run(run_id)} in "
                                   f"{self.path}; nothing was written")
        return history

    def _write_copy(self, conn: sqlite3.Connection, workflow_id: str, copy: Copy) -> None:
        rows = copy.rows(workflow_id)
        conn.executemany("INSERT INTO events(workflow_id, seq, type, at, data, pos) "
                         "VALUES (?,?,?,?,?,?)",
                         [(*row, pos) for pos, row in enumerate(rows, _positions(conn, len(rows)))])
        conn.execute("DELETE FROM search_attributes WHERE workflow_id=?", (workflow_id,))
        conn.executemany("INSERT INTO search_attributes(workflow_id, name, value, text) "
                         "VALUES (?,?,?,?)", copied_attributes(workflow_id, copy.started, copy.events))
        conn.execute("DELETE FROM timers WHERE workflow_id=?", (workflow_id,))
        conn.executemany("INSERT INTO timers(workflow_id, timer_key, fire_at) VALUES (?,?,?)",
                         [(workflow_id, key, fire_at) for key, fire_at in copy.timers.items()])
