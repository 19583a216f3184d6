"""The Engine: lifecycle of one epoch, and the public operations.

Thread contract: the public methods (``start``, ``result``, ``describe``,
``list``, ``history``, ``shutdown``...) may be called from any thread or
greenlet except the engine's own hub thread. Everything under "hub thread
only" runs on the hub thread; the crossings are ``HubThread.call_soon`` /
``spawn`` (into the hub) and :class:`Future` (out of it).
"""
from __future__ import annotations

import atexit
import builtins
import collections
import dataclasses
import json
import logging
import os
import time
import uuid
import weakref
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Union

from gevent import monkey

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import (
    ConfigurationError,
    EngineClosed,
    QueryFailed,
    Timeout,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
)
from aion_green.core.registry import Registry, check_arguments, signature_from, workflow_name
from aion_green.hub_thread import Future, HubThread
from aion_green.runtime import rewind, schedules
from aion_green.runtime.children import ChildDriver
from aion_green.runtime.host import EngineHost
from aion_green.runtime.leases import LeaseDriver
from aion_green.runtime.queries import QueryDriver
from aion_green.runtime.recorder import Recorder
from aion_green.runtime.residency import ResidencyDriver
from aion_green.runtime.routing import RoutingDriver
from aion_green.runtime.runs import RunDriver, _closed_while_waiting, outcome
from aion_green.runtime.sharing import DriverLock, PgDriverLock, SharingDriver
from aion_green.runtime.step_pool import StepPool
from aion_green.runtime.termination import TerminationDriver
from aion_green.runtime.timers import TimerService
from aion_green.runtime.writer import StoreWriter, future_done
from aion_green.store import RunInfo, StepRunning
from aion_green.stores import open_store
from aion_green.watchers import ChildTaskRegistry

log = logging.getLogger("aion_green.engine")

_allocate_lock = monkey.get_original("_thread", "allocate_lock")


class WorkflowHandle:
    """A started (or existing) workflow run, by id."""

    def __init__(self, engine: "Engine", workflow_id: str) -> None:
        self.engine = engine
        self.workflow_id = workflow_id

    def result(self, timeout: Optional[float] = None) -> Any:
        return self.engine.result(self.workflow_id, timeout=timeout)

    def describe(self) -> RunInfo:
        return self.engine.describe(self.workflow_id)

    def history(self) -> list[ev.Event]:
        return self.engine.history(self.workflow_id)

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id!r}>"


