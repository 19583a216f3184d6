"""The JSON shapes the HTTP API and its client share: runs, events, and the
one error taxonomy (a code, an HTTP status, and the aion error it stands for).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from aion_green.core import errors
from aion_green.core.events import Event
from aion_green.core.schedule import ScheduleInfo
from aion_green.store import GlobalEvent, RunInfo

# code -> (HTTP status, the error class a client raises for it)
ERRORS: dict[str, tuple[int, type[errors.AionError]]] = {
    "invalid_argument": (400, errors.ConfigurationError),
    "unauthenticated": (401, errors.ConfigurationError),
    "namespace_denied": (403, errors.NamespaceDenied),
    "not_found": (404, errors.WorkflowNotFound),
    "method_not_allowed": (405, errors.ConfigurationError),
    "request_timeout": (408, errors.Timeout),
    "already_exists": (409, errors.WorkflowIdConflict),
    "not_running": (409, errors.WorkflowNotRunning),
    "workflow_failed": (409, errors.WorkflowFailed),
    "cancelled": (409, errors.WorkflowCancelled),
    "timed_out": (409, errors.WorkflowTimedOut),
    "continued_as_new": (409, errors.WorkflowContinuedAsNew),
    "too_large": (413, errors.ConfigurationError),
    "query_failed": (422, errors.QueryFailed),
    "internal": (500, errors.InternalError),
    "unavailable": (503, errors.StoreUnavailable),
    "timeout": (504, errors.Timeout),
}


def code_of(error: BaseException) -> str:
    """The API's code for an error raised by the engine or by bad input."""
    if isinstance(error, errors.WorkflowContinuedAsNew):
        return "continued_as_new"
    if isinstance(error, errors.WorkflowCancelled):
        return "cancelled"
    if isinstance(error, errors.WorkflowTimedOut):
        return "timed_out"
    if isinstance(error, errors.WorkflowFailed):
        return "workflow_failed"
    if isinstance(error, errors.WorkflowNotFound):
        return "not_found"
    if isinstance(error, errors.WorkflowIdConflict):
        return "already_exists"
    if isinstance(error, errors.WorkflowNotRunning):
        return "not_running"
    if isinstance(error, errors.QueryFailed):
        return "query_failed"
    if isinstance(error, errors.NamespaceDenied):
        return "namespace_denied"
    if isinstance(error, errors.Timeout):
        return "timeout"
    if isinstance(error, (errors.StoreUnavailable, errors.EngineClosed)):
        return "unavailable"
    if isinstance(error, (errors.ConfigurationError, errors.SerializationError,
                          errors.WorkflowNotRegistered, ValueError, TypeError)):
        return "invalid_argument"
    return "internal"


def public_error(error: Any) -> Any:
    """A recorded error as a remote client sees it: its type and message,
    not the traceback (its frames name the server's files: issue 16). The
    history keeps it, for the server's own users."""
    if isinstance(error, dict) and "traceback" in error:
        return {k: v for k, v in error.items() if k != "traceback"}
    return error


def run_to_json(info: RunInfo) -> dict[str, Any]:
    doc = {"workflow_id": info.workflow_id, "namespace": info.namespace, "run_id": info.run_id,
           "workflow_type": info.workflow_type, "status": info.status, "args": info.args,
           "result": info.result, "error": public_error(info.error), "head_seq": info.head_seq,
           "created_at": info.created_at, "updated_at": info.updated_at}
    doc["parent_id"] = info.parent_id
    doc["search_attributes"] = info.search_attributes
    if info.unrunnable is not None:
        doc["unrunnable"] = info.unrunnable
    if info.next_run_id is not None:
        doc["next_run_id"] = info.next_run_id
    if info.execution_deadline is not None:
        doc["execution_deadline"] = info.execution_deadline
    if info.paused:
        doc["paused"] = True
    if info.steps_running:
        doc["steps_running"] = [{"step": s.step, "name": s.name, "attempt": s.attempt,
                                 "since": s.since} for s in info.steps_running]
    return doc


def schedule_to_json(info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as the API shows it."""
    return dict(info._asdict())


def schedule_from_json(obj: dict[str, Any]) -> ScheduleInfo:
    fields: dict[str, Any] = {name: obj.get(name) for name in ScheduleInfo._fields}
    return ScheduleInfo(**fields)


def run_from_json(obj: dict[str, Any]) -> RunInfo:
    return RunInfo(obj["workflow_id"], obj["run_id"], obj["workflow_type"], obj["status"],
                   obj["args"], obj.get("result"), obj.get("error"), obj["head_seq"],
                   obj["created_at"], obj["updated_at"], unrunnable=obj.get("unrunnable"),
                   next_run_id=obj.get("next_run_id"), parent_id=obj.get("parent_id"),
                   search_attributes=obj.get("search_attributes") or {},
                   execution_deadline=obj.get("execution_deadline"),
                   paused=bool(obj.get("paused")),
                   namespace=obj.get("namespace") or "default")


def event_to_json(event: Event) -> dict[str, Any]:
    data = event.data
    if isinstance(data, dict) and "traceback" in (data.get("error") or ()):
        data = {**data, "error": public_error(data["error"])}
    return {"seq": event.seq, "type": event.type, "at": event.at, "data": data}


def event_from_json(obj: dict[str, Any]) -> Event:
    return Event(obj["seq"], obj["type"], obj["at"], obj.get("data") or {})


def global_event_to_json(event: GlobalEvent) -> dict[str, Any]:
    """An event of the store-wide stream (``GET /v1/events``): where it is
    (``position``, the global cursor), whose (``workflow_id``, ``run_id``)
    and the event as ``event_to_json`` shows it (``seq``, ``type``, ``at``,
    ``data``)."""
    shown = event_to_json(Event(event.seq, event.type, event.at, event.data))
    return {"position": event.position, "namespace": event.namespace,
            "workflow_id": event.workflow_id, "run_id": event.run_id, **shown}


def global_event_from_json(obj: dict[str, Any]) -> GlobalEvent:
    return GlobalEvent(obj["position"], obj["workflow_id"], obj["run_id"], obj["seq"],
                       obj["type"], obj["at"], obj.get("data") or {},
                       obj.get("namespace") or "default")


# -- times in query strings ---------------------------------------------------------------------
def parse_time(text: str, name: str) -> float:
    """Seconds since the epoch of an ISO-8601 date or date and time
    (``2024-05-01``, ``2024-05-01T12:00:00Z``, ``...+02:00``); one without an
    offset is UTC. A :class:`ConfigurationError` names ``name`` otherwise."""
    try:
        iso = text.strip()
        if iso[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat reads no "Z" (3.11's does)
            iso = iso[:-1] + "+00:00"
        when = datetime.fromisoformat(iso)
    except ValueError:
        raise errors.ConfigurationError(
            f"{name}={text!r} is not an ISO-8601 date or time; give one like 2024-05-01 or "
            "2024-05-01T12:00:00Z (no offset: UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def format_time(value: object, name: str) -> str:
    """The ISO-8601 text (UTC) of an aware ``datetime`` or seconds since
    the epoch, as :func:`parse_time` reads it back."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise errors.ConfigurationError(f"{name}: {value!r} is naive; pass a timezone-aware "
                                            "datetime or seconds since the epoch")
        value = value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise errors.ConfigurationError(f"{name}: got {value!r}; pass an aware datetime or "
                                        "seconds since the epoch (a number)")
    return datetime.fromtimestamp(value, tz=timezone.utc).isoformat()
