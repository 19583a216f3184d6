"""Ending a run from outside, now: ``Engine.terminate``, and the end of a
cancelled run that no engine here can run.

A cancel asks the workflow to stop and lets it clean up; it ends only once
the workflow's own code lets ``aion.Cancelled`` out. Some runs can never do
that: one whose type no engine knows (started by name while no worker ran,
or left behind by a deploy that removed the type) stays running for ever,
and a cancel is recorded but ends nothing (issue 16). ``terminate`` ends any
running run at once: ``WorkflowCancelled`` is recorded with the error
``{"type": "Terminated", "terminated": true, "reason": ...}``, so its status
is ``cancelled`` and ``result()`` raises :class:`~aion_green.WorkflowCancelled`
(``error_type == "Terminated"``); no code of the workflow runs again (no
``finally``, no cleanup step), and nothing of it is recorded after that
event. Its children are left running, as they are when a parent ends any
other way (they outlive their parent in this engine); terminate them by
their ids if they must stop too.

How the terminal event gets written, by where the run lives:

- driven here (its greenlet on this engine's hub): the greenlet is killed
  with :class:`RunTerminated` first (a ``RunLost``: the run's context records
  nothing more, and a step in flight is passed over), then the event is
  appended at the head of its history;
- driven elsewhere: a client of a SQLite file whose driver process is
  alive, or an engine over PostgreSQL while another holds the run's lease,
  posts the request to the inbox, and that engine ends the run as in the
  first case (a run parked there would not notice an end appended under it
  until its next record, nor would its result waiters);
- driven nowhere (unrunnable here, evicted, parked in the admission queue,
  unclaimed over PostgreSQL, an owner that died past its lease, or no
  engine at all): the event is appended at the head directly. An engine
  that drives the run after all finds the history moved at its next record
  and drops the run (``SequenceConflict``), so nothing of it is recorded
  after.

The append names the head it read, in one writer call, and reads again on a
conflict: first recorded wins, as in every race of the model.

Thread contract: ``terminate`` runs on the caller's thread; ``_end_here``
runs as a greenlet on the engine's hub; :func:`append_end` on the store
writer's thread.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import (
    SequenceConflict,
    StoreUnavailable,
    Timeout,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.hub_thread import Future
from aion_green.runtime.writer import future_done
from aion_green.store import Append
from aion_green.workflows.context import RunLost, WorkflowContext

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.engine")

Done = Callable[[Any, Optional[BaseException]], None]


class RunTerminated(RunLost):
    """Thrown into a run's greenlet by ``terminate``: unwind without
    recording anything more (the terminal event is written by the engine)."""


def terminated_event(reason: str, at: float) -> ev.NewEvent:
    message = f"terminated: {reason}" if reason else "terminated"
    return ev.NewEvent(ev.WORKFLOW_CANCELLED, at, {"error": {
        "type": "Terminated", "message": message, "reason": reason, "terminated": True}})


def unrunnable_cancelled_event(reason: str, why: str, at: float) -> ev.NewEvent:
    message = (f"cancelled without cleanup: {why}"
               + (f" (reason given: {reason})" if reason else ""))
    return ev.NewEvent(ev.WORKFLOW_CANCELLED, at, {"error": {
        "type": "Cancelled", "message": message, "reason": reason, "unrunnable": True}})


def append_end(store: Any, workflow_id: str, event: ev.NewEvent,
               why_not: str = "there is nothing left to end") -> int:
    """Writer thread: append ``event`` (terminal, or a pause: runtime/bounds.py)
    at the head of a running run, whoever else writes it; its seq. Raises
    :class:`WorkflowNotFound` or :class:`WorkflowNotRunning` (saying
    ``why_not``; then nothing is written)."""
    for _ in range(50):
        info = store.get_run(workflow_id)
        if info is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}; nothing was recorded")
        if info.finished:
            raise WorkflowNotRunning(
                f"workflow {workflow_id!r} has {info.status}; {why_not}, so nothing was "
                "recorded")
        (outcome,) = store.write_batch([Append(workflow_id, info.head_seq, [event])])
        if not isinstance(outcome, BaseException):
            return int(outcome)
        if not isinstance(outcome, (SequenceConflict, StoreUnavailable)):
            raise outcome
    raise StoreUnavailable(f"workflow {workflow_id!r} kept moving while it was being ended; "
                           "nothing was recorded: try again")


def _log_outcome(_seq: Any, error: Optional[BaseException]) -> None:
    if error is not None and not isinstance(error, WorkflowNotRunning):
        log.warning("a cancelled run that cannot run here was not ended: %s", error)


class Termination:
    """``terminate`` and the end of unrunnable runs: a part of the epoch."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts

    def terminate(self, workflow_id: str, reason: str) -> None:
        """:meth:`Engine.terminate` (see there), once the engine runs."""
        event = terminated_event(reason, time.time())
        try:
            if self._elsewhere_alive(workflow_id):
                self.epoch.sharing.post(workflow_id, "terminate", {"reason": reason}, event.at,
                           ev.WORKFLOW_CANCELLED, None)
                return
            if self.epoch.leased and workflow_id not in self.epoch.recorders and self._ask_owner(
                    workflow_id, reason, event.at):
                return
            future = Future()
            self.epoch.hub.spawn(self.end_here, workflow_id, event, future_done(future),
                            name=f"terminate:{workflow_id}")
            future.result()
        except WorkflowNotRunning:
            # Asking again once the run ended on an earlier request is fine.
            last = self.engine._history(workflow_id)[-1]
            if last.type == ev.WORKFLOW_CANCELLED and (last.data.get("error") or {}).get("terminated"):
                return
            raise

    def lease_holder(self, wid: str) -> Optional[str]:
        """Leased runs: the engine whose lease on the run is live, else None."""
        reader = self.epoch.reader
        held = reader.call(reader.store.lease_of, wid).result()
        return None if held is None or held[1] < time.time() else str(held[0])

    def _ask_owner(self, wid: str, reason: str, at: float) -> bool:
        """Leased runs: another engine that holds the run's lease ends it
        (it may be driving it: a run parked there would not see an end
        appended under it until its next record). True once it did; False
        when nobody holds it, or the owner did not answer within its lease
        (it died: the end is then appended here)."""
        reader = self.epoch.reader
        held = reader.call(reader.store.lease_of, wid).result()
        if held is None or held[1] < time.time() or held[0] == self.engine.engine_id:
            return False
        row_id = self.epoch.writer.call(self.epoch.store.post_inbox, wid, "terminate",
                                   ev.encode({"reason": reason}, "the request"), at).result()
        confirmed = Future()
        self.epoch.hub.spawn(self.epoch.sharing.confirm, wid, ev.WORKFLOW_CANCELLED, None, confirmed,
                        name=f"confirm:{wid}")
        try:
            confirmed.result(max(0.0, held[1] - time.time()) + 2.0)
            return True
        except Timeout:
            # (A late owner finds the run ended: its request is then moot.)
            self.epoch.writer.call(self.epoch.store.delete_inbox, [row_id]).result()
            return False

    def _elsewhere_alive(self, workflow_id: str) -> bool:
        """A client of a SQLite file whose driver process lives: the driver
        ends the run (it may be driving it), through the inbox."""
        if self.epoch.leased or self.epoch.sharing.driving:
            return False
        return bool(self.epoch.driver_lock.held_elsewhere())

    def end_here(self, wid: str, event: ev.NewEvent, done: Done) -> None:
        """Hub greenlet: stop the run's greenlet if it lives here, then
        record ``event`` at the head of its history; ``done(seq, error)``."""
        try:
            deadline = _clock.monotonic() + self.engine.kill_timeout
            # A run whose greenlet is reading its history has no context
            # yet, and one just created by start() has its spawn on the way
            # (ended under it, it would run its first step before it found
            # the history moved).
            while ((self.epoch.runs.is_starting(wid)
                    or (wid in self.epoch.recorders and wid not in self.epoch.runs))
                   and _clock.monotonic() < deadline):
                gevent.sleep(0.01)
            ctx = self.epoch.runs.get(wid)
            if isinstance(ctx, WorkflowContext):
                if ctx._failure is None:
                    ctx._failure = RunTerminated(f"workflow {wid!r} was terminated")
                glet = ctx._greenlet
                if glet is not None and not glet.dead:
                    glet.kill(RunTerminated, block=True, timeout=self.engine.kill_timeout)
                    if not glet.dead:
                        log.error("workflow %r: its greenlet went on after terminate (it caught "
                                  "BaseException); it records nothing more", wid)
            seq = self.epoch.writer.call(append_end, self.epoch.store, wid, event).result()
        except gevent.GreenletExit:
            raise
        except BaseException as exc:
            done(None, exc)
            return
        self.epoch.unrunnable.pop(wid, None)
        self.epoch.unreadable.pop(wid, None)
        self.epoch.residency.forget(wid)  # (ended out of memory: nothing to wake, or renew)
        try:
            info = self.epoch.writer.call(self.epoch.store.get_run, wid).result()
        except Exception:  # the event is recorded; waiters find it by polling
            info = None
        if info is not None and info.finished:
            self.epoch.runner.complete_waiters(wid, info)
        done(seq, None)

    def end_if_cancel_recorded(self, wid: str) -> None:
        """Hub greenlet, for a run just found unrunnable: a cancel request
        recorded before (drained from the inbox ahead of recovery, say) ends
        it as a request recorded after would."""
        reader = self.epoch.reader
        try:
            seq = reader.call(reader.store.find_event, wid, ev.CANCEL_REQUESTED, None).result()
            if seq is None:
                return
            found = reader.call(reader.store.read, wid, seq - 1, 1).result()
        except Exception as exc:  # looked at again when a cancel is asked for
            log.debug("workflow %r: its cancel requests could not be read (%s)", wid, exc)
            return
        reason = str(found[0].data.get("reason", "")) if found else ""
        self.end_if_unrunnable(wid, reason, _log_outcome)

    def end_if_unrunnable(self, wid: str, reason: str, done: Done) -> None:
        """Hub: after a cancel request was recorded for a run that this
        driving engine cannot run (its type unknown here), end it: no code
        of it can run to clean up, so it would stay running for ever."""
        why = self.epoch.unrunnable.get(wid)
        if why is None or wid in self.epoch.unreadable or wid in self.epoch.runs:
            done(None, None)
            return
        self.epoch.hub.spawn(self.end_here, wid, unrunnable_cancelled_event(reason, why, time.time()),
                        done, name=f"cancel-unrunnable:{wid}")
