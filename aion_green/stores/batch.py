"""What a group commit writes, worked out once for every store: the checks
of each append against the heads read under the store's write lock, and the
rows, head moves, run ends, timer changes and continuations it implies. A
store applies the plan with its own SQL, in one transaction."""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence, Union

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import (
    FencedOut,
    SequenceConflict,
    StoreError,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.core.history import search_attributes
from aion_green.store import Append, CreateRun, RunFilter

_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str

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
        # (end time, wid) of each run that ended (not continued as new): the
        # age retention measures (SQLite keeps it in runs.ended_at).
        self.ends: list[tuple[float, str]] = []
        # Runs that continued as new: (wid, the continued event's data, at).
        self.rollovers: list[tuple[str, dict[str, Any], float]] = []
        # Search attributes upserted: (wid, name) -> value (None: removed),
        # the last upsert of the batch winning.
        self.attributes: dict[tuple[str, str], Any] = {}

    def append(self, op: Append, heads: dict[str, int],
               fences: Optional[dict[str, int]] = None,
               stored: Optional[dict[tuple[str, int], tuple[str, float, str]]] = None,
               run_ids: Optional[dict[str, str]] = None,
               ) -> Union[int, StoreError]:
        """Check one append against ``heads`` (which it moves) and, for a
        store that leases runs, its fencing token against ``fences``; its
        outcome. ``stored``: the rows already at the seqs of appends whose
        run's head moved past them, ``(wid, seq) -> (type, at, data)``
        (:func:`moved_past`); an append found there, event for event, was
        written by an earlier try of this same batch whose answer was lost,
        and succeeds without writing again. ``run_ids``: each run's current
        run id; an append that continues its run as new, found with its
        run's row already holding the run id the continuation names (a
        fresh id no other writer has), was committed by an earlier try (its
        history archived, the head back at 1): it succeeds too."""
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
            if stored is not None and head > op.expected_seq and _written(op, stored):
                return op.expected_seq + len(op.events)
            continued = _continues_into(op)
            if continued is not None and run_ids is not None and run_ids.get(wid) == continued:
                return op.expected_seq + len(op.events)
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
                self.ends.append((event.at, wid))
            elif event.type == ev.SEARCH_ATTRIBUTES_UPSERTED:
                for name, value in event.data["attributes"].items():
                    self.attributes[(wid, name)] = value
        heads[wid] = seq
        self.moved[wid] = (seq, op.events[-1].at, wid)
        return seq


def moved_past(ops: Sequence[Union[Append, CreateRun]],
               heads: dict[str, int]) -> list[tuple[str, int, int]]:
    """``(wid, first seq, last seq)`` of the appends whose run's head is
    already past the seq they expect: a conflict, or the records of an
    earlier try of the same append whose answer was lost (a session cut
    between the server's commit and its answer). The store reads those
    rows for :meth:`BatchPlan.append` to tell which."""
    spans = []
    for op in ops:
        if type(op) is Append:
            head = heads.get(op.workflow_id)
            if head is not None and head > op.expected_seq and op.events:
                spans.append((op.workflow_id, op.expected_seq + 1,
                              op.expected_seq + len(op.events)))
    return spans


def _continues_into(op: Append) -> Optional[str]:
    """The run id an append's continuation names, if it ends its run with
    one (``WorkflowContinuedAsNew`` is a run's last record)."""
    last = op.events[-1]
    return last.data.get("run_id") if last.type == ev.WORKFLOW_CONTINUED_AS_NEW else None


def _written(op: Append, stored: dict[tuple[str, int], tuple[str, float, str]]) -> bool:
    """Whether ``op``'s events are the rows at its seqs: the same type, time
    and data, as this engine wrote them (the data's text, event times to the
    bit: no other writer's records match by chance)."""
    wid = op.workflow_id
    for seq, event in enumerate(op.events, op.expected_seq + 1):
        encoded = event.encoded
        if stored.get((wid, seq)) != (event.type, event.at,
                                      encoded if encoded is not None else event.data_json()):
            return False
    return True


# The statuses of runs that retention may purge: every end but a
# continuation (a chain goes only with its last run, which holds its id).
PURGEABLE = tuple(sorted(set(ev.STATUS_OF_TERMINAL.values()) - {ev.CONTINUED}))


def purge_candidates(mark: str, runs: str, events: str, data_id: str, tail: str = "",
                     hint: str = "", namespace: Optional[str] = None) -> str:
    """The query of the workflow ids retention may purge now, in a store's
    SQL (``mark`` its placeholder; ``runs``/``events`` its tables;
    ``data_id`` the expression of an event's ``data.id`` over an alias
    ``{a}``), its parameters :func:`purge_parameters`.

    A run qualifies once it ended (a status of :data:`PURGEABLE`: never a
    running or paused one, and a chain only with its last run) before
    ``before``. A child goes by its own end, except while the current run
    of its unfinished parent started it and has not yet recorded its end:
    purged then, the parent's replay would create the child again and run
    it anew (runtime/children.py re-creates a child that is missing).
    ``tail``: the store's row locking (PostgreSQL's FOR UPDATE SKIP LOCKED);
    ``hint``: its index hint for the runs (SQLite's INDEXED BY);
    ``namespace``: only the runs of that namespace (None: every one)."""
    statuses = ",".join(mark for _ in PURGEABLE)
    within = "" if namespace is None else f"AND {namespace_clause(namespace, mark, 'r.workflow_id')[0]} "
    ends = ",".join(mark for _ in CHILD_ENDS)
    return (
        f"SELECT r.workflow_id FROM {runs} r {hint} WHERE r.ended_at < {mark} "
        f"AND r.status IN ({statuses}) {within}AND NOT EXISTS ("
        f"SELECT 1 FROM {runs} p JOIN {events} s ON s.workflow_id = p.workflow_id "
        f"WHERE p.workflow_id = r.parent_id AND p.status NOT IN ({statuses}) "
        f"AND s.type = {mark} AND {data_id.format(a='s')} = r.workflow_id "
        f"AND NOT EXISTS (SELECT 1 FROM {events} x WHERE x.workflow_id = p.workflow_id "
        f"AND x.type IN ({ends}) AND {data_id.format(a='x')} = r.workflow_id)) "
        f"ORDER BY r.ended_at LIMIT {mark} {tail}"
    )


CHILD_ENDS = (ev.CHILD_COMPLETED, ev.CHILD_FAILED)


def purge_parameters(before: float, limit: int,
                     namespace: Optional[str] = None) -> tuple[object, ...]:
    """The parameters of :func:`purge_candidates`, in order."""
    within = () if namespace is None else (namespace_clause(namespace, "")[1],)
    return (before, *PURGEABLE, *within, *PURGEABLE, ev.CHILD_STARTED, *CHILD_ENDS, limit)


def require_running(workflow_id: str, status: Optional[str], store: str, why_not: str) -> None:
    """The check every write for a run that no engine drives makes first:
    the run exists (else :class:`WorkflowNotFound`) and is running (else
    :class:`WorkflowNotRunning`, saying ``why_not``); nothing is written."""
    if status is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {store}; nothing was recorded")
    if status != ev.RUNNING:
        raise WorkflowNotRunning(
            f"workflow {workflow_id!r} has {status}; {why_not}, so nothing was recorded")


def attribute_rows(attributes: dict[tuple[str, str], Any]) -> tuple[
        list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """The rows a batch's upserts write, ``(wid, name, value json, text)``,
    and the ``(wid, name)`` it removes."""
    upserts: list[tuple[str, str, str, str]] = []
    removed: list[tuple[str, str]] = []
    for (wid, name), value in attributes.items():
        if value is None:
            removed.append((wid, name))
        else:
            upserts.append((wid, name, json.dumps(value), ev.attribute_text(value)))
    return upserts, removed


def copied_attributes(workflow_id: str, started: dict[str, Any],
                      events: Sequence[ev.Event]) -> list[tuple[str, str, str, str]]:
    """The attribute rows of a history a fork or resume writes (see
    :func:`attribute_rows`)."""
    held = search_attributes([ev.Event(1, ev.WORKFLOW_STARTED, 0.0, started), *events])
    return attribute_rows({(workflow_id, name): value for name, value in held.items()})[0]


def namespace_clause(namespace: str, mark: str, column: str = "workflow_id") -> tuple[str, str]:
    """The condition (and its parameter) that ``column``, a run's key, is in
    ``namespace`` (core/namespaces.py)."""
    if namespace == namespaces.DEFAULT:
        # A key of the default namespace is the id, which holds no U+001F.
        return f"{column} NOT LIKE {mark}", f"%{namespaces.SEPARATOR}%"
    prefix = f"{namespace}{namespaces.SEPARATOR}"
    return f"substr({column}, 1, {len(prefix)}) = {mark}", prefix


def run_filters(status: Optional[str], workflow_type: Optional[str], after_id: Optional[str],
                mark: str, after: str, filters: Optional[RunFilter] = None,
                attributes_table: str = "") -> tuple[str, list[object]]:
    """The WHERE clause and parameters of ``list_runs`` in a store's SQL:
    ``mark`` is its placeholder, ``after`` its "id after" comparison,
    ``attributes_table`` its table of search attributes."""
    clauses: list[str] = []
    params: list[object] = []
    f = filters or _NO_FILTER
    for clause, value in ((f"status={mark}", status), (f"workflow_type={mark}", workflow_type),
                          (f"parent_id={mark}", f.parent),
                          (f"created_at>={mark}", f.started_after),
                          (f"created_at<{mark}", f.started_before),
                          (after, after_id)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    if f.namespace is not None:
        clause, param = namespace_clause(f.namespace, mark)
        clauses.append(clause)
        params.append(param)
    if f.id_prefix is not None:
        # Characters on both stores (SQLite's substr of TEXT, PostgreSQL's).
        clauses.append(f"substr(workflow_id, 1, {len(f.id_prefix)})={mark}")
        params.append(f.id_prefix)
    for name, text in f.attributes:
        # One indexed lookup per attribute (name, text, workflow_id).
        clauses.append(f"workflow_id IN (SELECT workflow_id FROM {attributes_table} "
                       f"WHERE name={mark} AND text={mark})")
        params.extend((name, text))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


_NO_FILTER = RunFilter()


def inbox_why_not(kind: str) -> str:
    return ("there is nothing left to cancel" if kind == "cancel"
            else "a message to it would never be read")


def started_json(op: CreateRun) -> str:
    """The JSON data of a created run's ``WorkflowStarted``, as both stores
    write it (encoded by hand: this runs once per start)."""
    data = (f'{{"workflow_type":{_encode_str(op.workflow_type)},'
            f'"run_id":{_encode_str(op.run_id)},"args":{op.args_json}')
    if op.execution_deadline is not None:
        data += f',"execution_deadline":{float(op.execution_deadline)!r}'
    return data + "}"


def next_run_started(wtype: str, old_run_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The ``WorkflowStarted`` data of the run a continuation begins."""
    started = {"workflow_type": wtype, "run_id": data["run_id"], "args": data["args"],
               "continued_from": old_run_id, "generation": data.get("generation", 2)}
    if data.get("search_attributes"):
        started["search_attributes"] = data["search_attributes"]
    if data.get("execution_deadline") is not None:  # the chain keeps it (core/bounds.py)
        started["execution_deadline"] = data["execution_deadline"]
    return started
