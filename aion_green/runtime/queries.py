"""Queries: ``engine.query(id, name, *args)`` answered by the live run's
``ctx.set_query`` handler, never recorded.

Thread contract: every method here runs on the engine's hub thread (the
caller waits in a :class:`~aion_green.hub_thread.Future`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent

from aion_green.core import clock as _clock
from aion_green.core import payloads
from aion_green.core.errors import QueryFailed, WorkflowNotFound, WorkflowNotRunning, error_message
from aion_green.hub_thread import Future
from aion_green.workflows.context import WorkflowContext

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch


class Queries:
    """Queries answered by live runs: a part of the epoch (hub thread)."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts

    def answer_query(self, wid: str, name: str, args: tuple[Any, ...], future: Future,
                      deadline: float) -> None:
        ctx = self.epoch.runs.get(wid)
        if ctx is None and self.epoch.residency.absent_here(wid):
            self.epoch.residency.wake(wid)  # evicted: it answers once replayed
            ctx = self.epoch.runs.get(wid)
        if (not isinstance(ctx, WorkflowContext) and (
                wid in self.epoch.runs or wid in self.epoch.recorders
                or self.epoch.residency.absent_here(wid))) or (
                isinstance(ctx, WorkflowContext) and ctx._cursor.replaying):
            # Starting here (its history is being loaded), or replaying it (a
            # run brought back into memory, or recovered, parks on the way
            # through its history: its handlers would answer from a past
            # state): ask again shortly.
            if _clock.monotonic() < deadline and not self.epoch.hub.closing:
                self.epoch.hub.spawn(self._ask_again, wid, name, args, future, deadline)
            return
        if not isinstance(ctx, WorkflowContext):
            if wid in self.epoch.recently_finished:
                future.set_exception(WorkflowNotRunning(
                    f"workflow {wid!r} has finished; a finished run answers no queries"))
                return
            self.epoch.hub.spawn(self._answer_query_of_absent_run, wid, future)
            return
        handler = ctx._queries.get(name)
        if handler is None:
            known = ", ".join(sorted(ctx._queries)) or "none yet"
            future.set_exception(QueryFailed(
                f"workflow {wid!r} has no query {name!r} (it has: {known}); "
                "a query exists once the workflow called ctx.set_query for it"))
            return
        try:
            answer = payloads.jsonable(handler(*args), f"the answer of query {name!r}")
        except BaseException as exc:  # noqa: B036
            # Even SystemExit: raised here, on the hub thread, it ended the
            # hub and every run of the engine with it (issue 16).
            future.set_exception(QueryFailed(
                f"query {name!r} of workflow {wid!r} failed: {type(exc).__name__}: "
                f"{error_message(exc)}"))
        else:
            future.set_result(answer)

    def _ask_again(self, wid: str, name: str, args: tuple[Any, ...], future: Future,
                   deadline: float) -> None:
        gevent.sleep(0.005)
        self.answer_query(wid, name, args, future, deadline)

    def _answer_query_of_absent_run(self, wid: str, future: Future) -> None:
        try:
            info = self.epoch.reader.call(self.epoch.reader.store.get_run, wid).result()
        except Exception as exc:
            future.set_exception(exc)
            return
        if info is None:
            future.set_exception(WorkflowNotFound(
                f"no workflow with id {wid!r} in {self.engine._store_name()}"))
        elif info.finished:
            future.set_exception(WorkflowNotRunning(
                f"workflow {wid!r} has {info.status}; a finished run answers no queries"))
        else:
            future.set_exception(QueryFailed(
                f"workflow {wid!r} is not running in this engine (its workflow type "
                f"{info.workflow_type!r} may not be registered here); no query can be answered"))

