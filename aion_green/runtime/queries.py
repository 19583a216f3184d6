"""Queries: ``engine.query(id, name, *args)`` answered by the live run's
``ctx.set_query`` handler, never recorded.

Where a handler runs (issue 21, "fair under load"): on a small pool of
query threads, never on the hub thread. On the hub a handler that sleeps
(an unpatched ``time.sleep``) or computes for a second froze every run of
the engine; a greenlet with ``gevent.Timeout`` would not have helped, since
a handler that blocks or computes never yields to be interrupted. So the
hub only looks the handler up and hands it to a pool thread, and goes on;
the pool thread sets the caller's Future.

What a handler reads: the run as it stood when the query reached it. The
run's greenlet is parked then (the hub is answering), and it does not
resume from its next engine wait until the handler returned or the query's
deadline passed (:meth:`WorkflowContext._await_queries`), so a handler that
returns in time reads a run that stands still, as it did on the hub. Only a
handler that overruns its deadline may see the run move under it. Handlers
must only read.

The deadline is the caller's ``timeout``: past it the caller gets
:class:`~aion_green.core.errors.Timeout` naming the query, the run and the
deadline, and says whether the handler was still running or never started.
A handler that never returns keeps one of the ``QUERY_THREADS`` threads for
good (a thread cannot be interrupted); when every thread is held so, later
queries wait in the pool's queue, each is dropped unrun once its deadline
has passed, and their callers are told that every query thread is busy and
with what. Other runs, their steps and their timers, are not affected.

Thread contract: :meth:`Queries.ask` and :meth:`Pending.timed_out` run on
the caller's thread; :meth:`Queries.answer_query` and the gate bookkeeping
on the engine's hub thread; :meth:`Queries._run_handler` on a query thread;
:meth:`Queries.close` on the thread that shuts the engine down.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent
import gevent.event

from aion_green.core import clock as _clock
from aion_green.core import payloads
from aion_green.core.errors import (
    QueryFailed,
    Timeout,
    WorkflowNotFound,
    WorkflowNotRunning,
    error_message,
)
from aion_green.hub_thread import Future
from aion_green.runtime.step_pool import StepPool
from aion_green.workflows.context import WorkflowContext

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

# Threads for query handlers. A handler is meant to read a few fields, so a
# few threads answer any number of queries; more only help while handlers
# hang, and each hung one keeps its thread for good.
QUERY_THREADS = 4


class Pending:
    """One query on its way: the caller's Future and what the caller is told
    if no answer comes in time (any thread reads it; each field is written
    once, by the thread named)."""

    __slots__ = ("wid", "name", "timeout", "deadline", "future", "run_id", "started", "queries")

    def __init__(self, queries: "Queries", wid: str, name: str, timeout: float) -> None:
        self.queries = queries
        self.wid = wid
        self.name = name
        self.timeout = timeout
        self.deadline = _clock.monotonic() + timeout
        self.future = Future()
        self.run_id: Optional[str] = None  # the hub, once it found the run
        self.started: Optional[float] = None  # the query thread, as the handler begins

    def timed_out(self) -> Timeout:
        """The caller's error once ``timeout`` passed without an answer."""
        run = f" (run {self.run_id})" if self.run_id else ""
        what = f"query {self.name!r} to workflow {self.wid!r}{run} got no answer within {self.timeout} s"
        if self.started is not None:
            return Timeout(
                f"{what}: its handler was still running at the deadline (a query handler "
                "must only read the run's state, never wait or compute at length); "
                "the run went on, and the engine's other runs were not held up")
        if self.run_id is not None:
            return Timeout(f"{what}: its handler never started, {self.queries.busy_report()}")
        return Timeout(f"{what}: the run was not ready to answer (still starting or being replayed)")


class Queries:
    """Queries answered by live runs: a part of the epoch."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        self.pool = StepPool(QUERY_THREADS, name="aion-query")
        # Handlers running now, by their Pending (query threads add and
        # remove their own; single dict operations only).
        self._running: dict[Pending, float] = {}

    # caller's thread ------------------------------------------------------------------
    def ask(self, wid: str, name: str, args: tuple[Any, ...], timeout: float) -> Pending:
        pending = Pending(self, wid, name, timeout)
        self.epoch.hub.call_soon(self.answer_query, wid, name, args, pending)
        return pending

    def busy_report(self) -> str:
        running = list(self._running.items())
        if len(running) < QUERY_THREADS:
            return "though a query thread was free (the engine is overloaded)"
        now = _clock.monotonic()
        held = ", ".join(f"{p.name!r} of {p.wid!r} for {now - began:.1f} s" for p, began in running)
        return (f"all {QUERY_THREADS} query threads were busy with handlers that do not return "
                f"({held}); a thread held by a handler that never returns stays held")

    def close(self) -> None:
        """Drop the queries not yet started; never wait for a running handler
        (its thread ends when it returns)."""
        for pending in list(self._running):
            pending.future.set_exception(QueryFailed(
                f"query {pending.name!r} to workflow {pending.wid!r}: the engine shut down"))
        self.pool.close(0)

    # hub thread -----------------------------------------------------------------------
    def answer_query(self, wid: str, name: str, args: tuple[Any, ...], pending: Pending) -> None:
        future = pending.future
        if future.done():
            return
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
            if _clock.monotonic() < pending.deadline and not self.epoch.hub.closing:
                self.epoch.hub.spawn(self._ask_again, wid, name, args, pending)
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
        pending.run_id = ctx.run_id
        # The run stands still while its handler reads it (see the module
        # docstring); the gate opens when the handler returns, and the run
        # waits on it at most until the deadline.
        gate = gevent.event.Event()
        ctx._query_gates = ctx._query_gates + ((gate, pending.deadline),)
        call_soon = self.epoch.hub.call_soon

        def task() -> None:
            try:
                self._run_handler(pending, handler, args)
            finally:
                call_soon(_open_gate, ctx, gate)

        self.pool.submit(task)

    def _ask_again(self, wid: str, name: str, args: tuple[Any, ...], pending: Pending) -> None:
        gevent.sleep(0.005)
        self.answer_query(wid, name, args, pending)

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

    # a query thread -------------------------------------------------------------------
    def _run_handler(self, pending: Pending, handler: Callable[..., Any],
                     args: tuple[Any, ...]) -> None:
        future, name, wid = pending.future, pending.name, pending.wid
        began = _clock.monotonic()
        if began >= pending.deadline or future.done():
            return  # its caller has given up: a backlog behind hung handlers is not run late
        pending.started = began
        self._running[pending] = began
        try:
            answer = payloads.jsonable(handler(*args), f"the answer of query {name!r}")
        except BaseException as exc:  # noqa: B036
            # Even SystemExit: on the hub thread it ended the hub and every
            # run with it (issue 16); here it would end a query thread.
            future.set_exception(QueryFailed(
                f"query {name!r} of workflow {wid!r} failed: {type(exc).__name__}: "
                f"{error_message(exc)}"))
        else:
            future.set_result(answer)
        finally:
            self._running.pop(pending, None)


def _open_gate(ctx: WorkflowContext, gate: Any) -> None:
    """Hub thread: a handler returned; its run may go on."""
    gate.set()
    ctx._query_gates = tuple(entry for entry in ctx._query_gates if entry[0] is not gate)
