"""Residency: a cap on the runs an engine holds in memory.

With ``Engine(max_resident=N)`` (over a SQLite driver; where runs are
leased it caps the runs an engine *holds* instead) at most N runs have a
greenlet and a context here.
A run parked on a long wait (a timer, a message, a child's end, a cancel)
with nothing in flight is *evicted* when room is needed: its greenlet ends
(like a run killed at shutdown, nothing is recorded) and only its id is
kept. When its wake is recorded (the timer fires, a message or cancel is
recorded through the store, a watched child ends) or a query asks it, it
queues for a place and is replayed from its history, which is the same
thing recovery after a crash does. Runs that would pass the cap (started,
recovered, woken) wait in a FIFO admission queue; a run that ends or is
evicted lets the next one in. Runs back from eviction also wait there
while ``WAKE_AHEAD`` others read their histories and replay (they read
together: ``runtime/batched_reads.py``).

Eviction happens on the hub greenlet: the victim's doorbell is rung with
its failure set to :class:`RunEvicted`, so it unwinds at once, inside that
callback, before any other arrival can be routed to its recorder.

Evictions go at most ``_TURN`` per turn of the hub's loop (the rest after
its due timers and I/O): each unwinds a greenlet on the hub, and thousands
in one go held every other run's timers back for a tenth of a second.

Thread contract: everything here runs on the engine's hub thread;
``_make_room``, ``_sweep`` and ``_evict_far`` only from the hub greenlet
(queued with ``call_soon``, or by :meth:`Residency._next_turn`'s loop timer).
"""
from __future__ import annotations

import collections
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Optional, cast

import gevent

from aion_green.core import events as ev
from aion_green.core.clock import monotonic as _monotonic
from aion_green.runtime.recorder import Recorder
from aion_green.store import RunInfo
from aion_green.workflows.context import WorkflowContext

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.residency")


class RunEvicted(BaseException):
    """Unwinds a parked run that leaves memory; nothing is recorded. Never
    seen by user code's ``except Exception``."""


