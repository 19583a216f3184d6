"""What both stores share about the reads of runs driven again: a run back
from eviction reads its history (where runs are leased, with its lease's
end), many runs at once."""
from __future__ import annotations

import json
from typing import Any, Sequence

from aion_green.core import events as ev
from aion_green.store import PARKED_LEASE_SQL


def leased_read_sql(runs: str, events: str, engines: str, ids: str, mark: str) -> str:
    """The statement of ``read_leased`` in a store's names: ``ids`` selects
    the runs (``= ANY(%s)``, ``IN (?,?)``), ``mark`` is the owner's
    placeholder. Its rows: id, lease end (a parked lease's is its owner's
    entry's), then one event or NULLs; by id, then seq."""
    return (f"WITH r AS (SELECT workflow_id, CASE WHEN lease_until >= {PARKED_LEASE_SQL} "
            f"THEN coalesce((SELECT seen_until FROM {engines} WHERE engine_id = owner), 0) "
            f"ELSE lease_until END AS until FROM {runs} WHERE workflow_id {ids} AND owner={mark}) "
            f"SELECT r.workflow_id, r.until, e.seq, e.type, e.at, e.data FROM r "
            f"LEFT JOIN {events} e ON e.workflow_id = r.workflow_id ORDER BY r.workflow_id, e.seq")


def leased_histories(rows: Sequence[Sequence[Any]],
                     into: dict[str, tuple[float, list[ev.Event]]]) -> None:
    """Add ``read_leased``'s rows to ``into``, by run: (lease end, history)."""
    for wid, until, seq, typ, at, data in rows:
        held = into.get(wid)
        if held is None:
            held = into[wid] = (float(until), [])
        if seq is not None:
            held[1].append(ev.Event(seq, typ, at, json.loads(data)))


def histories_by_run(rows: Sequence[Sequence[Any]],
                     into: dict[str, list[ev.Event]]) -> None:
    """Add ``read_many``'s rows (id, seq, type, at, data; by id, then seq)
    to ``into``, by run."""
    for wid, seq, typ, at, data in rows:
        history = into.get(wid)
        if history is None:
            history = into[wid] = []
        history.append(ev.Event(seq, typ, at, json.loads(data)))
