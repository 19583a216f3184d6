"""The PostgreSQL store's schema (versioned migrations, applied under an
advisory lock), its advisory lock keys, and the translation of psycopg's
errors into the store errors the engine handles."""
from __future__ import annotations

import json
from typing import Any, Sequence

from aion_green.core.errors import StoreError, StoreUnavailable
from aion_green.store import RunInfo

try:  # an optional dependency: pip install 'aion-green[postgres]'
    import psycopg as psycopg  # (re-exported: the store reads it from here)
except ImportError:  # pragma: no cover - exercised when psycopg is absent
    psycopg = None  # type: ignore[assignment]  # the module, or None when it is absent

# Keys of the advisory locks (any two constants that no other use shares).
_MIGRATION_LOCK = 0x61696F6E_6D696772  # "aionmigr"
_DRIVER_LOCK = 0x61696F6E_64726976  # "aiondriv"

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE aion_runs(
            workflow_id TEXT PRIMARY KEY,
            mark BIGSERIAL UNIQUE,
            run_id TEXT NOT NULL,
            workflow_type TEXT NOT NULL,
            status TEXT NOT NULL,
            args TEXT NOT NULL,
            result TEXT,
            error TEXT,
            head_seq INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX aion_runs_by_status ON aion_runs(status, workflow_type, workflow_id)",
        """CREATE TABLE aion_events(
            workflow_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (workflow_id, seq))""",
        """CREATE TABLE aion_timers(
            workflow_id TEXT NOT NULL,
            timer_key TEXT NOT NULL,
            fire_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (workflow_id, timer_key))""",
        "CREATE INDEX aion_timers_by_deadline ON aion_timers(fire_at)",
        """CREATE TABLE aion_archived_events(
            workflow_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (workflow_id, run_id, seq))""",
        """CREATE TABLE aion_inbox(
            id BIGSERIAL PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL)""",
    ),
    (
        # Leases: each running run is owned by one engine until lease_until;
        # fence grows with every grant, and every append names the fence it
        # was granted under.
        "ALTER TABLE aion_runs ADD COLUMN owner TEXT, "
        "ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, "
        "ADD COLUMN fence BIGINT NOT NULL DEFAULT 0",
        "CREATE SEQUENCE aion_fence_seq",
        "CREATE INDEX aion_runs_claimable ON aion_runs(status, lease_until) WHERE status = 'running'",
    ),
    (
        # The engines at work and the workflow types each runs (with their
        # parameters), renewed with their leases: a client refuses to start
        # a type no live engine knows, and describe() says why a run of one
        # is not running (issue 16: such runs stayed running for ever).
        """CREATE TABLE aion_engines(
            engine_id TEXT PRIMARY KEY,
            workflow_types TEXT NOT NULL,
            seen_until DOUBLE PRECISION NOT NULL)""",
    ),
    (
        # Listing and search (issue 18): a child's run names its parent's
        # workflow id (NULL for a top-level run, and for runs created
        # before this version), and the search attributes of each workflow
        # id (ctx.upsert_search_attributes), kept by the appends that record
        # them: the value as typed JSON, and its text form, which filters match.
        "ALTER TABLE aion_runs ADD COLUMN parent_id TEXT",
        "CREATE INDEX aion_runs_by_parent ON aion_runs(parent_id, workflow_id) "
        "WHERE parent_id IS NOT NULL",
        """CREATE TABLE aion_search_attributes(
            workflow_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (workflow_id, name))""",
        "CREATE INDEX aion_search_attributes_by_value ON aion_search_attributes(name, text, workflow_id)",
    ),
    (
        # Retention (issue 18): each run's end time, which retention
        # measures, set with its status by the append of its end (the run's
        # updated_at then) and backfilled here for the runs already finished.
        # Its own column, not updated_at: an index on updated_at, which
        # every append moves, would make every append's update a non-HOT one.
        # (Marks come from a sequence here: a purge never brings one back.)
        "ALTER TABLE aion_runs ADD COLUMN ended_at DOUBLE PRECISION",
        "UPDATE aion_runs SET ended_at = updated_at WHERE status <> 'running'",
        "CREATE INDEX aion_runs_by_end ON aion_runs(ended_at) WHERE ended_at IS NOT NULL",
    ),
    (
        # -- schema 6: the store-wide event stream (issue 18, GET /v1/events) --
        # Every event gets a global position, its cursor in the stream, from
        # a one-row counter. A transaction takes its positions with
        # UPDATE ... SET n = n + k, which keeps the counter's row locked until
        # it commits: positions are given in commit order even with several
        # engines writing at once (a sequence gives them at insert, and
        # transactions commit out of that order: a reader would skip an
        # event committed late below its cursor). The group commit takes a
        # batch's positions at once (PostgresStore.write_batch); the trigger
        # gives one to any other insert that names none. Archived events
        # keep theirs. Rows written before this version are numbered here,
        # in the order of their time.
        "ALTER TABLE aion_events ADD COLUMN pos BIGINT",
        "ALTER TABLE aion_archived_events ADD COLUMN pos BIGINT",
        "CREATE TABLE aion_event_positions(n BIGINT NOT NULL)",
        "CREATE TEMP TABLE aion_event_order ON COMMIT DROP AS SELECT archived, workflow_id, "
        "run_id, seq, row_number() OVER (ORDER BY at, archived DESC, workflow_id, run_id, seq) "
        "AS pos FROM (SELECT 0 AS archived, workflow_id, '' AS run_id, seq, at FROM aion_events "
        "UNION ALL SELECT 1, workflow_id, run_id, seq, at FROM aion_archived_events) AS every_event",
        "UPDATE aion_events e SET pos = o.pos FROM aion_event_order o WHERE o.archived = 0 "
        "AND o.workflow_id = e.workflow_id AND o.seq = e.seq",
        "UPDATE aion_archived_events a SET pos = o.pos FROM aion_event_order o "
        "WHERE o.archived = 1 AND o.workflow_id = a.workflow_id AND o.run_id = a.run_id "
        "AND o.seq = a.seq",
        "INSERT INTO aion_event_positions(n) SELECT count(*) FROM aion_event_order",
        "CREATE INDEX aion_events_by_pos ON aion_events(pos)",
        "CREATE INDEX aion_archived_events_by_pos ON aion_archived_events(pos)",
        """CREATE FUNCTION aion_event_position() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE aion_event_positions SET n = n + 1 RETURNING n INTO NEW.pos;
            RETURN NEW;
        END $$""",
        "CREATE TRIGGER aion_events_position BEFORE INSERT ON aion_events FOR EACH ROW "
        "WHEN (NEW.pos IS NULL) EXECUTE FUNCTION aion_event_position()",
    ),
    (
        # -- schema 7: parked leases (issue 21) --
        # A run out of memory keeps its lease parked (lease_until 1e15,
        # store.PARKED_LEASE) under its owner's entry among the engines,
        # instead of a renewal per run per heartbeat; an engine that
        # publishes its entry frees the parked runs of engines whose entry
        # ran out: this index finds them by owner.
        "CREATE INDEX aion_runs_parked ON aion_runs(owner) WHERE lease_until >= 1e15",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
_RUN_COLUMNS = ("workflow_id, run_id, workflow_type, status, args, result, error, head_seq, "
                "created_at, updated_at, fence, parent_id")


def _translate(exc: BaseException, where: str, broken: bool = False) -> StoreError:
    """A store error for psycopg's. ``broken``: the session was found cut
    when the error came back, whatever its class (a pipeline cut between a
    statement and its answer ends as a ``ProgrammingError`` about a result
    that never came): the write may have been committed, and a new session
    may take it, as for an ``OperationalError``."""
    if broken or (psycopg is not None and isinstance(exc, psycopg.OperationalError)):
        unavailable = StoreUnavailable(
            f"the PostgreSQL database at {where} cannot be reached or refused the write ({exc}). "
            "If the session was cut while the answer was on its way, the write may have been "
            "committed: retry (a start of the same id and arguments, or a signal with an "
            "idempotency_key, is not recorded twice)")
        unavailable.maybe_written = True
        return unavailable
    return StoreError(f"PostgreSQL error at {where}: {exc}")


def _safe_url(url: str) -> str:
    """The URL without its password, for messages: neither ``user:password@``
    nor ``?password=`` (libpq takes both; the second leaked into 404 bodies
    and the worker's banner: issue 16)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        auth, host = rest.rsplit("@", 1)
        url = f"{scheme}://{auth.split(':', 1)[0]}@{host}"
    if "?" in url:
        base, _, query = url.partition("?")
        kept = [p for p in query.split("&") if "password" not in p.partition("=")[0].lower()]
        url = base + ("?" + "&".join(kept) if kept else "")
    return url



def _run_info(row: Sequence[Any]) -> RunInfo:
    wid, run_id, wtype, status, args, result, error, head, created, updated, fence, parent = row
    return RunInfo(wid, run_id, wtype, status, json.loads(args),
                   None if result is None else json.loads(result),
                   None if error is None else json.loads(error), head, created, updated, int(fence),
                   parent_id=parent)
