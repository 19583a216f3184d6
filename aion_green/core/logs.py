"""Structured logs: the fields the engine's lifecycle records carry, and a
JSON formatter for them.

The engine logs through the standard :mod:`logging` module, to loggers named
``aion_green.*``. Its lifecycle records (a run started, resumed, ended,
dropped, evicted; a step attempt failed) keep a readable message and also
carry fields, set through ``extra=`` so that a ``logging.Filter`` or a
formatter reads them as attributes of the record:

=====================  ==========================================================
``aion_event``         what happened: ``run.started``, ``run.resumed``,
                       ``run.ended``, ``run.dropped``, ``run.evicted``,
                       ``run.interrupted``, ``run.aborted``, ``run.crashed``,
                       ``run.unrunnable``, ``step.completed``, ``step.failed``,
                       ``recovery``
``aion_workflow_id``   the workflow id
``aion_namespace``     its namespace (``default`` unless named)
``aion_run_id``        the run id (a new one after continue_as_new)
``aion_workflow_type`` the registered name of the workflow function
``aion_status``        ``run.ended``: completed, failed, cancelled or continued
``aion_duration``      ``run.ended``: seconds from the run's start to its end
``aion_replayed``      ``run.resumed``: how many recorded events are replayed
``aion_step``          step records: the step's ordinal in the run
``aion_step_name``     step records: the step's name
``aion_attempt``       step records: the attempt, from 1
``aion_retryable``     ``step.failed``: whether another attempt follows
``aion_error_type``    failures: the exception's type
=====================  ==========================================================

Install :class:`JsonFormatter` on a handler to get one JSON object a line::

    handler = logging.StreamHandler()
    handler.setFormatter(aion_green.logs.JsonFormatter())
    logging.getLogger("aion_green").addHandler(handler)
    logging.getLogger("aion_green").setLevel(logging.INFO)

Levels: a run's start, resume and end are INFO, a failed run ERROR, a
failed step attempt WARNING, a run evicted from memory or interrupted by
shutdown DEBUG, and each completed step DEBUG (checked with
``isEnabledFor`` first: the step path pays nothing more while DEBUG is off).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Optional, Protocol

from aion_green.core import namespaces
from aion_green.core.events import Event

log = logging.getLogger("aion_green.runs")

# The attributes every LogRecord has; anything else on a record came from
# ``extra=`` (ours or the user's) and goes into the JSON object.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ``time`` (ISO 8601, UTC),
    ``level``, ``logger``, ``message``, every field passed with ``extra=``
    (the engine's ``aion_*`` fields among them), and ``exception`` (the
    formatted traceback) when the record has one. Values that are not JSON
    are written as their ``repr``. Standard library only."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=repr, ensure_ascii=False)


class _History(Protocol):
    def event(self, seq: int) -> Event: ...


class NamedRun(Protocol):
    """A run as its log records name it: a
    :class:`~aion_green.workflows.context.WorkflowContext` (the core does
    not import the layer above it)."""

    @property
    def workflow_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def workflow_type(self) -> str: ...
    @property
    def _cursor(self) -> _History: ...  # its history: the run's start time


class RunEnd(Protocol):
    """How a run ended: a :class:`~aion_green.store.RunInfo`."""

    @property
    def status(self) -> str: ...
    @property
    def error(self) -> Optional[dict[str, Any]]: ...


class StepAttempt(Protocol):
    """A step attempt: a :class:`~aion_green.workflows.steps.StepInfo`."""

    @property
    def workflow_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def run_fields(ctx: NamedRun) -> dict[str, Any]:
    """The fields that name a run, from its :class:`WorkflowContext`."""
    return {"aion_workflow_id": ctx.workflow_id,
            "aion_namespace": getattr(ctx, "namespace", namespaces.DEFAULT),
            "aion_run_id": ctx.run_id, "aion_workflow_type": ctx.workflow_type}


def run_began(ctx: NamedRun, replayed: int) -> None:
    """Hub thread: a run's greenlet starts its workflow function (``replayed``
    recorded events to replay first; 0 for a new run)."""
    if not log.isEnabledFor(logging.INFO):
        return
    extra = run_fields(ctx)
    if replayed:
        extra.update(aion_event="run.resumed", aion_replayed=replayed)
        log.info("workflow %r (%s) resumed: replaying %d event(s)",
                 ctx.workflow_id, ctx.workflow_type, replayed, extra=extra)
    else:
        extra["aion_event"] = "run.started"
        log.info("workflow %r (%s) started", ctx.workflow_id, ctx.workflow_type, extra=extra)


def run_left(ctx: NamedRun, outcome: str, final: Optional[RunEnd]) -> None:
    """Hub thread: a run's greenlet lets go of it. ``outcome`` is ``ended``
    (``final`` is its RunInfo), or why it left without an end: ``evicted``,
    ``interrupted`` (shutdown), or ``dropped``, ``aborted``, ``crashed``,
    which the driver logged where it caught them."""
    if outcome == "ended" and final is not None:
        status = final.status
        error = final.error or {}
        level = logging.ERROR if status == "failed" else logging.INFO
        if not log.isEnabledFor(level):
            return
        extra = run_fields(ctx)
        duration = round(time.time() - ctx._cursor.event(1).at, 6)
        extra.update(aion_event="run.ended", aion_status=status, aion_duration=duration)
        if status == "failed":
            extra["aion_error_type"] = error.get("type")
            log.error("workflow %r (%s) failed after %.3f s: %s: %s", ctx.workflow_id,
                      ctx.workflow_type, duration, error.get("type"), error.get("message"),
                      extra=extra)
        else:
            log.info("workflow %r (%s) %s after %.3f s", ctx.workflow_id, ctx.workflow_type,
                     status, duration, extra=extra)
    elif outcome in ("evicted", "interrupted") and log.isEnabledFor(logging.DEBUG):
        extra = run_fields(ctx)
        extra["aion_event"] = f"run.{outcome}"
        why = ("evicted from memory while parked; it is replayed when its wait ends"
               if outcome == "evicted" else "interrupted by shutdown; it resumes on the next start")
        log.debug("workflow %r (%s) %s", ctx.workflow_id, ctx.workflow_type, why, extra=extra)


def run_problem(wid: str, event: str, ctx: Optional[NamedRun] = None, error: Optional[BaseException] = None,
                **more: Any) -> dict[str, Any]:
    """The ``extra`` of a record about a run the driver could not go on
    with (dropped, aborted, crashed, unrunnable)."""
    extra = run_fields(ctx) if ctx is not None else {
        "aion_workflow_id": namespaces.local(wid), "aion_namespace": namespaces.namespace_of(wid)}
    extra["aion_event"] = event
    if error is not None:
        extra["aion_error_type"] = type(error).__name__
    extra.update(more)
    return extra


def step_fields(info: StepAttempt, event: str) -> dict[str, Any]:
    """The ``extra`` of a step record, from its :class:`StepInfo`."""
    return {"aion_event": event, "aion_workflow_id": namespaces.local(info.workflow_id),
            "aion_namespace": namespaces.namespace_of(info.workflow_id),
            "aion_run_id": info.run_id, "aion_step": info.step, "aion_step_name": info.name,
            "aion_attempt": info.attempt}
