"""The engine as its runs' contexts see it: the runtime's
:class:`~aion_green.workflows.host.Host`.

One per epoch, made when the engine starts (the hub, the timer service and
the child-task registry exist by then), handed to every
:class:`~aion_green.workflows.context.WorkflowContext` the epoch creates.

Thread contract: the hub thread only, as the Protocol says.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from aion_green.workflows.host import Done, ParentKey, RunLog

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch
    from aion_green.workflows.context import WorkflowContext
    from aion_green.workflows.steps import Retry, StepInfo


class EngineHost:
    """Implements :class:`~aion_green.workflows.host.Host` over an engine's parts."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self._registry = engine._registry
        self._epoch = epoch
        self._hub = epoch.hub
        self.tracks_parking: bool = epoch.residency.on
        self.run_step = epoch.runner.run_step  # type: ignore[method-assign]  # same signature

    @property
    def closing(self) -> bool:
        return bool(self._hub._closing)

    def register(self, fn: Callable[..., Any]) -> str:
        return self._registry.add(fn)

    def require_registered(self, name: str) -> None:
        self._registry.get(name)

    def run_step(self, log: RunLog, fn: Callable[..., Any], args: tuple[Any, ...],
                 info: "StepInfo", policy: "Retry", limit: Optional[float] = None) -> None:
        # (Replaced in __init__ by the runner's own method: no extra frame
        # on every step.)
        self._epoch.runner.run_step(log, fn, args, info, policy, limit)  # pragma: no cover

    def arm_timer(self, fire_at: float, workflow_id: str, key: str) -> None:
        self._epoch.timers.add(fire_at, workflow_id, key)

    def spawn(self, fn: Callable[..., Any], *args: Any, name: Optional[str] = None) -> None:
        self._hub.spawn(fn, *args, name=name)

    def parked(self, ctx: "WorkflowContext", stepping: bool) -> None:
        self._epoch.residency.on_park(ctx, stepping)

    def unparked(self, ctx: "WorkflowContext") -> None:
        self._epoch.residency.on_unpark(ctx)

    def native_waiter(self) -> tuple[Any, Done]:
        return self._hub.native_waiter()

    def route_message(self, workflow_id: str, name: str, payload: Any, at: float,
                      dedup: Optional[str], done: Done) -> None:
        self._epoch.routing.route_message(workflow_id, name, payload, at, dedup, done)

    def route_cancel(self, workflow_id: str, reason: str, done: Done) -> None:
        self._epoch.routing.route_cancel(workflow_id, reason, done)

    def ensure_child(self, parent: ParentKey, data: dict[str, Any]) -> None:
        self._epoch.children.ensure_child(parent, data)

    def watch_child(self, parent: ParentKey, child_id: str) -> None:
        self._epoch.children.watch(parent, child_id)

    def abort_watch(self, parent: ParentKey, child_id: str) -> None:
        self._epoch.child_tasks.abort_watch(parent, child_id)
