"""The SQLite store's schema (versioned migrations), its URL form, and the
translation of SQLite's errors into the store errors the engine handles."""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Optional
from urllib.parse import unquote

from aion_green.core.errors import ConfigurationError, StoreCorrupt, StoreError, StoreUnavailable
from aion_green.store import RunInfo

# -- SQLite -----------------------------------------------------------------------------

# Versioned migrations: index i brings the schema from version i to i + 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs(
            workflow_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            workflow_type TEXT NOT NULL,
            status TEXT NOT NULL,
            args TEXT NOT NULL,
            result TEXT,
            error TEXT,
            head_seq INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL)""",
        "CREATE INDEX runs_by_status ON runs(status, workflow_type, workflow_id)",
        """CREATE TABLE events(
            workflow_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (workflow_id, seq)) WITHOUT ROWID""",
    ),
    (
        # Durable timers: one row per timer started and not yet fired or
        # cancelled, kept by the appends that record those events.
        """CREATE TABLE timers(
            workflow_id TEXT NOT NULL,
            timer_key TEXT NOT NULL,
            fire_at REAL NOT NULL,
            PRIMARY KEY (workflow_id, timer_key)) WITHOUT ROWID""",
        "CREATE INDEX timers_by_deadline ON timers(fire_at)",
    ),
    (
        # Runs that continued as new: their histories, moved out of `events`
        # when the next run of the same workflow id begins.
        """CREATE TABLE archived_events(
            workflow_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (workflow_id, run_id, seq)) WITHOUT ROWID""",
    ),
    (
        # Requests for runs that another process's engine drives (several
        # processes over one file: one drives, the others post here).
        """CREATE TABLE inbox(
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            at REAL NOT NULL)""",
    ),
    (
        # A run's head (the seq and time of its last event) is read from
        # events, no longer kept in runs: updating it on every append
        # rewrote the run's row, and a group commit of hundreds of runs
        # wrote hundreds of runs pages to the WAL besides the new events
        # (bench (b) went from 22,000 to 26,000 steps/s without it). A
        # rebuild, not ALTER TABLE DROP COLUMN (SQLite 3.35+): rowids are
        # kept (they are the marks new_runs() orders creations by).
        """CREATE TABLE runs_v5(
            workflow_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            workflow_type TEXT NOT NULL,
            status TEXT NOT NULL,
            args TEXT NOT NULL,
            result TEXT,
            error TEXT,
            created_at REAL NOT NULL)""",
        "INSERT INTO runs_v5(rowid, workflow_id, run_id, workflow_type, status, args, result, error, "
        "created_at) SELECT rowid, workflow_id, run_id, workflow_type, status, args, result, error, "
        "created_at FROM runs",
        "DROP TABLE runs",
        "ALTER TABLE runs_v5 RENAME TO runs",
        # Runs of a status in id order: a page of list_runs (recovery reads
        # every running run, 500 at a time) is a range of this index, where
        # (status, workflow_type, workflow_id) made each page sort every
        # run of that status (bench/list_runs.py, 200,000 running runs:
        # 8.8 s -> 1.0 s).
        "CREATE INDEX runs_by_status ON runs(status, workflow_id)",
    ),
    (
        # Listing and search (issue 18). A child's run names its parent's
        # workflow id (NULL for a top-level run, and for every run created
        # before this version: their parents were never recorded); the
        # index holds children only.
        "ALTER TABLE runs ADD COLUMN parent_id TEXT",
        "CREATE INDEX runs_by_parent ON runs(parent_id, workflow_id) WHERE parent_id IS NOT NULL",
        # Search attributes (ctx.upsert_search_attributes), kept by the
        # appends that record them: the value as typed JSON, and its text
        # form, which filters match (core/events.py attribute_text).
        """CREATE TABLE search_attributes(
            workflow_id TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (workflow_id, name)) WITHOUT ROWID""",
        "CREATE INDEX search_attributes_by_value ON search_attributes(name, text, workflow_id)",
    ),
    (
        # Retention (issue 18). Runs are purged, and a purge may delete the
        # newest rows: SQLite then gives a later run a rowid that was used
        # before, and a driver that remembers the last mark it saw
        # (new_runs(), sharing.py's _watch) would never see that run. The
        # mark becomes an AUTOINCREMENT key, never reused (sqlite_sequence
        # keeps the largest ever given). And each run's end time, which
        # retention measures, indexed; set by the append of its end,
        # backfilled here from the last event of the runs already finished.
        """CREATE TABLE runs_v7(
            mark INTEGER PRIMARY KEY AUTOINCREMENT,
            workflow_id TEXT NOT NULL UNIQUE,
            run_id TEXT NOT NULL,
            workflow_type TEXT NOT NULL,
            status TEXT NOT NULL,
            args TEXT NOT NULL,
            result TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            parent_id TEXT,
            ended_at REAL)""",
        "INSERT INTO runs_v7(mark, workflow_id, run_id, workflow_type, status, args, result, error, "
        "created_at, parent_id, ended_at) SELECT rowid, workflow_id, run_id, workflow_type, status, "
        "args, result, error, created_at, parent_id, CASE WHEN status <> 'running' THEN "
        "(SELECT max(at) FROM events e WHERE e.workflow_id = runs.workflow_id) END FROM runs",
        "DROP TABLE runs",
        "ALTER TABLE runs_v7 RENAME TO runs",
        "CREATE INDEX runs_by_status ON runs(status, workflow_id)",
        "CREATE INDEX runs_by_parent ON runs(parent_id, workflow_id) WHERE parent_id IS NOT NULL",
        "CREATE INDEX runs_by_end ON runs(ended_at) WHERE ended_at IS NOT NULL",
    ),
    (
        # -- schema 8: the store-wide event stream (issue 18, GET /v1/events) --
        # Every event gets a global position, its cursor in the stream, from
        # a one-row counter that only grows (a purge of old runs leaves gaps,
        # never a position given twice). Every insert takes its positions
        # from it (store.py _positions; the group commit a batch's at once);
        # archived events keep theirs. Rows written before this version are
        # numbered here, in the order of their time.
        "ALTER TABLE events ADD COLUMN pos INTEGER",
        "ALTER TABLE archived_events ADD COLUMN pos INTEGER",
        "CREATE TABLE event_positions(n INTEGER NOT NULL)",
        """CREATE TEMP TABLE event_order(
            archived INTEGER NOT NULL, workflow_id TEXT NOT NULL, run_id TEXT NOT NULL,
            seq INTEGER NOT NULL, pos INTEGER NOT NULL,
            PRIMARY KEY (archived, workflow_id, run_id, seq))""",
        "INSERT INTO temp.event_order SELECT archived, workflow_id, run_id, seq, "
        "row_number() OVER (ORDER BY at, archived DESC, workflow_id, run_id, seq) FROM "
        "(SELECT 0 AS archived, workflow_id, '' AS run_id, seq, at FROM events UNION ALL "
        "SELECT 1, workflow_id, run_id, seq, at FROM archived_events)",
        "UPDATE events SET pos = (SELECT o.pos FROM temp.event_order o WHERE o.archived = 0 "
        "AND o.workflow_id = events.workflow_id AND o.run_id = '' AND o.seq = events.seq)",
        "UPDATE archived_events SET pos = (SELECT o.pos FROM temp.event_order o "
        "WHERE o.archived = 1 AND o.workflow_id = archived_events.workflow_id "
        "AND o.run_id = archived_events.run_id AND o.seq = archived_events.seq)",
        "INSERT INTO event_positions(n) SELECT count(*) FROM temp.event_order",
        "DROP TABLE temp.event_order",
        "CREATE INDEX events_by_pos ON events(pos)",
        "CREATE INDEX archived_events_by_pos ON archived_events(pos)",
    ),
    (
        # -- schema 9: no counter row written per commit (issue 21) --
        # Positions are drawn from the last entries of the two indexes on
        # pos (store.py _positions); event_positions.n becomes a floor,
        # raised only by a purge, before it deletes events. Nothing to
        # convert (the counter was never below the highest position given):
        # the version moves so that an older aion_green, which would draw
        # positions from the stale counter and give them twice, refuses
        # this file instead.
        "UPDATE event_positions SET n = max(n, coalesce((SELECT max(pos) FROM events), 0), "
        "coalesce((SELECT max(pos) FROM archived_events), 0))",
    ),
    (
        # -- schema 10: leases, for engines opened with ?leases=on (issue 21) --
        # As on PostgreSQL: a running run is owned by one engine until
        # lease_until, and fence grows with every grant (drawn from the
        # one-row counter lease_fences); every append of a leased engine
        # names its fence, checked under the write lock. Files whose engines
        # are not leased keep NULL/0 here: their driver owns every run.
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
        "CREATE TABLE lease_fences(n INTEGER NOT NULL)",
        "INSERT INTO lease_fences(n) VALUES (0)",
        # The leased engines at work and the workflow types each runs (type
        # -> parameters, JSON), renewed with their leases.
        """CREATE TABLE engines(
            engine_id TEXT PRIMARY KEY,
            workflow_types TEXT NOT NULL,
            seen_until REAL NOT NULL) WITHOUT ROWID""",
    ),
    (
        # -- schema 11: parked leases (issue 21) --
        # As PostgreSQL's schema 7: the parked leases by owner. And the
        # running runs by lease: a claim reads the few whose lease ran
        # out, not every running run (200,000 held ones, on every poll).
        "CREATE INDEX runs_parked ON runs(owner) WHERE lease_until >= 1e15",
        "CREATE INDEX runs_claimable ON runs(lease_until) WHERE status = 'running'",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
# The columns a run's row is written with.
_RUN_COLUMNS = "workflow_id, run_id, workflow_type, status, args, result, error, created_at"
# The head of a run (``?`` its id): the seq of its last event.
HEAD_OF = "(SELECT max(seq) FROM events WHERE workflow_id=?)"


def run_select(where: str = "", tail: str = "") -> str:
    """The query of RunInfo rows (see _run_info) of the runs ``where`` picks
    (``tail``: its ORDER BY and LIMIT), each with its head, the seq of its
    last event, and the time of its last change (that event's, or the run's
    creation for a fork or resume, which copies older events). The runs are
    picked first, the heads read for those alone: a page of a list costs
    its own rows, not a join over every run that matches."""
    return (
        "SELECT r.workflow_id, r.run_id, r.workflow_type, r.status, r.args, r.result, r.error, "
        "h.seq, r.created_at, max(h.at, r.created_at), r.parent_id, r.fence "
        f"FROM (SELECT {_RUN_COLUMNS}, parent_id, fence FROM runs {where} {tail}) r "
        "JOIN events h ON h.workflow_id = r.workflow_id "
        "AND h.seq = (SELECT max(seq) FROM events WHERE workflow_id = r.workflow_id) "
        "ORDER BY r.workflow_id"
    )


def sqlite_path_from_url(url: Optional[str]) -> str:
    """``None`` → ``./aion.db``; ``sqlite:///rel.db``, ``sqlite:////abs.db``,
    ``sqlite:///:memory:`` or a plain path."""
    if url is None:
        return os.path.abspath("aion.db")
    if "://" not in url:
        return url
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"store URL {url!r} is not a SQLite URL; use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(url[len("sqlite:///"):].split("?", 1)[0])
    if not path:
        raise ConfigurationError(f"store URL {url!r} names no file; use sqlite:///aion.db")
    return path


