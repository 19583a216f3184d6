"""Child workflows, engine side: creating a child whose start the parent
recorded, watching for its end, and recording that end into the parent.

A parent's ``ctx.start_child`` records ``ChildStarted`` (with the child's
pre-chosen id) *before* the child exists. Two tasks of the engine's
:class:`~aion_green.watchers.ChildTaskRegistry` then carry it on, on the
hub thread:

- the *spawn-recovery task* of the child id creates the child's run
  (idempotent by id, so a repair never creates it twice), retrying with
  backoff while the store refuses; once the run exists it arms the watcher
  and tells the parent. A live start queues the creation right behind the
  ``ChildStarted`` append (the store writer is first in, first out), so
  the two share one commit or the creation commits later, never first.
  Whenever a parent's history is loaded, every child it started whose end
  is not recorded gets this task: that is the sweep that repairs a crash
  between ``ChildStarted`` and the child's creation;
- the *watch* of (parent, child) is parked, with no greenlet, while the
  child runs. The child's end wakes it: the end of a run driven here
  (:meth:`Children.child_ended`, from ``Runner.complete_waiters``), or, for
  a child driven elsewhere, a poll of its status (one greenlet for all
  watches). Woken, it is a greenlet that records ``ChildCompleted`` or
  ``ChildFailed`` into the parent through the parent's recorder, once (a
  dedup id), before the parent wakes. A parent that ended refuses it; it
  is never written.

Thread contract: every method here runs on the engine's hub thread.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import gevent
import gevent.event

from aion_green.core import events as ev
from aion_green.core.errors import (
    AionError,
    EngineClosed,
    WorkflowNotRunning,
)
from aion_green.core.history import child_seen_key
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
# The status of a watched child that is not driven here (another engine's,
# say) is read this often, up to this many in one call of the reader.
_WATCH_POLL = 5.0
_POLL_BATCH = 500
# The poller looks through the parked watches this many at a time (~0.5 ms
# of the hub each), and lets the hub's loop turn for this long in between.
_SCAN_SLICE = 4096
_SCAN_PAUSE = 0.0005



class Children:
    """Child workflows, engine side: a part of the epoch (hub thread)."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        # The poller of parked watches (_poll): whether it runs, its bell,
        # and the children it is to read at once.
        self._polling = False
        self._poll_bell: Optional[gevent.event.Event] = None
        self._read_soon: set[str] = set()

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
            self.watch(parent, child_id)
        ctx = self._live_parent(parent)
        if ctx is not None:
            ctx._child_ready(child_id)

    # -- watching -------------------------------------------------------------------------
    def watch(self, parent: ParentKey, child_id: str) -> None:
        """Watch the child's end for ``parent`` (a no-op while a watch holds
        that key): a parked watch, no greenlet, until the child's end is
        known here (:meth:`child_ended`: the end of a run driven here, or
        the poller's read of a child driven elsewhere)."""
        if not self.epoch.child_tasks.park_watch(parent, child_id):
            return
        finished = None if self.epoch.purges_running else self.epoch.recently_finished.get(child_id)
        if finished is not None:
            self.child_ended(child_id, finished)
        elif child_id not in self.epoch.runs and not self.epoch.residency.absent_here(child_id):
            # Not driven here (yet: its creation may be in flight; or ended,
            # or another engine's): read its status now, then every poll.
            self._read_soon.add(child_id)
            self._poll_now()
        elif not self._polling:
            self._poll_now()

    def child_ended(self, child_id: str, info: RunInfo) -> None:
        """A run ended (Runner.complete_waiters, for every run whose end is
        known here): the parked watches of its id record it into their
        parents, each in a watcher greenlet."""
        if not info.finished or not self.epoch.child_tasks.has_parked(child_id):
            return
        if info.status == ev.COMPLETED:
            event_type, data = ev.CHILD_COMPLETED, {"id": child_id, "result": info.result}
        else:
            error = dict(info.error or {"type": info.status, "message": info.status})
            event_type, data = ev.CHILD_FAILED, {"id": child_id, "status": info.status,
                                                "error": error}
        self.epoch.child_tasks.wake_watches(child_id, self._record_child_end, child_id,
                                            event_type, data)

    def _poll_now(self) -> None:
        if self._polling:
            if self._poll_bell is not None:
                self._poll_bell.set()
            return
        if self.epoch.hub.closing:
            return
        self._polling = True
        self.epoch.hub.spawn(self._poll, name="aion-child-poll")

    def _poll(self) -> None:
        """Greenlet, while watches are parked: every _WATCH_POLL, read the
        status of the watched children that no run here will ring for (not
        driven here: another engine's, not created yet, not runnable here),
        up to _POLL_BATCH in one call of the reader. The children driven
        here are never read: their end rings here (a read every poll for
        each of them cost an idle engine 9 % of a core per 2,000 parents and
        children evicted from memory). Ends when no watch is parked."""
        self._poll_bell = bell = gevent.event.Event()
        registry, runs, residency = self.epoch.child_tasks, self.epoch.runs, self.epoch.residency
        try:
            while not self.epoch.hub.closing:
                if self._read_soon:
                    ids, self._read_soon = list(self._read_soon), set()
                else:
                    bell.clear()
                    if bell.wait(_WATCH_POLL):
                        continue  # a watch parked on a child to read now
                    children = registry.parked_watch_children()
                    if not children:
                        return
                    # In slices, the hub's loop turning in between (its
                    # timers and I/O: sleep(0) would let only callbacks in):
                    # in one go, 200,000 parked watches held the hub ~30 ms
                    # every poll (a 10 ms timer of another run fired that late).
                    ids = []
                    for start in range(0, len(children), _SCAN_SLICE):
                        if start:
                            gevent.sleep(_SCAN_PAUSE)
                        ids += [c for c in children[start:start + _SCAN_SLICE]
                                if c not in runs and not residency.absent_here(c)]
                for start in range(0, len(ids), _POLL_BATCH):
                    self._read_ends([c for c in ids[start:start + _POLL_BATCH]
                                     if registry.has_parked(c)])
        finally:
            self._polling = False
            self._poll_bell = None

    def _read_ends(self, ids: list[str]) -> None:
        if not ids:
            return
        store = self.epoch.reader.store
        try:
            infos = self.epoch.reader.call(lambda: [store.get_run(c) for c in ids]).result()
        except AionError as exc:  # the store is away for a while: the next poll reads again
            log.debug("watching children: their status could not be read: %s", exc)
            return
        for child_id, info in zip(ids, infos):
            # (Not found: created by a spawn task still in flight; read again.)
            if info is not None and info.finished:
                self.epoch.runner.complete_waiters(child_id, info)

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
