"""Bounds on a run, engine side: its execution deadline, and pausing it
(what the history records is in :mod:`aion_green.core.bounds`).

**The execution deadline** is armed in the timer service under the key
:data:`~aion_green.core.bounds.DEADLINE_TIMER` whenever a run's history is
loaded here (started, recovered after a restart or a crash, claimed over
PostgreSQL, replayed after an eviction): the deadline is durable because it
is in the run's ``WorkflowStarted``, not because a timer survives. When it
is due, the engine reads the run back, and if it still runs with a deadline
that has passed, ends it as ``terminate`` does (its greenlet killed, no
cleanup) with ``WorkflowTimedOut`` at the head of its history: status
``timed_out``; first recorded wins against the run's own end. Its children
are left running, as they are when a parent ends any other way (see
:mod:`aion_green.runtime.termination`). A paused run times out too: the
bound is on wall-clock time.

**Pause** records ``WorkflowPaused`` (``unpause``: ``WorkflowUnpaused``)
as an arrival, routed like a message: through the run's recorder when it
lives here, else at the head of its history, else the inbox of the engine
that drives it. While the last of them is a pause, the run starts no step
(``ctx._hold``), no wait of it returns (a message is recorded and kept,
``FirstRecorded``), and the timer service fires none of its timers; at the
unpause its timers are armed again (those due fire at once) and its waits
look again. A step already running when the pause lands finishes and is
recorded. The state is read from the history, so a replay after a restart
is paused as well.

Thread contract: :meth:`Bounds.request` runs on the caller's thread;
:meth:`Bounds.route` on any thread; the rest on the engine's hub thread.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.bounds import (
    DEADLINE_TIMER,
    PAUSE_TYPES,
    deadline_of,
    pause_event,
    timed_out_event,
)
from aion_green.core.errors import WorkflowNotRunning
from aion_green.hub_thread import Future
from aion_green.runtime.recorder import Recorder
from aion_green.runtime.termination import append_end
from aion_green.runtime.writer import future_done

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.engine")

Done = Callable[[Any, Optional[BaseException]], None]

# Seconds before a deadline whose end could not be recorded is tried again.
_RETRY = 5.0


def _kind(paused: bool) -> str:
    return "pause" if paused else "unpause"


class Bounds:
    """Execution deadlines and pauses: a part of the epoch."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        # Runs whose timing out is under way (hub thread): a deadline armed
        # twice (a replay, a continuation) ends the run once.
        self._ending: set[str] = set()

    # -- the execution deadline (hub thread) --------------------------------------------------
    def loaded(self, ctx: "WorkflowContext") -> None:
        """A run's history was loaded here: arm its deadline, if it has one."""
        deadline = deadline_of(ctx._cursor.event(1).data)
        if deadline is not None:
            self.epoch.timers.add(deadline, ctx._key, DEADLINE_TIMER)

    def deadline_due(self, wid: str) -> None:
        """The timer service: the deadline armed for ``wid`` is due."""
        epoch = self.epoch
        if wid in self._ending or epoch.hub.closing:
            return
        if epoch.routing.held_elsewhere(wid):
            return  # not ours any more: the engine that claimed it armed it too
        self._ending.add(wid)
        epoch.hub.spawn(self._time_out, wid, name=f"timeout:{wid}")

    def _time_out(self, wid: str) -> None:
        """Hub greenlet: end ``wid`` if it still runs past the deadline its
        current run's ``WorkflowStarted`` names (a run resumed since may
        have none, or the run may have ended first)."""
        epoch = self.epoch
        try:
            reader = epoch.reader
            info = reader.call(reader.store.get_run, wid).result()
            if info is None or info.finished:
                return
            started = reader.call(reader.store.read, wid, 0, 1).result()
            deadline = deadline_of(started[0].data) if started else None
            if deadline is None:
                return
            now = time.time()
            if deadline > now:  # (a clock moved back, say): look again then
                epoch.timers.add(deadline, wid, DEADLINE_TIMER)
                return
            log.info("workflow %r: its execution timeout passed; ending it", wid)
            ended = Future()
            epoch.termination.end_here(wid, timed_out_event(namespaces.local(wid), deadline, now),
                                       future_done(ended))
            try:
                ended.result()
            except WorkflowNotRunning:
                pass  # it ended first: first recorded wins
        except Exception as exc:  # (the store is away, say): tried again in a while
            log.warning("workflow %r: its execution timeout could not be recorded (%s); trying "
                        "again in %s s", wid, exc, _RETRY)
            epoch.timers.add(time.time() + _RETRY, wid, DEADLINE_TIMER)
        finally:
            self._ending.discard(wid)

    # -- pause and unpause -------------------------------------------------------------------------
    def request(self, wid: str, paused: bool, reason: str) -> int:
        """Caller's thread: record a pause (or unpause) of ``wid``; its seq
        once durable. :class:`WorkflowNotRunning` for a finished run."""
        epoch = self.epoch
        kind = _kind(paused)
        # A dedup id: a client's confirmation finds this request's record,
        # not an earlier pause's.
        data = {"reason": reason, "dedup": f"{kind}/{uuid.uuid4().hex}"}
        at = time.time()
        if not epoch.sharing.driving or epoch.routing.held_elsewhere(wid):
            event_type = ev.WORKFLOW_PAUSED if paused else ev.WORKFLOW_UNPAUSED
            return epoch.sharing.post(wid, kind, data, at, event_type, data["dedup"])
        future = Future()
        self.route(wid, paused, data, at, future_done(future))
        return int(epoch.routing.await_recorded(future, f"the {kind} of workflow {wid!r}"))

    def route(self, wid: str, paused: bool, data: dict[str, Any], at: float, done: Done) -> None:
        """Any thread (the inbox drain too): record the pause or unpause
        ``data`` (its reason and dedup id) for ``wid``; ``done(seq, error)``."""
        event = pause_event(paused, str(data.get("reason", "")), at, data.get("dedup"))
        store = self.epoch.store
        why_not = f"there is nothing left to {_kind(paused)}"

        def build(_rec: Recorder) -> list[ev.NewEvent]:
            return [event]

        self.epoch.routing.route(wid, build, lambda: append_end(store, wid, event, why_not),
                                 why_not, done, (_kind(paused), data))

    def released(self, ctx: "WorkflowContext") -> None:
        """Hub thread, as an unpause reaches a live run's cursor: its timers
        go back to the timer service (those due fire at once)."""
        for key, fire_at in ctx._timers.items():
            self.epoch.timers.add(fire_at, ctx._key, key)

    def paused_in_store(self, wid: str) -> bool:
        """Any thread but the hub's callbacks (the timer sweep, before it
        fires a timer of a run not live here: one being recovered, say; the
        ``aion_time`` fixture): whether its history says it is paused. A
        read per due timer of such a run, which is rare."""
        reader = self.epoch.reader
        try:
            last = reader.call(reader.store.last_of_types, wid, tuple(PAUSE_TYPES)).result()
        except Exception:  # the sweep's own read of the store failed just before
            return False
        return bool(last == ev.WORKFLOW_PAUSED)
