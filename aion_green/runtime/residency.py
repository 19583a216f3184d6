"""Residency: a cap on the runs an engine holds in memory.

With ``Engine(max_resident=N)`` (over SQLite; PostgreSQL caps the runs an
engine *leases* instead) at most N runs have a greenlet and a context here.
A run parked on a long wait (a timer, a message, a child's end, a cancel)
with nothing in flight is *evicted* when room is needed: its greenlet ends
(like a run killed at shutdown, nothing is recorded) and only its id is
kept. When its wake is recorded (the timer fires, a message or cancel is
recorded through the store, a watched child ends) or a query asks it, it
queues for a place and is replayed from its history, which is the same
thing recovery after a crash does. Runs that would pass the cap (started,
recovered, woken) wait in a FIFO admission queue; a run that ends or is
evicted lets the next one in.

Eviction happens on the hub greenlet: the victim's doorbell is rung with
its failure set to :class:`RunEvicted`, so it unwinds at once, inside that
callback, before any other arrival can be routed to its recorder.

Thread contract: everything here runs on the engine's hub thread;
``_make_room`` only from the hub greenlet (it is always queued with
``call_soon``).
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Any, Optional, cast

import gevent

from aion_green.core import events as ev
from aion_green.runtime.recorder import Recorder
from aion_green.store import RunInfo
from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.residency")


class RunEvicted(BaseException):
    """Unwinds a parked run that leaves memory; nothing is recorded. Never
    seen by user code's ``except Exception``."""


