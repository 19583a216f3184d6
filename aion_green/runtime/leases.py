"""Many engines over one PostgreSQL database: each run is owned by one
engine at a time, under a lease.

A run's row holds its ``owner`` (an engine's id), ``lease_until`` and a
``fence``: a number drawn from a sequence each time a lease is granted.
Every engine with workflows registered

- owns the runs it starts (up to ``max_resident`` runs at once; past that a
  new run is left for any engine to claim);
- claims runnable runs (no owner, or a lease that ran out) of the types it
  knows, with ``FOR UPDATE SKIP LOCKED``, so engines never claim the same
  run, up to its resident cap and its fair share (``Leases._fair_limit``:
  the engines at work share a burst of new runs evenly), and drives each
  by replay;
- renews the leases of the runs it drives every third of the lease, and
  drops at once a run whose lease another engine took;
- drains the inbox requests (signals, cancels) for the runs it owns.

Every append names the fence its lease was granted under, and the store
checks it in the same transaction: an engine that was paused or cut off
past its lease, and comes back, has its next append refused with
:class:`~aion_green.errors.FencedOut` and drops the run; the history holds
nothing of it written after the takeover. When an engine dies, its leases
run out and the others resume its runs by replay.

Thread contract: every method here runs on the engine's hub thread, as
greenlets (``_claim``, ``_heartbeat``) or from them.
"""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Optional, cast

import gevent
import gevent.event
from gevent import monkey

from aion_green.core import clock as _clock
from aion_green.core.errors import AionError, FencedOut
from aion_green.core.registry import parameters_of
from aion_green.runtime.batched_reads import BatchedReads
from aion_green.runtime.recorder import Recorder
from aion_green.store import PARKED_LEASE

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.leases")

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_CLAIM_BUSY = 0.02
_CLAIM_IDLE = 0.5
# The same without doorbells (SQLite): a look is a read of a local file,
# and an engine that naps half a second when a burst of runs comes may wake
# to find the others took them all (tests/test_postgres_engines.py).
_CLAIM_IDLE_POLLING = 0.1
# The most runs one claim takes (with room for them under max_resident).
_CLAIM_MOST = 500
# Where the counts of a fair share stop (claim_counts): past it, runs are
# plentiful and every engine may fill its room.
_COUNT_CAP = 10_000
# How long runs left over while this engine holds its fair share wait for
# the engines below theirs, before any engine with room takes them.
_SURPLUS_GRACE = 1.0
# The most runs back from eviction whose leases and histories are read in
# one statement.
_READ_MOST = 200


