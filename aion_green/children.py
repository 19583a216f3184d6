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
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import gevent

from . import events as ev
from .errors import (
    AionError,
    ConfigurationError,
    EngineClosed,
    StoreUnavailable,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from .hub_thread import Future
from .recorder import Recorder
from .registry import workflow_name
from .replay import child_seen_key
from .store import RunInfo

if TYPE_CHECKING:  # pragma: no cover
    from .context import WorkflowContext

log = logging.getLogger("aion_green.children")

# Backoff of a spawn-recovery task and of a watcher whose record failed.
_RETRY_FIRST = 0.05
_RETRY_CAP = 5.0
# A watcher re-reads the child's status this often when no doorbell came
# (a child running in no engine here, say).
_WATCH_POLL = 5.0

ParentKey = tuple[str, str]  # (workflow id, run id) of a parent run


class ChildHandle:
    """A child workflow started by ``ctx.start_child``."""

    def __init__(self, ctx: "WorkflowContext", ordinal: int, workflow_id: str,
                 workflow_type: str) -> None:
        self._ctx = ctx
        self.ordinal = ordinal
        self.workflow_id = workflow_id
        self.workflow_type = workflow_type

    def result(self) -> Any:
        """Wait for the child's end (recorded in the parent's history first);
        its result, or :class:`aion.WorkflowFailed` /
        :class:`aion.WorkflowCancelled` naming the child. Inside a
        ``ctx.timeout`` block the wait may be abandoned: the child goes on."""
        return child_result(self._ctx, self)

    def __repr__(self) -> str:
        return f"<ChildHandle {self.workflow_id!r} ({self.workflow_type})>"


_CHILD_STARTED = frozenset({ev.CHILD_STARTED})


def start_child(ctx: "WorkflowContext", fn: Union[str, Callable[..., Any]], args: tuple[Any, ...],
                child_id: Optional[str]) -> ChildHandle:
    """``ctx.start_child`` (see there)."""
    ctx._check()
    engine = ctx._engine
    if child_id is not None:
        try:
            ev.check_key(child_id, "ctx.start_child(..., id=...): the child's id")
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
    if callable(fn):
        wname = engine._registry.add(fn)
    else:
        wname = workflow_name(fn)
        engine._registry.get(wname)  # fail early for an unknown name
    args_value = ev.roundtrip(list(args), f"the arguments of child workflow {wname}")
    ctx._child_ordinal += 1
    ordinal = ctx._child_ordinal
    key: dict[str, Any] = {"child": ordinal, "workflow_type": wname}
    if child_id is not None:
        key["id"] = child_id
    recorded = ctx._take(_CHILD_STARTED, key, lambda: f"start child {ordinal} ({wname})")
    if recorded is None:
        data = {"child": ordinal, "id": child_id or f"{ctx._run_key}/child-{ordinal}",
                "workflow_type": wname, "args": args_value}
        # The creation is queued right behind the record, so it commits in
        # the same transaction or a later one, never before: one commit per
        # child when the writer groups them. (Should the record fail, the
        # child may exist unrecorded; the replay records the start again
        # and adopts it, being the same id, type and arguments.)
        recorded = ctx._record(ev.NewEvent(ev.CHILD_STARTED, time.time(), data),
                               queued=lambda: engine._ensure_child(ctx._parent_key, data))
    data = recorded.data
    chosen: str = data["id"]
    arrivals = ctx._cursor.arrivals
    end_key = ("child", chosen)
    if end_key not in arrivals:
        # The child exists before the parent goes on (a crash in between is
        # repaired when the parent's history is loaded again).
        engine._ensure_child(ctx._parent_key, data)
        ctx._wait(lambda: (chosen in ctx._children_ready or end_key in arrivals) or None)
    return ChildHandle(ctx, ordinal, chosen, wname)


def watch_again(ctx: "WorkflowContext", child_id: str) -> None:
    """Arm the watcher of a child whose end is not recorded (a no-op if it
    is watched): after an abandoned wait, a new wait watches it anew."""
    if ("child", child_id) not in ctx._cursor.arrivals and child_id in ctx._children_ready:
        engine = ctx._engine
        engine._child_tasks.arm_watch(ctx._parent_key, child_id, engine._watch_child,
                                      ctx._parent_key, child_id)


def child_result(ctx: "WorkflowContext", child: ChildHandle) -> Any:
    """``child.result()`` (see there)."""
    if child._ctx is not ctx:
        raise ValueError(f"{child!r} belongs to another workflow run; "
                         "a child handle is only used by the run that started it")
    ctx._check()
    child_id = child.workflow_id
    arrivals = ctx._cursor.arrivals
    end_key = ("child", child_id)
    watch_again(ctx, child_id)
    end = ctx._race(lambda: arrivals.get(end_key),
                    lambda: ctx._engine._child_tasks.abort_watch(ctx._parent_key, child_id))
    ctx._cursor.consume_arrival(end)
    return child_outcome(child_id, end)


def child_outcome(child_id: str, end: ev.Event) -> Any:
    """What ``child.result()`` gives for a recorded end."""
    if end.type == ev.CHILD_COMPLETED:
        return end.data.get("result")
    error = dict(end.data.get("error") or {})
    if end.data.get("status") == ev.CANCELLED:
        raise WorkflowCancelled(child_id, error)
    raise WorkflowFailed(child_id, error)


class ChildDriver:
    """The hub-thread half of child workflows, a part of the Engine."""

    # Provided by Engine / RunDriver.
    _hub: Any
    _runs: dict[str, Any]
    _child_tasks: Any
    _waiters: dict[str, list[Future]]

    def _create_run(self, wid: str, wname: str, args_json: str) -> tuple[bool, RunInfo]:
        raise NotImplementedError

    def _route(self, wid: str, build: Any, via_store: Any, why_not: str, done: Any) -> None:
        raise NotImplementedError

    def _register_waiter(self, wid: str, future: Future) -> None:
        raise NotImplementedError

    # Parents are named by their *run*, ``(workflow id, run id)``: a run
    # that continued as new leaves the id to a next run, which a task of
    # the old run must never write into.
    def _live_parent(self, parent: ParentKey) -> Optional["WorkflowContext"]:
        ctx = self._runs.get(parent[0])
        if ctx is None or isinstance(ctx, bool) or ctx.run_id != parent[1]:
            return None
        return ctx  # type: ignore[no-any-return]

    # -- spawning -------------------------------------------------------------------------
    def _ensure_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        """The child recorded in ``data`` (a ``ChildStarted``) must exist:
        arm its spawn-recovery task (a no-op if one runs)."""
        self._child_tasks.arm_spawn_retry(data["id"], self._spawn_child, parent, data)

    def _spawn_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        """Spawn-recovery task: create the child (or find it), then watch it."""
        child_id, wname, args = data["id"], data["workflow_type"], data["args"]
        args_json = ev.encode(args, f"the arguments of child workflow {child_id!r}")
        delay = _RETRY_FIRST
        while True:
            try:
                created, info = self._create_run(child_id, wname, args_json)
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
            self._child_tasks.arm_watch(parent, child_id, self._watch_child, parent, child_id)
        ctx = self._live_parent(parent)
        if ctx is not None:
            ctx._child_ready(child_id)

    # -- watching -------------------------------------------------------------------------
    def _watch_child(self, parent: ParentKey, child_id: str) -> None:
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
        while True:
            future = Future()
            self._register_waiter(child_id, future)
            if not future.wait(_WATCH_POLL):
                # No doorbell (yet): drop this waiter and read the status anew.
                waiters = self._waiters.get(child_id)
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

        # A parent out of memory (residency.py) is brought back, and pinned
        # there until the record is taken.
        pinned = self._live_parent(parent) is None
        if pinned and self._until_resident(*parent) is None:  # type: ignore[attr-defined]
            return  # that run ended (perhaps into a next run of its id): never written

        def not_live() -> Any:
            raise WorkflowNotRunning(f"workflow {parent[0]!r} is not running here")

        waiter, done = self._hub.native_waiter()
        self._route(parent[0], build, not_live, "the end of its child is not recorded", done)
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
                self._unpin(parent[0])  # type: ignore[attr-defined]
