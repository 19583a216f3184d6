"""Fork and resume in the PostgreSQL store (a part of
:class:`~aion_green.postgres.PostgresStore`; the plan is ``_rewind.py``'s).

A forked or resumed run has no owner: any engine that knows its type
claims it, as it claims a run created by a process that only starts runs;
the commit rings the ``runs`` doorbell. A resume draws a new fence, so an
append still in flight for the old run (it can only be a stale one) is
refused, and a new ``mark``, so it is seen as a new run.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from . import events as ev
from ._pg_schema import _RUN_COLUMNS, _run_info
from ._rewind import Copy, opt_run, plan_copy, require_resumable, resume_point
from .errors import WorkflowIdConflict, WorkflowNotFound
from .store import RunInfo

_READ = "SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s ORDER BY seq"
_READ_RUN = ("SELECT seq, type, at, data FROM aion_events WHERE workflow_id=%s "
             "AND %s = (SELECT run_id FROM aion_runs WHERE workflow_id=%s) "
             "UNION ALL SELECT seq, type, at, data FROM aion_archived_events "
             "WHERE workflow_id=%s AND run_id=%s ORDER BY seq")


class PgRewind:
    """``fork_run`` and ``restart_run`` of the PostgreSQL store."""

    path: str
    channel: str

    def _tx(self) -> Any:
        raise NotImplementedError

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
            cur.execute("INSERT INTO aion_archived_events(workflow_id, run_id, seq, type, at, data) "
                        "SELECT workflow_id, %s, seq, type, at, data FROM aion_events "
                        "WHERE workflow_id=%s", (info.run_id, workflow_id))
            cur.execute("DELETE FROM aion_events WHERE workflow_id=%s", (workflow_id,))
            cur.execute(
                "UPDATE aion_runs SET run_id=%s, status=%s, result=NULL, error=NULL, head_seq=%s, "
                "created_at=%s, updated_at=%s, owner=NULL, lease_until=0, "
                "fence=nextval('aion_fence_seq'), "
                "mark=nextval(pg_get_serial_sequence('aion_runs', 'mark')) "
                "WHERE workflow_id=%s RETURNING fence",
                (run_id, ev.RUNNING, copy.head, at, at, workflow_id))
            (fence,) = cur.fetchone()
            self._write_copy(cur, workflow_id, copy)
        return dataclasses.replace(info, run_id=run_id, status=ev.RUNNING, result=None, error=None,
                                   head_seq=copy.head, created_at=at, updated_at=at,
                                   fence=int(fence))

    def _source(self, cur: Any, workflow_id: str, run_id: Optional[str]) -> list[ev.Event]:
        if run_id is None:
            cur.execute(_READ, (workflow_id,))
        else:
            cur.execute(_READ_RUN, (workflow_id, run_id, workflow_id, workflow_id, run_id))
        history = [ev.Event(seq, typ, at, json.loads(data)) for seq, typ, at, data in cur.fetchall()]
        if not history:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}{opt_run(run_id)} in "
                                   f"{self.path}; nothing was written")
        return history

    def _write_copy(self, cur: Any, workflow_id: str, copy: Copy) -> None:
        cur.executemany("INSERT INTO aion_events(workflow_id, seq, type, at, data) "
                        "VALUES (%s,%s,%s,%s,%s)", copy.rows(workflow_id))
        cur.execute("DELETE FROM aion_timers WHERE workflow_id=%s", (workflow_id,))
        if copy.timers:
            cur.executemany("INSERT INTO aion_timers(workflow_id, timer_key, fire_at) "
                            "VALUES (%s,%s,%s)",
                            [(workflow_id, key, fire_at) for key, fire_at in copy.timers.items()])
        cur.execute("SELECT pg_notify(%s, 'runs')", (self.channel,))
