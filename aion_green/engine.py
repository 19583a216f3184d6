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
import json
import logging
import os
import time
import traceback
import uuid
import weakref
from typing import Any, Callable, Optional, Union

from gevent import GreenletExit, monkey

from . import _clock
from . import events as ev
from ._writer import StoreWriter, future_done
from .context import RunAborted, RunLost, WorkflowContext
from .errors import (
    Cancelled,
    ConfigurationError,
    EngineClosed,
    InternalError,
    NonDeterminismError,
    QueryFailed,
    SerializationError,
    Timeout,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
)
from .hub_thread import Future, HubThread
from .recorder import Recorder
from .registry import Registry, workflow_name
from .replay import message_state, pending_timers
from .steps import Retry, StepInfo, StepPool, attempt_event, error_data
from .store import CreateRun, RunInfo, SQLiteStore, sqlite_path_from_url
from .timers import TimerService

log = logging.getLogger("aion_green.engine")

_allocate_lock = monkey.get_original("_thread", "allocate_lock")


def open_store(url: Optional[str], durable: bool = True, busy_timeout: float = 5.0) -> Any:
    """The store a URL names: ``None`` or ``sqlite:///...`` (SQLite)."""
    if url is not None and url.startswith(("postgres://", "postgresql://")):
        raise ConfigurationError(
            "the PostgreSQL store is not available in this version; use sqlite:///path.db"
        )
    return SQLiteStore(sqlite_path_from_url(url), durable=durable, busy_timeout=busy_timeout)


class _Reroute(Exception):
    """A message buffered in a recorder that was dropped before its history
    was loaded: route it again (now through the store, or a new recorder)."""


def _closed_while_waiting() -> EngineClosed:
    return EngineClosed("the engine shut down while waiting for the result; "
                        "the run resumes when an engine starts over this store")


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