class ResidencyDriver:
    """The residency half of the Engine."""

    # Provided by Engine / RunDriver.
    _hub: Any
    _reader: Any
    _runs: dict[str, Any]
    max_resident: Optional[int]

    def _spawn_run(self, wid: str, info: Any, recovering: bool = False,
                   recorder: Any = None) -> None:
        raise NotImplementedError

    def _init_residency(self, on: bool) -> None:
        self._residency = on
        # Runs evicted from memory, parked; woken by what they wait for. Kept:
        # what driving it again needs besides its history (run id, type,
        # arguments, creation time, fence), as one tuple.
        self._evicted: dict[str, tuple[Any, ...]] = {}
        # Runs waiting for a place: id -> (info, recovering, recorder).
        self._admission: "collections.OrderedDict[str, tuple[Any, bool, Any]]" = (
            collections.OrderedDict())
        # Candidates for eviction, longest parked first.
        self._parked_runs: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        # Runs brought back to take a record (a child's end) through their
        # recorder: kept in memory until it is taken.
        self._pinned: "collections.Counter[str]" = collections.Counter()
        self._room_asked = False
        # Figures for tests and benchmarks: runs evicted, most resident at once.
        self.evictions = 0
        self.resident_peak = 0

    # -- the cap ---------------------------------------------------------------------------
    def _full(self) -> bool:
        cap = self.max_resident
        return self._residency and cap is not None and len(self._runs) >= cap

    def _queue_run(self, wid: str, info: Any, recovering: bool, recorder: Any) -> None:
        """A run that would pass the cap waits for a place."""
        self._admission[wid] = (info, recovering, recorder)
        self._ask_room()

    def _ask_room(self) -> None:
        if not self._room_asked:
            self._room_asked = True
            self._hub.call_soon(self._make_room)

    def _make_room(self) -> None:
        """Hub greenlet: evict parked runs (longest parked first) until the
        queued runs fit, then let them in."""
        self._room_asked = False
        cap = self.max_resident
        assert cap is not None
        want = len(self._admission) - (cap - len(self._runs))
        parked = self._parked_runs
        while want > 0 and parked:
            wid, _ = parked.popitem(last=False)
            ctx = self._runs.get(wid)
            if isinstance(ctx, WorkflowContext) and wid not in self._pinned and _evictable(ctx):
                self._evict(ctx)
                want -= 1
        self._admit_next()

    def _evict(self, ctx: WorkflowContext) -> None:
        ctx._failure = RunEvicted()
        ctx._ring()  # the run unwinds now, on this greenlet's switch
        self.evictions += 1

    def _admit_next(self) -> None:
        """Let queued runs in while there is room."""
        cap = self.max_resident
        queue = self._admission
        while queue and (cap is None or len(self._runs) < cap) and not self._hub.closing:
            wid, (info, recovering, recorder) = queue.popitem(last=False)
            self._spawn_run(wid, info, recovering, recorder)

    # -- parking and waking ------------------------------------------------------------------
    def _on_park(self, ctx: WorkflowContext) -> None:
        """The run's greenlet: it parks (a candidate for eviction)."""
        self._parked_runs[ctx.workflow_id] = None
        if self._admission:
            self._ask_room()

    def _on_unpark(self, ctx: WorkflowContext) -> None:
        self._parked_runs.pop(ctx.workflow_id, None)

    def _on_evicted(self, info: RunInfo) -> None:
        """``_drive``: the run's greenlet unwound for eviction."""
        self._evicted[info.workflow_id] = (info.run_id, info.workflow_type, info.args,
                                           info.created_at, info.fence)

    def _on_run_gone(self) -> None:
        """``_drive``: a run's greenlet ended (its place is free)."""
        if self._admission:
            self._hub.call_soon(self._admit_next)

    def _wake(self, wid: str) -> None:
        """Hub thread: something an evicted run waits for was recorded (or
        a query asks it): bring it back."""
        kept = self._evicted.pop(wid, None)
        if kept is not None:
            run_id, wtype, args, created_at, fence = kept
            # Its history is read when it is driven again: head_seq > 1 says so.
            info = RunInfo(wid, run_id, wtype, ev.RUNNING, args, None, None, 2, created_at,
                           created_at, fence)
            self._admission[wid] = (info, True, None)
            self._admit_next()
            if wid in self._admission:
                self._ask_room()

    def _absent_here(self, wid: str) -> bool:
        """The run is this engine's, but out of memory (evicted or queued)."""
        return wid in self._evicted or wid in self._admission

    def _until_resident(self, wid: str, run_id: str) -> Optional[WorkflowContext]:
        """A greenlet (a child watcher): wake run ``wid`` and wait until it
        is live here; None if it is not this engine's (any more). The run
        stays in memory until :meth:`_unpin` (its record is then taken)."""
        delay = 0.002
        self._pinned[wid] += 1
        while True:
            ctx = self._runs.get(wid)
            if isinstance(ctx, WorkflowContext):
                return ctx if ctx.run_id == run_id else None
            if (ctx is None and not self._absent_here(wid)) or self._hub.closing:
                self._unpin(wid)
                return None
            self._wake(wid)
            gevent.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _unpin(self, wid: str) -> None:
        if self._pinned.get(wid, 0) > 1:
            self._pinned[wid] -= 1
        else:
            self._pinned.pop(wid, None)

    def _step_started(self, ctx: Any) -> None:
        if isinstance(ctx, WorkflowContext):
            ctx._busy += 1

    @staticmethod
    def _step_handed_over(ctx: Any) -> None:
        """Hub thread: a step attempt's outcome reached the run's recorder
        (or failed to): the run may leave memory once that is recorded."""
        if isinstance(ctx, WorkflowContext):
            ctx._busy -= 1


def _evictable(ctx: WorkflowContext) -> bool:
    """Parked with nothing in flight (no step running or waiting to start,
    no append on its way to the store, no failure pending) and not about to
    wake."""
    recorder = cast(Recorder, ctx._recorder)  # this engine's runs log through a Recorder
    if not (ctx._parked and ctx._busy == 0 and ctx._failure is None
            and ctx._divergence is None and not recorder.closed
            and recorder._next == ctx._cursor.head_seq and not recorder._buffer):
        return False
    # A timer already due is about to wake it: evicting it now would only
    # bring it straight back (a run woken by its timer fires it once replayed).
    now = time.time()
    return all(fire_at > now for fire_at in ctx._timers.values())
