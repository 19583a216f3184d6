"""The PostgreSQL store: the same contract as SQLite, for many processes on
many machines over one database (``aion.Engine("postgresql://...")``).

Implements :class:`~aion_green.store.IEventStore`; the conformance suite
(``tests/store_contract.py``) runs against a real server.

- Schema: versioned migrations under a transaction-level advisory lock, so
  engines starting at the same moment against an empty database all come
  up (one migrates, the others find it done).
- Connections: one per store instance. The engine uses each store from one
  native thread (its writer, its reader), so two connections per engine
  serve it; psycopg's blocking calls run there, never on the hub thread, in
  a patched process or not. A connection lost (server restart) is opened
  again on the next call; the call that saw it fails with
  :class:`~aion_green.errors.StoreUnavailable`, which the engine retries.
- The driver lock (see :mod:`aion_green.sharing`) is a session advisory
  lock held on the writer's own connection: the engine that drives is the
  one whose writes go through the session holding it.

Thread contract: a PostgresStore is used by one thread at a time.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from gevent import monkey
from zope.interface import implementer

from aion_green.core import events as ev
from aion_green.core.errors import (
    ConfigurationError,
    FencedOut,
    InternalError,
    StoreError,
    StoreUnavailable,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRunning,
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
    moved_past,
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
from aion_green.stores.postgres.schema import (
    _DRIVER_LOCK,
    _MIGRATION_LOCK,
    _MIGRATIONS,
    _RUN_COLUMNS,
    SCHEMA_VERSION,
    _run_info,
    _safe_url,
    _translate,
    psycopg,
)

if TYPE_CHECKING:  # pragma: no cover - psycopg is an optional dependency
    from psycopg import Connection, Cursor
    from psycopg.rows import TupleRow

    _Connection = Connection[TupleRow]
    _Cursor = Cursor[TupleRow]
    # What an append at a run's head writes: its data, or the seq of an
    # equal event recorded before (then nothing is written).
    _Build = Callable[[_Cursor], Union[int, dict[str, Any]]]

# Event data that PostgreSQL's json and jsonb refuse to parse: an escaped
# U+0000 (no text can hold it) or a surrogate escape (json refuses a lone
# one; pairs are let through to Python too, which is merely slower). A cast
# of one such row failed every later message to its run (issue 16: a NUL in
# one signal's payload). CASE guarantees the cast is never tried on them.
_UNCASTABLE = "data ~ '\\\\u0000|\\\\u[dD][89a-fA-F]'"


def _events_where(cur: _Cursor, table: str, workflow_id: str, event_type: str, key: str,
                  value: str) -> list[int]:
    """The seqs, in order, of the ``event_type`` events of ``workflow_id`` in
    ``table`` whose data's ``key`` is ``value``: matched in SQL where the
    data casts, in Python where it does not."""
    cur.execute(f"SELECT seq, CASE WHEN {_UNCASTABLE} THEN data END FROM {table} "
                f"WHERE workflow_id=%s AND type=%s AND ({_UNCASTABLE} OR "
                f"(CASE WHEN {_UNCASTABLE} THEN NULL ELSE data::jsonb ->> '{key}' END) = %s) "
                "ORDER BY seq", (workflow_id, event_type, value))
    return [int(seq) for seq, raw in cur.fetchall()
            if raw is None or json.loads(raw).get(key) == value]


# libpq's pipeline mode (libpq 14 and later; psycopg's binary wheels bring
# one): write_batch sends its statements without waiting for each answer.
_PIPELINE = psycopg is not None and psycopg.Pipeline.is_supported()


def _native_wait_class() -> Any:
    """psycopg's connection, but waiting for the server in C (psycopg's
    ``wait_c``: the GIL released, the thread blocked) once the store is
    used only from a native thread of the engine (:meth:`PostgresStore.
    on_own_thread`). Where gevent has patched ``select``, psycopg waits
    through a gevent hub of the waiting thread instead: right for the app's
    greenlets, but on the store's own thread it only costs (10-30 % of the
    CPU of an HTTP round trip, issue 21). None without psycopg's C part."""
    found = None if psycopg is None else getattr(psycopg.waiting, "wait_c", None)
    if found is None:
        return None
    wait_c: Callable[..., Any] = found
    import inspect

    # psycopg 3.3 waits with a deadline (``notifies(timeout=...)``), and its
    # wait_c takes one; 3.2 passes a shorter interval instead.
    deadlines = "timeout" in inspect.signature(psycopg.Connection.wait).parameters

    class NativeWaitConnection(psycopg.Connection):
        native = False  # (set by the store, on its own thread)

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            timeout = kwargs.get("timeout")
            if (not self.native or args or kwargs.keys() - {"interval", "timeout"}
                    or (timeout is not None and not deadlines)):
                return super().wait(gen, *args, **kwargs)
            interval = kwargs.get("interval", 0.1)
            if timeout is None:
                return wait_c(gen, self.pgconn.socket, interval)
            return wait_c(gen, self.pgconn.socket, interval, timeout)

    return NativeWaitConnection


_NATIVE_WAIT = _native_wait_class()
_native_lock = monkey.get_original("_thread", "allocate_lock")


def _own_thread(conn: Any) -> None:
    """A session of one of the engine's native threads (its store writer's,
    its reader's, its LISTEN thread's): it waits for the server in C, and
    its lock is a native one. Under ``patch_all()`` psycopg made it a gevent
    lock, and a gevent lock taken by two native threads in turn can miss
    its wake-up: a reader thread waited 40 minutes for a lock released long
    before (CI, py312-newest-patched, 2026-12-07)."""
    if _NATIVE_WAIT is not None:
        conn.native = True
    conn.lock = _native_lock()
_IDLE = None if psycopg is None else psycopg.pq.TransactionStatus.IDLE


def _one(cur: _Cursor) -> TupleRow:
    """The row of a statement that always returns one (an aggregate, an
    ``INSERT ... RETURNING``, a row locked just before)."""
    row = cur.fetchone()
    if row is None:
        raise InternalError("a statement that returns one row returned none; "
                            "this is a bug in aion_green")
    return row


_READ = "SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s ORDER BY seq"
# Every table that holds rows of a workflow id: a purge empties each of them
# (tests/test_retention.py checks this list against the database's tables).
_PER_RUN_TABLES = ("aion_events", "aion_archived_events", "aion_timers", "aion_inbox",
                   "aion_search_attributes", "aion_runs")

