"""Messages inside a workflow: ``ctx.receive`` and ``ctx.send``.

A message is recorded in the target's history (``MessageReceived``, with
its index among the messages of that name) before it is delivered, so one
sent before the workflow waits for it is kept; ``ctx.send`` records the
send in the sender's history first and delivers with a dedup id, so a
replay that sends again is recorded once by the target.

Thread contract: called from the workflow's greenlet.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional, Union

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core import namespaces, payloads
from aion_green.core.errors import AionError, Timeout
from aion_green.core.history import ArrivalKey

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.context")

_MESSAGE_SENT = frozenset({ev.MESSAGE_SENT})


def receive(ctx: "WorkflowContext", name: str, timeout: Union[timedelta, float, int, None] = None,
            as_type: Any = None) -> Any:
    """The next message ``name`` (its payload), in the order they were
    recorded; one recorded before this call was kept for it. With
    ``timeout``, raises :class:`aion.Timeout` if the deadline's firing is
    recorded first (the message, if it comes later, is kept for the next
    receive)."""
    ctx._check()
    index = ctx._received.get(name, 0)
    key = ("message", name, index)
    timer = None
    if timeout is not None:
        timer = ctx._start_timer(_clock.seconds_of(timeout, f"ctx.receive({name!r}, timeout={timeout!r})"))
    first = _MessageOrTimer(ctx._cursor.arrivals, key, timer)
    winner = ctx._race(first)  # (its own: a cancel or a scope's deadline raised)
    ctx._cursor.consume_arrival(winner)
    ctx._cursor.drop_arrival(winner)
    if winner.type != ev.TIMER_FIRED:  # the message
        ctx._received[name] = index + 1
        if timer is not None:
            ctx._cancel_timer(timer)
        return payloads.decode(winner.data.get("payload"), as_type)
    raise Timeout(f"workflow {ctx.workflow_id!r}: no message {name!r} within {timeout}")


class _MessageOrTimer:
    """``own()`` of a receive's race: the message ``key`` or, with a
    timeout, the firing of ``timer``, whichever was recorded first. An
    object, not a closure: a run parked in a receive keeps it, and each
    closure cell would be one more object for the cyclic GC."""

    __slots__ = ("arrivals", "key", "timer")

    def __init__(self, arrivals: dict[ArrivalKey, ev.Event], key: ArrivalKey,
                 timer: Optional[str]) -> None:
        self.arrivals, self.key, self.timer = arrivals, key, timer

    def __call__(self) -> Optional[ev.Event]:
        message = self.arrivals.get(self.key)
        fired = self.arrivals.get(("timer", self.timer)) if self.timer else None
        if message is None or (fired is not None and fired.seq < message.seq):
            return fired
        return message


def send(ctx: "WorkflowContext", workflow_id: str, name: str, payload: Any = None) -> None:
    """Send message ``name`` to another workflow, exactly once: the send
    is recorded here (``MessageSent``), then delivered with an id that the
    target records once however often a replay delivers it again. A
    target that does not exist or has finished is logged, not raised (a
    replay must take the same path whatever the target has become)."""
    ctx._check()
    workflow_id = namespaces.within(ctx.namespace, workflow_id, "ctx.send: the target workflow id")
    ev.check_key(name, "ctx.send: the message name")
    more = ctx._rare()
    more.send_ordinal += 1
    dedup = f"{ctx._run_key}/send-{more.send_ordinal}"
    value = payloads.encode(payload, f"the payload of message {name!r}")[0]
    recorded = ctx._take(_MESSAGE_SENT, {"to": workflow_id, "name": name},
                         lambda: f"send {name!r} to {workflow_id!r}")
    replayed = recorded is not None
    if recorded is None:
        recorded = ctx._record(ev.NewEvent(ev.MESSAGE_SENT, time.time(), {
            "to": workflow_id, "name": name, "payload": value, "dedup": dedup}))
    waiter, done = ctx._host.native_waiter()
    # The recorded dedup id: a forked run replays its source's sends under
    # the ids the target already recorded (rewind.py).
    ctx._host.route_message(workflow_id, name, recorded.data.get("payload"), recorded.at,
                            recorded.data.get("dedup") or dedup, done)
    try:
        waiter.get()
    except AionError as exc:
        # Delivered again by a replay: the first delivery may well have
        # reached the target before it ended; only a first one is news.
        log.log(logging.DEBUG if replayed else logging.WARNING,
                "workflow %r: message %r to %r not delivered%s: %s", ctx.workflow_id, name,
                workflow_id, " again (replay)" if replayed else "", exc)
