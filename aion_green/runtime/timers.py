"""The durable timer service.

Deadlines are wall-clock values (``time.time()``) recorded in history and in
the store's timer table. Due-ness is always decided from ``time.time()``
against the stored deadline, never from a gevent timer's expiry: gevent
timers ignore freezegun, and freezegun ignores gevent timers. The service
naps at most ``nap`` seconds (or until the next deadline) and wakes at once
when poked, so a test that moves a frozen clock and pokes fires at once.

Thread contract: :meth:`TimerService.poke` may be called from any thread;
everything else runs on the engine's hub thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import TYPE_CHECKING

import gevent.event

from aion_green.core.bounds import DEADLINE_TIMER

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.timers")


class TimerService:
    """Fires due timers: of live runs through their recorder, of runs that
    no greenlet drives here through the store (``fire_timer``)."""

    def __init__(self, epoch: "Epoch", nap: float = 1.0, sweep_every: float = 5.0) -> None:
        self._epoch = epoch
        self.nap = nap
        self.sweep_every = sweep_every
        # (fire_at, tie-breaker, workflow id, timer key) of live runs' timers.
        # Invariant: an entry may be stale (fired or cancelled meanwhile);
        # the run's context decides when it pops.
        self._heap: list[tuple[float, int, str, str]] = []
        self._ties = itertools.count()
        # (wake at, workflow id): runs out of memory, brought back a moment
        # before their first timer fires, so each is replayed and waiting
        # when it fires (not replayed after: late). runtime/residency.py.
        self._prewake: list[tuple[float, str]] = []
        self._wake = gevent.event.Event()
        self._sweep_now = False
        # False where runs are leased: each run's owner fires its timers.
        self.store_sweep = True

    # any thread ---------------------------------------------------------------------------
    def poke(self) -> None:
        """Re-check due timers now, in memory and in the store (after moving
        a test clock, say)."""
        self._epoch.hub.call_soon(self._poked)

    def _poked(self) -> None:
        self._sweep_now = True
        self._wake.set()

    def pending(self) -> int:
        """Timers of live runs waiting in memory (a snapshot; it may count
        some that fired or were cancelled and have not yet left the heap)."""
        return len(self._heap)

    # hub thread -----------------------------------------------------------------------------
    def add(self, fire_at: float, workflow_id: str, key: str) -> None:
        heap = self._heap
        if not heap or fire_at < heap[0][0]:
            self._wake.set()  # earlier than the current nap's end
        heapq.heappush(heap, (fire_at, next(self._ties), workflow_id, key))

    def prewake(self, at: float, workflow_id: str) -> None:
        """A run left memory: bring it back at ``at`` (a moment before its
        first timer fires), if it is still out of memory then."""
        prewake = self._prewake
        if not prewake or at < prewake[0][0]:
            self._wake.set()
        heapq.heappush(prewake, (at, workflow_id))

    def run(self) -> None:
        """The service's greenlet."""
        epoch = self._epoch
        next_sweep = 0.0
        while True:
            now = time.time()
            prewake = self._prewake
            while prewake and prewake[0][0] <= now:
                _, wid = heapq.heappop(prewake)
                if wid not in epoch.runs and epoch.residency.absent_here(wid):
                    epoch.residency.wake(wid)
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, _, wid, key = heapq.heappop(heap)
                if key == DEADLINE_TIMER:
                    epoch.bounds.deadline_due(wid)
                    continue
                ctx = epoch.runs.get(wid)
                if ctx is not None:
                    if ctx._cursor.paused:
                        continue  # fired at the unpause (runtime/bounds.py arms it again)
                    ctx._timer_due(key, now)
                elif wid not in epoch.runs and epoch.residency.on:
                    epoch.residency.wake(wid)  # evicted: replayed, it fires the timer itself
            if self.store_sweep and (now >= next_sweep or self._sweep_now):
                self._sweep_now = False
                next_sweep = now + self.sweep_every
                self._sweep_store(now)
            wait = self.nap if not heap else min(max(heap[0][0] - now, 0.0), self.nap)
            if prewake:
                wait = min(wait, max(prewake[0][0] - now, 0.0))
            self._wake.clear()
            self._wake.wait(wait)

    def _sweep_store(self, now: float) -> None:
        """Fire due timers of runs that no greenlet drives here (say their
        workflow type is not registered): the record waits for them."""
        epoch = self._epoch
        try:
            due = epoch.reader.call(epoch.reader.store.due_timers, now).result()
        except Exception as exc:
            log.warning("timer sweep could not read the store: %s", exc)
            return
        for wid, key, _fire_at in due:
            if wid in epoch.runs or epoch.residency.absent_here(wid):
                continue  # live, or this engine's out of memory: its context fires it
            if epoch.bounds.paused_in_store(wid):
                continue  # fired at the unpause (runtime/bounds.py), by its context
            # Asked again: the read above let other greenlets run, and one may
            # have begun driving the run (recovery); fired through the store
            # under it, the run's next record found the history moved and
            # the run was dropped (found by tests/test_state_machine.py).
            if wid in epoch.runs or epoch.residency.absent_here(wid):
                continue
            epoch.writer.call(epoch.store.fire_timer, wid, key, time.time())
