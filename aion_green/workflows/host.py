"""The host: what a workflow's context asks of the engine that drives it.

A :class:`~aion_green.workflows.context.WorkflowContext` never sees the
engine. Everything it needs from outside its own history goes through one
:class:`Host` (the runtime's is :class:`aion_green.runtime.host.EngineHost`)
and one :class:`RunLog` (the run's recorder), the way Temporal's Python SDK
keeps its workflow instance behind an interface. So this layer imports
neither the runtime nor a store, and a test can drive a workflow body
against a fake host.

Thread contract: every method is called on the engine's hub thread, from the
run's greenlet or a greenlet it spawned; none of them blocks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from aion_green.core import events as ev

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext
    from aion_green.workflows.steps import Retry, StepInfo

ParentKey = tuple[str, str]  # (workflow id, run id) of a parent run

# done(seq, error): called once, on any thread, when an operation on
# another run is recorded there (the seq of its record, if it has one) or
# refused (the error).
Done = Callable[[Optional[int], Optional[BaseException]], None]

# build(log) -> the events to append, called under the log's lock (so a
# per-name index can be taken from its counts). An empty list appends nothing.
Build = Callable[["RunLog"], list[ev.NewEvent]]


class Waiter(Protocol):
    """What the run's greenlet blocks on until ``done`` is called (a gevent
    ``Waiter``): ``get()`` returns the value given to ``done`` or raises its
    error."""

    def get(self) -> object: ...


class RunLog(Protocol):
    """The one door through which a live run's commands enter its history.

    Appends are ordered (each extends the one before) and durable before
    their waiter is told: the log returns the seq an append will have, and
    the context waits until its cursor reaches it (record before wake)."""

    @property
    def closed(self) -> bool:
        """No more appends: the run ended or the engine is closing."""

    def submit(self, build: Build, *, final: bool = False) -> Optional[int]:
        """Append what ``build`` returns; the seq of its last event, or None
        when it returned nothing."""

    def submit_events(self, events: list[ev.NewEvent], final: bool = False,
                      inline: bool = False) -> Optional[int]:
        """Append ``events``; the seq of the last one. ``inline``: the
        caller (a step pool thread, never the hub's) may commit them itself."""


class Host(Protocol):
    """The engine, as the context of one of its runs sees it."""

    # True when the engine caps the runs it holds in memory: the context
    # then says when it parks and wakes (read on every wait, so a field).
    tracks_parking: bool

    @property
    def closing(self) -> bool:
        """The engine's epoch is ending: start nothing new."""

    # -- workflow types -----------------------------------------------------------
    def register(self, fn: Callable[..., Any]) -> str:
        """Register ``fn`` (a child's workflow function) and return its name."""

    def require_registered(self, name: str) -> None:
        """Raise :class:`~aion_green.errors.WorkflowNotRegistered` for an
        unknown name."""

    # -- the run's own work -------------------------------------------------------
    def run_step(self, log: RunLog, fn: Callable[..., Any], args: tuple[Any, ...],
                 info: "StepInfo", policy: "Retry", limit: Optional[float] = None) -> None:
        """Run a step's attempts on the step pool and record their outcome
        through ``log``."""

    def arm_timer(self, fire_at: float, workflow_id: str, key: str) -> None:
        """Fire timer ``key`` of the run when ``time.time()`` passes ``fire_at``."""

    def spawn(self, fn: Callable[..., object], *args: object, name: Optional[str] = None) -> None:
        """Run ``fn(*args)`` as a greenlet on the hub, ended with the epoch."""

    def parked(self, ctx: "WorkflowContext", stepping: bool) -> None:
        """The run waits for its next record (only when ``tracks_parking``);
        ``stepping``: for the record of the step attempt it just started."""

    def unparked(self, ctx: "WorkflowContext") -> None:
        """The run woke (only when ``tracks_parking``)."""

    # -- other runs ---------------------------------------------------------------
    def native_waiter(self) -> tuple[Waiter, Done]:
        """A waiter the run's greenlet can block on (``waiter.get()``), and
        the ``done`` that resumes it from any thread."""

    def route_message(self, workflow_id: str, name: str, payload: Any, at: float,
                      dedup: Optional[str], done: Done) -> None:
        """Deliver a message to another run (``ctx.send``); ``done`` tells
        when it is recorded there or refused."""

    def route_cancel(self, workflow_id: str, reason: str, done: Done) -> None:
        """Ask another run (a child) to cancel."""

    # -- children -----------------------------------------------------------------
    def ensure_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        """The child whose ``ChildStarted`` data this is must exist: create
        it if need be and tell the parent (the context) when it does."""

    def watch_child(self, parent: ParentKey, child_id: str) -> None:
        """Record the child's end into the parent when it comes (a no-op if
        it is watched already)."""

    def abort_watch(self, parent: ParentKey, child_id: str) -> None:
        """Stop watching the child (an abandoned wait, a lost race)."""
