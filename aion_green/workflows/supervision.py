"""Durable supervision: ``ctx.supervise`` over child workflows, with the
semantics of an Erlang/OTP supervisor.

A supervisor starts its children in spec order, then waits for the first
child end recorded in its history and decides, from the child's restart
type, whether to restart:

- ``permanent``: always; ``transient``: only after a failure (not after a
  normal end or a cancellation); ``temporary``: never;

and, from the strategy, what to restart:

- ``one_for_one``: that child alone;
- ``one_for_all``: every child (the others are ended first, in reverse
  start order, then all started again in spec order);
- ``rest_for_one``: that child and those started after it (ended in
  reverse order, started again in order).

A ``temporary`` child is never started again, even when a sibling's restart
ended it. A restart is a fresh run of the child under a new id (never a
replay of the one that ended). More than ``intensity`` restarts within
``period`` (measured on the recorded times of the ends) make the supervisor
end every child in reverse start order and raise
:class:`~aion_green.errors.RestartIntensityExceeded`, which fails the
workflow unless it catches it: its own parent sees a failed child
(escalation).

Each restart decision is recorded (``ChildRestarted``) before the new child
starts, and the decisions depend only on recorded events, so a replay after
a crash takes the same decisions; code that now decides differently is a
:class:`~aion_green.errors.NonDeterminismError`.

Thread contract: runs on the workflow's greenlet (the engine's hub thread).
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union, overload

from aion_green.core import events as ev
from aion_green.core.errors import Cancelled, RestartIntensityExceeded, Timeout
from aion_green.workflows.children import ChildHandle, watch_again
from aion_green.workflows.context import _ScopeExpired
from aion_green.workflows.host import Done

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVarTuple, Unpack  # see steps.py

    from aion_green.workflows.context import WorkflowContext

    _Ts = TypeVarTuple("_Ts")

log = logging.getLogger("aion_green.supervision")

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
# The same, for type checkers.
Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
_RESTARTED = frozenset({ev.CHILD_RESTARTED})


class ChildSpec:
    """A supervised child: ``aion.ChildSpec(fn, *args, restart="permanent",
    id=None, shutdown=timedelta(seconds=5))``. ``id`` names the first run
    (restarts add ``-r<n>``); ``shutdown`` is how long the supervisor waits
    for the child to end after asking it to (a cancel request) before it
    leaves it behind."""

    __slots__ = ("fn", "args", "restart", "id", "shutdown")

    @overload
    def __init__(self, fn: Callable[[WorkflowContext, Unpack[_Ts]], object], *args: Unpack[_Ts],
                 restart: Restart = "permanent", id: Optional[str] = None,  # noqa: A002
                 shutdown: Union[timedelta, float] = ...) -> None: ...
    @overload
    def __init__(self, fn: str, *args: Any, restart: Restart = "permanent",
                 id: Optional[str] = None,  # noqa: A002
                 shutdown: Union[timedelta, float] = ...) -> None: ...

    def __init__(self, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], object]],
                 *args: Unpack[_Ts], restart: Restart = "permanent",
                 id: Optional[str] = None,  # noqa: A002
                 shutdown: Union[timedelta, float] = timedelta(seconds=5)) -> None:
        if restart not in RESTART_TYPES:
            raise ValueError(f"ChildSpec(restart={restart!r}): choose one of {', '.join(RESTART_TYPES)}")
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"ChildSpec(id={id!r}): a child id must be a non-empty string")
        self.fn: Union[str, Callable[..., Any]] = fn
        self.args: tuple[Any, ...] = args
        self.restart = restart
        self.id = id
        self.shutdown = shutdown.total_seconds() if isinstance(shutdown, timedelta) else float(shutdown)

    def __repr__(self) -> str:
        name = self.fn if isinstance(self.fn, str) else getattr(self.fn, "__name__", self.fn)
        return f"<ChildSpec {name}{self.args!r} {self.restart}>"


class _Slot:
    """One spec and its current child."""

    __slots__ = ("index", "spec", "incarnation", "child", "end", "left")

    def __init__(self, index: int, spec: ChildSpec) -> None:
        self.index = index
        self.spec = spec
        self.incarnation = 0
        self.child: Optional[ChildHandle[Any]] = None
        self.end: Optional[ev.Event] = None  # the recorded end of the current child
        self.left = False  # asked to end, did not within its shutdown: left behind

    @property
    def running(self) -> bool:
        return self.child is not None and self.end is None and not self.left


def supervise(ctx: "WorkflowContext", specs: Sequence[ChildSpec], strategy: Strategy, intensity: int,
              period: Union[timedelta, float]) -> list[Any]:
    """``ctx.supervise`` (see there)."""
    ctx._check()
    if strategy not in STRATEGIES:
        raise ValueError(f"ctx.supervise(strategy={strategy!r}): choose one of {', '.join(STRATEGIES)}")
    if not isinstance(intensity, int) or intensity < 0:
        raise ValueError(f"ctx.supervise(intensity={intensity!r}): a count of restarts, 0 or more")
    seconds = period.total_seconds() if isinstance(period, timedelta) else float(period)
    if seconds <= 0:
        raise ValueError(f"ctx.supervise(period={period!r}): the period must be positive")
    specs = list(specs)
    for i, spec in enumerate(specs):
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"ctx.supervise: spec {i} is {spec!r}; pass aion.ChildSpec(fn, *args, ...)")
    if not specs:
        return []
    more = ctx._rare()
    more.supervisor_ordinal += 1
    sup = _Supervisor(ctx, more.supervisor_ordinal, specs, strategy, intensity, seconds)
    return sup.run()


class _Supervisor:
    def __init__(self, ctx: "WorkflowContext", ordinal: int, specs: list[ChildSpec], strategy: str,
                 intensity: int, period: float) -> None:
        self.ctx = ctx
        self.ordinal = ordinal
        self.slots = [_Slot(i, spec) for i, spec in enumerate(specs)]
        self.strategy = strategy
        self.intensity = intensity
        self.period = period
        self.restarts: list[float] = []  # recorded times of the restart decisions

    def run(self) -> list[Any]:
        for slot in self.slots:
            self._start(slot)
        try:
            while any(slot.running for slot in self.slots):
                slot = self._next_end()
                self._decide(slot)
        except (Cancelled, RestartIntensityExceeded):
            # The children do not outlive their supervisor: ended in reverse
            # start order, each awaited (a delivered cancel does not
            # interrupt these waits).
            self._terminate([s for s in self.slots if s.running], wait=True)
            raise
        except Exception:
            self._terminate([s for s in self.slots if s.running], wait=False)
            raise
        except _ScopeExpired:
            # The enclosing deadline would interrupt any wait: ask only.
            self._terminate([s for s in self.slots if s.running], wait=False)
            raise
        return [s.end.data.get("result") if s.end is not None and s.end.type == ev.CHILD_COMPLETED
                else None for s in self.slots]

    # -- decisions --------------------------------------------------------------------------
    def _decide(self, slot: _Slot) -> None:
        end = slot.end
        assert end is not None
        status = ev.COMPLETED if end.type == ev.CHILD_COMPLETED else end.data.get("status", ev.FAILED)
        restart = slot.spec.restart
        if restart == "temporary" or (restart == "transient" and status != ev.FAILED):
            return
        now = end.at
        recent = [t for t in self.restarts if t > now - self.period]
        if len(recent) + 1 > self.intensity:
            ctx = self.ctx
            error = RestartIntensityExceeded(
                f"workflow {ctx.workflow_id!r}: supervisor {self.ordinal} saw child "
                f"{end.data.get('id')!r} end ({status}) after {len(recent)} restart(s) within "
                f"{self.period:g} s, more than its intensity of {self.intensity} allows; it ended "
                "its children in reverse start order and failed")
            raise error
        self.restarts.append(now)
        if self.strategy == "one_for_one":
            group = [slot]
        elif self.strategy == "one_for_all":
            group = list(self.slots)
        else:
            group = self.slots[slot.index:]
        victims = [s for s in group if s.running]
        self._terminate(victims, wait=True)
        for member in group:  # in spec order
            if member is slot or (member in victims and member.spec.restart != "temporary"):
                self._restart(member, slot, status)

    def _restart(self, member: _Slot, cause: _Slot, status: str) -> None:
        ctx = self.ctx
        member.incarnation += 1
        key = {"supervisor": self.ordinal, "index": member.index, "incarnation": member.incarnation}
        recorded = ctx._take(_RESTARTED, key, lambda: (
            f"supervisor {self.ordinal} restarting child {member.index} "
            f"(incarnation {member.incarnation})"))
        if recorded is None:
            assert cause.child is not None
            ctx._record(ev.NewEvent(ev.CHILD_RESTARTED, time.time(), {
                **key, "strategy": self.strategy, "after": cause.child._key,
                "reason": status}))
        self._start(member)

    # -- children ---------------------------------------------------------------------------
    def _start(self, slot: _Slot) -> None:
        spec, ctx = slot.spec, self.ctx
        base = spec.id or f"{ctx._run_key}/sup-{self.ordinal}/{slot.index}"
        child_id = base if slot.incarnation == 0 else f"{base}-r{slot.incarnation}"
        slot.child = ctx.start_child(spec.fn, *spec.args, id=child_id)
        slot.end = None

    def _next_end(self) -> _Slot:
        """The running child whose end is recorded first."""
        ctx = self.ctx
        arrivals = ctx._cursor.arrivals
        running = [s for s in self.slots if s.running]
        for slot in running:
            assert slot.child is not None
            watch_again(ctx, slot.child._key)

        def first() -> Optional[ev.Event]:
            ends = [e for e in (arrivals.get(("child", s.child._key)) for s in running
                                if s.child is not None) if e is not None]
            return min(ends, key=lambda e: e.seq) if ends else None

        def abandon() -> None:
            for slot in running:
                assert slot.child is not None
                ctx._host.abort_watch(ctx._parent_key, slot.child._key)

        end = ctx._race(first, abandon)
        ctx._cursor.consume_arrival(end)
        slot = next(s for s in running if s.child is not None and s.child._key == end.data["id"])
        slot.end = end
        return slot

    def _terminate(self, slots: list[_Slot], wait: bool) -> None:
        """End children in reverse start order: ask each to cancel and (with
        ``wait``) wait for its end, at most its spec's ``shutdown``, before
        the next.

        What is recorded here must not depend on arrivals the replay can
        already see but the live run could not (a later record): so the
        wait (its deadline timer is recorded) happens whether or not the
        child's end is in the history, and only its outcome is used."""
        ctx = self.ctx
        arrivals = ctx._cursor.arrivals
        for slot in reversed(slots):
            child = slot.child
            assert child is not None
            host, child_id = ctx._host, child._key
            if ("child", child_id) not in arrivals:  # not recorded here: a side effect, asked anew
                host.route_cancel(child_id, f"ended by its supervisor in {ctx.workflow_id!r}",
                                     _ignore_refusal(child_id))
            if not wait:
                continue
            ended = True
            try:
                with ctx.timeout(slot.spec.shutdown):
                    child.result()
            except Timeout:
                ended = False
                log.warning("workflow %r: child %r did not end within %g s of its supervisor's "
                            "request; it is left running", ctx.workflow_id, child_id,
                            slot.spec.shutdown)
            except Exception:  # noqa: S110 - its end (any end) is what was awaited
                pass
            slot.end = arrivals[("child", child_id)] if ended else None
            slot.left = not ended


def _ignore_refusal(child_id: str) -> Done:
    def done(_seq: Optional[int], error: Optional[BaseException]) -> None:
        if error is not None:
            log.debug("child %r not asked to cancel: %s", child_id, error)
    return done
