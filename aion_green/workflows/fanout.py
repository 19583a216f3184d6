"""Fan-out inside a workflow: ``ctx.parallel`` and ``ctx.race``.

A fan-out runs several steps at once and waits for them (and for children
already started). Its steps take their ordinals in the order of the items,
so their idempotency keys are stable; their records land in whatever order
the steps end, so they are matched by (ordinal, attempt), never by
position. What the fan-out returns is decided by the record alone:

- ``parallel`` waits for every item; results in item order; once all have
  ended, the failure recorded first is raised;
- ``race`` returns the item whose end was recorded first; the losers are
  dropped (a running step is not awaited and its late record is passed
  over; a losing child is cancelled).

A cancel request or an enclosing ``ctx.timeout`` deadline recorded before
that deciding record wins, as for any wait: the whole fan-out is abandoned.

Thread contract: runs on the workflow's greenlet (the engine's hub thread).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    Literal,
    Optional,
    Sequence,
    TypeVar,
    Union,
    overload,
)

import gevent

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import NonDeterminismError
from aion_green.workflows.children import ChildHandle, child_outcome, watch_again
from aion_green.workflows.steps import NO_RETRY, Retry, StepInfo, check_args, step_name

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVarTuple, Unpack  # see steps.py

    from aion_green.workflows.context import WorkflowContext

    _Ts = TypeVarTuple("_Ts")

_R = TypeVar("_R")

log = logging.getLogger("aion_green.fanout")


class Step(Generic[_R]):
    """A step for ``ctx.parallel``/``ctx.race``: ``aion.Step(fn, *args,
    retry=aion.Retry(...), name=...)``, as ``ctx.step`` would take it
    (``args`` checked against ``fn``'s parameters; ``_R`` is what ``fn``
    returns)."""

    __slots__ = ("fn", "args", "retry", "name", "timeout")

    def __init__(self, fn: Callable[[Unpack[_Ts]], _R], *args: Unpack[_Ts], retry: Optional[Retry] = None,
                 name: Optional[str] = None, timeout: Union[None, float, timedelta] = None) -> None:
        if not callable(fn):
            raise TypeError(f"aion.Step({fn!r}, ...): the step must be a function")
        self.fn: Callable[..., _R] = fn
        self.args: tuple[Any, ...] = args
        self.retry = retry
        self.name = name
        self.timeout = None if timeout is None else _clock.seconds_of(
            timeout, f"aion.Step(..., timeout={timeout!r})")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"aion.Step(..., timeout={timeout!r}): a step's timeout is a "
                             "positive number of seconds or a timedelta")

    def __repr__(self) -> str:
        return f"<Step {self.name or step_name(self.fn)}{self.args!r}>"


class _Branch:
    """One item of a fan-out and what the record says of it so far."""

    __slots__ = ("index", "step", "child", "ordinal", "name", "attempt", "running", "retry_due",
                 "dropped", "end", "digest")

    def __init__(self, index: int, step: Optional[Step[Any]], child: Optional[ChildHandle[Any]],
                 ordinal: int, name: str) -> None:
        self.index = index
        self.step = step
        self.child = child
        self.ordinal = ordinal
        self.name = name
        self.attempt = 0  # attempts whose record was consumed
        self.running = False  # an attempt was submitted and its record is awaited
        self.retry_due = 0.0  # monotonic time of the next attempt, after a retryable failure
        self.dropped = False  # abandoned or lost: start nothing more
        self.end: Optional[ev.Event] = None  # the record that ended it
        self.digest: Optional[int] = None  # of the step's arguments, once a replay needs it


@overload
def fan_out(ctx: "WorkflowContext", items: Sequence[Union[Step[Any], ChildHandle[Any]]],
            first: Literal[False]) -> list[Any]: ...
@overload
def fan_out(ctx: "WorkflowContext", items: Sequence[Union[Step[Any], ChildHandle[Any]]],
            first: Literal[True]) -> tuple[int, Any]: ...


def fan_out(ctx: "WorkflowContext", items: Sequence[Union[Step[Any], ChildHandle[Any]]],
            first: bool) -> Union[list[Any], tuple[int, Any]]:
    """``ctx.parallel`` (``first=False``) and ``ctx.race`` (``first=True``)."""
    ctx._check()
    what = "ctx.race" if first else "ctx.parallel"
    branches = _branches(ctx, list(items), what)
    if not branches:
        if first:
            raise ValueError("ctx.race([]): a race needs at least one item")
        return []
    cursor = ctx._cursor
    for branch in branches:
        if branch.step is not None:
            cursor.key_step(branch.ordinal)

    def decided() -> Optional[ev.Event]:
        for branch in branches:
            if branch.end is None:
                _consume(ctx, branch)
        ends = [b.end for b in branches if b.end is not None]
        if first:
            return min(ends, key=lambda e: e.seq) if ends else None
        return max(ends, key=lambda e: e.seq) if len(ends) == len(branches) else None

    def go_live() -> None:
        for branch in branches:
            if branch.end is None and not branch.running:
                if branch.step is not None:
                    _start(ctx, branch)
                else:
                    assert branch.child is not None
                    watch_again(ctx, branch.child._key)

    def abandon() -> None:
        for branch in branches:
            _drop(ctx, branch, cancel_child=False)

    decider = ctx._race(decided, abandon, go_live)
    cursor.consume_arrival(decider)
    if first:
        winner = next(b for b in branches if b.end is decider)
        for branch in branches:
            if branch is not winner:
                _drop(ctx, branch, cancel_child=True)
        return winner.index, _outcome(ctx, winner)
    failed = [b for b in branches if b.end is not None and b.end.type not in _SUCCESS]
    if failed:
        _outcome(ctx, min(failed, key=lambda b: b.end.seq if b.end else 0))
    return [_outcome(ctx, b) for b in branches]


_SUCCESS = frozenset({ev.STEP_COMPLETED, ev.CHILD_COMPLETED})


def _branches(ctx: "WorkflowContext", items: list[Union[Step[Any], ChildHandle[Any]]],
              what: str) -> list[_Branch]:
    for index, item in enumerate(items):
        if isinstance(item, ChildHandle):
            if item._ctx is not ctx:
                raise ValueError(f"{what}: item {index}, {item!r}, belongs to another workflow run")
        elif not isinstance(item, Step):
            raise TypeError(f"{what}: item {index} is {item!r}; pass aion.Step(fn, *args) "
                            "for a step, or a handle from ctx.start_child")
    branches = []
    for index, item in enumerate(items):
        if isinstance(item, ChildHandle):
            branches.append(_Branch(index, None, item, 0, item._key))
        else:
            ctx._step_ordinal += 1
            branches.append(_Branch(index, item, None, ctx._step_ordinal,
                                    item.name or step_name(item.fn)))
    return branches


def _consume(ctx: "WorkflowContext", branch: _Branch) -> None:
    """Take the records of ``branch`` that are there (no side effect)."""
    cursor = ctx._cursor
    if branch.child is not None:
        branch.end = cursor.arrivals.get(("child", branch.child._key))
        return
    assert branch.step is not None
    while True:
        record = cursor.take_step_record(branch.ordinal, branch.attempt + 1)
        if record is None:
            return
        if record.data.get("name") != branch.name:
            error = NonDeterminismError(ctx.workflow_id, record.seq,
                                        f"step {branch.ordinal} ({branch.name})", record.describe())
            ctx._divergence = error
            raise error
        if not branch.running and "args_crc" in record.data:
            # A replayed record (a live one answers an attempt submitted here).
            branch.digest = check_args(ctx, record, branch.ordinal, branch.name,
                                       branch.step.args, branch.digest)
        branch.attempt += 1
        branch.running = False
        if record.type == ev.STEP_COMPLETED or not record.data.get("retryable"):
            branch.end = record
            cursor.retire_step(branch.ordinal, record)
            return
        policy = branch.step.retry or NO_RETRY
        branch.retry_due = _clock.monotonic() + policy.delay(branch.attempt)


def _start(ctx: "WorkflowContext", branch: _Branch) -> None:
    """Submit the next attempt of a step branch, after its backoff."""
    branch.running = True
    delay = branch.retry_due - _clock.monotonic()
    if delay > 0:
        ctx._busy += 1  # a step waiting to start keeps its run in memory
        ctx._host.spawn(_start_later, ctx, branch, delay,
                        name=f"retry:{ctx.workflow_id}/step-{branch.ordinal}")
    else:
        _submit(ctx, branch)


def _start_later(ctx: "WorkflowContext", branch: _Branch, delay: float) -> None:
    try:
        gevent.sleep(delay)
    finally:
        ctx._busy -= 1
    _submit(ctx, branch)


def _submit(ctx: "WorkflowContext", branch: _Branch) -> None:
    if branch.dropped or ctx._recorder.closed:
        return
    step = branch.step
    assert step is not None
    info = StepInfo(ctx._key, ctx.run_id, branch.ordinal, branch.name, branch.attempt + 1,
                    ctx.generation)
    ctx._host.run_step(ctx._recorder, step.fn, step.args, info, step.retry or NO_RETRY,
                       step.timeout)


def _drop(ctx: "WorkflowContext", branch: _Branch, cancel_child: bool) -> None:
    """Start nothing more for ``branch``; a child is no longer watched for
    this wait, and a losing child is cancelled (asked again on replay: the
    request is recorded once)."""
    branch.dropped = True
    if branch.step is not None and branch.end is None:
        # A late record of the step is passed over, and not kept.
        ctx._cursor.skip_step(branch.ordinal, branch.attempt + 1)
    if branch.child is None or branch.end is not None:
        return
    host, child_id = ctx._host, branch.child._key
    host.abort_watch(ctx._parent_key, child_id)
    if cancel_child:
        def done(_seq: Optional[int], error: Optional[BaseException]) -> None:
            if error is not None:
                log.debug("race loser %r not cancelled: %s", child_id, error)

        host.route_cancel(child_id, f"lost a race in workflow {ctx.workflow_id!r}", done)


def _outcome(ctx: "WorkflowContext", branch: _Branch) -> Any:
    end = branch.end
    assert end is not None
    if branch.child is not None:
        return child_outcome(branch.child._key, end)
    if end.type == ev.STEP_COMPLETED:
        return end.data.get("result")
    raise ctx._step_error(branch.ordinal, branch.name, end.data, branch.attempt)
