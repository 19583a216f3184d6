"""What a fork or a resume writes, worked out once for every store: which
recorded events a new run may reuse (the cut), where a resume starts by
default, and the new run's ``WorkflowStarted``. A store reads the source
history inside its write transaction, asks :func:`plan_copy`, and writes
the plan with its own SQL in that same transaction (nothing on a refusal).

The cut rule: the new run's history is the source run's events 2..``from_seq``
copied as they are (same seq, type, time and data) after a new
``WorkflowStarted``. Every engine call records one event per append, so any
such prefix is a history the source itself held once, and a replay of it
is a replay after a crash at that point:

- a ``TimerStarted`` copied without its end is pending again, with its
  recorded wall-clock deadline (a deadline that has passed fires at once);
- a ``StepFailed`` that may be retried is followed by the next attempt;
- a ``CancelRequested`` copied cancels the new run at its next wait;
- a ``MessageSent`` copied is not sent again (replay delivers it with its
  recorded dedup id, which the target already recorded).

Two cuts are refused, for a fork only (a new workflow id):

- a ``ChildStarted`` copied without the child's end: the child belongs to
  the source run, and a run has one parent. Cut before the start, or at
  or after the end;
- a child of a supervisor (``ctx.supervise``): its id is derived from the
  source's workflow id, so a replay under another id cannot match it.

A resume (same workflow id, same run number) keeps its children: one
whose end is not copied is watched again, and its end is recorded anew.
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Sequence

from aion_green.core import events as ev
from aion_green.core.errors import ConfigurationError, InternalError
from aion_green.core.history import CHILD_END_TYPES, pending_timers, run_key
from aion_green.store import RunInfo

#: The statuses a run may be resumed from.
RESUMABLE = (ev.FAILED, ev.CANCELLED)


class Copy(NamedTuple):
    """A new run's history: its ``WorkflowStarted`` (data and time) and the
    copied events (seq 2..``head``), with the timers they leave pending."""

    started: dict[str, Any]
    started_at: float
    events: list[ev.Event]
    timers: dict[str, float]  # timer key -> fire_at

    @property
    def head(self) -> int:
        return len(self.events) + 1

    def rows(self, workflow_id: str) -> list[tuple[str, int, str, float, str]]:
        """``(workflow_id, seq, type, at, data json)`` of the whole new history."""
        first = (workflow_id, 1, ev.WORKFLOW_STARTED, self.started_at, json.dumps(self.started))
        return [first, *((workflow_id, e.seq, e.type, e.at, json.dumps(e.data)) for e in self.events)]


def resume_point(workflow_id: str, history: Sequence[ev.Event]) -> int:
    """The default ``from_seq`` of a resume of a failed or cancelled run:

    - cancelled: the seq just before its ``CancelRequested`` (the request is
      undone, with whatever the workflow did after it);
    - failed: the seq before the terminal event, less the trailing records
      of what failed: every ``StepFailed`` of the step whose failure ended
      the run (so that step runs again from its first attempt), or the
      ``ChildFailed`` the workflow raised (so the child is watched again:
      resume the child first to give it another outcome). A failure raised
      by the workflow's own code, a timeout or a divergence keeps every
      event: the replay reaches the same point and goes live there.
    """
    if not history or history[-1].type not in (ev.WORKFLOW_FAILED, ev.WORKFLOW_CANCELLED):
        raise InternalError(f"resume_point of {workflow_id!r}: its run has no failed or cancelled "
                            "end; this is a bug in aion_green")
    end = len(history) - 1  # the seq before the terminal event
    if history[-1].type == ev.WORKFLOW_CANCELLED:
        asked = [e.seq for e in history if e.type == ev.CANCEL_REQUESTED]
        return max(1, asked[0] - 1) if asked else end
    last = history[end - 1]
    if last.type == ev.STEP_FAILED:
        ordinal = last.data.get("step")
        while end > 1 and history[end - 1].type == ev.STEP_FAILED and \
                history[end - 1].data.get("step") == ordinal:
            end -= 1
    elif last.type == ev.CHILD_FAILED:
        end -= 1
    return end


def plan_copy(mode: str, source_id: str, history: Sequence[ev.Event], from_seq: object,
              new_run_id: str, at: float, store: str) -> Copy:
    """The history a fork (``mode`` "fork") or a resume ("resume") of the
    source run ``history`` begins with, cut after ``from_seq``; raises
    :class:`ConfigurationError` for a cut out of range or refused (see the
    module docstring)."""
    if not history or history[0].type != ev.WORKFLOW_STARTED:
        raise InternalError(f"the history of {source_id!r} in {store} does not open with "
                            "WorkflowStarted; this is a bug in aion_green")
    source = history[0].data
    source_run = source.get("run_id")
    ended = history[-1].type in ev.TERMINAL_TYPES
    last = len(history) - 1 if ended else len(history)
    where = f"workflow {source_id!r} (run {source_run})"
    if isinstance(from_seq, bool) or not isinstance(from_seq, int) or not 1 <= from_seq <= last:
        end = f"; seq {len(history)} is its end ({history[-1].type})" if ended else ""
        raise ConfigurationError(
            f"{mode} of {where}: from_seq={from_seq!r} is out of range: choose a seq from 1 to "
            f"{last}{end}. Nothing was written")
    copied = list(history[1:from_seq])
    if mode == "fork":
        _check_fork_children(where, source_id, int(source.get("generation", 1)), copied,
                             list(history[from_seq:]))
    started: dict[str, Any] = {"workflow_type": source["workflow_type"], "run_id": new_run_id,
                               "args": source.get("args", [])}
    origin = {"run_id": source_run, "seq": from_seq, "at": at}
    if mode == "fork":
        started["forked_from"] = {"workflow_id": source_id, **origin}
    else:
        for kept in ("generation", "continued_from"):
            if kept in source:
                started[kept] = source[kept]
        started["resumed_from"] = origin
        started["attempt"] = int(source.get("attempt", 1)) + 1  # ctx.info.attempt
    # ctx.random() and ctx.uuid4() go on from the source's generator: the
    # copied records may hold values drawn from it.
    started["random_seed"] = source.get("random_seed") or f"{source_id}\x00{source_run}"
    if source.get("search_attributes"):  # carried over from the run before (continue_as_new)
        started["search_attributes"] = source["search_attributes"]
    # The source's start time, so ctx.now() replays as it ran; the wall
    # time of the fork or resume is in forked_from / resumed_from.
    return Copy(started, history[0].at, copied, pending_timers(copied))


def _check_fork_children(where: str, source_id: str, generation: int,
                         copied: list[ev.Event], rest: list[ev.Event]) -> None:
    ended = {e.data.get("id"): e.seq for e in copied if e.type in CHILD_END_TYPES}
    later = {e.data.get("id"): e.seq for e in rest if e.type in CHILD_END_TYPES}
    supervised = f"{run_key(source_id, generation)}/sup-"
    for event in copied:
        if event.type == ev.CHILD_RESTARTED or (
                event.type == ev.CHILD_STARTED and str(event.data.get("id")).startswith(supervised)):
            raise ConfigurationError(
                f"fork of {where}: seq {event.seq} ({event.describe()}) belongs to a supervisor, "
                f"whose children's ids derive from {source_id!r} and cannot be replayed under "
                f"another id: choose a from_seq before {event.seq}. Nothing was written")
        if event.type != ev.CHILD_STARTED or event.data.get("id") in ended:
            continue
        child = event.data.get("id")
        after = later.get(child)
        choice = f"before {event.seq}" + (f", or from {after} on (its end)" if after else "")
        raise ConfigurationError(
            f"fork of {where}: the cut keeps the start of child {child!r} (seq {event.seq}) "
            f"but not its end; that child belongs to the source run, and a fork cannot share "
            f"it: choose a from_seq {choice}. Nothing was written")


def require_resumable(info: RunInfo, store: str) -> None:
    """A resume continues a run that ended failed or cancelled; any other
    status is refused, saying what to do instead (nothing is written)."""
    if info.status in RESUMABLE:
        return
    wid = info.workflow_id
    if info.status == ev.RUNNING:
        why = ("is still running; resume continues a run that ended failed or cancelled: cancel "
               "it first, or fork it to try another path beside it")
    else:
        why = (f"has {info.status}; only a failed or cancelled run is resumed in place: fork it "
               "(a new workflow id) to run it again from a chosen seq")
    raise ConfigurationError(f"cannot resume workflow {wid!r} (run {info.run_id}) in {store}: it "
                             f"{why}. Nothing was written")


def opt_run(run_id: Optional[str]) -> str:
    return "" if run_id is None else f" with a run {run_id!r}"
