"""Fork and resume on the SQLite store: the rows a rewound run is made of
(what to copy is planned in :mod:`aion_green._rewind`, store by store alike).
A part of :class:`~aion_green._sqlite.SQLiteStore`."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any, Callable, Optional

from . import events as ev
from ._rewind import Copy, opt_run, plan_copy, require_resumable, resume_point
from ._sqlite_schema import _RUN_COLUMNS
from .errors import WorkflowIdConflict, WorkflowNotFound
from .store import RunInfo


class SQLiteRewind:
    """``fork_run`` and ``restart_run`` of the SQLite store."""

    # Provided by SQLiteStore.
    path: str
    _write: Callable[..., Any]
    read: Callable[..., list[ev.Event]]
    _get_run: Callable[[str], Optional[RunInfo]]

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
                "INSERT INTO archived_events(workflow_id, run_id, seq, type, at, data) "
                "SELECT workflow_id, ?, seq, type, at, data FROM events WHERE workflow_id=?",
                (info.run_id, workflow_id))
            conn.execute("DELETE FROM events WHERE workflow_id=?", (workflow_id,))
            # A new rowid: the driving process notices resumed runs as it
            # notices created ones (new_runs, sharing.py's _watch).
            conn.execute(
                "UPDATE runs SET run_id=?, status=?, result=NULL, error=NULL, created_at=?, "
                "rowid=(SELECT max(rowid) + 1 FROM runs) WHERE workflow_id=?",
                (run_id, ev.RUNNING, at, workflow_id))
            self._write_copy(conn, workflow_id, copy)
        return dataclasses.replace(info, run_id=run_id, status=ev.RUNNING, result=None, error=None,
                                   head_seq=copy.head, created_at=at, updated_at=at)

    def _source(self, conn: sqlite3.Connection, workflow_id: str,
                run_id: Optional[str]) -> list[ev.Event]:
        history = self.read(workflow_id, run_id=run_id)
        if not history:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}{opt_run(run_id)} in "
                                   f"{self.path}; nothing was written")
        return history

    def _write_copy(self, conn: sqlite3.Connection, workflow_id: str, copy: Copy) -> None:
        conn.executemany("INSERT INTO events(workflow_id, seq, type, at, data) VALUES (?,?,?,?,?)",
                         copy.rows(workflow_id))
        conn.execute("DELETE FROM timers WHERE workflow_id=?", (workflow_id,))
        conn.executemany("INSERT INTO timers(workflow_id, timer_key, fire_at) VALUES (?,?,?)",
                         [(workflow_id, key, fire_at) for key, fire_at in copy.timers.items()])
