"""What a group commit writes, worked out once for every store: the checks
of each append against the heads read under the store's write lock, and the
rows, head moves, run ends, timer changes and continuations it implies. A
store applies the plan with its own SQL, in one transaction."""
from __future__ import annotations

import json
from typing import Any, Optional, Union

from aion_green.core import events as ev
from aion_green.core.errors import (
    FencedOut,
    SequenceConflict,
    StoreError,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.store import Append

_TIMER_ENDS = frozenset({ev.TIMER_FIRED, ev.TIMER_CANCELLED})


class BatchPlan:
    """The writes of one batch (filled by :meth:`append` in op order)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, str, float, str]] = []  # (wid, seq, type, at, data json)
        # wid -> (head, updated_at, wid): the parameters of the run's head
        # update, written once per run after the checks.
        self.moved: dict[str, tuple[int, float, str]] = {}
        # (status, result json, error json, wid) of each run that ended
        self.finals: list[tuple[str, Optional[str], Optional[str], str]] = []
        self.timers_started: list[tuple[str, str, float]] = []
        self.timers_ended: list[tuple[str, str]] = []
        # Runs that continued as new: (wid, the continued event's data, at).
        self.rollovers: list[tuple[str, dict[str, Any], float]] = []

    def append(self, op: Append, heads: dict[str, int],
               fences: Optional[dict[str, int]] = None) -> Union[int, StoreError]:
        """Check one append against ``heads`` (which it moves) and, for a
        store that leases runs, its fencing token against ``fences``; its
        outcome."""
        wid = op.workflow_id
        if not op.events:
            return StoreError(f"an append to {wid!r} carried no events")
        if fences is not None and op.fence is not None and fences.get(wid) != op.fence:
            return FencedOut(
                f"workflow {wid!r}: this engine's lease (fence {op.fence}) was taken over "
                f"(fence now {fences.get(wid)}); nothing was written, and this engine drops the run")
        head = heads.get(wid)
        if head is None:
            return StoreError(f"no run with workflow id {wid!r}: create it before appending")
        if head != op.expected_seq:
            return SequenceConflict(wid, op.expected_seq, head)
        seq = head
        for event in op.events:
            seq += 1
            encoded = event.encoded  # (data_json(), inlined: once per appended event)
            self.rows.append((wid, seq, event.type, event.at,
                              encoded if encoded is not None else event.data_json()))
            if event.type == ev.TIMER_STARTED:
                self.timers_started.append((wid, event.data["timer"], event.data["fire_at"]))
            elif event.type in _TIMER_ENDS:
                self.timers_ended.append((wid, event.data["timer"]))
            elif event.type == ev.WORKFLOW_CONTINUED_AS_NEW:
                self.rollovers.append((wid, event.data, event.at))
                self.finals.append((ev.CONTINUED, None, None, wid))  # drops its timers too
            elif event.type in ev.TERMINAL_TYPES:
                error = event.data.get("error")
                self.finals.append((
                    ev.STATUS_OF_TERMINAL[event.type],
                    ev.result_json(event),
                    None if error is None else json.dumps(error),
                    wid,
                ))
        heads[wid] = seq
        self.moved[wid] = (seq, op.events[-1].at, wid)
        return seq


def require_running(workflow_id: str, status: Optional[str], store: str, why_not: str) -> None:
    """The check every write for a run that no engine drives makes first:
    the run exists (else :class:`WorkflowNotFound`) and is running (else
    :class:`WorkflowNotRunning`, saying ``why_not``); nothing is written."""
    if status is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {store}; nothing was recorded")
    if status != ev.RUNNING:
        raise WorkflowNotRunning(
            f"workflow {workflow_id!r} has {status}; {why_not}, so nothing was recorded")


def run_filters(status: Optional[str], workflow_type: Optional[str], after_id: Optional[str],
                mark: str, after: str) -> tuple[str, list[str]]:
    """The WHERE clause and parameters of ``list_runs`` in a store's SQL:
    ``mark`` is its placeholder, ``after`` its "id after" comparison."""
    clauses: list[str] = []
    params: list[str] = []
    for clause, value in ((f"status={mark}", status), (f"workflow_type={mark}", workflow_type),
                          (after, after_id)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def inbox_why_not(kind: str) -> str:
    return ("there is nothing left to cancel" if kind == "cancel"
            else "a message to it would never be read")


def next_run_started(wtype: str, old_run_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The ``WorkflowStarted`` data of the run a continuation begins."""
    return {"workflow_type": wtype, "run_id": data["run_id"], "args": data["args"],
            "continued_from": old_run_id, "generation": data.get("generation", 2)}