class Residency:
    """The cap on runs held in memory: a part of the epoch (hub thread)."""

    resident_peak: int  # the most runs held at once (for tests and benchmarks)

    def __init__(self, engine: "Engine", epoch: "Epoch", on: bool) -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        # Over SQLite a cap evicts parked runs; leased stores cap what an
        # engine claims instead (runtime/leases.py), and evict idle runs
        # only (``evict_after``): an evicted run keeps its lease, renewed
        # with the others, and comes back when what it waits for arrives.
        self.on = on
        self.cap: Optional[int] = None if epoch.leased else engine.max_resident
        # Runs evicted from memory, parked; woken by what they wait for. Kept:
        # what driving it again needs besides its history (run id, type,
        # arguments as JSON text, creation time, fence, parent), as one tuple
        # of atomic values: the cyclic GC stops tracking it, so 200,000
        # evicted runs add nothing to each full collection (the arguments as
        # a list kept two tracked objects per run: most of what a full
        # collection walked while evicted runs woke).
        self._evicted: dict[str, tuple[Any, ...]] = {}
        # Runs waiting for a place: id -> (info, recovering, recorder).
        self.admission: "collections.OrderedDict[str, tuple[Any, bool, Any]]" = (
            collections.OrderedDict())
        # Candidates for eviction, longest parked first: id -> when it parked
        # (monotonic clock).
        self._parked_runs: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        # Eviction without a cap (Engine(evict_after=...)): a greenlet sweeps
        # the parked runs while there are any.
        self.idle: Optional[float] = engine.evict_after
        # (parked at, id): parked on far timers only, to evict at once; and
        # the others, in the order they parked, to evict once parked ``idle``.
        self._far: "collections.deque[tuple[float, str]]" = collections.deque()
        self._far_asked = False
        self._idle_queue: "collections.deque[tuple[float, str]]" = collections.deque()
        # Evicted runs brought back: id -> when (monotonic), until they park.
        self._woken: dict[str, float] = {}
        # Runs back from eviction that have been driven again and have not
        # parked or ended yet (reading their history, replaying): at most
        # WAKE_AHEAD at a time; the others wait in the admission queue, as
        # a tuple of atomic values, not as a greenlet with a context.
        self._replaying: set[str] = set()
        self._pruned_at = 0.0
        self._sweeping = False
        self._sweep_next_turn = False  # a sweep goes on in the loop's next turn
        # Runs brought back to take a record (a child's end) through their
        # recorder: kept in memory until it is taken.
        self._pinned: "collections.Counter[str]" = collections.Counter()
        # Runs whose greenlet is unwinding for eviction, and those of them a
        # wake came for meanwhile (woken once their greenlet is gone).
        self._evicting: set[str] = set()
        self._wake_pending: set[str] = set()
        # Leased stores: evicted runs whose lease the heartbeat has yet to
        # park (runtime/leases.py), and runs woken from eviction whose lease
        # is checked before their history is read (another engine may have
        # taken it while they were out: their owner's entry ran out).
        self._unparked: set[str] = set()
        self._check_lease: set[str] = set()
        self._room_asked = False
        # Figures for tests and benchmarks: runs evicted, most resident at once.
        self.evictions = 0
        self.resident_peak = 0

    # -- the cap ---------------------------------------------------------------------------
    def full(self) -> bool:
        cap = self.cap
        return self.on and cap is not None and len(self.epoch.runs) >= cap

    def queue_run(self, wid: str, info: Any, recovering: bool, recorder: Any) -> None:
        """A run that would pass the cap waits for a place."""
        self.admission[wid] = (info, recovering, recorder)
        self._ask_room()

    def _ask_room(self) -> None:
        if not self._room_asked:
            self._room_asked = True
            self.epoch.hub.call_soon(self._make_room)

    def _make_room(self) -> None:
        """Hub greenlet: evict parked runs (longest parked first) until the
        queued runs fit, then let them in."""
        self._room_asked = False
        cap = self.cap
        assert cap is not None
        want = len(self.admission) - (cap - len(self.epoch.runs))
        parked = self._parked_runs
        turn = _TURN
        while want > 0 and parked and turn:
            wid, _ = parked.popitem(last=False)
            ctx = self.epoch.runs.get(wid)
            if ctx is not None and wid not in self._pinned and _evictable(ctx) and self._evict(ctx):
                want -= 1
                turn -= 1
        self._admit_next()
        if want > 0 and parked and not turn:  # more next turn, after the loop's timers and I/O
            self._room_asked = True
            self._next_turn(self._make_room)

    def _evict(self, ctx: WorkflowContext) -> bool:
        """Hub greenlet: the run leaves memory (True), unless an arrival from
        another thread reached its recorder since it was found evictable.

        Its recorder leaves the routing table here, under the routing lock
        and while nothing is in flight: an arrival after that goes through
        the store and wakes the run (routing.route). Left in the table until
        the greenlet unwound, it took an arrival from another thread (a
        cancel sent just after the start) whose record was committed and
        then delivered to no one: the run slept on, evicted, with a cancel
        recorded (tests/test_state_machine.py found it)."""
        wid = ctx._key
        recorder = cast(Recorder, ctx._recorder)
        epoch = self.epoch
        with epoch.routing_lock:
            with recorder._lock:
                if not _evictable(ctx):
                    return False
                recorder.closed = True  # (an arrival that holds it already goes around)
            if epoch.recorders.get(wid) is recorder:
                del epoch.recorders[wid]
            self._evicting.add(wid)
        if ctx._timers:
            # Back in memory a moment before its first timer fires.
            lead = PREWAKE if self.idle is None else min(PREWAKE, self.idle / 2)
            self.epoch.timers.prewake(min(ctx._timers.values()) - lead, ctx._key)
        ctx._failure = RunEvicted()
        ctx._ring()  # the run unwinds now, on this greenlet's switch
        self.evictions += 1
        return True

    def _admit_next(self) -> None:
        """Let queued runs in while there is room: under ``max_resident``;
        without it, evicted runs woken come back at most ``WAKE_CAP`` at a
        time (200,000 timers due at once would otherwise replay all at once)."""
        cap = self.cap
        if cap is None and self.idle is not None:
            cap = WAKE_CAP
        queue = self.admission
        replaying = self._replaying
        while queue and (cap is None or len(self.epoch.runs) < cap) and not self.epoch.hub.closing:
            wid, (info, recovering, recorder) = next(iter(queue.items()))
            if recorder is _WOKEN:
                if len(replaying) >= WAKE_AHEAD and not self._prune_replaying():
                    return  # (on_park and on_run_gone let the next one in)
                replaying.add(wid)
                run_id, wtype, args, created_at, fence, parent_id = info
                # Its history is read when it is driven: head_seq > 1 says so.
                info = RunInfo(wid, run_id, wtype, ev.RUNNING, _from_text(args), None, None, 2,
                               created_at, created_at, fence, parent_id=parent_id)
                recorder = None
            del queue[wid]
            self.epoch.runner.spawn_run(wid, info, recovering, recorder)

    def _prune_replaying(self) -> bool:
        """The woken runs counted as replaying that are no longer here (a
        spawn that found the run driven already, or an epoch's end), at
        most once a second: True if any place came free."""
        now = _monotonic()
        if now - self._pruned_at < 1.0:
            return False
        self._pruned_at = now
        runs = self.epoch.runs
        gone = [wid for wid in self._replaying if wid not in runs]
        self._replaying.difference_update(gone)
        return bool(gone)

    def _replayed(self, wid: str) -> None:
        """A run back from eviction parked or ended: the next may come in."""
        replaying = self._replaying
        if wid in replaying:
            replaying.discard(wid)
            if self.admission and len(replaying) == WAKE_AHEAD - 1:
                self.epoch.hub.call_soon(self._admit_next)

    # -- parking and waking ------------------------------------------------------------------
    def on_park(self, ctx: WorkflowContext, stepping: bool = False) -> None:
        """The run's greenlet: it parks (a candidate for eviction);
        ``stepping``: on the record of a step attempt it just started."""
        wid = ctx._key
        parked_at = _monotonic()
        self._parked_runs[wid] = parked_at
        if self._replaying:
            self._replayed(wid)
        if self.admission and self.cap is not None:
            self._ask_room()
        idle = self.idle
        if idle is None:
            return
        if stepping and ctx._busy:
            # Parked on the record of a step attempt it started: that record
            # wakes it (Runner.deliver), and it parks anew, queued then. Not
            # a candidate meanwhile (_evictable), so not queued: a tuple and
            # a sweep less per step.
            return
        timers = ctx._timers
        woken = self._woken.get(wid)
        if woken is not None:
            if parked_at - woken < idle:
                # Brought back a moment ago (a query, a message): it stays at
                # least ``idle`` seconds, or a query waiting for it could
                # starve. (A replay may park on its way through the history
                # before it parks on its wait: each park keeps it.)
                self._queue_idle(parked_at, wid)
                return
            del self._woken[wid]
        if timers and min(timers.values()) > time.time() + idle:
            # Nothing it waits on is due within the horizon: out at once
            # (from the hub greenlet, once this greenlet has parked).
            self._far.append((parked_at, wid))
            if not self._far_asked:
                self._far_asked = True
                self.epoch.hub.call_soon(self._evict_far)
            return
        self._queue_idle(parked_at, wid)

    def _queue_idle(self, parked_at: float, wid: str) -> None:
        self._idle_queue.append((parked_at, wid))
        if not self._sweeping:
            self._sweeping = True
            self.epoch.hub.spawn(self._sweeper, name="aion-residency-sweep")

    # -- eviction without a cap (Engine(evict_after=...)) --------------------------------------
    def _still_parked(self, parked_at: float, wid: str) -> Optional[WorkflowContext]:
        """The run, if it is parked still, since ``parked_at`` (not woken and
        parked again since), evictable and not pinned; else None."""
        if self._parked_runs.get(wid) != parked_at or wid in self._pinned:
            return None
        ctx = self.epoch.runs.get(wid)
        return ctx if ctx is not None and _evictable(ctx) else None

    def _evict_far(self) -> None:
        """Hub greenlet: evict the runs that parked on timers all beyond the
        horizon (a batch at a time, so the hub stays responsive)."""
        far, horizon = self._far, time.time() + (self.idle or 0.0)
        for _ in range(min(len(far), _TURN)):
            parked_at, wid = far.popleft()
            ctx = self._still_parked(parked_at, wid)
            if ctx is not None and all(f > horizon for f in ctx._timers.values()):
                if self._evict(ctx):
                    self._parked_runs.pop(wid, None)
            elif ctx is None and self._parked_runs.get(wid) == parked_at:
                # Parked still, but not evictable yet (a record of its on its
                # way, a query pinning it): the sweeper looks again.
                self._queue_idle(parked_at, wid)
        if far:
            self._next_turn(self._evict_far)
        else:
            self._far_asked = False

    def _sweeper(self) -> None:
        """A greenlet of the hub while runs wait without a far timer: every
        half of ``idle`` (at most a second), has the hub greenlet evict those
        parked ``idle`` seconds with nothing due soon (a run's doorbell rings
        from the hub greenlet only)."""
        try:
            while self._idle_queue and not self.epoch.hub.closing:
                gevent.sleep(min(1.0, (self.idle or 1.0) / 2))
                if not self._sweep_next_turn:  # (else a sweep goes on already)
                    self.epoch.hub.call_soon(self._sweep)
        finally:
            self._sweeping = False

    def _sweep(self) -> None:
        """Hub greenlet: the runs parked longest first, while they have been
        parked ``idle`` seconds: evicted, or, with a timer due soon, looked
        at again ``idle`` seconds later."""
        self._sweep_next_turn = False
        idle = self.idle
        assert idle is not None
        now_m = _monotonic()
        horizon = time.time() + idle
        queue = self._idle_queue
        turn = _TURN
        for _ in range(min(len(queue), _TURN * 20)):
            parked_at, wid = queue[0]
            if now_m - parked_at < idle:
                return
            queue.popleft()
            ctx = self._still_parked(parked_at, wid)
            if ctx is None:
                continue
            if ctx._timers and min(ctx._timers.values()) <= horizon:
                queue.append((parked_at + idle, wid))  # it wakes soon: later
                self._parked_runs[wid] = parked_at + idle
                continue
            if self._evict(ctx):
                self._parked_runs.pop(wid, None)
                turn -= 1
                if not turn:
                    break
        if queue and now_m - queue[0][0] >= idle:
            self._sweep_next_turn = True
            self._next_turn(self._sweep)  # the rest after the loop's timers and I/O

    def _next_turn(self, fn: Any) -> None:
        """Run ``fn`` on the hub greenlet once the loop has turned (its due
        timers and I/O first): evictions go _TURN at a time. (A command
        queued from here would run in the same turn.)"""
        timer = self.epoch.hub._hub.loop.timer(_TURN_PAUSE, ref=False)
        timer.start(self._turned, timer, fn)

    def _turned(self, timer: Any, fn: Any) -> None:
        timer.close()
        if not self.epoch.hub.closing:
            fn()

    def on_unpark(self, ctx: WorkflowContext) -> None:
        self._parked_runs.pop(ctx._key, None)

    def on_evicted(self, info: RunInfo, fence: Optional[int]) -> None:
        """``_drive``: the run's greenlet unwound for eviction; ``fence``
        is its recorder's (the lease it holds now)."""
        self._evicted[info.workflow_id] = (info.run_id, info.workflow_type, _as_text(info.args),
                                           info.created_at, fence, info.parent_id)
        if self.epoch.leased:
            self._unparked.add(info.workflow_id)

    def on_run_gone(self, wid: str) -> None:
        """``_drive``: a run's greenlet ended or was evicted (its place is free)."""
        self._woken.pop(wid, None)  # a wake sets it anew
        self._evicting.discard(wid)
        if self._replaying:
            self._replayed(wid)
        # (Consumed by _drive; left by a run not driven, its type not
        # registered here.)
        self._check_lease.discard(wid)
        if wid in self._wake_pending:
            self._wake_pending.discard(wid)
            self.wake(wid)
        if self.admission:
            self.epoch.hub.call_soon(self._admit_next)

    def wake(self, wid: str) -> None:
        """Hub thread: something an evicted run waits for was recorded (or
        a query asks it): bring it back."""
        if wid in self._evicting:  # (its greenlet is still unwinding)
            self._wake_pending.add(wid)
            return
        kept = self._evicted.pop(wid, None)
        if kept is not None:
            # (Not parked yet: parked while it waits for a place. Driven, it
            # reads its lease with its history: Leases.read_if_held.)
            if self.epoch.leased:
                self._check_lease.add(wid)
            if self.idle is not None:
                self._woken[wid] = _monotonic()
            # (As it was kept; made a RunInfo once it is let in.)
            self.admission[wid] = (kept, True, _WOKEN)
            self._admit_next()
            if wid in self.admission and self.cap is not None:
                self._ask_room()

    def take_unparked(self) -> list[str]:
        """Hub thread (the heartbeat): the runs out of memory (evicted, or
        woken and waiting for a place) whose lease is not parked yet; from
        now on they count as parked."""
        ids, self._unparked = [wid for wid in self._unparked if self.absent_here(wid)], set()
        return ids

    def park_failed(self, ids: list[str]) -> None:
        """Hub thread: parking these leases failed: the next heartbeat tries again."""
        self._unparked.update(wid for wid in ids if self.absent_here(wid))

    def lease_to_check(self, wid: str) -> bool:
        """``_drive``: the run comes back from eviction on a leased store:
        check that its lease is still this engine's before its history is
        read (True once per wake)."""
        if wid in self._check_lease:
            self._check_lease.discard(wid)
            return True
        return False

    def forget(self, wid: str) -> None:
        """Hub thread: an evicted run is no longer this engine's (its lease
        was taken, or claimed here anew under another fence)."""
        self._evicted.pop(wid, None)
        if wid in self.admission:
            del self.admission[wid]
        self._woken.pop(wid, None)
        self._replaying.discard(wid)
        self._unparked.discard(wid)
        self._check_lease.discard(wid)

    def out_of_memory(self) -> int:
        """Runs of this engine out of memory: evicted, or queued for a place
        (any thread: two sizes read)."""
        return len(self._evicted) + len(self.admission)

    def absent_here(self, wid: str) -> bool:
        """The run is this engine's, but out of memory (evicted or queued)."""
        return wid in self._evicted or wid in self.admission

    def until_resident(self, wid: str, run_id: str) -> Optional[WorkflowContext]:
        """A greenlet (a child watcher): wake run ``wid`` and wait until it
        is live here; None if it is not this engine's (any more). The run
        stays in memory until :meth:`_unpin` (its record is then taken)."""
        delay = 0.002
        self._pinned[wid] += 1
        while True:
            ctx = self.epoch.runs.get(wid)
            if ctx is not None:
                return ctx if ctx.run_id == run_id else None
            if (ctx is None and not self.absent_here(wid)) or self.epoch.hub.closing:
                self.unpin(wid)
                return None
            self.wake(wid)
            gevent.sleep(delay)
            delay = min(delay * 2, 0.05)

    def pinned(self) -> bool:
        """Hub thread: a record is on its way to a run brought back for it."""
        return bool(self._pinned)

    def unpin(self, wid: str) -> None:
        if self._pinned.get(wid, 0) > 1:
            self._pinned[wid] -= 1
        else:
            self._pinned.pop(wid, None)