class Engine(RoutingDriver, RunDriver, ChildDriver, SharingDriver, LeaseDriver, QueryDriver,
             ResidencyDriver, TerminationDriver):
    """A durable workflow engine over one store (one epoch, start to shutdown).

    ``Engine()`` uses ``./aion.db``. The engine starts lazily on first use
    (so it is fork-safe when created before a fork) and then resumes every
    unfinished run in the background. Creating or entering it never switches
    to another greenlet of the caller's hub. ``passive=True`` makes an engine
    that only looks (tools, the CLI, the replay checker): it drives, claims
    and fires nothing and takes no driver lock, but can start, signal and
    cancel for the engine that drives.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        workflows: Any = (),
        *,
        durable: bool = True,
        step_workers: int = 32,
        kill_timeout: float = 5.0,
        recover: bool = True,
        busy_timeout: float = 5.0,
        lease: float = 10.0,
        max_resident: Optional[int] = None,
        passive: bool = False,
        step_grace: float = 10.0,
    ) -> None:
        if step_workers < 1:
            raise ConfigurationError(f"step_workers={step_workers}: need at least one step thread")
        self.url = url
        self.durable = durable
        self.step_workers = step_workers
        self.kill_timeout = kill_timeout
        # How long shutdown() waits for steps already running to return (and
        # be recorded); one still running then is abandoned, named in the
        # log, and runs again in the next epoch.
        self.step_grace = step_grace
        self.recover = recover
        self.busy_timeout = busy_timeout
        if lease <= 0 or (max_resident is not None and max_resident < 1):
            raise ConfigurationError(
                f"lease={lease}, max_resident={max_resident}: a lease is a positive number of "
                "seconds, and an engine keeps at least one run resident")
        # Where the store leases runs (PostgreSQL): this engine's id, how long
        # a lease lasts unrenewed, and how many runs it drives at once.
        self.engine_id = uuid.uuid4().hex
        self.lease = lease
        self.max_resident = max_resident
        self._leased = False
        self._listening = False
        # A passive engine (the replay checker) reads and replays only: it
        # drives, claims and fires nothing, and takes no driver lock.
        self._passive = passive
        self._registry = Registry(workflows)
        self._lock = _allocate_lock()
        self._pid: Optional[int] = None
        self._closed = False
        self._hub: Any = None  # HubThread once started
        self._writer: Any = None
        self._reader: Any = None
        # Typed Any: mypy reads zope.interface methods as lacking self.
        self._store: Any = None
        # Hub thread only ------------------------------------------------------------
        self._steps = StepPool(step_workers)
        # Step attempts running on the pool: StepInfo -> (wall-clock start,
        # pool thread ident, the pool's task). Invariant: whoever pops an attempt records its
        # outcome (the pool thread its result, the hub its timeout), so an
        # attempt is recorded once. Any thread; single dict ops only.
        self._in_flight: dict[Any, tuple[float, int, Any]] = {}
        self._timers: Any = None  # TimerService once started
        self._child_tasks: Any = None  # ChildTaskRegistry once started
        # Held while this engine drives its store's runs (see sharing.py).
        self._driver_lock: Any = None
        # Routing: which runs have a recorder here. Any thread reads it under
        # _routing, so a message either goes through a live run's recorder
        # or, queued before that run's history is read, through the store.
        self._routing = _allocate_lock()
        self._recorders: dict[str, Recorder] = {}
        # Invariant: a workflow id is in _runs while a greenlet of this epoch
        # drives it; at most one per id.
        self._runs: dict[str, Any] = {}
        # Result waiters by workflow id, completed when the run ends here or
        # found finished in the store.
        self._waiters: dict[str, list[Future]] = {}
        # Runs that ended in this epoch, newest last: a result() right after
        # the end needs no store read. Bounded; older ones are read back.
        self._recently_finished: "collections.OrderedDict[str, RunInfo]" = collections.OrderedDict()
        self.unrunnable: dict[str, str] = {}  # runs not driven here, and why
        self._unreadable: dict[str, BaseException] = {}  # their waiters are told
        self._init_residency(False)
        # Outcomes of appends to runs created by start() that arrived before
        # the run's greenlet built its context (hub thread only).
        self._early: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Engine":
        self._ensure_started()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def _ensure_started(self) -> None:
        if self._closed:
            raise EngineClosed("this engine was shut down; create a new Engine")
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._lock:
            if self._closed:
                raise EngineClosed("this engine was shut down; create a new Engine")
            if self._pid == pid:
                return
            if self._pid is not None:
                # Forked: the hub and writer threads did not survive the fork.
                log.info("engine used in a forked process (pid %s); starting afresh", pid)
                self._runs, self._waiters, self._early = {}, {}, {}
                self._recorders, self.unrunnable, self._unreadable = {}, {}, {}
                self._in_flight = {}
                self._recently_finished.clear()
            self._store = open_store(self.url, self.durable, self.busy_timeout)
            self._leased = hasattr(self._store, "claim_runs")
            # Over SQLite the cap evicts parked runs; leased stores cap what
            # an engine claims instead (leases.py).
            self._init_residency(self.max_resident is not None and not self._leased and not self._passive)
            pg = hasattr(self._store, "try_lock_driver")
            self._driver_lock = PgDriverLock(self._store) if pg else DriverLock(self._store.path)
            if not self._leased and not self._passive and not self._driver_lock.try_acquire():
                log.info("engine over %s: %s drives its runs; this one is its client",
                         self._store.path, self._driver_lock.holder())
            self._writer = StoreWriter(self._store)
            if pg:
                self._driver_lock.writer = self._writer
            # Reads for callers (describe, list, history) and recovery go to
            # a second connection on its own thread: WAL lets them run while
            # the writer commits, or waits out a locked or full database.
            self._reader = StoreWriter(open_store(self.url, self.durable, self.busy_timeout),
                                       name="aion-store-reader")
            self._steps = StepPool(self.step_workers)
            self._hub = HubThread(name="aion-hub", kill_timeout=self.kill_timeout)
            self._timers = TimerService(self)
            self._child_tasks = ChildTaskRegistry(self._hub)
            self._host = EngineHost(self)  # what this epoch's runs see of it
            self._hub.call_soon(self._on_hub_start)
            self._hub.start()
            self._pid = pid
            _live_engines.add(self)

    def shutdown(self) -> None:
        """Gate new work, end every run's greenlet (they resume on the next
        start), flush the store writer, stop the threads. After it returns
        nothing of this engine appends to any history. Idempotent."""
        with self._lock:
            self._closed = True
            started = self._pid == os.getpid()
        if not started:
            return
        assert self._hub is not None
        # Child watchers first: the hub's own stop does not know them, and a
        # watcher must not record into a parent after the epoch closed.
        self._child_tasks.shutdown()
        # Steps queued but not started are dropped (their runs replay them in
        # the next epoch): started after shutdown() returned, they ran again
        # there (issue 16: 2-3 times). Steps already running get step_grace
        # to return while their runs still live, so their records land and
        # the next epoch does not run them again; a run whose step returned
        # asks for its next one in vain (the pool takes no more).
        self._steps.close(self.step_grace)
        self._log_abandoned_steps()
        self._hub.shutdown()
        if self._leased:
            self._stop_listening()
            self._release_leases()
        self._writer.close()
        self._reader.close()
        self._driver_lock.release()
        # The hub thread is gone, so its state is ours now: release callers
        # still waiting for a result of this epoch.
        closed = _closed_while_waiting()
        for futures in self._waiters.values():
            for future in futures:
                future.set_exception(closed)
        self._waiters.clear()
        _live_engines.discard(self)

    def _log_abandoned_steps(self) -> None:
        now = time.time()
        for info, (since, _, _) in list(self._in_flight.items()):
            log.warning("shutdown: step %d (%s) of workflow %r, attempt %d, still runs after "
                        "%.1f s (step_grace=%s); it is abandoned: its outcome will not be "
                        "recorded, and the next engine runs it again", info.step, info.name,
                        info.workflow_id, info.attempt, now - since, self.step_grace)

    def steps_running(self, workflow_id: str) -> builtins.list[StepRunning]:
        """The step attempts of ``workflow_id`` running in this engine now
        (a hung step shows here with its start time)."""
        return sorted((StepRunning(info.step, info.name, info.attempt, since)
                       for info, (since, _, _) in list(self._in_flight.items())
                       if info.workflow_id == workflow_id), key=lambda s: (s.step, s.attempt))

    def _forget_parent(self) -> None:
        """In a forked child: drop what belongs to the parent process."""
        # A lock held by a parent's thread at the fork would never be freed.
        self._lock = _allocate_lock()
        self._routing = _allocate_lock()
        lock = self._driver_lock
        if lock is not None and getattr(lock, "_fd", None) is not None:
            fd, lock._fd = lock._fd, None
            try:
                os.close(fd)  # the parent's descriptor keeps its flock
            except OSError:  # pragma: no cover
                pass
        _live_engines.discard(self)

    def _backstop(self) -> None:
        """Never blocks: ask the threads to stop (``__del__``/``atexit``)."""
        self._closed = True
        if self._hub is not None and self._pid == os.getpid():
            self._child_tasks.backstop()
            self._hub.backstop()

    def __del__(self) -> None:
        try:
            self._backstop()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    # -- public operations -------------------------------------------------------------------
    def start(self, fn: Union[str, Callable[..., Any]], *args: Any,
              id: Optional[str] = None) -> WorkflowHandle:  # noqa: A002
        """Start ``fn(ctx, *args)`` as workflow ``id`` (a new uuid if None).

        Idempotent by id: an existing run with the same type and arguments
        is returned as it is; different ones raise :class:`WorkflowIdConflict`.
        """
        if id is not None:
            ev.check_key(id, "the workflow id")
        wname = self._registry.add(fn) if callable(fn) else ev.check_key(workflow_name(fn),
                                                                          "the workflow type")
        args_json = ev.encode(list(args), f"the arguments of workflow {wname}")
        self._ensure_started()
        if not callable(fn) and (self._registry.has_own() or (self.driving and not self._leased)):
            # Fail early for an unknown name (a typo) in an engine that runs
            # workflows. A process given none (one that only starts and
            # signals) may start what only other engines know: runs leased
            # on PostgreSQL, or a client of another process's SQLite engine.
            fn = self._registry.get(wname)
        elif not callable(fn):
            fn = self._registry.find(wname) or fn
            if not callable(fn) and not self.driving:
                self._check_published(wname, args)
            elif not callable(fn) and self._leased:
                self._check_live_engines(wname, args)
        if callable(fn):
            # Before anything is recorded: a run whose arguments cannot bind
            # would fail inside with a TypeError (issue 16).
            check_arguments(wname, fn, args)
        wid = id or uuid.uuid4().hex
        created, info = self._create_run(wid, wname, args_json)
        if not created and (info.workflow_type != wname or info.args != json.loads(args_json)):
            raise WorkflowIdConflict(
                f"workflow id {wid!r} already exists as {info.workflow_type}"
                f"{tuple(info.args)!r}; it cannot be started again as {wname}"
                f"{tuple(json.loads(args_json))!r}. Use another id for different work"
            )
        return WorkflowHandle(self, wid)

    def signal(self, workflow_id: str, name: str, payload: Any = None, *,
               idempotency_key: Optional[str] = None) -> int:
        """Send message ``name`` with a JSON ``payload`` to a workflow; it is
        recorded in the workflow's history (``MessageReceived``) before this
        returns, and kept until the workflow receives it. Returns its seq.

        With ``idempotency_key``, a repeated signal (a retry after a lost
        reply, say) is recorded once. A finished run refuses it with
        :class:`WorkflowNotRunning` and nothing is recorded."""
        ev.check_key(workflow_id, "the workflow id")
        ev.check_key(name, "the message name")
        if idempotency_key is not None:
            ev.check_key(idempotency_key, "the idempotency key")
        value = ev.roundtrip(payload, f"the payload of message {name!r}")
        self._ensure_started()
        dedup = None if idempotency_key is None else f"signal/{idempotency_key}"
        if not self.driving or (self._leased and workflow_id not in self._recorders):
            data: dict[str, Any] = {"name": name, "payload": value}
            if dedup is not None:
                data["dedup"] = dedup
            return self._post(workflow_id, "message", data, time.time(), ev.MESSAGE_RECEIVED, dedup)
        future = Future()
        self._route_message(workflow_id, name, value, time.time(), dedup, future_done(future))
        return int(self._await_recorded(future, f"message {name!r} to workflow {workflow_id!r}"))

    def cancel(self, workflow_id: str, reason: str = "") -> None:
        """Request cancellation: ``CancelRequested`` is recorded before this
        returns; the workflow sees :class:`aion.Cancelled` at its current or
        next wait, may clean up (even run steps), and ends
        ``WorkflowCancelled``. Asking twice records once; a finished run
        refuses with :class:`WorkflowNotRunning`."""
        ev.check_key(workflow_id, "the workflow id")
        if not isinstance(reason, str):
            raise ConfigurationError(f"a cancel reason is a string, got {type(reason).__name__}")
        self._ensure_started()
        future = Future()
        if self.driving and not (self._leased and workflow_id not in self._recorders):
            self._route_cancel(workflow_id, reason, future_done(future))
        elif self._leased and self._lease_holder(workflow_id) is None:
            # Nobody holds it (no engine knows its type, say): its owner's
            # inbox would never be read, and this waited for ever (issue 16).
            # Recorded at its head, the request is seen by whoever claims it.
            try:
                future.set_result(self._writer.call(self._store.request_cancel, workflow_id, reason,
                                                    time.time()).result())
            except WorkflowNotRunning as exc:
                future.set_exception(exc)
        else:
            try:
                future.set_result(self._post(workflow_id, "cancel", {"reason": reason}, time.time(),
                                             ev.CANCEL_REQUESTED, None))
            except WorkflowNotRunning as exc:
                future.set_exception(exc)
        try:
            self._await_recorded(future, f"the cancel request of workflow {workflow_id!r}")
        except WorkflowNotRunning:
            # Asking again once the run ended on an earlier request is fine.
            if any(e.type == ev.CANCEL_REQUESTED for e in self.history(workflow_id)):
                return
            raise
        if self.driving and workflow_id in self.unrunnable:
            # No code of it can run here to see the request (issue 16: it
            # stayed running for ever): it ends now, without cleanup.
            ended = Future()
            self._hub.call_soon(self._end_if_unrunnable, workflow_id, reason, future_done(ended))
            try:
                ended.result()
            except WorkflowNotRunning:
                pass

    def query(self, workflow_id: str, name: str, *args: Any, timeout: float = 10.0) -> Any:
        """Ask a live run: ``handler(*args)`` of its ``ctx.set_query(name,
        handler)``, answered while it waits; never recorded. Raises
        :class:`QueryFailed` (the handler raised, the name is unknown, the run
        is not live here), :class:`WorkflowNotRunning` (it has finished) or
        :class:`Timeout`."""
        ev.check_key(workflow_id, "the workflow id")
        ev.check_key(name, "the query name")
        self._ensure_started()
        if not self.driving:
            raise QueryFailed(
                f"query {name!r} to workflow {workflow_id!r}: the runs of {self._store_name()} are "
                f"driven by {self._driver_lock.holder()}, and only the live run answers queries; "
                "ask through that process (its HTTP API, say)")
        future = Future()
        self._hub.call_soon(self._answer_query, workflow_id, name, args, future,
                            _clock.monotonic() + timeout)
        try:
            return future.result(timeout)
        except Timeout:
            raise Timeout(f"query {name!r} to workflow {workflow_id!r} got no answer within "
                          f"{timeout} s") from None

    def poke(self) -> None:
        """Re-check due timers now; for tests that move the clock (freezegun).
        Never blocks."""
        self._ensure_started()
        if self.driving:
            self._timers.poke()

    def schedule(self, schedule_id: str, fn: Union[str, Callable[..., Any]], *args: Any,
                 cron: Optional[str] = None, every: Union[None, timedelta, float] = None,
                 start_at: Optional[datetime] = None, timezone: Optional[str] = None,
                 overlap: str = "skip", catch_up: str = "one") -> WorkflowHandle:
        """Start ``fn(ctx, *args)`` on a trigger, durably: at each fire time
        of ``cron`` (five fields, UTC unless ``timezone``) or ``every`` (a
        timedelta or seconds, from ``start_at`` or from now), as run
        ``"<schedule_id>@<fire time>"``. ``overlap`` (skip, buffer_one,
        cancel_previous, allow_all) says what a fire does while the last run
        still runs; ``catch_up`` (all, one, skip) which fires missed while no
        engine ran still start (see :mod:`aion_green.schedules`). Idempotent
        by id; another spec under the id raises :class:`WorkflowIdConflict`.
        The handle is the schedule's own run (type ``"aion.schedule"``)."""
        return schedules.schedule(self, schedule_id, fn, args, cron=cron, every=every,
                                  start_at=start_at, timezone=timezone, overlap=overlap,
                                  catch_up=catch_up)

    def unschedule(self, schedule_id: str, timeout: Optional[float] = 30.0) -> None:
        """Cancel schedule ``schedule_id`` and wait (up to ``timeout``) for its
        end: it fires no more. Runs it started go on."""
        schedules.unschedule(self, schedule_id, timeout)

    def handle(self, workflow_id: str) -> WorkflowHandle:
        return WorkflowHandle(self, workflow_id)

    def result(self, workflow_id: str, timeout: Optional[float] = None) -> Any:
        """Wait for the run's end; return its result or raise
        :class:`WorkflowFailed` (or :class:`Timeout` when ``timeout`` passes)."""
        ev.check_key(workflow_id, "the workflow id")
        if timeout is not None and not timeout >= 0:
            raise ConfigurationError(f"result(timeout={timeout!r}): a timeout is a number of "
                                     "seconds, 0 or more (None waits for ever)")
        self._ensure_started()
        # Lately ended: answered without a crossing to the hub (rewind.py forgets a resumed id).
        info: Optional[RunInfo] = self._recently_finished.get(workflow_id)
        if info is not None:
            return outcome(workflow_id, info)
        future = Future()
        self._hub.call_soon(self._register_waiter, workflow_id, future)  # type: ignore[union-attr]
        deadline = None if timeout is None else _clock.monotonic() + timeout
        # Wait in slices: a registration that raced with shutdown() is never
        # served, and must not leave the caller waiting forever.
        while not future.done():
            left = None if deadline is None else deadline - _clock.monotonic()
            if left is not None and left <= 0:
                # Its waiter goes (a client polling a run that waits for days
                # left one behind per poll), and the store says whether the
                # id exists at all, or ended as the time ran out.
                self._hub.call_soon(self._drop_waiter, workflow_id, future)  # type: ignore[union-attr]
                info = self._call_store(self._store.get_run, workflow_id)  # type: ignore[union-attr]
                if info is None:
                    raise WorkflowNotFound(
                        f"no workflow with id {workflow_id!r} in {self._store_name()}")
                if info.finished:
                    return outcome(workflow_id, info)
                raise Timeout(
                    f"workflow {workflow_id!r} did not finish within {timeout} s; "
                    "it goes on running: call result() again to keep waiting"
                )
            if not future.wait(1.0 if left is None else min(left, 1.0)) and self._closed:
                future.set_exception(_closed_while_waiting())
        return outcome(workflow_id, future.result())

    def describe(self, workflow_id: str) -> RunInfo:
        """What the store knows of the run; for a running run that this
        engine cannot drive, ``unrunnable`` says why (its type unknown here,
        its history unreadable)."""
        ev.check_key(workflow_id, "the workflow id")
        self._ensure_started()
        info = self._call_store(self._store.get_run, workflow_id)  # type: ignore[union-attr]
        if info is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {self._store_name()}")
        why = self.unrunnable.get(workflow_id)
        if why is None and self._leased and not info.finished:
            why = self._unrunnable_on_postgres(info)
        if why is not None and not info.finished:
            info = dataclasses.replace(info, unrunnable=why)
        running = self.steps_running(workflow_id) if self._in_flight else None
        return dataclasses.replace(info, steps_running=tuple(running)) if running else info

    def list(self, status: Optional[str] = None,
             workflow_type: Union[None, str, Callable[..., Any]] = None,
             limit: int = 100, after_id: Optional[str] = None) -> builtins.list[RunInfo]:
        """Runs ordered by id, filtered by status (one of
        running/completed/failed/cancelled/continued) and workflow type."""
        if status is not None and status not in ev.STATUSES:
            raise ConfigurationError(
                f"unknown status {status!r}; choose one of {', '.join(ev.STATUSES)}"
            )
        _count(limit, "list(limit=...)", 1)
        if after_id is not None:
            ev.check_key(after_id, "list(after_id=...)")
        wtype = None if workflow_type is None else workflow_name(workflow_type)
        self._ensure_started()
        return self._call_store(self._store.list_runs, status, wtype, limit, after_id)  # type: ignore[union-attr]

    def history(self, workflow_id: str, after_seq: int = 0,
                run_id: Optional[str] = None, limit: Optional[int] = None) -> builtins.list[ev.Event]:
        """The events of the workflow's current run, or of run ``run_id`` (an
        earlier run that continued as new: its ``WorkflowStarted`` names the
        one before, in ``continued_from``)."""
        ev.check_key(workflow_id, "the workflow id")
        _count(after_seq, "history(after_seq=...)", 0)
        if limit is not None:
            _count(limit, "history(limit=...)", 1)
        if run_id is not None:
            ev.check_key(run_id, "history(run_id=...)")
        self._ensure_started()
        events = self._call_store(self._store.read, workflow_id, after_seq, limit, run_id)  # type: ignore[union-attr]
        if not events and after_seq == 0:
            which = "" if run_id is None else f" with a run {run_id!r}"
            raise WorkflowNotFound(
                f"no workflow with id {workflow_id!r}{which} in {self._store_name()}")
        return events

    def fork(self, workflow_id: str, from_seq: int, *, id: Optional[str] = None,  # noqa: A002
             run_id: Optional[str] = None) -> WorkflowHandle:
        """A new workflow ``id`` that replays events 2..``from_seq`` of a run of
        ``workflow_id`` (unchanged), then goes live (:mod:`aion_green.rewind`)."""
        return rewind.fork(self, workflow_id, from_seq, id, run_id)

    def resume(self, workflow_id: str, from_seq: Optional[int] = None) -> WorkflowHandle:
        """A failed or cancelled run, archived, begins anew in place from its
        events 2..``from_seq`` (default: :mod:`aion_green.rewind`)."""
        return rewind.resume(self, workflow_id, from_seq)

    def _store_name(self) -> str:
        return getattr(self._store, "path", None) or str(self.url)

    def _check_published(self, wname: str, args: tuple[Any, ...]) -> None:
        """A client of a SQLite file starting a type it does not know: the
        ``aion-green worker`` that drives the file publishes its types and
        their parameters (``<db>.worker``); refuse what it cannot run
        (issue 16: the run stayed running for ever)."""
        from aion_green.runtime.sharing import probe_driver

        path = getattr(self._store, "path", None)
        if not path or path == ":memory:" or self._leased:
            return
        driver = probe_driver(os.path.abspath(path))
        if driver.types is None:
            return  # no worker, or one that does not say: nothing to check against
        if wname not in driver.types:
            raise WorkflowNotRegistered(
                f"workflow type {wname!r} is not registered with {driver.name}, which drives "
                f"{path} (it knows: {', '.join(driver.types) or 'none'}); check the name, or run "
                "a worker that imports the module defining it. Nothing was recorded")
        sig = signature_from((driver.parameters or {}).get(wname) or ())
        if sig is not None and driver.parameters and driver.parameters.get(wname):
            check_arguments(wname, sig, args)

    def _check_live_engines(self, wname: str, args: tuple[Any, ...]) -> None:
        """PostgreSQL: a type this engine does not know, started while other
        engines run: refuse it if none of them knows it either (none would
        ever claim the run), and check the arguments against the parameters
        they publish. With no engine running there is nothing to check
        against (one started later may know it)."""
        engines = self._call_store(self._store.live_engines, time.time())  # type: ignore[union-attr]
        known: dict[str, Any] = {}
        for types in engines.values():
            known.update(types)
        if engines and wname not in known:
            raise WorkflowNotRegistered(
                f"workflow type {wname!r} is not registered with any of the {len(engines)} "
                f"engine(s) running over {self._store_name()} (they know: "
                f"{', '.join(sorted(known)) or 'none'}); check the name, or start an engine that "
                "registers it. Nothing was recorded")
        sig = signature_from(known.get(wname) or ())
        if sig is not None and known.get(wname):
            check_arguments(wname, sig, args)

    def _unrunnable_on_postgres(self, info: RunInfo) -> Optional[str]:
        """Why no engine over this PostgreSQL database will run ``info``
        (None when one knows its type, or none runs at all)."""
        engines = self._call_store(self._store.live_engines, time.time())  # type: ignore[union-attr]
        if not engines or any(info.workflow_type in types for types in engines.values()):
            return None
        return (f"none of the {len(engines)} engine(s) running over this database knows workflow "
                f"type {info.workflow_type!r}; start one that registers it, or end the run "
                "with terminate")

    def _call_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a read of the reader's store (``fn`` names a method of the
        writer's store; the reader's own instance runs it)."""
        return self._reader.call(getattr(self._reader.store, fn.__name__), *args).result()

def _count(value: Any, what: str, least: int) -> None:
    """A whole number a store can hold (a signed 64-bit integer), at least
    ``least``: a larger one was SQLite's OverflowError, not our error."""
    if type(value) is not int or not least <= value < 2 ** 63:
        raise ConfigurationError(f"{what}: a whole number from {least} up, got {value!r}")


_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _backstop_all() -> None:
    for engine in list(_live_engines):
        engine._backstop()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn's workers under ``--preload``): no thread of
    the parent's engines survived. Each is started afresh on its next use
    (``_ensure_started`` sees the new pid); the child lets go of the
    parent's driver lock, which the parent still holds."""
    for engine in list(_live_engines):
        engine._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)