_READ_RUN = ("SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s "
             "AND %s = (SELECT run_id FROM aion_runs WHERE workflow_id=%s) "
             "UNION ALL SELECT seq, type, at, data FROM aion_archived_events "
             "WHERE workflow_id=%s AND run_id=%s ORDER BY seq")


@implementer(IEventStore)

class PostgresStore:
    """Histories in PostgreSQL. ``durable`` is always true here: a commit
    returns once the server made it durable (its own ``synchronous_commit``)."""

    durable = True
    # Runs are leased to engines (runtime/leases.py), never driven by one driver.
    leases = True

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        if psycopg is None:
            raise ConfigurationError(
                "the PostgreSQL store needs psycopg 3: pip install 'aion-green[postgres]'")
        self.url = url
        self.path = _safe_url(url)  # names the store in messages, as SQLite's path does
        self.connect_timeout = connect_timeout
        # Sessions say whose they are in pg_stat_activity: "aion_green",
        # unless the URL names them (application_name=...), so that an
        # operator, or a test, can tell one deployment's sessions from
        # another's (issue 16: a test ended every aion_green session).
        try:
            named = "application_name" in psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            named = False  # the connection reports what is wrong with the URL
        # (None: psycopg passes over a None parameter, and the URL's stands.)
        self._application_name: Optional[str] = None if named else "aion_green"
        self._conn: Optional[_Connection] = None
        # Whether the store is used from a native thread of its own (see
        # on_own_thread): then its sessions wait for the server in C.
        self._native = False
        self.driver_lock_held = False
        # Invariant: once true, never false again; no write is made.
        self.fenced = False
        self._connect()
        self._migrate()
        # One driver per schema: engines over other schemas of the same
        # database (tests, tenants) do not contend.
        (schema,) = self._query("SELECT current_schema()")[0]
        self.schema = schema
        # The doorbell channel of this schema's engines (LISTEN/NOTIFY).
        self.channel = f"aion_{schema}"[:63]
        self._driver_key = _DRIVER_LOCK ^ (zlib.crc32(str(schema).encode()) << 1)

    # -- connection ----------------------------------------------------------------------
    def on_own_thread(self) -> None:
        """From now on the store is used only from the calling thread, a
        native thread of the engine's (its store writer's or reader's),
        never from a greenlet of the app's hub."""
        self._native = True
        conn: Any = self._conn
        if conn is not None:
            _own_thread(conn)

    def _connect(self) -> _Connection:
        if self.fenced:
            raise FencedOut(
                f"this engine lost the driver lock of {self.path} (its database session ended "
                "and another engine took over); it writes nothing more: start a new Engine")
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            connection: Any = _NATIVE_WAIT or psycopg.Connection
            opened: Any = connection.connect(
                self.url, connect_timeout=max(1, int(self.connect_timeout)), autocommit=True,
                application_name=self._application_name)
        except psycopg.Error as exc:
            raise _translate(exc, self.path) from None
        if self._native:
            _own_thread(opened)
        conn: _Connection = opened
        self._conn = conn
        try:
            # A session paused inside a transaction (its engine stopped, say)
            # must not hold row locks that keep others from taking over.
            conn.execute("SET idle_in_transaction_session_timeout = 5000")
        except psycopg.Error as exc:
            self._drop()
            raise _translate(exc, self.path) from None
        if self.driver_lock_held:
            # The session that held the driver lock ended (a server restart,
            # a cut connection), and the lock with it. Take it again on the
            # new session, unless another engine drives now: then this one
            # is fenced out, and never writes again.
            try:
                (got,) = _one(conn.execute("SELECT pg_try_advisory_lock(%s)", (self._driver_key,)))
            except psycopg.Error as exc:
                self._drop()
                raise _translate(exc, self.path) from None
            if not got:
                self.fenced = True
                self.driver_lock_held = False
                self._drop()
                return self._connect()
        return conn

    @contextmanager
    def _translated(self, conn: _Connection) -> Iterator[None]:
        """Store errors for psycopg's; a broken session is dropped."""
        try:
            yield
        except (WorkflowNotFound, WorkflowNotRunning, StoreError):
            raise
        except psycopg.Error as exc:
            broken = conn.closed
            if broken or isinstance(exc, psycopg.OperationalError):
                self._drop()
            raise _translate(exc, self.path, broken) from None

    @contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        """One transaction; store errors for psycopg's."""
        conn = self._connect()
        with self._translated(conn), conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _pipelined_tx(self) -> Iterator[_Cursor]:
        """One transaction in libpq's pipeline mode (where it has one): a
        statement waits for the server only when its rows are fetched, and
        the ``COMMIT`` goes out with the statements before it and answers
        for all of them, in one wait. (``BEGIN`` and ``COMMIT`` are sent as
        statements: psycopg's transaction block waits for each.)"""
        if not _PIPELINE:
            with self._tx() as cur:
                yield cur
            return
        conn = self._connect()
        with self._translated(conn):
            try:
                with conn.pipeline(), conn.cursor() as cur:
                    cur.execute("BEGIN")
                    yield cur
                    cur.execute("COMMIT")
            except BaseException:
                if not conn.closed and conn.info.transaction_status != _IDLE:
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        self._drop()
                raise

    def _query(self, sql: str,
               params: Union[Sequence[object], Mapping[str, object]] = ()) -> list[TupleRow]:
        """One statement (a read) outside a transaction. A session found cut
        (the server restarted, a proxy dropped it) is replaced and the read
        sent once more: a caller waiting for a run's result was told the
        store was unavailable when the next session would have answered."""
        again = self._conn is not None and not self._conn.closed
        while True:
            conn = self._connect()
            try:
                with self._translated(conn), conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall())
            except StoreUnavailable:
                if not (again and conn.closed):
                    raise
                again = False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover - already broken
                pass

    def _migrate(self) -> None:
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute("CREATE TABLE IF NOT EXISTS aion_schema(version INTEGER NOT NULL)")
            cur.execute("SELECT version FROM aion_schema")
            row = cur.fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the database at {self.path} has aion_green schema version {version}, newer "
                    f"than this aion_green understands ({SCHEMA_VERSION}); upgrade aion_green")
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    cur.execute(statement)
            if row is None:
                cur.execute("INSERT INTO aion_schema(version) VALUES (%s)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                cur.execute("UPDATE aion_schema SET version=%s", (SCHEMA_VERSION,))

    # -- the driver lock -------------------------------------------------------------------
    def try_lock_driver(self) -> bool:
        """Take the driver lock on this store's session (non-blocking)."""
        if self.fenced:
            return False
        if self.driver_lock_held:
            self._connect()  # a new session takes the lock again, or fences
            return self.driver_lock_held
        (got,) = self._query("SELECT pg_try_advisory_lock(%s)", (self._driver_key,))[0]
        self.driver_lock_held = bool(got)
        return self.driver_lock_held

    def unlock_driver(self) -> None:
        if self.driver_lock_held and self._conn is not None and not self._conn.closed:
            self._query("SELECT pg_advisory_unlock(%s)", (self._driver_key,))
        self.driver_lock_held = False


    # -- writes ----------------------------------------------------------------------------
    def create_run(self, workflow_id: str, workflow_type: str, args_json: str, run_id: str,
                   at: float) -> tuple[bool, RunInfo]:
        outcome = self.write_batch([CreateRun(workflow_id, workflow_type, args_json, run_id, at)])[0]
        assert isinstance(outcome, tuple)
        return outcome

    def write_batch(self, ops: Sequence[Union[Append, CreateRun]]) -> list[BatchOutcome]:
        # In pipeline mode (libpq's), statements go out without waiting for
        # each one's answer: a batch waits for the server twice, once for
        # what it reads (the heads it locks, the runs it creates) and once
        # for its writes and the COMMIT. Statement by statement, a batch of
        # starts, steps and ends waited ten times or more, and under load
        # each wait also waited for the GIL on return (issue 21).
        outcomes: list[BatchOutcome] = []
        plan = BatchPlan()
        with self._pipelined_tx() as cur:
            wids = sorted({op.workflow_id for op in ops if type(op) is Append})
            heads: dict[str, int] = {}
            stored: Optional[dict[tuple[str, int], tuple[str, float, str]]] = None
            if wids:
                # Row locks, in id order: no other writer moves these heads
                # before the commit, and two batches never deadlock.
                cur.execute("SELECT workflow_id, head_seq, fence, run_id FROM aion_runs "
                            "WHERE workflow_id = ANY(%s) ORDER BY workflow_id FOR UPDATE", (wids,))
            creates = [op for op in ops if isinstance(op, CreateRun)]
            if creates:
                inserting = cur.connection.cursor()
                self._insert_runs(inserting, creates)
            fences: Optional[dict[str, int]] = None
            run_ids: Optional[dict[str, str]] = None
            if wids:
                fetched = cur.fetchall()  # (the first wait: both statements answer)
                heads = {wid: head for wid, head, _, _ in fetched}
                fences = {wid: int(fence) for wid, _, fence, _ in fetched}
                run_ids = {wid: run_id for wid, _, _, run_id in fetched}
                spans = moved_past(ops, heads)
                if spans:
                    # An earlier try of this batch may have committed with
                    # its answer lost (a cut session): its records are
                    # recognised, not taken for another writer's.
                    w, lo, hi = zip(*spans)
                    cur.execute(
                        "SELECT e.workflow_id, e.seq, e.type, e.at, e.data FROM aion_events e "
                        "JOIN unnest(%s::text[], %s::int[], %s::int[]) AS s(w, lo, hi) "
                        "ON e.workflow_id = s.w AND e.seq BETWEEN s.lo AND s.hi",
                        (list(w), list(lo), list(hi)))
                    stored = {(wid, seq): (kind, at, data)
                              for wid, seq, kind, at, data in cur.fetchall()}
            inserted: dict[str, int] = {}
            known: dict[str, RunInfo] = {}  # the runs the batch's other starts find
            if creates:
                inserted = {wid: int(fence) for wid, fence in inserting.fetchall()}
                inserting.close()
                had = {op.workflow_id for op in creates} - inserted.keys()
                if had:
                    known = self._runs(cur, list(had))
            for op in ops:
                if type(op) is Append:
                    outcomes.append(plan.append(op, heads, fences, stored, run_ids))
                    continue
                assert isinstance(op, CreateRun)
                if op.workflow_id in inserted:
                    outcome = self._created(op, inserted.pop(op.workflow_id), plan.rows)
                    known[op.workflow_id] = outcome[1]  # (a second start of it finds it)
                else:
                    outcome = _ours(op, known[op.workflow_id])
                heads.setdefault(op.workflow_id, outcome[1].head_seq)
                outcomes.append(outcome)
            # What follows only writes: it is sent without waiting, and
            # answers with the COMMIT.
            if plan.moved:
                cur.executemany("UPDATE aion_runs SET head_seq=%s, updated_at=%s WHERE workflow_id=%s",
                                list(plan.moved.values()))
            if plan.timers_started:
                cur.executemany(
                    "INSERT INTO aion_timers(workflow_id, timer_key, fire_at) VALUES (%s,%s,%s) "
                    "ON CONFLICT (workflow_id, timer_key) DO UPDATE SET fire_at=EXCLUDED.fire_at",
                    plan.timers_started)
            if plan.timers_ended:
                cur.executemany("DELETE FROM aion_timers WHERE workflow_id=%s AND timer_key=%s",
                                plan.timers_ended)
            if plan.finals:
                # (ended_at: the time of the run's last event, just set above.)
                cur.executemany("UPDATE aion_runs SET status=%s, result=%s, error=%s, "
                                "ended_at=updated_at WHERE workflow_id=%s", plan.finals)
                cur.executemany("DELETE FROM aion_timers WHERE workflow_id=%s",
                                [f[3:] for f in plan.finals])
            if plan.attributes:
                upserts, removed = attribute_rows(plan.attributes)
                if upserts:
                    cur.executemany(
                        "INSERT INTO aion_search_attributes(workflow_id, name, value, text) "
                        "VALUES (%s,%s,%s,%s) ON CONFLICT (workflow_id, name) DO UPDATE SET "
                        "value=EXCLUDED.value, text=EXCLUDED.text", upserts)
                if removed:
                    cur.executemany("DELETE FROM aion_search_attributes WHERE workflow_id=%s "
                                    "AND name=%s", removed)
            if plan.rows:
                # The batch's global positions (stores/global_events.py),
                # drawn by the statement that inserts its events: the
                # counter's row stays locked until the commit, so positions
                # are in commit order across engines. Taken last, so the lock
                # is held for the inserts and the commit alone.
                rows = plan.rows
                cur.execute(
                    "WITH p AS (UPDATE aion_event_positions SET n = n + %s RETURNING n) "
                    "INSERT INTO aion_events(workflow_id, seq, type, at, data, pos) "
                    "SELECT v.w, v.s, v.t, v.a, v.d, p.n - %s + v.o FROM p, "
                    "unnest(%s::text[], %s::int[], %s::text[], %s::float8[], %s::text[]) "
                    "WITH ORDINALITY AS v(w, s, t, a, d, o)",
                    (len(rows), len(rows), [r[0] for r in rows], [r[1] for r in rows],
                     [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows]))
            for wid, data, at in plan.rollovers:
                self._roll_over(cur, wid, data, at)
            # Doorbells, delivered at the commit: runs to claim, runs ended.
            bells = []
            if any(type(op) is CreateRun and op.owner is None for op in ops):
                bells.append("runs")
            if plan.finals:
                bells.append("ends")
            if bells:
                cur.execute("SELECT pg_notify(%s, b) FROM unnest(%s::text[]) AS b",
                            (self.channel, bells))
        return outcomes

    def _insert_runs(self, cur: _Cursor, creates: Sequence[CreateRun]) -> None:
        """Send the runs rows of a batch's starts in one statement (one round
        trip to the server, where a statement per start took one each: issue
        21); it answers ``(workflow id, fence)`` of those it created. An id
        that has a run already, or that an earlier start of the batch took,
        is left out."""
        cur.execute(
            "INSERT INTO aion_runs(workflow_id, run_id, workflow_type, status, args, head_seq, "
            "created_at, updated_at, owner, lease_until, fence, parent_id) "
            "SELECT w, r, t, %s, a, 1, c, c, o, l, "
            "CASE WHEN o IS NULL THEN 0 ELSE nextval('aion_fence_seq') END, p "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], "
            "%s::text[], %s::float8[], %s::text[]) WITH ORDINALITY AS v(w, r, t, a, c, o, l, p, n) "
            "ORDER BY n ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id, fence",
            (ev.RUNNING, [op.workflow_id for op in creates], [op.run_id for op in creates],
             [op.workflow_type for op in creates], [op.args_json for op in creates],
             [op.at for op in creates], [op.owner for op in creates],
             [op.lease_until for op in creates], [op.parent_id for op in creates]))

    def _runs(self, cur: _Cursor, wids: list[str]) -> dict[str, RunInfo]:
        cur.execute(f"SELECT {_RUN_COLUMNS} FROM aion_runs WHERE workflow_id = ANY(%s)", (wids,))
        return {info.workflow_id: info for info in map(_run_info, cur.fetchall())}

    @staticmethod
    def _created(op: CreateRun, fence: int,
                 rows: list[tuple[str, int, str, float, str]]) -> tuple[bool, RunInfo]:
        rows.append((op.workflow_id, 1, ev.WORKFLOW_STARTED, op.at, started_json(op)))
        return True, RunInfo(op.workflow_id, op.run_id, op.workflow_type, ev.RUNNING,
                             json.loads(op.args_json), None, None, 1, op.at, op.at, fence,
                             parent_id=op.parent_id, execution_deadline=op.execution_deadline)

    def _roll_over(self, cur: _Cursor, wid: str, data: dict[str, Any], at: float) -> None:
        cur.execute("SELECT run_id, workflow_type FROM aion_runs WHERE workflow_id=%s", (wid,))
        old_run_id, wtype = _one(cur)
        cur.execute("INSERT INTO aion_archived_events(workflow_id, run_id, seq, type, at, "
                    "data, pos) SELECT workflow_id, %s, seq, type, at, data, pos "
                    "FROM aion_events WHERE workflow_id=%s",
                    (old_run_id, wid))
        cur.execute("DELETE FROM aion_events WHERE workflow_id=%s", (wid,))
        cur.execute("INSERT INTO aion_events(workflow_id, seq, type, at, data) VALUES (%s,1,%s,%s,%s)",
                    (wid, ev.WORKFLOW_STARTED, at, json.dumps(next_run_started(wtype, old_run_id, data))))
        cur.execute("UPDATE aion_runs SET run_id=%s, status=%s, result=NULL, error=NULL, head_seq=1, "
                    "created_at=%s, updated_at=%s, ended_at=NULL WHERE workflow_id=%s",
                    (data["run_id"], ev.RUNNING, at, at, wid))

    def _append_at_head(self, workflow_id: str, event_type: str, at: float,
                        build: _Build, why_not: str) -> int:
        with self._tx() as cur:
            cur.execute("SELECT head_seq, status FROM aion_runs WHERE workflow_id=%s FOR UPDATE",
                        (workflow_id,))
            run = cur.fetchone()
            require_running(workflow_id, None if run is None else run[1], self.path, why_not)
            assert run is not None  # (require_running raised for a missing run)
            head: int = run[0]
            data = build(cur)
            if isinstance(data, int):
                return data
            seq = head + 1
            cur.execute("INSERT INTO aion_events(workflow_id, seq, type, at, data) VALUES (%s,%s,%s,%s,%s)",
                        (workflow_id, seq, event_type, at, json.dumps(data)))
            cur.execute("UPDATE aion_runs SET head_seq=%s, updated_at=%s WHERE workflow_id=%s",
                        (seq, at, workflow_id))
            return seq

    def fire_timer(self, workflow_id: str, timer_key: str, at: float) -> Optional[int]:
        def build(cur: _Cursor) -> Union[int, dict[str, Any]]:
            cur.execute("DELETE FROM aion_timers WHERE workflow_id=%s AND timer_key=%s",
                        (workflow_id, timer_key))
            return {"timer": timer_key} if cur.rowcount else -1

        try:
            seq = self._append_at_head(workflow_id, ev.TIMER_FIRED, at, build, "its timer is moot")
        except (WorkflowNotFound, WorkflowNotRunning):
            return None
        return None if seq == -1 else seq

    def deliver_message(self, workflow_id: str, name: str, payload_json: str, at: float,
                        dedup: Optional[str] = None) -> int:
        def build(cur: _Cursor) -> Union[int, dict[str, Any]]:
            if dedup is not None:
                seen = _events_where(cur, "aion_events", workflow_id, ev.MESSAGE_RECEIVED, "dedup", dedup)
                if seen:
                    return seen[0]
            index = len(_events_where(cur, "aion_events", workflow_id, ev.MESSAGE_RECEIVED, "name", name))
            data = {"name": name, "index": index, "payload": json.loads(payload_json)}
            if dedup is not None:
                data["dedup"] = dedup
            return data

        return self._append_at_head(workflow_id, ev.MESSAGE_RECEIVED, at, build,
                                    f"a message {name!r} to it would never be read")

    def request_cancel(self, workflow_id: str, reason: str, at: float) -> int:
        def build(cur: _Cursor) -> Union[int, dict[str, Any]]:
            cur.execute("SELECT seq FROM aion_events WHERE workflow_id=%s AND type=%s LIMIT 1",
                        (workflow_id, ev.CANCEL_REQUESTED))
            seen = cur.fetchone()
            return int(seen[0]) if seen is not None else {"reason": reason}

        return self._append_at_head(workflow_id, ev.CANCEL_REQUESTED, at, build,
                                    "there is nothing left to cancel")

    def post_inbox(self, workflow_id: str, kind: str, data_json: str, at: float) -> int:
        with self._tx() as cur:
            cur.execute("SELECT status FROM aion_runs WHERE workflow_id=%s", (workflow_id,))
            run = cur.fetchone()
            require_running(workflow_id, None if run is None else run[0], self.path,
                            inbox_why_not(kind))
            cur.execute("INSERT INTO aion_inbox(workflow_id, kind, data, at) VALUES (%s,%s,%s,%s) "
                        "RETURNING id", (workflow_id, kind, data_json, at))
            row_id = int(_one(cur)[0])
            cur.execute("SELECT pg_notify(%s, 'inbox')", (self.channel,))
            return row_id

    def delete_inbox(self, ids: Sequence[int]) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM aion_inbox WHERE id = ANY(%s)", (list(ids),))

    # -- reads -----------------------------------------------------------------------------
    def read(self, workflow_id: str, after_seq: int = 0, limit: Optional[int] = None,
             run_id: Optional[str] = None) -> list[ev.Event]:
        if run_id is None:
            sql = "SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s AND seq>%s ORDER BY seq"
            params: tuple[Union[str, int], ...] = (workflow_id, after_seq)
        else:
            sql = ("SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s AND seq>%s "
                   "AND %s = (SELECT run_id FROM aion_runs WHERE workflow_id=%s) "
                   "UNION ALL SELECT seq, type, at, data FROM aion_archived_events "
                   "WHERE workflow_id=%s AND seq>%s AND run_id=%s ORDER BY seq")
            params = (workflow_id, after_seq, run_id, workflow_id, workflow_id, after_seq, run_id)
        if limit is not None:
            sql += " LIMIT %s"
            params += (limit,)
        return [ev.Event(seq, typ, at, json.loads(data)) for seq, typ, at, data in self._query(sql, params)]

    def last_of_types(self, workflow_id: str, types: Sequence[str]) -> Optional[str]:
        rows = self._query("SELECT type FROM aion_events WHERE workflow_id=%s AND type = ANY(%s) "
                           "ORDER BY seq DESC LIMIT 1", (workflow_id, list(types)))
        return str(rows[0][0]) if rows else None

    def get_run(self, workflow_id: str) -> Optional[RunInfo]:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM aion_runs WHERE workflow_id=%s", (workflow_id,))
        return self._with_attributes([_run_info(rows[0])])[0] if rows else None

    def _with_attributes(self, infos: list[RunInfo]) -> list[RunInfo]:
        """``infos``, each with its search attributes (one read)."""
        if not infos:
            return infos
        found: dict[str, dict[str, Any]] = {}
        for wid, name, value in self._query(
                "SELECT workflow_id, name, value FROM aion_search_attributes "
                "WHERE workflow_id = ANY(%s) ORDER BY workflow_id, name",
                ([info.workflow_id for info in infos],)):
            found.setdefault(wid, {})[name] = json.loads(value)
        if not found:
            return infos
        return [dataclasses.replace(info, search_attributes=found[info.workflow_id])
                if info.workflow_id in found else info for info in infos]

    def list_runs(self, status: Optional[str] = None, workflow_type: Optional[str] = None,
                  limit: int = 100, after_id: Optional[str] = None, *,
                  filters: Optional[RunFilter] = None) -> list[RunInfo]:
        where, params = run_filters(status, workflow_type, after_id, "%s",
                                    'workflow_id > %s COLLATE "C"', filters,
                                    "aion_search_attributes")
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM aion_runs {where} "
                           "ORDER BY workflow_id COLLATE \"C\" LIMIT %s", (*params, limit))
        return self._with_attributes([_run_info(row) for row in rows])

    def count_runs(self, status: Optional[str] = None, workflow_type: Optional[str] = None, *,
                   filters: Optional[RunFilter] = None) -> int:
        where, params = run_filters(status, workflow_type, None, "%s", "", filters,
                                    "aion_search_attributes")
        return int(self._query(f"SELECT count(*) FROM aion_runs {where}", params)[0][0])

    def count_runs_by_status(self, workflow_type: Optional[str] = None, *,
                             filters: Optional[RunFilter] = None) -> dict[str, int]:
        where, params = run_filters(None, workflow_type, None, "%s", "", filters,
                                    "aion_search_attributes")
        rows = self._query(f"SELECT status, count(*) FROM aion_runs {where} GROUP BY status", params)
        return {**dict.fromkeys(ev.STATUSES, 0), **{status: int(n) for status, n in rows}}

    def count_leased(self, owner: str, now: float) -> int:
        """How many running runs ``owner`` holds under a lease still good at
        ``now`` (the engine's metrics)."""
        rows = self._query("SELECT count(*) FROM aion_runs WHERE owner=%s AND status=%s "
                           "AND lease_until >= %s", (owner, ev.RUNNING, now))
        return int(rows[0][0])

    def due_timers(self, now: float, limit: int = 1000) -> list[tuple[str, str, float]]:
        rows = self._query("SELECT workflow_id, timer_key, fire_at FROM aion_timers WHERE fire_at <= %s "
                           "ORDER BY fire_at LIMIT %s", (now, limit))
        return [(wid, key, fire_at) for wid, key, fire_at in rows]

    def read_inbox(self, after_id: int = 0, limit: int = 500,
                   owner: Optional[str] = None) -> list[InboxRow]:
        if owner is None:
            rows = self._query("SELECT id, workflow_id, kind, data, at FROM aion_inbox WHERE id>%s "
                               "ORDER BY id LIMIT %s", (after_id, limit))
        else:  # the requests for runs this owner holds
            rows = self._query("SELECT i.id, i.workflow_id, i.kind, i.data, i.at FROM aion_inbox i "
                               "JOIN aion_runs r ON r.workflow_id = i.workflow_id "
                               "WHERE i.id>%s AND r.owner=%s ORDER BY i.id LIMIT %s",
                               (after_id, owner, limit))
        return [(int(i), wid, kind, json.loads(data), at) for i, wid, kind, data, at in rows]

    def new_runs(self, after: int = 0, limit: int = 500) -> list[NewRun]:
        rows = self._query("SELECT mark, workflow_id, status FROM aion_runs WHERE mark>%s "
                           "ORDER BY mark LIMIT %s", (after, limit))
        return [NewRun(int(mark), wid, status) for mark, wid, status in rows]

    def last_run_mark(self) -> int:
        return int(self._query("SELECT coalesce(max(mark), 0) FROM aion_runs")[0][0])

    def purge_finished(self, before: float, limit: int = 500,
                       namespace: Optional[str] = None) -> list[str]:
        with self._tx() as cur:
            # Row locks, skipping runs another engine's purge holds: engines
            # that purge at the same moment take disjoint runs, and wait for
            # no one. The deletes below cover exactly the runs locked here.
            # (A child event whose data does not cast, see _UNCASTABLE, is
            # read as naming no child: such a child waits for its parent.)
            data_id = (f"(CASE WHEN {_UNCASTABLE.replace('data', '{a}.data', 1)} THEN NULL "
                       "ELSE {a}.data::jsonb ->> 'id' END)")
            cur.execute(purge_candidates("%s", "aion_runs", "aion_events", data_id,
                                         "FOR UPDATE OF r SKIP LOCKED", namespace=namespace),
                        purge_parameters(before, limit, namespace))
            wids = [row[0] for row in cur.fetchall()]
            if wids:
                for table in _PER_RUN_TABLES:
                    cur.execute(f"DELETE FROM {table} WHERE workflow_id = ANY(%s)", (wids,))
        return wids

    def find_event(self, workflow_id: str, event_type: str, dedup: Optional[str] = None) -> Optional[int]:
        if dedup is None:
            rows = self._query("SELECT seq FROM aion_events WHERE workflow_id=%s AND type=%s "
                               "ORDER BY seq LIMIT 1", (workflow_id, event_type))
            return int(rows[0][0]) if rows else None
        # The current run first; the run that recorded it may have continued
        # as new since (its seq is then that run's).
        with self._tx() as cur:
            for table in ("aion_events", "aion_archived_events"):
                seqs = _events_where(cur, table, workflow_id, event_type, "dedup", dedup)
                if seqs:
                    return seqs[0]
        return None

    # -- leases ------------------------------------------------------------------------------
    def claim_runs(self, owner: str, workflow_types: Sequence[str], lease_until: float, now: float,
                   limit: int) -> list[RunInfo]:
        """Take up to ``limit`` running runs of these types that nobody holds
        (no owner, or a lease that ran out), each with a new fence. (A run
        nobody owns has lease_until 0: one condition, which the index
        aion_runs_claimable serves; with ``owner IS NULL OR`` beside it, a
        claim that found nothing read every running run, 18 ms at 200,000
        held.)"""
        with self._tx() as cur:
            cur.execute(
                f"UPDATE aion_runs r SET owner=%s, lease_until=%s, fence=nextval('aion_fence_seq') "
                f"FROM (SELECT workflow_id FROM aion_runs WHERE status=%s "
                f"AND workflow_type = ANY(%s) AND lease_until < %s "
                f"ORDER BY mark LIMIT %s FOR UPDATE SKIP LOCKED) c "
                f"WHERE r.workflow_id = c.workflow_id "
                f"RETURNING {', '.join('r.' + c.strip() for c in _RUN_COLUMNS.split(','))}",
                (owner, lease_until, ev.RUNNING, list(workflow_types), now, limit))
            return [_run_info(row) for row in cur.fetchall()]

    def claim_counts(self, owner: str, workflow_types: Sequence[str], now: float,
                     cap: int) -> tuple[int, int, int, int]:
        """What an engine weighs before it claims (runtime/leases.py, its
        fair share): ``(claimable, peers, held, mine)``: running runs of
        these types that nobody holds; the other engines at work that run
        at least one of these types; runs of these types held under a
        lease still good at ``now``, and how many of those ``owner`` holds.
        Each run count stops at ``cap`` (a bounded scan, whatever the
        store holds); when nothing is claimable the others are not
        counted (0)."""
        types = list(workflow_types)
        rows = self._query(
            "WITH c AS (SELECT count(*) AS n FROM (SELECT 1 FROM aion_runs WHERE status=%(running)s "
            "AND workflow_type = ANY(%(types)s) AND lease_until < %(now)s "
            "LIMIT %(cap)s) AS claimable), "
            "h AS (SELECT count(*) AS n, count(*) FILTER (WHERE owner = %(owner)s) AS mine "
            "FROM (SELECT owner FROM aion_runs WHERE status=%(running)s "
            "AND workflow_type = ANY(%(types)s) AND owner IS NOT NULL AND lease_until >= %(now)s "
            "LIMIT %(cap)s) AS held) "
            # (CASE: the other counts only when there is something to share;
            # an uncorrelated subquery is evaluated when first needed.)
            "SELECT c.n, "
            "CASE WHEN c.n = 0 THEN 0 ELSE (SELECT count(*) FROM aion_engines "
            "WHERE seen_until >= %(now)s AND engine_id <> %(owner)s "
            "AND workflow_types::jsonb ?| %(types)s::text[]) END, "
            "CASE WHEN c.n = 0 THEN 0 ELSE (SELECT n FROM h) END, "
            "CASE WHEN c.n = 0 THEN 0 ELSE (SELECT mine FROM h) END FROM c",
            {"running": ev.RUNNING, "types": types, "now": now, "cap": cap, "owner": owner})
        claimable, peers, held, mine = rows[0]
        return int(claimable), int(peers), int(held), int(mine)

    def renew_leases(self, owner: str, workflow_ids: Sequence[str], lease_until: float) -> list[str]:
        """Extend this owner's leases; the ids it still holds."""
        with self._tx() as cur:
            cur.execute("UPDATE aion_runs SET lease_until=%s WHERE owner=%s AND workflow_id = ANY(%s) "
                        "RETURNING workflow_id", (lease_until, owner, list(workflow_ids)))
            return [row[0] for row in cur.fetchall()]

    def publish_engine(self, engine_id: str, types_json: str, until: float, now: float) -> None:
        """Say that engine ``engine_id`` runs these workflow types (a JSON
        object: type -> parameters) until ``until``; free the parked runs
        of engines whose entry ran out (any engine may claim them now);
        forget engines gone a day."""
        with self._tx() as cur:
            cur.execute("INSERT INTO aion_engines(engine_id, workflow_types, seen_until) "
                        "VALUES (%s,%s,%s) ON CONFLICT (engine_id) DO UPDATE SET "
                        "workflow_types=EXCLUDED.workflow_types, seen_until=EXCLUDED.seen_until",
                        (engine_id, types_json, until))
            # (The owners first, then their parked runs by the index
            # aion_runs_parked: as one join the planner read every run.)
            cur.execute("SELECT engine_id FROM aion_engines WHERE seen_until < %s", (now,))
            gone = [row[0] for row in cur.fetchall()]
            if gone:
                cur.execute(f"UPDATE aion_runs SET lease_until=0 WHERE owner = ANY(%s) "
                            f"AND lease_until >= {PARKED_LEASE_SQL}", (gone,))
                if cur.rowcount:
                    cur.execute("SELECT pg_notify(%s, 'runs')", (self.channel,))
            cur.execute("DELETE FROM aion_engines WHERE seen_until < %s", (now - 86400,))

    def forget_engine(self, engine_id: str) -> None:
        """The engine is gone (a clean shutdown, after it gave its leases
        back): its entry goes, and no run stays parked under it."""
        with self._tx() as cur:
            cur.execute(f"UPDATE aion_runs SET lease_until=0 WHERE lease_until >= {PARKED_LEASE_SQL} "
                        "AND owner=%s", (engine_id,))
            cur.execute("DELETE FROM aion_engines WHERE engine_id=%s", (engine_id,))

    def live_engines(self, now: float) -> dict[str, dict[str, Any]]:
        """The engines whose word is still good at ``now``: their types
        (type -> parameters)."""
        rows = self._query("SELECT engine_id, workflow_types FROM aion_engines WHERE seen_until >= %s",
                           (now,))
        return {engine_id: json.loads(types) for engine_id, types in rows}

    def engines_at_work(self, now: float) -> list[tuple[str, float, list[str], int]]:
        """The engines whose word is still good at ``now``, each with until
        when, its workflow types and how many running runs it leases now
        (the console's engines page)."""
        rows = self._query(
            "SELECT e.engine_id, e.seen_until, e.workflow_types, (SELECT count(*) FROM aion_runs r "
            "WHERE r.owner = e.engine_id AND r.status = %s AND r.lease_until >= %s) "
            "FROM aion_engines e WHERE e.seen_until >= %s ORDER BY e.engine_id",
            (ev.RUNNING, now, now))
        return [(engine_id, float(until), sorted(json.loads(types)), int(leased))
                for engine_id, until, types, leased in rows]

    def release_leases(self, owner: str, workflow_ids: Optional[Sequence[str]] = None) -> None:
        """Give back the runs this owner holds (all of them at a clean
        shutdown, or ``workflow_ids``): others may claim them at once."""
        with self._tx() as cur:
            if workflow_ids is None:
                cur.execute("UPDATE aion_runs SET owner=NULL, lease_until=0 "
                            "WHERE owner=%s AND status=%s", (owner, ev.RUNNING))
            else:
                cur.execute("UPDATE aion_runs SET owner=NULL, lease_until=0 "
                            "WHERE owner=%s AND workflow_id = ANY(%s)", (owner, list(workflow_ids)))
            cur.execute("SELECT pg_notify(%s, 'runs')", (self.channel,))

    def lease_of(self, workflow_id: str) -> Optional[tuple[str, float]]:
        """``(owner, lease_until)`` of a run some engine holds, else None
        (``Engine.terminate`` asks the owner to end the run it drives)."""
        # (A parked lease holds as long as its owner's entry among the engines.)
        rows = self._query(f"SELECT owner, CASE WHEN lease_until >= {PARKED_LEASE_SQL} THEN "
                           "coalesce((SELECT seen_until FROM aion_engines WHERE engine_id = owner), 0) "
                           "ELSE lease_until END FROM aion_runs WHERE workflow_id=%s "
                           "AND owner IS NOT NULL", (workflow_id,))
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def read_many(self, workflow_ids: Sequence[str]) -> dict[str, list[ev.Event]]:
        found: dict[str, list[ev.Event]] = {}
        histories_by_run(self._query("SELECT workflow_id, seq, type, at, data FROM aion_events "
                                     "WHERE workflow_id = ANY(%s) ORDER BY workflow_id, seq",
                                     (list(workflow_ids),)), found)
        return found

    def read_leased(self, owner: str,
                    workflow_ids: Sequence[str]) -> dict[str, tuple[float, list[ev.Event]]]:
        """``{id: (lease_until, history)}`` of the runs among
        ``workflow_ids`` that ``owner`` holds, in one round trip (runs back
        from eviction check their leases as they read their histories); a
        parked lease ends with its owner's entry. A run another engine
        holds, or nobody, is left out."""
        found: dict[str, tuple[float, list[ev.Event]]] = {}
        leased_histories(self._query(leased_read_sql("aion_runs", "aion_events", "aion_engines",
                                                     "= ANY(%s)", "%s"),
                                     (list(workflow_ids), owner)), found)
        return found

    def listen(self, on_bell: Callable[[str], None], stopped: Callable[[], bool]) -> None:
        """Blocking, on a thread of its own: call ``on_bell(kind)`` for each
        doorbell ("runs", "inbox", "ends") of this schema's channel until
        ``stopped()``; reconnects when the connection is lost. Polling stays
        the fallback, so a missed bell only delays."""
        import time as _time

        while not stopped():
            try:
                # Its own native thread: it waits in C, as the writer does
                # (under patch_all, psycopg's wait made this thread a gevent
                # hub, and greenlet 3.0.0 crashed the process at exit when
                # such a thread ended during the interpreter's finalization).
                connection: Any = _NATIVE_WAIT or psycopg.Connection
                with connection.connect(self.url, autocommit=True,
                                        application_name=self._application_name,
                                        connect_timeout=max(1, int(self.connect_timeout))) as conn:
                    _own_thread(conn)
                    conn.execute(f'LISTEN "{self.channel}"')
                    on_bell("runs")  # anything sent while not listening: look now
                    while not stopped():
                        for note in conn.notifies(timeout=0.5):
                            on_bell(note.payload)
            except psycopg.Error:
                _time.sleep(0.5)

    # -- the store-wide event stream (stores/global_events.py) ---------------------------
    def event_head(self) -> int:
        return int(self._query("SELECT n FROM aion_event_positions")[0][0])

    def read_events(self, after: int, limit: int,
                    filters: EventFilter = EventFilter()) -> tuple[list[GlobalEvent], int]:
        head = self.event_head()  # first: every event at or below it is committed
        sql, params = events_query(filters, after, head, limit, "%s", events="aion_events",
                                   archive="aion_archived_events", runs="aion_runs")
        return page(self._query(sql, params), limit, max(head, after))

    def close(self) -> None:
        self._drop()

    # -- fork and resume ------------------------------------------------------------

    def fork_run(self, source_id: str, from_seq: int, new_id: str, run_id: str, at: float,
                 source_run_id: Optional[str] = None) -> RunInfo:
        with self._tx() as cur:
            history = self._source(cur, source_id, source_run_id)
            copy = plan_copy("fork", source_id, history, from_seq, run_id, at, self.path)
            wtype, args = copy.started["workflow_type"], copy.started["args"]
            cur.execute(
                "INSERT INTO aion_runs(workflow_id, run_id, workflow_type, status, args, head_seq, "
                "created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (workflow_id) DO NOTHING RETURNING fence",
                (new_id, run_id, wtype, ev.RUNNING, json.dumps(args), copy.head, at, at))
            if cur.fetchone() is None:
                raise WorkflowIdConflict(
                    f"cannot fork {source_id!r} as {new_id!r}: that workflow id exists in "
                    f"{self.path}; pass another id. Nothing was written")
            self._write_copy(cur, new_id, copy)
        return RunInfo(new_id, run_id, wtype, ev.RUNNING, args, None, None, copy.head, at, at)

    def restart_run(self, workflow_id: str, from_seq: Optional[int], run_id: str,
                    at: float) -> RunInfo:
        with self._tx() as cur:
            cur.execute(f"SELECT {_RUN_COLUMNS} FROM aion_runs WHERE workflow_id=%s FOR UPDATE",
                        (workflow_id,))
            row = cur.fetchone()
            if row is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {self.path}; "
                                       "nothing was written")
            history = self._source(cur, workflow_id, None)
            info = _run_info(row)
            require_resumable(info, self.path)
            cut = resume_point(workflow_id, history) if from_seq is None else from_seq
            copy = plan_copy("resume", workflow_id, history, cut, run_id, at, self.path)
            cur.execute("INSERT INTO aion_archived_events(workflow_id, run_id, seq, type, at, "
                        "data, pos) SELECT workflow_id, %s, seq, type, at, data, pos "
                        "FROM aion_events WHERE workflow_id=%s", (info.run_id, workflow_id))
            cur.execute("DELETE FROM aion_events WHERE workflow_id=%s", (workflow_id,))
            cur.execute(
                "UPDATE aion_runs SET run_id=%s, status=%s, result=NULL, error=NULL, head_seq=%s, "
                "created_at=%s, updated_at=%s, ended_at=NULL, owner=NULL, lease_until=0, "
                "fence=nextval('aion_fence_seq'), "
                "mark=nextval(pg_get_serial_sequence('aion_runs', 'mark')) "
                "WHERE workflow_id=%s RETURNING fence",
                (run_id, ev.RUNNING, copy.head, at, at, workflow_id))
            (fence,) = _one(cur)
            self._write_copy(cur, workflow_id, copy)
        return dataclasses.replace(info, run_id=run_id, status=ev.RUNNING, result=None, error=None,
                                   head_seq=copy.head, created_at=at, updated_at=at,
                                   fence=int(fence))

    def _source(self, cur: _Cursor, workflow_id: str, run_id: Optional[str]) -> list[ev.Event]:
        if run_id is None:
            cur.execute(_READ, (workflow_id,))
        else:
            cur.execute(_READ_RUN, (workflow_id, run_id, workflow_id, workflow_id, run_id))
        history = [ev.Event(seq, typ, at, json.loads(data)) for seq, typ, at, data in cur.fetchall()]
        if not history:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}{opt_run(run_id)} in "
                                   f"{self.path}; nothing was written")
        return history

    def _write_copy(self, cur: _Cursor, workflow_id: str, copy: Copy) -> None:
        cur.executemany("INSERT INTO aion_events(workflow_id, seq, type, at, data) "
                        "VALUES (%s,%s,%s,%s,%s)", copy.rows(workflow_id))
        cur.execute("DELETE FROM aion_search_attributes WHERE workflow_id=%s", (workflow_id,))
        attributes = copied_attributes(workflow_id, copy.started, copy.events)
        if attributes:
            cur.executemany("INSERT INTO aion_search_attributes(workflow_id, name, value, text) "
                            "VALUES (%s,%s,%s,%s)", attributes)
        cur.execute("DELETE FROM aion_timers WHERE workflow_id=%s", (workflow_id,))
        if copy.timers:
            cur.executemany("INSERT INTO aion_timers(workflow_id, timer_key, fire_at) "
                            "VALUES (%s,%s,%s)",
                            [(workflow_id, key, fire_at) for key, fire_at in copy.timers.items()])
        cur.execute("SELECT pg_notify(%s, 'runs')", (self.channel,))


def _ours(op: CreateRun, info: RunInfo) -> tuple[bool, RunInfo]:
    """A start that found a run under its id: created by an earlier try of
    this very start whose answer was lost (the same run id, drawn at random
    for it), else another start's."""
    return info.run_id == op.run_id, info
