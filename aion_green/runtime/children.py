"""Child workflows, engine side: creating a child whose start the parent
recorded, watching for its end, and recording that end into the parent.

A parent's ``ctx.start_child`` records ``ChildStarted`` (with the child's
pre-chosen id) *before* the child exists. Two tasks of the engine's
:class:`~aion_green.watchers.ChildTaskRegistry` then carry it on, both
greenlets on the hub thread:

- the *spawn-recovery task* of the child id creates the child's run
  (idempotent by id, so a repair never creates it twice), retrying with
  backoff while the store refuses; once the run exists it arms the watcher
  and tells the parent. A live start queues the creation right behind the
  ``ChildStarted`` append (the store writer is first in, first out), so
  the two share one commit or the creation commits later, never first.
  Whenever a parent's history is loaded, every child it started whose end
  is not recorded gets this task: that is the sweep that repairs a crash
  between ``ChildStarted`` and the child's creation;
- the *watcher* of (parent, child) waits for the child's end (a doorbell
  from the child's run here, with a store poll as the fallback) and
  records ``ChildCompleted``/``ChildFailed`` into the parent through the
  parent's recorder, once (a dedup id), before the parent wakes. A parent
  that ended refuses it; it is never written.

Thread contract: every method here runs on the engine's hub thread.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import gevent

from aion_green.core import events as ev
from aion_green.core.errors import (
    AionError,
    EngineClosed,
    StoreUnavailable,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.core.history import child_seen_key
from aion_green.hub_thread import Future
from aion_green.runtime.recorder import Recorder
from aion_green.store import RunInfo
from aion_green.workflows.children import ParentKey

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.children")

# Backoff of a spawn-recovery task and of a watcher whose record failed.
_RETRY_FIRST = 0.05
_RETRY_CAP = 5.0
# A watcher re-reads the child's status this often when no doorbell came
# (a child running in no engine here, say).
_WATCH_POLL = 5.0
# ... and every this many polls while this engine drives the child (its
# end rings the doorbell here): a missed doorbell's net.
_HELD_POLLS = 12




class Children:
    """Child workflows, engine side: a part of the epoch (hub thread)."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts

    # Parents are named by their *run*, ``(workflow id, run id)``: a run
    # that continued as new leaves the id to a next run, which a task of
    # the old run must never write into.
    def _live_parent(self, parent: ParentKey) -> Optional["WorkflowContext"]:
        ctx = self.epoch.runs.get(parent[0])
        if ctx is None or ctx.run_id != parent[1]:
            return None
        return ctx

    # -- spawning -------------------------------------------------------------------------
    def ensure_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        """The child recorded in ``data`` (a ``ChildStarted``) must exist:
        arm its spawn-recovery task (a no-op if one runs)."""
        self.epoch.child_tasks.arm_spawn_retry(data["id"], self._spawn_child, parent, data)

    def _spawn_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        """Spawn-recovery task: create the child (or find it), then watch it."""
        child_id, wname, args = data["id"], data["workflow_type"], data["args"]
        args_json = ev.encode(args, f"the arguments of child workflow {child_id!r}")
        delay = _RETRY_FIRST
        while True:
            try:
                created, info = self.epoch.routing.create_run(child_id, wname, args_json, parent[0])
                break
            except AionError as exc:
                log.warning("child %r of %r not created yet (%s); retrying in %.2f s",
                            child_id, parent[0], exc, delay)
            gevent.sleep(delay)
            delay = min(delay * 2, _RETRY_CAP)
        if not created and (info.workflow_type != wname or info.args != args):
            # The id names other work: the child can never run. Recorded in
            # the parent, so its replay sees the same failure.
            error = {"type": "WorkflowIdConflict", "message": (
                f"child id {child_id!r} already names a run of {info.workflow_type}"
                f"{tuple(info.args)!r}, not {wname}{tuple(args)!r}; give the child another id")}
            self._record_child_end(parent, child_id, ev.CHILD_FAILED,
                                   {"id": child_id, "status": ev.FAILED, "error": error})
        else:
            self.epoch.child_tasks.arm_watch(parent, child_id, self.watch_child, parent, child_id)
        ctx = self._live_parent(parent)
        if ctx is not None:
            ctx._child_ready(child_id)

    # -- watching -------------------------------------------------------------------------
    def watch_child(self, parent: ParentKey, child_id: str) -> None:
        """Watcher: wait for the child's end, then record it into the parent."""
        info = self._wait_child_end(child_id)
        if info.status == ev.COMPLETED:
            event_type, data = ev.CHILD_COMPLETED, {"id": child_id, "result": info.result}
        else:
            error = dict(info.error or {"type": info.status, "message": info.status})
            event_type, data = ev.CHILD_FAILED, {"id": child_id, "status": info.status,
                                                "error": error}
        self._record_child_end(parent, child_id, event_type, data)

    def _wait_child_end(self, child_id: str) -> RunInfo:
        delay = _RETRY_FIRST
        runs, residency = self.epoch.runs, self.epoch.residency
        while True:
            future = Future()
            self.epoch.runner.register_waiter(child_id, future)
            if child_id in runs or residency.absent_here(child_id):
                # This engine drives the child (in memory or out of it): its
                # end rings the doorbell here, so its status is read only
                # every _HELD_POLLS polls, in case the doorbell was missed,
                # and the watcher wakes no more often (a read every poll for
                # each child parked out of memory cost an idle engine 9 % of
                # a core per 2,000 of them).
                rung = future.wait(_WATCH_POLL * _HELD_POLLS)
            else:
                rung = future.wait(_WATCH_POLL)
            if not rung:
                # No doorbell: drop this waiter and read the status anew
                # (a child that another engine drives, say).
                waiters = self.epoch.waiters.get(child_id)
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                continue
            try:
                info: RunInfo = future.result()
            except (WorkflowNotFound, StoreUnavailable) as exc:
                # Not found: created by a spawn task still in flight, or a
                # store hiccup: look again shortly.
                log.debug("watching child %r: %s", child_id, exc)
                gevent.sleep(delay)
                delay = min(delay * 2, _RETRY_CAP)
                continue
            if info.finished:
                return info

    def _record_child_end(self, parent: ParentKey, child_id: str, event_type: str,
                          data: dict[str, Any]) -> None:
        """Record the child's end into the parent, once, through the
        parent's recorder (the store writer retries a passing outage
        itself); a parent that ended, or is not live here, is never written."""
        seen = child_seen_key(child_id)
        at = time.time()

        def build(rec: Recorder) -> list[ev.NewEvent]:
            if seen in rec.seen:
                return []
            rec.note_seen(seen)
            return [ev.NewEvent(event_type, at, data)]

        # A parent out of memory (runtime/residency.py) is brought back, and pinned
        # there until the record is taken.
        pinned = self._live_parent(parent) is None
        if pinned and self.epoch.residency.until_resident(*parent) is None:
            return  # that run ended (perhaps into a next run of its id): never written

        def not_live() -> Any:
            raise WorkflowNotRunning(f"workflow {parent[0]!r} is not running here")

        waiter, done = self.epoch.hub.native_waiter()
        self.epoch.routing.route(parent[0], build, not_live, "the end of its child is not recorded", done)
        try:
            waiter.get()
        except (WorkflowNotRunning, EngineClosed):
            pass  # the parent ended (or left this engine): never written
        except AionError as exc:
            # The parent's run stops on this failure too, and records the
            # end when it resumes in a later epoch.
            log.error("the end of child %r could not be recorded in %r: %s", child_id, parent[0], exc)
        finally:
            if pinned:
                self.epoch.residency.unpin(parent[0])