class Leases:
    """Leases on a shared PostgreSQL store: a part of the epoch (see the module docstring)."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        # Doorbells of the store's notifications (LISTEN/NOTIFY), by kind,
        # once this engine listens; empty while it polls.
        self.bells: dict[str, Any] = {}
        self.listening = False
        # Until when this engine's own entry among the engines (its types,
        # published with every heartbeat) holds: its lease as an engine,
        # 0 before the first publish. Written by the hub, read anywhere
        # (the readiness check, the metrics).
        self.lease_until = 0.0
        # Since when (monotonic) runs stayed claimable while this engine
        # held its fair share; None while it has none to wait out (hub).
        self._surplus_since: Optional[float] = None
        # Runs back from eviction waiting for their leases and histories
        # (hub: read_if_held).
        self._reads = BatchedReads(epoch.hub, epoch.writer, self._read_held_now, _READ_MOST,
                                   "aion-woken-reads")

    def begin_leasing(self) -> None:
        hub = self.epoch.hub
        self._publish_types()
        self.epoch.timers.store_sweep = False  # owners fire their runs' timers
        if hasattr(self.epoch.store, "listen"):  # (SQLite has no doorbells: the loops poll)
            self._start_listening()
        hub.spawn(self.epoch.timers.run, name="aion-timers")
        hub.spawn(self._claim, name="aion-claim")
        hub.spawn(self._heartbeat, name="aion-heartbeat")
        hub.spawn(self.epoch.sharing.drain, self.engine.engine_id, name="aion-inbox")
        hub.spawn(self.epoch.sharing.poll, name="aion-remote-results")

    def _start_listening(self) -> None:
        """Doorbells from the other engines: a native thread LISTENs on the
        store's channel and rings this hub's bells (the loops poll anyway)."""
        self.bells = {kind: gevent.event.Event() for kind in ("runs", "inbox", "ends")}
        self.listening = True
        hub, bells, store = self.epoch.hub, self.bells, self.epoch.store

        def rang(kind: str) -> None:  # hub callback context
            bell = bells.get(kind)
            if bell is not None:
                bell.set()

        def on_bell(kind: str) -> None:  # the listener's thread
            try:
                hub.call_soon(rang, kind)
            except Exception:  # noqa: BLE001 - the engine is closing; nothing to ring
                pass

        _start_new_thread(store.listen, (on_bell, lambda: not self.listening))

    def _room(self) -> int:
        cap = self.engine.max_resident
        if cap is None:
            return _CLAIM_MOST
        held = len(self.epoch.runs) + self.epoch.residency.out_of_memory()  # (evicted: still held)
        return max(0, min(_CLAIM_MOST, cap - held))

    def _fair_limit(self, room: int, types: list[str]) -> int:
        """How many runs to claim now: this engine's fair share of the runs
        of its types, or what is left over once the others had their turn.

        Without it the first engine to wake on a burst of new runs took up
        to ``_CLAIM_MOST`` of them at once, and of 1,000 runs four engines
        drove 50, 40, 10 and 0 % (issue 21, bench/postgres.py). Now an
        engine claims at most its deficit: the ceiling of the runs held and
        claimable over the engines at work that run these types, less what
        it holds. Runs still claimable while it is at its share wait
        ``_SURPLUS_GRACE`` for the engines below theirs (they hear the same
        doorbell); past that, whoever has room takes them: an engine at its
        cap, gone without a word (its entry holds for a lease) or polling
        late never leaves runs unclaimed for longer."""
        try:
            counts: tuple[int, int, int, int] = self.epoch.reader.call(
                self.epoch.reader.store.claim_counts, self.engine.engine_id, types,
                time.time(), _COUNT_CAP).result()
            claimable, peers, held, mine = counts
        except AionError as exc:
            log.warning("counting the runs to claim failed (%s); claiming as many as fit", exc)
            return room
        if claimable == 0:
            self._surplus_since = None
            return 0
        engines = peers + 1
        if claimable >= engines * room:
            return room  # enough for every engine to fill its room
        deficit = -(-(held + claimable) // engines) - mine
        if deficit > 0:
            self._surplus_since = None
            return min(room, deficit)
        now = _clock.monotonic()
        if self._surplus_since is None:
            self._surplus_since = now
        return room if now - self._surplus_since >= _SURPLUS_GRACE else 0

    def _claim(self) -> None:
        """Claim and drive runnable runs of the types registered here."""
        pause = _CLAIM_BUSY
        while True:
            room = self._room()
            claimed = []
            types = sorted(self.engine._registry.names())
            limit = self._fair_limit(room, types) if room else 0
            if limit:
                try:
                    claimed = self.epoch.writer.call(self._claim_now, types, limit).result()
                except AionError as exc:
                    log.warning("claiming runs failed (%s); retrying", exc)
            for info in claimed:
                if self.epoch.residency.absent_here(info.workflow_id):
                    # Evicted here under a lease that ran out (a paused
                    # process) and claimed back: driven anew, under the new
                    # fence, from its history.
                    self.epoch.residency.forget(info.workflow_id)
                if info.workflow_id in self.epoch.runs:
                    # Still driven here under an older lease that ran out
                    # (a paused process, a clock that jumped) and came back
                    # to us: go on under the new fence. Had another engine
                    # written meanwhile, the next append's expected seq is
                    # stale: SequenceConflict drops the run, which is then
                    # driven anew from its history.
                    # (A run unwinding for eviction has left the routing
                    # table but not its context: it keeps the new fence.)
                    ctx = self.epoch.runs.get(info.workflow_id)
                    recorder = (cast(Recorder, ctx._recorder) if ctx is not None
                                else self.epoch.recorders.get(info.workflow_id))
                    if recorder is not None:
                        recorder.fence = info.fence or None
                    continue
                self.epoch.runner.spawn_run(info.workflow_id, info, recovering=True)
            idle = _CLAIM_IDLE if self.listening else _CLAIM_IDLE_POLLING
            pause = _CLAIM_BUSY if claimed else min(pause * 2, idle)
            if self._surplus_since is not None:
                pause = min(pause, _SURPLUS_GRACE / 4)  # to be back when the grace is over
            self.epoch.sharing.nap("runs", pause)

    def _claim_now(self, types: list[str], limit: int) -> list[Any]:
        """The writer's thread: claim, with leases that run from now (not
        from when the claim was queued behind other work).

        A run still driven here and claimed back (its lease ran out: a
        pause, a clock that jumped) appends under the new fence from now
        on, before the hub hears of the claim: a record submitted in
        between (a signal, from the sender's thread) went out under the old
        fence, was refused, and the run was dropped (CI, sqlite-leases).
        ``_claim`` sets it again on the hub, and on a context that left
        the routing table."""
        now = time.time()
        claimed = list(self.epoch.store.claim_runs(self.engine.engine_id, types,
                                                   now + self.engine.lease, now, limit))
        recorders = self.epoch.recorders
        for info in claimed:
            recorder = recorders.get(info.workflow_id)
            if recorder is not None:
                recorder.fence = info.fence or None
        return claimed

    def _renew_now(self, mine: list[str], to_park: list[str],
                   types_json: str) -> tuple[list[str], list[str], float]:
        """The writer's thread (an urgent call), a heartbeat: renew the
        leases of ``mine`` from now, park those of ``to_park`` (evicted
        since the last tick) and renew this engine's entry, which holds the
        parked ones; the ids of each still held, and the entry's end."""
        store, owner = self.epoch.store, self.engine.engine_id
        now = time.time()
        kept = list(store.renew_leases(owner, mine, now + self.engine.lease)) if mine else []
        parked = list(store.renew_leases(owner, to_park, PARKED_LEASE)) if to_park else []
        store.publish_engine(owner, types_json, now + self.engine.lease, now)
        return kept, parked, now + self.engine.lease

    def read_if_held(self, wid: str) -> Optional[list[Any]]:
        """A hub greenlet (``_drive``): a run back from eviction: its
        history, if its lease (parked while it was out) is still this
        engine's; else None. Runs woken together are read together
        (``runtime/batched_reads.py``: one statement for up to
        ``_READ_MOST`` runs, ``_read_held_now``)."""
        return self._reads.read(wid)

    def _read_held_now(self, ids: list[str]) -> dict[str, list[Any]]:
        """The writer's thread: the histories of the runs among ``ids``
        whose leases are this engine's.

        A lease that holds is only read, not renewed: the run counts among
        those driven here from now on (``runs.claim``), so the next
        heartbeat renews it with the runs in memory, and this engine's entry
        holds a parked lease until then. (A renewal per wake was a commit of
        its own: 71 % of the writer's time with timers due at 1,000/s on
        PostgreSQL.) A lease that ran out while still this engine's (a pause
        past the entry's end, not claimed by another yet) is taken back by a
        renewal, as before; the fence guards the writes either way."""
        store, me = self.epoch.store, self.engine.engine_id
        found = store.read_leased(me, ids)
        now = time.time()
        lapsed = [wid for wid, (until, _) in found.items() if until <= now]
        if lapsed:
            kept = set(store.renew_leases(me, lapsed, now + self.engine.lease))
            for wid in lapsed:
                if wid not in kept:  # (claimed by another engine meanwhile)
                    del found[wid]
        return {wid: history for wid, (_, history) in found.items()}

    def _heartbeat(self) -> None:
        """Renew this engine's leases (its entry among the engines, which
        holds its parked ones, too); drop the runs whose lease was taken."""
        figures = self.engine.metrics.leases
        # Invariant: no run held here has a lease that ends before this
        # (a lower bound, to within a claim's round trip): every lease was
        # granted or last renewed at or after the tick that set it, and the
        # engine's entry too. A renewal that commits past it missed: for a
        # while another engine could have claimed the runs.
        covered = time.time() + self.engine.lease
        # Ticks keep their period whatever a renewal took (a sleep after
        # each renewal would add its time to the next interval).
        due = _clock.monotonic()
        while True:
            due += self.engine.lease / 3
            gevent.sleep(max(0.0, due - _clock.monotonic()))
            due = max(due, _clock.monotonic() - self.engine.lease / 3)  # (after a stall: no rush of ticks)
            tick = time.time()
            # Runs still starting (their history being read) hold leases
            # too: left out, they ran out while the reads queued.
            residency = self.epoch.residency
            mine = self.epoch.runs.ids()
            # Evicted runs, and those woken and waiting for a place (a wave
            # of timers due may queue 100,000): their leases are parked
            # once, then held by this engine's entry, not renewed one by one.
            to_park = residency.take_unparked()
            try:
                kept_ids, parked, self.lease_until = self.epoch.writer.call_urgent(
                    self._renew_now, mine, to_park, self._types_json()).result()
            except AionError as exc:
                residency.park_failed(to_park)
                figures.failed()
                log.warning("renewing leases failed (%s); retrying", exc)
                continue
            figures.renewed(covered - time.time())
            covered = tick + self.engine.lease
            kept = set(kept_ids)
            kept.update(parked)
            for wid in (*mine, *to_park):
                if wid in kept:
                    continue
                ctx = self.epoch.runs.get(wid)
                if ctx is None and residency.absent_here(wid):
                    log.warning("run %r (out of memory here): its lease was taken by another "
                                "engine; forgotten here", wid)
                    residency.forget(wid)
                elif ctx is not None:
                    log.warning("run %r: its lease was taken by another engine; dropped here", wid)
                    self.epoch.hub.call_soon(ctx._on_failed, FencedOut(
                        f"the lease of {wid!r} was taken by another engine"))

    def _types_json(self) -> str:
        """This engine's workflow types (type -> parameters), as published."""
        registry = self.engine._registry
        return json.dumps({name: parameters_of(registry.get(name))
                           for name in sorted(registry.names())})

    def _publish_types(self) -> None:
        """Hub thread, as leasing begins: tell the other engines and the
        clients which types this engine runs, for one lease (renewed by
        each heartbeat)."""
        now = time.time()
        try:
            self.epoch.writer.call_urgent(self.epoch.store.publish_engine, self.engine.engine_id,
                                          self._types_json(), now + self.engine.lease, now).result()
            self.lease_until = now + self.engine.lease
        except AionError as exc:
            log.warning("publishing this engine's workflow types failed (%s); retrying", exc)

    def stop_listening(self) -> None:
        self.listening = False

    def release_leases(self) -> None:
        """Caller's thread, at shutdown, once no run is driven here any more:
        give every lease back (also one just claimed and not yet driven)."""
        try:
            self.epoch.writer.call(self.epoch.store.release_leases, self.engine.engine_id).result(10)
            self.epoch.writer.call(self.epoch.store.forget_engine, self.engine.engine_id).result(10)
        except Exception as exc:  # their leases run out instead
            log.warning("leases not released at shutdown (%s); they run out in %.0f s",
                        exc, self.engine.lease)