def _as_text(args: Any) -> Any:
    """A run's arguments (JSON values, as the store gave them), kept while
    it is out of memory: as JSON text, an object the cyclic GC ignores."""
    try:
        return json.dumps(args)
    except (TypeError, ValueError):  # pragma: no cover - never a store's value
        return args


def _from_text(args: Any) -> Any:
    return json.loads(args) if type(args) is str else args


# How long before its first timer fires an evicted run is brought back (at
# most half of evict_after, so it is not evicted again meanwhile): replayed,
# it waits in memory for the timer, which then fires on time.
PREWAKE = 1.0
# The most runs evicted in one turn of the hub's loop, and the pause before
# the next turn's. Each eviction unwinds the run's greenlet on the hub
# (~30 us): 4,000 in one go (a sweep while runs parked at 4,000/s) held
# the hub 100-140 ms, and every timer of every other run fired that late.
_TURN = 256
_TURN_PAUSE = 0.0005
# Without max_resident: the most runs in memory before evicted runs that
# wake wait their turn (they run as others end or leave memory).
WAKE_CAP = 10_000
# The most runs back from eviction reading their history and replaying at
# once; the others wait their turn. Each run woken early is kept longer in
# memory for nothing: with 10,000 replaying at once (timers due at 3,000 a
# second, faster than the engine replays) their objects lived through
# collections, and the cyclic GC's full collections took 56 % of the time.
WAKE_AHEAD = 500
# An admission entry of a run back from eviction (its kept tuple, not a
# RunInfo yet).
_WOKEN = object()


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
