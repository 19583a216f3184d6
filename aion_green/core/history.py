"""What a recorded history says, read by every layer alike: the keys that
match arrivals (a message, a timer's firing, a cancel, a child's end), the
timers and children still open, the messages seen, and the prefix of the ids
a run derives. Pure functions of events; no engine, no store."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from aion_green.core import events as ev

# ("timer", key), ("message", name, index), ("cancel",), ("child", id): read
# from recorded data, so its parts are whatever the record holds.
ArrivalKey = tuple[object, ...]


# Event types that arrive from outside the workflow (matched by key).
# A pause or unpause (core/bounds.py) has no key: no wait is for it, but
# every wait reads the run's paused state from the cursor.
ARRIVAL_TYPES: frozenset[str] = frozenset({ev.TIMER_FIRED, ev.MESSAGE_RECEIVED, ev.CANCEL_REQUESTED,
                                           ev.CHILD_COMPLETED, ev.CHILD_FAILED,
                                           ev.WORKFLOW_PAUSED, ev.WORKFLOW_UNPAUSED})


CHILD_END_TYPES: frozenset[str] = frozenset({ev.CHILD_COMPLETED, ev.CHILD_FAILED})


CANCEL_KEY: ArrivalKey = ("cancel",)


def arrival_key(event: ev.Event) -> Optional[ArrivalKey]:
    """The key an arrival is matched by, or None for a command event."""
    if event.type == ev.TIMER_FIRED:
        return ("timer", event.data.get("timer"))
    if event.type == ev.MESSAGE_RECEIVED:
        return ("message", event.data.get("name"), event.data.get("index"))
    if event.type == ev.CANCEL_REQUESTED:
        return CANCEL_KEY
    if event.type in CHILD_END_TYPES:
        return ("child", event.data.get("id"))
    return None


def child_seen_key(child_id: str) -> str:
    """The recorder's dedup id of a child's end: recorded once per child."""
    return f"child-end:{child_id}"


def message_state(history: Sequence[ev.Event]) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """Messages recorded so far: the count per name, the dedup ids seen, and
    the seq of each message delivered with a dedup id."""
    counts: dict[str, int] = {}
    seen: set[str] = set()
    dedup_seqs: dict[str, int] = {}
    for event in history:
        if event.type == ev.MESSAGE_RECEIVED:
            name = event.data["name"]
            counts[name] = counts.get(name, 0) + 1
            if event.data.get("dedup"):
                seen.add(event.data["dedup"])
                dedup_seqs.setdefault(event.data["dedup"], event.seq)
        elif event.type == ev.CANCEL_REQUESTED:
            seen.add("cancel")
        elif event.type in CHILD_END_TYPES:
            seen.add(child_seen_key(event.data["id"]))
    return counts, seen, dedup_seqs


def open_children(history: Sequence[ev.Event]) -> list[dict[str, Any]]:
    """The ``ChildStarted`` data of children whose end is not recorded."""
    started: dict[str, dict[str, Any]] = {}
    for event in history:
        if event.type == ev.CHILD_STARTED:
            started[event.data["id"]] = event.data
        elif event.type in CHILD_END_TYPES:
            started.pop(str(event.data.get("id")), None)
    return list(started.values())


def pending_timers(history: Sequence[ev.Event]) -> dict[str, float]:
    """Timers started and neither fired nor cancelled: key -> fire_at."""
    pending: dict[str, float] = {}
    for event in history:
        if event.type == ev.TIMER_STARTED:
            pending[event.data["timer"]] = event.data["fire_at"]
        elif event.type in (ev.TIMER_FIRED, ev.TIMER_CANCELLED):
            pending.pop(str(event.data.get("timer")), None)
    return pending


def run_key(workflow_id: str, generation: int) -> str:
    """The prefix of the ids a run derives (step keys, child ids, message
    dedup ids): the workflow id, and the run's number after the first, so a
    run that continued as new never reuses an id of an earlier run."""
    return workflow_id if generation <= 1 else f"{workflow_id}/run-{generation}"


def merge_attributes(into: dict[str, Any], upserted: dict[str, Any]) -> dict[str, Any]:
    """``into`` after one ``SearchAttributesUpserted``: a value None removes
    its name."""
    for name, value in upserted.items():
        if value is None:
            into.pop(name, None)
        else:
            into[name] = value
    return into


def search_attributes(history: Sequence[ev.Event]) -> dict[str, Any]:
    """The search attributes a run holds at the end of ``history``: those
    its ``WorkflowStarted`` carried over (a run that continued as new keeps
    its chain's), then each upsert in order."""
    found: dict[str, Any] = {}
    for event in history:
        if event.type == ev.WORKFLOW_STARTED:
            found = dict(event.data.get("search_attributes") or {})
        elif event.type == ev.SEARCH_ATTRIBUTES_UPSERTED:
            merge_attributes(found, event.data.get("attributes") or {})
    return found
