"""Bounds on a run, as its history says them: the execution deadline and
the paused state. Pure functions of values and events; the engine side is
:mod:`aion_green.runtime.bounds`.

- **Execution timeout.** ``Engine.start(..., execution_timeout=S)`` records
  the wall-clock deadline ``created_at + S`` in the run's ``WorkflowStarted``
  (``execution_deadline``). A run that continues as new hands the same
  deadline to the next run of its chain (as Temporal's execution timeout
  spans the chain): the bound is on the workflow id's whole work, not on
  one run. Past it, the engine records ``WorkflowTimedOut`` (status
  ``timed_out``) at the head of the current run; a run that ended before its
  deadline is untouched.
- **Pause.** ``WorkflowPaused`` and ``WorkflowUnpaused`` are arrivals with
  no key: the last of them recorded says whether the run is paused. They
  are never commands of the workflow, so a replay of a history that holds
  them matches the same commands as one without.
"""
from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Optional

from aion_green.core import events as ev
from aion_green.core.errors import ConfigurationError

# The key under which the engine's timer service holds a run's execution
# deadline. Never a key of a workflow timer (those are "t1", "t2"...).
DEADLINE_TIMER = "aion.execution_deadline"

PAUSE_TYPES = frozenset({ev.WORKFLOW_PAUSED, ev.WORKFLOW_UNPAUSED})


def execution_timeout_seconds(value: object, what: str = "execution_timeout") -> float:
    """Seconds of an execution timeout given as a number or a timedelta:
    finite and above zero; else :class:`ConfigurationError` naming ``what``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(
            f"{what}: an execution timeout is a number of seconds or a timedelta, got "
            f"{type(value).__name__} {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"{what}={value!r}: an execution timeout must be a finite number of seconds above "
            "zero (leave it out for a run without one)")
    return seconds


def deadline_of(started: dict[str, Any]) -> Optional[float]:
    """The execution deadline a ``WorkflowStarted``'s data names, or None."""
    value = started.get("execution_deadline")
    return None if value is None else float(value)


def timed_out_event(workflow_id: str, deadline: float, at: float) -> ev.NewEvent:
    """The terminal event of a run whose execution deadline passed."""
    message = (f"workflow {workflow_id!r} did not finish within its execution timeout "
               f"(deadline {ev.Event(0, '', deadline).time.isoformat()}); it was ended there, "
               "without cleanup")
    return ev.NewEvent(ev.WORKFLOW_TIMED_OUT, at, {
        "error": {"type": "TimedOut", "message": message, "execution_deadline": deadline},
        "execution_deadline": deadline})


def pause_event(paused: bool, reason: str, at: float, dedup: Optional[str] = None) -> ev.NewEvent:
    """``WorkflowPaused`` (or ``WorkflowUnpaused``): the reason given, and
    the request's dedup id (a client confirms its own request by it)."""
    data: dict[str, Any] = {"reason": reason}
    if dedup is not None:
        data["dedup"] = dedup
    return ev.NewEvent(ev.WORKFLOW_PAUSED if paused else ev.WORKFLOW_UNPAUSED, at, data)
