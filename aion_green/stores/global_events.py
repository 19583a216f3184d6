"""The store-wide event stream, both stores' side: the query of a page of
``read_events`` (issue 18: ``GET /v1/events``).

Every event row carries a global position (``pos``), taken from a
one-row counter in the transaction that writes it (``UPDATE ... SET n = n +
k``): the counter's row stays locked until that transaction commits, so
positions are given in commit order, on PostgreSQL with several engines as
on SQLite's single writer. A page reads the head (the counter) first and
then the events at or below it: every event at or below a committed head
is committed (no later transaction can take a position below it), so a
reader that moves its cursor to the head skips nothing.

Events of earlier runs of a chain (continue-as-new, resume) move to the
archive with their positions; a page reads both tables.

Thread contract: pure functions, any thread.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from aion_green.core import events as ev
from aion_green.store import EventFilter, GlobalEvent
from aion_green.stores.batch import namespace_clause

# The status of an earlier run of a chain: what its last archived event says
# (as ``describe(run_id=...)`` answers; a run archived by a resume ended
# failed or cancelled).
_ARCHIVED_STATUS = (
    "CASE (SELECT l.type FROM {archive} l WHERE l.workflow_id = a.workflow_id "
    "AND l.run_id = a.run_id ORDER BY l.seq DESC LIMIT 1) "
    + " ".join(f"WHEN '{t}' THEN '{s}'" for t, s in sorted(ev.STATUS_OF_TERMINAL.items()))
    + f" ELSE '{ev.RUNNING}' END"
)


def events_query(filters: EventFilter, after: int, head: int, limit: int, mark: str, *,
                 events: str, archive: str, runs: str) -> tuple[str, list[Any]]:
    """The SQL of one page (events above ``after`` and at most ``head``,
    ``limit`` of them, in position order) and its parameters. ``mark`` is
    the placeholder (``?`` or ``%s``); the table names are the store's."""
    current = f"e.pos > {mark} AND e.pos <= {mark}"
    earlier = f"a.pos > {mark} AND a.pos <= {mark}"
    current_params: list[Any] = [after, head]
    earlier_params: list[Any] = [after, head]
    if filters.types:
        marks = ",".join(mark for _ in filters.types)
        current += f" AND e.type IN ({marks})"
        earlier += f" AND a.type IN ({marks})"
        current_params += filters.types
        earlier_params += filters.types
    if filters.statuses:
        marks = ",".join(mark for _ in filters.statuses)
        current += f" AND r.status IN ({marks})"
        earlier += f" AND {_ARCHIVED_STATUS.format(archive=archive)} IN ({marks})"
        current_params += filters.statuses
        earlier_params += filters.statuses
    if filters.namespace is not None:
        clause, value = namespace_clause(filters.namespace, mark, "e.workflow_id")
        current += f" AND {clause}"
        earlier += f" AND {clause.replace('e.workflow_id', 'a.workflow_id')}"
        current_params.append(value)
        earlier_params.append(value)
    sql = (
        f"SELECT e.pos, e.workflow_id, r.run_id, e.seq, e.type, e.at, e.data FROM {events} e "
        f"JOIN {runs} r ON r.workflow_id = e.workflow_id WHERE {current} "
        "UNION ALL "
        f"SELECT a.pos, a.workflow_id, a.run_id, a.seq, a.type, a.at, a.data FROM {archive} a "
        f"WHERE {earlier} ORDER BY 1 LIMIT {mark}"
    )
    return sql, [*current_params, *earlier_params, limit]


def page(rows: Sequence[Sequence[Any]], limit: int, head: int) -> tuple[list[GlobalEvent], int]:
    """The events of a page's rows and the cursor after it."""
    found = [GlobalEvent(int(pos), wid, run_id, int(seq), typ, at, json.loads(data))
             for pos, wid, run_id, seq, typ, at, data in rows]
    return found, found[-1].position if len(found) == limit else head
