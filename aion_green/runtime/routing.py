"""The entrances of runs from any thread: creating a run, and routing an
arrival (a message, a cancel request) to its history, through the run's
recorder when it lives here, else through the store (or, where runs are
leased, the inbox their owner drains).

Thread contract: every method here may be called from any thread but the
hub's callbacks (they take the engine's routing lock for a few statements,
and ``_create_run`` waits for the store); a part of
:class:`~aion_green.runtime.engine.Engine`.
"""
from __future__ import annotations

import builtins
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import EngineClosed, StoreUnavailable, WorkflowNotRunning
from aion_green.hub_thread import Future
from aion_green.runtime.recorder import Recorder
from aion_green.runtime.writer import future_done
from aion_green.store import CreateRun, RunInfo

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch


class _Reroute(Exception):
    """A message buffered in a recorder that was dropped before its history
    was loaded: route it again (now through the store, or a new recorder)."""


class Routing:
    """Creating runs and routing arrivals: a part of the epoch."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts

    def route_message(self, wid: str, name: str, payload: Any, at: float, dedup: Optional[str],
                       done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Any thread: record a message to ``wid``; ``done(seq, error)``."""
        earlier: list[int] = []  # the seq of an equal delivery recorded before

        def build(rec: Recorder) -> builtins.list[ev.NewEvent]:
            if dedup is not None and dedup in rec.seen:
                if dedup in rec.dedup_seqs:
                    earlier.append(rec.dedup_seqs[dedup])
                return []
            index = rec.counts.get(name, 0)
            rec.counts[name] = index + 1
            data: dict[str, Any] = {"name": name, "index": index, "payload": payload}
            if dedup is not None:
                rec.note_seen(dedup)
                data["dedup"] = dedup
            return [ev.NewEvent(ev.MESSAGE_RECEIVED, at, data)]

        def answered(seq: Any, error: Optional[BaseException]) -> None:
            done(earlier[0] if earlier and error is None else seq, error)

        payload_json = ev.encode(payload, "a message payload")
        store = self.epoch.store
        request: dict[str, Any] = {"name": name, "payload": payload}
        if dedup is not None:
            request["dedup"] = dedup
        self.route(wid, build, lambda: store.deliver_message(wid, name, payload_json, at, dedup),
                    f"a message {name!r} to it would never be read", answered,
                    ("message", request))

    def route(self, wid: str, build: Callable[[Recorder], builtins.list[ev.NewEvent]],
               via_store: Callable[[], Any], why_not: str,
               done: Callable[[Any, Optional[BaseException]], None],
               via_inbox: Optional[tuple[str, dict[str, Any]]] = None) -> None:
        """Any thread: record an arrival for ``wid`` through its recorder if
        it lives here, else through the store; ``done(seq, error)``."""
        def recorded(events: Any, head: Optional[int], error: Optional[BaseException]) -> None:
            if isinstance(error, _Reroute):  # its run's recorder was dropped before init
                self.route(wid, build, via_store, why_not, done, via_inbox)
            else:
                done(head, error)

        unavailable = self.epoch.writer.unavailable
        if unavailable is not None:
            # Records wait out a full disk in the writer; an arrival queued
            # behind them would keep its sender waiting with no limit
            # (issue 16). Nothing was submitted: nothing will be recorded.
            done(None, unavailable)
            return
        with self.epoch.routing_lock:
            recorder = self.epoch.recorders.get(wid)
            if recorder is not None:
                try:
                    recorder.submit(build, recorded)
                except EngineClosed:
                    done(None, WorkflowNotRunning(
                        f"workflow {wid!r} has finished; {why_not}, so nothing was recorded"))
                return
            if self.epoch.leased and self.epoch.residency.absent_here(wid):
                # Ours, out of memory: brought back, then recorded through
                # its recorder (through the inbox, it came back to this
                # engine's drain and went round again).
                try:
                    self.epoch.hub.spawn(self._route_when_back, wid, build, via_store, why_not,
                                         done, via_inbox, name=f"route:{wid}")
                except EngineClosed as exc:
                    done(None, exc)
                return
            if via_inbox is not None and self.epoch.leased:
                # Leased runs: another engine may own it; only its owner
                # appends, so the request goes to the inbox it drains.
                store, (kind, data) = self.epoch.store, via_inbox
                self.epoch.writer.submit_call(
                    lambda: store.post_inbox(wid, kind, ev.encode(data, "the request"), time.time()),
                    done)
                return
            if self.epoch.residency.on:
                # An evicted run comes back to read what was recorded for it.
                hub, recorded_for = self.epoch.hub, done

                def done(head: Any, error: Optional[BaseException]) -> None:
                    if error is None:
                        hub.call_soon(self.epoch.residency.wake, wid)
                    recorded_for(head, error)
            self.epoch.writer.submit_call(via_store, done)

    def held_elsewhere(self, wid: str) -> bool:
        """Any thread: runs are leased and ``wid`` is not this engine's (no
        recorder here, not held out of memory here): a request for it goes
        to its owner's inbox."""
        epoch = self.epoch
        return epoch.leased and wid not in epoch.recorders and not epoch.residency.absent_here(wid)

    def _route_when_back(self, wid: str, build: Callable[[Recorder], builtins.list[ev.NewEvent]],
                         via_store: Callable[[], Any], why_not: str,
                         done: Callable[[Any, Optional[BaseException]], None],
                         via_inbox: Optional[tuple[str, dict[str, Any]]]) -> None:
        """A hub greenlet: wake ``wid`` (leased here, out of memory) and route
        the arrival once its recorder is back (it buffers what comes while
        the run replays), or once the run is not this engine's any more
        (its lease taken: the arrival goes to the new owner's inbox)."""
        residency, delay = self.epoch.residency, 0.001
        while True:
            if self.epoch.hub.closing:
                done(None, EngineClosed("the engine is shutting down; nothing was recorded"))
                return
            if wid in self.epoch.recorders or not residency.absent_here(wid):
                self.route(wid, build, via_store, why_not, done, via_inbox)
                return
            residency.wake(wid)
            gevent.sleep(delay)
            delay = min(delay * 2, 0.02)

    def await_recorded(self, future: Future, what: str) -> Any:
        """Any thread but the hub's: the outcome of an arrival routed with
        ``future``. Should the store stop taking writes while it waits (a
        full disk: the writer waits that out, issue 16), the sender is told
        at once instead of waiting with no limit."""
        writer = self.epoch.writer
        while not future.wait(0.05):
            unavailable = writer.unavailable
            if unavailable is not None and not future.done():
                raise StoreUnavailable(
                    f"{what} is not recorded yet: {unavailable} It waits in this engine's queue, "
                    "behind the records before it, and is recorded once the store takes writes "
                    "again (unless this engine stops first): send it again only with an "
                    "idempotency_key, or it may be recorded twice")
        return future.result()

    def create_run(self, wid: str, wname: str, args_json: str,
                   parent_id: Optional[str] = None,
                   execution_timeout: Optional[float] = None) -> tuple[bool, RunInfo]:
        """Any thread but the hub's callbacks (a hub greenlet is fine):
        create the run (idempotent by id) and drive it here; an existing
        unfinished run of the same type and arguments is driven here too
        (say its type was unknown at recovery). ``parent_id``: the workflow
        id of the run that started it as a child; ``execution_timeout``: seconds
        from now to its execution deadline (runtime/bounds.py). Returns
        ``(created, info)``."""
        # Register the run's recorder before its creation is queued: a signal
        # sent from now on waits in it and follows WorkflowStarted, instead of
        # racing to the store ahead of a run that has no history yet.
        mine = None
        driving = self.epoch.sharing.driving  # a client only creates; the driver drives
        with self.epoch.routing_lock:
            if driving and wid not in self.epoch.recorders:
                mine = self.epoch.recorders[wid] = self.epoch.runner.new_recorder(wid)
        future = Future()
        now = time.time()
        owner, lease_until = None, 0.0
        if self.epoch.leased and mine is not None and wname in self.engine._registry.names() and (
                self.engine.max_resident is None
                or len(self.epoch.runs) + self.epoch.residency.out_of_memory()
                < self.engine.max_resident):
            owner, lease_until = self.engine.engine_id, now + self.engine.lease
        try:
            self.epoch.writer.submit_create(
                CreateRun(wid, wname, args_json, namespaces.new_id(), now, owner, lease_until,
                          parent_id, None if execution_timeout is None else now + execution_timeout),
                future_done(future))
            created, info = future.result()
        except BaseException:
            if mine is not None:
                self.epoch.runner.unregister(wid, mine)
            raise
        if created and mine is not None and self.epoch.leased and owner is None:
            self.epoch.runner.unregister(wid, mine)  # left for any engine to claim
            return created, info
        if created and mine is not None:
            mine.fence = info.fence or None
            mine.init(1, {}, set())
            self.epoch.hub.call_soon(self.epoch.runner.spawn_run, wid, info, False, mine)
            return created, info
        if mine is not None:
            self.epoch.runner.unregister(wid, mine)
        if (driving and not self.epoch.leased and not created and not info.finished
                and info.workflow_type == wname and info.args == json.loads(args_json)):
            # _spawn_run ignores a run already live here.
            self.epoch.hub.call_soon(self.epoch.runner.spawn_run, wid, info)
        return created, info

    def route_cancel(self, workflow_id: str, reason: str,
                      done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Any thread: record a cancel request (once per run); ``done(seq, error)``."""
        at = time.time()

        def build(rec: Recorder) -> builtins.list[ev.NewEvent]:
            if "cancel" in rec.seen:
                return []
            rec.note_seen("cancel")
            return [ev.NewEvent(ev.CANCEL_REQUESTED, at, {"reason": reason})]

        store = self.epoch.store
        self.route(workflow_id, build, lambda: store.request_cancel(workflow_id, reason, at),
                    "there is nothing left to cancel", done, ("cancel", {"reason": reason}))
