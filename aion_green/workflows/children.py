"""Child workflows, workflow side: ``ctx.start_child`` records the start of
a child (its id chosen before it exists), ``child.result()`` waits for its
end recorded in the parent's history. The engine side (creating the child,
watching for its end) is :mod:`aion_green.runtime.children`; the two meet
through the host (:mod:`aion_green.workflows.host`)."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, Union

from aion_green.core import events as ev
from aion_green.core import namespaces, payloads
from aion_green.core.errors import (
    ConfigurationError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowTimedOut,
)
from aion_green.core.registry import workflow_name

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.children")

ParentKey = tuple[str, str]  # (workflow id, run id) of a parent run

_R = TypeVar("_R")


class ChildHandle(Generic[_R]):
    """A child workflow started by ``ctx.start_child``; ``_R`` is what the
    child's function returns (``Any`` for a child started by name)."""

    def __init__(self, ctx: "WorkflowContext", ordinal: int, workflow_id: str,
                 workflow_type: str, result_hint: Any = None) -> None:
        self._ctx = ctx
        self._result_hint = result_hint  # the child function's declared result type
        self.ordinal = ordinal
        self._key = workflow_id  # its key (core/namespaces.py): the parent's namespace
        self.workflow_type = workflow_type

    @property
    def workflow_id(self) -> str:
        """The child's workflow id (in the parent's namespace)."""
        return namespaces.local(self._key)

    def result(self) -> _R:
        """Wait for the child's end (recorded in the parent's history first);
        its result, or :class:`aion.WorkflowFailed` /
        :class:`aion.WorkflowCancelled` naming the child. Inside a
        ``ctx.timeout`` block the wait may be abandoned: the child goes on."""
        # As the child's function declares it, when the parent named it by
        # its function (core/payloads.py); else its JSON value.
        result: _R = payloads.decode(child_result(self._ctx, self), self._result_hint)
        return result

    def __repr__(self) -> str:
        return f"<ChildHandle {self.workflow_id!r} ({self.workflow_type})>"


_CHILD_STARTED = frozenset({ev.CHILD_STARTED})


def start_child(ctx: "WorkflowContext", fn: Union[str, Callable[..., Any]], args: tuple[Any, ...],
                child_id: Optional[str]) -> ChildHandle[Any]:
    """``ctx.start_child`` (see there)."""
    ctx._check()
    host = ctx._host
    if child_id is not None:
        try:
            child_id = namespaces.within(ctx.namespace, child_id,
                                         "ctx.start_child(..., id=...): the child's id")
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
    if callable(fn):
        wname = host.register(fn)
    else:
        wname = workflow_name(fn)
        host.require_registered(wname)  # fail early for an unknown name
    args_value = payloads.encode_args(args, f"the arguments of child workflow {wname}")
    more = ctx._rare()
    more.child_ordinal += 1
    ordinal = more.child_ordinal
    key: dict[str, Any] = {"child": ordinal, "workflow_type": wname}
    if child_id is not None:
        key["id"] = child_id
    recorded = ctx._take(_CHILD_STARTED, key, lambda: f"start child {ordinal} ({wname})")
    if recorded is None:
        data: dict[str, Any] = {"child": ordinal, "id": child_id or f"{ctx._run_key}/child-{ordinal}",
                "workflow_type": wname, "args": args_value}
        # The creation is queued right behind the record, so it commits in
        # the same transaction or a later one, never before: one commit per
        # child when the writer groups them. (Should the record fail, the
        # child may exist unrecorded; the replay records the start again
        # and adopts it, being the same id, type and arguments.)
        recorded = ctx._record(ev.NewEvent(ev.CHILD_STARTED, time.time(), data),
                               queued=lambda: host.ensure_child(ctx._parent_key, data))
    data = recorded.data
    chosen: str = data["id"]
    arrivals = ctx._cursor.arrivals
    end_key = ("child", chosen)
    if end_key not in arrivals:
        # The child exists before the parent goes on (a crash in between is
        # repaired when the parent's history is loaded again).
        host.ensure_child(ctx._parent_key, data)
        ready = more.children_ready
        ctx._wait(lambda: (chosen in ready or end_key in arrivals) or None)
    return ChildHandle(ctx, ordinal, chosen, wname,
                       payloads.return_hint(fn) if callable(fn) else None)


def watch_again(ctx: "WorkflowContext", child_id: str) -> None:
    """Arm the watcher of a child whose end is not recorded (a no-op if it
    is watched): after an abandoned wait, a new wait watches it anew."""
    if ("child", child_id) not in ctx._cursor.arrivals and child_id in ctx._rare().children_ready:
        ctx._host.watch_child(ctx._parent_key, child_id)


def child_result(ctx: "WorkflowContext", child: ChildHandle[Any]) -> Any:
    """``child.result()`` (see there)."""
    if child._ctx is not ctx:
        raise ValueError(f"{child!r} belongs to another workflow run; "
                         "a child handle is only used by the run that started it")
    ctx._check()
    child_id = child._key
    watch_again(ctx, child_id)
    end = ctx._race(("child", child_id), _AbortWatch(ctx, child_id))
    ctx._cursor.consume_arrival(end)
    return child_outcome(child.workflow_id, end)


class _AbortWatch:
    """A result wait abandoned (a cancel, a timeout block): stop watching
    the child. One slotted object, not a partial and its argument tuple: a
    parent parked on its child keeps it for as long as it waits."""

    __slots__ = ("ctx", "child_id")

    def __init__(self, ctx: "WorkflowContext", child_id: str) -> None:
        self.ctx, self.child_id = ctx, child_id

    def __call__(self) -> None:
        self.ctx._host.abort_watch(self.ctx._parent_key, self.child_id)


def child_outcome(child_id: str, end: ev.Event) -> Any:
    """What ``child.result()`` gives for a recorded end."""
    if end.type == ev.CHILD_COMPLETED:
        return end.data.get("result")
    error = dict(end.data.get("error") or {})
    if end.data.get("status") == ev.CANCELLED:
        raise WorkflowCancelled(child_id, error)
    if end.data.get("status") == ev.TIMED_OUT:
        raise WorkflowTimedOut(child_id, error)
    raise WorkflowFailed(child_id, error)