def sqlite_leases_from_url(url: Optional[str]) -> bool:
    """Whether a SQLite URL asks for leases (``?leases=on``): every engine
    of the file then drives the runs it starts and claims the runs nobody
    holds, as on PostgreSQL, instead of one driver for the file. Every
    engine of one file must be opened the same way (the engine refuses a
    file driven without them)."""
    if url is None or "://" not in url or "?" not in url:
        return False
    from urllib.parse import parse_qsl

    leases = False
    for key, value in parse_qsl(url.split("?", 1)[1], keep_blank_values=True):
        if key != "leases":
            raise ConfigurationError(
                f"store URL {url!r}: unknown option {key!r}; a SQLite URL takes ?leases=on "
                "(or off) and nothing else")
        if value.lower() not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
            raise ConfigurationError(
                f"store URL {url!r}: leases={value!r} is neither on nor off; use ?leases=on")
        leases = value.lower() in ("on", "1", "true", "yes")
    return leases


# What a read or write of the file may raise: SQLite's errors, and the
# decoding errors of a record whose bytes were damaged inside a page that is
# still well-formed (SQLite checks its pages, not the JSON in them).
_FAULTS = (sqlite3.Error, json.JSONDecodeError, UnicodeDecodeError)


def _translate(exc: Exception, path: str) -> StoreError:
    text = str(exc)
    if isinstance(exc, ValueError) or "decode" in text:
        # JSONDecodeError, UnicodeDecodeError, or sqlite3's "Could not decode
        # to UTF-8 column": every record was written as JSON by this package.
        return StoreCorrupt(
            f"the SQLite file {path!r} holds a damaged record that cannot be decoded ({text}); "
            "restore the file from a backup (or point the engine at another file): "
            "it was not modified"
        )
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreUnavailable(
            f"the SQLite database {path!r} is locked by another process ({text}); "
            "stop the other process or raise busy_timeout, then retry: nothing was written"
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorrupt(
            f"the SQLite file {path!r} is not an aion_green database or is damaged ({text}); "
            "it was not modified: restore it from a backup or point the engine at another file"
        )
    if "full" in text:
        return StoreUnavailable(
            f"the SQLite database {path!r} cannot be written: its disk is full ({text}). "
            "Free space on that disk: runs in flight wait for it and then go on; retry this once "
            "there is room. Nothing of this write was recorded"
        )
    if "disk" in text or "I/O" in text or "readonly" in text:
        return StoreUnavailable(
            f"the SQLite database {path!r} cannot be written ({text}); "
            "free space or fix permissions, then retry: nothing of this write was recorded"
        )
    return StoreError(f"SQLite error on {path!r}: {text}")



def _run_info(row: tuple[Any, ...]) -> RunInfo:
    wid, run_id, wtype, status, args, result, error, head, created, updated, parent, fence = row
    return RunInfo(
        wid, run_id, wtype, status, json.loads(args),
        None if result is None else json.loads(result),
        None if error is None else json.loads(error),
        head, created, updated, int(fence), parent_id=parent,
    )