class Engine:
    """A durable workflow engine over one store (one epoch, start to shutdown).

    ``Engine()`` uses ``./aion.db``. The engine starts lazily on first use
    (so it is fork-safe when created before a fork) and then resumes every
    unfinished run in the background. Creating or entering it never switches
    to another greenlet of the caller's hub.
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
    ) -> None:
        if step_workers < 1:
            raise ConfigurationError(f"step_workers={step_workers}: need at least one step thread")
        self.url = url
        self.durable = durable
        self.step_workers = step_workers
        self.kill_timeout = kill_timeout
        self.recover = recover
        self.busy_timeout = busy_timeout
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
        self._timers: Any = None  # TimerService once started
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
        self.unrunnable: dict[str, str] = {}

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
                self._runs, self._waiters = {}, {}
            self._store = open_store(self.url, self.durable, self.busy_timeout)
            self._writer = StoreWriter(self._store)
            # Reads for callers (describe, list, history) and recovery go to
            # a second connection on its own thread: WAL lets them run while
            # the writer commits, or waits out a locked or full database.
            self._reader = StoreWriter(open_store(self.url, self.durable, self.busy_timeout),
                                       name="aion-store-reader")
            self._steps = StepPool(self.step_workers)
            self._hub = HubThread(name="aion-hub", kill_timeout=self.kill_timeout)
            self._timers = TimerService(self)
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
        self._hub.shutdown()
        self._steps.close()
        self._writer.close()
        self._reader.close()
        # The hub thread is gone, so its state is ours now: release callers
        # still waiting for a result of this epoch.
        closed = _closed_while_waiting()
        for futures in self._waiters.values():
            for future in futures:
                future.set_exception(closed)
        self._waiters.clear()
        _live_engines.discard(self)

    def _backstop(self) -> None:
        """Never blocks: ask the threads to stop (``__del__``/``atexit``)."""
        self._closed = True
        if self._hub is not None and self._pid == os.getpid():
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
        if id is not None and (not isinstance(id, str) or not id):
            raise ConfigurationError(f"workflow id must be a non-empty string, got {id!r}")
        wname = self._registry.add(fn) if callable(fn) else workflow_name(fn)
        if not callable(fn):
            self._registry.get(wname)  # fail early for an unknown name
        args_json = ev.encode(list(args), f"the arguments of workflow {wname}")
        self._ensure_started()
        wid = id or uuid.uuid4().hex
        # Register the run's recorder before its creation is queued: a signal
        # sent from now on waits in it and follows WorkflowStarted, instead of
        # racing to the store ahead of a run that has no history yet.
        mine = None
        with self._routing:
            if wid not in self._recorders:
                mine = self._recorders[wid] = self._new_recorder(wid)
        future = Future()
        try:
            self._writer.submit_create(
                CreateRun(wid, wname, args_json, uuid.uuid4().hex, time.time()), future_done(future))
            created, info = future.result()
        except BaseException:
            if mine is not None:
                self._unregister(wid, mine)
            raise
        if created and mine is not None:
            mine.init(1, {}, set())
            self._hub.call_soon(self._spawn_run, wid, info, False, mine)
            return WorkflowHandle(self, wid)
        if mine is not None:
            self._unregister(wid, mine)
        if not created and (info.workflow_type != wname or info.args != json.loads(args_json)):
            raise WorkflowIdConflict(
                f"workflow id {wid!r} already exists as {info.workflow_type}"
                f"{tuple(info.args)!r}; it cannot be started again as {wname}"
                f"{tuple(json.loads(args_json))!r}. Use another id for different work"
            )
        if not info.finished:
            # Unfinished and perhaps not running here (say its type was
            # unknown at recovery): _spawn_run ignores a run already live.
            self._hub.call_soon(self._spawn_run, wid, info)
        return WorkflowHandle(self, wid)

    def signal(self, workflow_id: str, name: str, payload: Any = None, *,
               idempotency_key: Optional[str] = None) -> int:
        """Send message ``name`` with a JSON ``payload`` to a workflow; it is
        recorded in the workflow's history (``MessageReceived``) before this
        returns, and kept until the workflow receives it. Returns its seq.

        With ``idempotency_key``, a repeated signal (a retry after a lost
        reply, say) is recorded once. A finished run refuses it with
        :class:`WorkflowNotRunning` and nothing is recorded."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a message name must be a non-empty string, got {name!r}")
        value = ev.roundtrip(payload, f"the payload of message {name!r}")
        self._ensure_started()
        future = Future()
        self._route_message(workflow_id, name, value, time.time(),
                            None if idempotency_key is None else f"signal/{idempotency_key}",
                            future_done(future))
        return int(future.result())

    def cancel(self, workflow_id: str, reason: str = "") -> None:
        """Request cancellation: ``CancelRequested`` is recorded before this
        returns; the workflow sees :class:`aion.Cancelled` at its current or
        next wait, may clean up (even run steps), and ends
        ``WorkflowCancelled``. Asking twice records once; a finished run
        refuses with :class:`WorkflowNotRunning`."""
        self._ensure_started()
        future = Future()
        at = time.time()

        def build(rec: Recorder) -> builtins.list[ev.NewEvent]:
            if "cancel" in rec.seen:
                return []
            rec.seen.add("cancel")
            return [ev.NewEvent(ev.CANCEL_REQUESTED, at, {"reason": reason})]

        store = self._store
        self._route(workflow_id, build, lambda: store.request_cancel(workflow_id, reason, at),
                    "there is nothing left to cancel", future_done(future))
        future.result()

    def query(self, workflow_id: str, name: str, *args: Any, timeout: float = 10.0) -> Any:
        """Ask a live run: ``handler(*args)`` of its ``ctx.set_query(name,
        handler)``, answered while it waits; never recorded. Raises
        :class:`QueryFailed` (the handler raised, the name is unknown, the run
        is not live here), :class:`WorkflowNotRunning` (it has finished) or
        :class:`Timeout`."""
        self._ensure_started()
        future = Future()
        self._hub.call_soon(self._answer_query, workflow_id, name, args, future,
                            _clock.monotonic() + timeout)
        try:
            return future.result(timeout)
        except Timeout:
            raise Timeout(f"query {name!r} to workflow {workflow_id!r} got no answer within "
                          f"{timeout} s") from None

    def _route_message(self, wid: str, name: str, payload: Any, at: float, dedup: Optional[str],
                       done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Any thread: record a message to ``wid``; ``done(seq, error)``."""
        def build(rec: Recorder) -> builtins.list[ev.NewEvent]:
            if dedup is not None and dedup in rec.seen:
                return []
            index = rec.counts.get(name, 0)
            rec.counts[name] = index + 1
            data: dict[str, Any] = {"name": name, "index": index, "payload": payload}
            if dedup is not None:
                rec.seen.add(dedup)
                data["dedup"] = dedup
            return [ev.NewEvent(ev.MESSAGE_RECEIVED, at, data)]

        payload_json = ev.encode(payload, "a message payload")
        store = self._store
        self._route(wid, build, lambda: store.deliver_message(wid, name, payload_json, at, dedup),
                    f"a message {name!r} to it would never be read", done)

    def _route(self, wid: str, build: Callable[[Recorder], builtins.list[ev.NewEvent]],
               via_store: Callable[[], Any], why_not: str,
               done: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Any thread: record an arrival for ``wid`` through its recorder if
        it lives here, else through the store; ``done(seq, error)``."""
        def recorded(events: Any, head: Optional[int], error: Optional[BaseException]) -> None:
            if isinstance(error, _Reroute):  # its run's recorder was dropped before init
                self._route(wid, build, via_store, why_not, done)
            else:
                done(head, error)

        with self._routing:
            recorder = self._recorders.get(wid)
            if recorder is not None:
                try:
                    recorder.submit(build, recorded)
                except EngineClosed:
                    done(None, WorkflowNotRunning(
                        f"workflow {wid!r} has finished; {why_not}, so nothing was recorded"))
                return
            self._writer.submit_call(via_store, done)

    def poke(self) -> None:
        """Re-check due timers now; for tests that move the clock (freezegun).
        Never blocks."""
        self._ensure_started()
        self._timers.poke()

    def handle(self, workflow_id: str) -> WorkflowHandle:
        return WorkflowHandle(self, workflow_id)

    def result(self, workflow_id: str, timeout: Optional[float] = None) -> Any:
        """Wait for the run's end; return its result or raise
        :class:`WorkflowFailed` (or :class:`Timeout` when ``timeout`` passes)."""
        self._ensure_started()
        future = Future()
        self._hub.call_soon(self._register_waiter, workflow_id, future)  # type: ignore[union-attr]
        deadline = None if timeout is None else _clock.monotonic() + timeout
        # Wait in slices: a registration that raced with shutdown() is never
        # served, and must not leave the caller waiting forever.
        while not future.done():
            left = None if deadline is None else deadline - _clock.monotonic()
            if left is not None and left <= 0:
                raise Timeout(
                    f"workflow {workflow_id!r} did not finish within {timeout} s; "
                    "it goes on running: call result() again to keep waiting"
                )
            if not future.wait(1.0 if left is None else min(left, 1.0)) and self._closed:
                future.set_exception(_closed_while_waiting())
        info: RunInfo = future.result()
        if info.status == ev.COMPLETED:
            return info.result
        error = info.error or {"type": info.status, "message": info.status}
        if info.status == ev.CANCELLED:
            raise WorkflowCancelled(workflow_id, error)
        raise WorkflowFailed(workflow_id, error)

    def describe(self, workflow_id: str) -> RunInfo:
        self._ensure_started()
        info = self._call_store(self._store.get_run, workflow_id)  # type: ignore[union-attr]
        if info is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {self._store_name()}")
        return info

    def list(self, status: Optional[str] = None,
             workflow_type: Union[None, str, Callable[..., Any]] = None,
             limit: int = 100, after_id: Optional[str] = None) -> builtins.list[RunInfo]:
        """Runs ordered by id, filtered by status (one of
        running/completed/failed/cancelled/continued) and workflow type."""
        if status is not None and status not in ev.STATUSES:
            raise ConfigurationError(
                f"unknown status {status!r}; choose one of {', '.join(ev.STATUSES)}"
            )
        if limit < 1:
            raise ConfigurationError(f"limit={limit}: ask for at least one run")
        wtype = None if workflow_type is None else workflow_name(workflow_type)
        self._ensure_started()
        return self._call_store(self._store.list_runs, status, wtype, limit, after_id)  # type: ignore[union-attr]

    def history(self, workflow_id: str, after_seq: int = 0) -> builtins.list[ev.Event]:
        self._ensure_started()
        events = self._call_store(self._store.read, workflow_id, after_seq)  # type: ignore[union-attr]
        if not events and after_seq == 0:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {self._store_name()}")
        return events

    def _store_name(self) -> str:
        return getattr(self._store, "path", None) or str(self.url)

    def _call_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a read of the reader's store (``fn`` names a method of the
        writer's store; the reader's own instance runs it)."""
        return self._reader.call(getattr(self._reader.store, fn.__name__), *args).result()

    # -- hub thread only ---------------------------------------------------------------------
    def _on_hub_start(self) -> None:
        if self._hub.closing:
            return
        self._hub.spawn(self._timers.run, name="aion-timers")
        if self.recover:
            self._hub.spawn(self._recover, name="aion-recovery")

    def _run_step(self, recorder: Recorder, fn: Callable[..., Any], args: tuple[Any, ...],
                  info: StepInfo, policy: Retry) -> None:
        """One live attempt: a pool thread runs it, builds its event and
        hands it to the run's recorder; the run's greenlet wakes once the
        record is durable (record before wake)."""
        hub, wid = self._hub, info.workflow_id

        def task() -> None:
            try:
                event = attempt_event(fn, args, info, policy)
                recorder.submit(lambda rec: [event])
            except BaseException as exc:
                hub.call_soon(self._deliver, wid, [], None, exc)

        self._steps.submit(task)

    def _new_recorder(self, wid: str) -> Recorder:
        call_soon, deliver = self._hub.call_soon, self._deliver

        def on_done(events: builtins.list[ev.NewEvent], head: Optional[int],
                    error: Optional[BaseException]) -> None:
            call_soon(deliver, wid, events, head, error)

        return Recorder(wid, self._writer, on_done)

    def _deliver(self, wid: str, events: builtins.list[ev.NewEvent], head: Optional[int],
                 error: Optional[BaseException]) -> None:
        """Hub thread: the outcome of an append to a live run."""
        ctx = self._runs.get(wid)
        if not isinstance(ctx, WorkflowContext):
            return  # the run ended (or its greenlet was killed) meanwhile
        if error is not None or head is None:
            ctx._on_failed(error or InternalError("an append completed without a head"))
            return
        if len(events) == 1:
            (e,) = events
            ctx._on_recorded((ev.Event(head, e.type, e.at, e.data),))
            return
        first = head - len(events) + 1
        ctx._on_recorded([ev.Event(first + i, e.type, e.at, e.data) for i, e in enumerate(events)])

    def _recover(self) -> None:
        after: Optional[str] = None
        resumed = 0
        while True:
            page = self._reader.call(
                self._reader.store.list_runs, ev.RUNNING, None, 500, after  # type: ignore[union-attr]
            ).result()
            for info in page:
                if info.workflow_id not in self._runs:
                    self._spawn_run(info.workflow_id, info, recovering=True)
                    resumed += 1
            if len(page) < 500:
                break
            after = page[-1].workflow_id
        if resumed:
            log.info("recovery: resuming %d unfinished run(s)", resumed)

    def _spawn_run(self, wid: str, info: RunInfo, recovering: bool = False,
                   recorder: Optional[Recorder] = None) -> None:
        """Drive a run here. ``recorder`` comes from start() for a run just
        created (registered and initialised there); otherwise one is
        registered now and initialised from the history read after it."""
        if wid in self._runs or self._hub is None or self._hub.closing:
            if recorder is not None and wid not in self._runs:
                self._unregister(wid, recorder)
            return
        recovering = recovering or info.head_seq > 1 or recorder is None
        try:
            fn = self._registry.get(info.workflow_type)
        except WorkflowNotRegistered as exc:
            message = f"cannot resume workflow {wid!r}: {exc}; the run is left as it is"
            self.unrunnable[wid] = message
            log.error(message)
            if recorder is not None:
                self._unregister(wid, recorder)
            return
        self._runs[wid] = True
        self.unrunnable.pop(wid, None)
        if recorder is None:
            recorder = self._new_recorder(wid)
            with self._routing:
                self._recorders[wid] = recorder
        self._hub.spawn(self._drive, wid, fn, info, recovering, recorder, name=f"run:{wid}")

    def _unregister(self, wid: str, recorder: Recorder) -> None:
        """Any thread: drop a recorder; messages it buffered are routed anew."""
        with self._routing:
            if self._recorders.get(wid) is recorder:
                del self._recorders[wid]
        recorder.abandon(_Reroute())

    def _answer_query(self, wid: str, name: str, args: tuple[Any, ...], future: Future,
                      deadline: float) -> None:
        ctx = self._runs.get(wid)
        if not isinstance(ctx, WorkflowContext) and (wid in self._runs or wid in self._recorders):
            # Starting here (its history is being loaded): ask again shortly.
            if _clock.monotonic() < deadline and not self._hub.closing:
                self._hub.spawn(self._ask_again, wid, name, args, future, deadline)
            return
        if not isinstance(ctx, WorkflowContext):
            if wid in self._recently_finished:
                future.set_exception(WorkflowNotRunning(
                    f"workflow {wid!r} has finished; a finished run answers no queries"))
                return
            self._hub.spawn(self._answer_query_of_absent_run, wid, future)
            return
        handler = ctx._queries.get(name)
        if handler is None:
            known = ", ".join(sorted(ctx._queries)) or "none yet"
            future.set_exception(QueryFailed(
                f"workflow {wid!r} has no query {name!r} (it has: {known}); "
                "a query exists once the workflow called ctx.set_query for it"))
            return
        try:
            answer = ev.roundtrip(handler(*args), f"the answer of query {name!r}")
        except Exception as exc:
            future.set_exception(QueryFailed(
                f"query {name!r} of workflow {wid!r} failed: {type(exc).__name__}: {exc}"))
        else:
            future.set_result(answer)

    def _ask_again(self, wid: str, name: str, args: tuple[Any, ...], future: Future,
                   deadline: float) -> None:
        import gevent

        gevent.sleep(0.005)
        self._answer_query(wid, name, args, future, deadline)

    def _answer_query_of_absent_run(self, wid: str, future: Future) -> None:
        try:
            info = self._reader.call(self._reader.store.get_run, wid).result()
        except Exception as exc:
            future.set_exception(exc)
            return
        if info is None:
            future.set_exception(WorkflowNotFound(f"no workflow with id {wid!r} in {self._store_name()}"))
        elif info.finished:
            future.set_exception(WorkflowNotRunning(
                f"workflow {wid!r} has {info.status}; a finished run answers no queries"))
        else:
            future.set_exception(QueryFailed(
                f"workflow {wid!r} is not running in this engine (its workflow type "
                f"{info.workflow_type!r} may not be registered here); no query can be answered"))

    def _register_waiter(self, wid: str, future: Future) -> None:
        finished = self._recently_finished.get(wid)
        if finished is not None:
            future.set_result(finished)
            return
        if self._hub.closing:
            future.set_exception(_closed_while_waiting())
            return
        self._waiters.setdefault(wid, []).append(future)
        if wid not in self._runs:
            self._hub.spawn(self._check_finished, wid)

    def _check_finished(self, wid: str) -> None:
        try:
            info = self._reader.call(self._reader.store.get_run, wid).result()
        except Exception as exc:
            self._fail_waiters(wid, exc)
            return
        if info is None:
            self._fail_waiters(wid, WorkflowNotFound(f"no workflow with id {wid!r} in {self._store_name()}"))
        elif info.finished:
            self._complete_waiters(wid, info)

    def _complete_waiters(self, wid: str, info: RunInfo) -> None:
        cache = self._recently_finished
        cache[wid] = info
        if len(cache) > 10_000:
            cache.popitem(last=False)
        for future in self._waiters.pop(wid, ()):
            future.set_result(info)

    def _fail_waiters(self, wid: str, error: BaseException) -> None:
        for future in self._waiters.pop(wid, ()):
            future.set_exception(error)

    def _drive(self, wid: str, fn: Callable[..., Any], info: RunInfo, recovering: bool,
               recorder: Recorder) -> None:
        """The run's greenlet: replay, then live until the workflow ends."""
        try:
            if recovering or info.head_seq > 1:
                history = self._writer.call(self._store.read, wid).result()  # type: ignore[union-attr]
            else:
                history = [ev.Event(1, ev.WORKFLOW_STARTED, info.created_at, {
                    "workflow_type": info.workflow_type, "run_id": info.run_id, "args": info.args})]
            if history and history[-1].type in ev.TERMINAL_TYPES:
                final = self._writer.call(self._store.get_run, wid).result()  # type: ignore[union-attr]
                self._complete_waiters(wid, final)
                return
            # No switch between these lines: the first outcome delivered for
            # this run finds its context in place.
            if recovering:
                recorder.init(history[-1].seq, *message_state(history))
            ctx = WorkflowContext(self, wid, info.run_id, info.workflow_type, history, recorder)
            self._runs[wid] = ctx
            for key, fire_at in pending_timers(history).items():
                ctx._timers[key] = fire_at
                self._timers.add(fire_at, wid, key)
            final = self._execute(ctx, fn, info)
            if final is not None:
                self._complete_waiters(wid, final)
        except GreenletExit:
            raise
        except RunLost as exc:
            log.warning("run %r dropped: %s", wid, exc)
        except RunAborted as exc:
            log.error("run %r stopped: the store refused a record (%s); it stays unfinished "
                      "and resumes when an engine starts over a healthy store", wid, exc.error)
            self._fail_waiters(wid, exc.error)
        except Exception:
            log.exception("run %r: the engine failed to drive it; this is a bug in aion_green", wid)
        finally:
            self._runs.pop(wid, None)
            self._unregister(wid, recorder)

    def _execute(self, ctx: WorkflowContext, fn: Callable[..., Any], info: RunInfo) -> Optional[RunInfo]:
        wid = ctx.workflow_id
        args = info.args
        data: dict[str, Any]
        try:
            try:
                result = fn(ctx, *args)
            except (GreenletExit, RunLost, RunAborted, Cancelled):
                raise
            except NonDeterminismError:
                raise
            except Exception as exc:
                ctx._finish_check(f"the workflow to raise {type(exc).__name__}")
                raise
            ctx._finish_check("the workflow to return")
            result = ev.roundtrip(result, f"the result of workflow {wid!r}")
            event_type, data, status = ev.WORKFLOW_COMPLETED, {"result": result}, ev.COMPLETED
        except (GreenletExit, RunLost, RunAborted):
            raise
        except Cancelled as cancelled:
            event_type, status, result = ev.WORKFLOW_CANCELLED, ev.CANCELLED, None
            data = {"error": {"type": "Cancelled", "message": cancelled.reason or "cancelled",
                              "reason": cancelled.reason}}
        except BaseException as raised:
            failure: BaseException = ctx._divergence or raised
            error = error_data(failure)
            if isinstance(failure, NonDeterminismError):
                error.update(kind="nondeterminism", seq=failure.seq,
                             expected=failure.expected, found=failure.found)
                log.error("%s", failure)
            elif isinstance(failure, SerializationError):
                error["kind"] = "serialization"
            if not isinstance(failure, NonDeterminismError):
                error["traceback"] = "".join(traceback.format_exception(failure)[-8:])
            event_type, data, status, result = ev.WORKFLOW_FAILED, {"error": error}, ev.FAILED, None
        end = ctx._record(ev.NewEvent(event_type, time.time(), data), final=True)
        return RunInfo(wid, info.run_id, info.workflow_type, status, info.args,
                       result, data.get("error"), end.seq, info.created_at, end.at)


_live_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _backstop_all() -> None:
    for engine in list(_live_engines):
        engine._backstop()
