"""The Engine: the public operations, a facade over one epoch at a time.

The engine keeps its settings and its registry; everything of its life in
this process (threads, store connections, run table, the parts that drive
runs) is its :class:`~aion_green.runtime.epoch.Epoch`, built on first use
and dropped at shutdown (a fork begins a new one).

Thread contract: the public methods (``start``, ``result``, ``describe``,
``list``, ``history``, ``shutdown``...) may be called from any thread or
greenlet except the engine's own hub thread. They cross into the hub with
``HubThread.call_soon`` / ``spawn`` and wait for it with :class:`Future`.
"""
from __future__ import annotations

import atexit
import builtins
import dataclasses
import functools
import json
import logging
import os
import time
import uuid
import weakref
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    Iterable,
    Mapping,
    Optional,
    TypeVar,
    Union,
    cast,
    overload,
)

from gevent import monkey

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core import namespaces, payloads
from aion_green.core.bounds import PAUSE_TYPES, deadline_of, execution_timeout_seconds
from aion_green.core.errors import (
    AionError,
    ConfigurationError,
    EngineClosed,
    QueryFailed,
    Timeout,
    WorkflowContinuedAsNew,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
)
from aion_green.core.history import search_attributes
from aion_green.core.registry import Registry, check_arguments, signature_from, workflow_name
from aion_green.core.schedule import CatchUp, Overlap, ScheduleInfo
from aion_green.hub_thread import Future
from aion_green.runtime import global_events, retention, rewind, schedules, search
from aion_green.runtime.epoch import Epoch
from aion_green.runtime.health import Readiness, readiness
from aion_green.runtime.metrics import EngineMetrics
from aion_green.runtime.retention import retention_setting
from aion_green.runtime.runs import _closed_while_waiting, outcome
from aion_green.runtime.writer import future_done
from aion_green.store import EngineInfo, EventPage, RunInfo, StepRunning

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVarTuple, Unpack  # see workflows/steps.py

    from aion_green.workflows.context import WorkflowContext

    _Ts = TypeVarTuple("_Ts")

log = logging.getLogger("aion_green.engine")

_R = TypeVar("_R")

_allocate_lock = monkey.get_original("_thread", "allocate_lock")


class WorkflowHandle(Generic[_R]):
    """A started (or existing) workflow, by id. ``run_id`` is the run that
    ``start`` created or found (None from ``handle(id)``); the methods follow
    the workflow to its last run, as a chain that continued as new goes on
    under the same id: ``engine.result(id, run_id=handle.run_id)`` asks for
    that run alone. ``_R`` is what the workflow function returns (``Any``
    for a handle by id or by name)."""

    def __init__(self, engine: "Engine", workflow_id: str, run_id: Optional[str] = None,
                 namespace: str = namespaces.DEFAULT, result_hint: Any = None) -> None:
        self.engine = engine
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.namespace = namespace
        self._result_hint = result_hint  # the workflow function's declared result type

    def result(self, timeout: Optional[float] = None) -> _R:
        """``engine.result`` of this workflow: its result, as the workflow
        function declares it when the handle was made from the function
        (:mod:`aion_green.payloads`; else its JSON value), or
        :class:`WorkflowFailed`, or :class:`Timeout` once ``timeout`` passes."""
        result: _R = payloads.decode(
            self.engine.result(self.workflow_id, timeout=timeout, namespace=self.namespace),
            self._result_hint)
        return result

    def describe(self) -> RunInfo:
        return self.engine.describe(self.workflow_id, namespace=self.namespace)

    def history(self) -> list[ev.Event]:
        return self.engine.history(self.workflow_id, namespace=self.namespace)

    def __repr__(self) -> str:
        where = "" if self.namespace == namespaces.DEFAULT else f" in {self.namespace!r}"
        return f"<WorkflowHandle {self.workflow_id!r}{where}>"


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _in_namespace(method: _Method) -> _Method:
    """An operation on one run, named by the caller as ``workflow_id`` in
    ``namespace``: the body gets the run's key (core/namespaces.py) as
    ``workflow_id``, and the caller gets ids back, in the answer and in the
    messages of its errors. In the default namespace the key is the id, and
    nothing is rewritten."""

    @functools.wraps(method)
    def operation(self: "Engine", workflow_id: Any, *args: Any, **kwargs: Any) -> Any:
        namespace = kwargs.get("namespace")
        key = namespaces.qualify(namespace, workflow_id)
        if namespace is None or namespace == namespaces.DEFAULT:
            return method(self, key, *args, **kwargs)
        try:
            answer = method(self, key, *args, **kwargs)
        except AionError as exc:
            raise _as_named(exc, key, workflow_id) from exc.__cause__
        if isinstance(answer, RunInfo):
            return _public_run(answer)
        if isinstance(answer, builtins.list):
            return [namespaces.present(e) if isinstance(e, ev.Event) else e for e in answer]
        return answer

    return cast(_Method, operation)


def _opened(info: RunInfo) -> RunInfo:
    """``info`` with its arguments and result out of their codec's
    envelopes (core/payloads.py), for the caller; as it is when none is in one."""
    sealed = (type(info.result) is dict and payloads.ENVELOPE in info.result) or any(
        type(a) is dict and payloads.ENVELOPE in a for a in info.args or ())
    if not sealed:
        return info
    return dataclasses.replace(info, args=[payloads.decode(a) for a in info.args],
                               result=payloads.decode(info.result))


def _public_run(info: RunInfo) -> RunInfo:
    """A store's RunInfo (named by keys) as the caller names it."""
    key = info.workflow_id
    if namespaces.SEPARATOR not in key:
        return info
    return dataclasses.replace(
        info, workflow_id=namespaces.local(key), namespace=namespaces.namespace_of(key),
        parent_id=None if info.parent_id is None else namespaces.local(info.parent_id))


def _as_named(exc: AionError, key: str, workflow_id: str) -> AionError:
    """``exc`` with the run named by its id, not its key."""
    if exc.args and isinstance(exc.args[0], str):
        text = exc.args[0].replace(repr(key), repr(workflow_id)).replace(key, workflow_id)
        exc.args = (text, *exc.args[1:])
    if getattr(exc, "workflow_id", None) == key:
        exc.workflow_id = workflow_id  # type: ignore[attr-defined]
    return exc


class Engine:
    """A durable workflow engine over one store (one epoch, start to shutdown).

    ``Engine()`` uses ``./aion.db``. The engine starts lazily on first use
    (so it is fork-safe when created before a fork) and then resumes every
    unfinished run in the background. Creating or entering it never switches
    to another greenlet of the caller's hub. ``passive=True`` makes an engine
    that only looks (tools, the CLI, the replay checker): it drives, claims
    and fires nothing and takes no driver lock, but can start, signal and
    cancel for the engine that drives.

    The settings: ``url`` of the store (``sqlite:///path.db`` or
    ``postgresql://...``); ``workflows``, the ``@aion.workflow`` functions
    it drives (besides every one the process decorated); ``durable``
    (False: no fsync per commit, the WAL stays); ``step_workers``, the size
    of the step thread pool; ``kill_timeout``, how long shutdown waits for
    each killed run to unwind; ``recover`` (False: resume no unfinished run
    at start); ``busy_timeout``, how long to wait for a locked SQLite file
    or a PostgreSQL connection; ``lease``, the seconds a run stays leased
    to this engine unrenewed (PostgreSQL); ``max_resident``, the most runs
    held in memory (parked ones beyond it are evicted and replayed on
    their wake; where runs are leased, the most runs held, evicted ones
    included); ``evict_after``: a
    run parked on waits none of which is due within that many seconds (a
    timer further away; a message or a child waited on that long) leaves
    memory and is replayed on its wake, so parked runs cost memory only
    while they are likely to wake soon (every store; default 5.0 seconds;
    where runs are leased, an evicted run keeps its lease; None keeps them
    all unless ``max_resident``: a workflow body's own side
    effects, outside its steps, happen again on each replay); ``step_grace``, how
    long shutdown waits for running steps to be recorded; ``retention``,
    the age (a timedelta or seconds) past which finished runs are purged.
    """

    # The state of this engine's life in this process, from its start (on
    # first use) to its shutdown; a fork begins a new one. Unset before.
    _epoch: Epoch

    def __init__(
        self,
        url: Optional[str] = None,
        workflows: Iterable[Callable[..., Any]] = (),
        *,
        durable: bool = True,
        step_workers: int = 32,
        kill_timeout: float = 5.0,
        recover: bool = True,
        busy_timeout: float = 5.0,
        lease: float = 10.0,
        max_resident: Optional[int] = None,
        evict_after: Union[None, timedelta, float] = 5.0,
        passive: bool = False,
        step_grace: float = 10.0,
        retention: Union[None, timedelta, float] = None,
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
        # A parked run leaves memory once nothing it waits on is due within
        # this many seconds (runtime/residency.py); None: only the cap evicts.
        self.evict_after: Optional[float] = None
        if evict_after is not None:
            seconds = (evict_after.total_seconds() if isinstance(evict_after, timedelta)
                       else evict_after)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigurationError(f"evict_after={evict_after!r}: a positive number of "
                                         "seconds (or a timedelta), or None to keep parked runs "
                                         "in memory")
            self.evict_after = float(seconds)
        # A passive engine (the replay checker) reads and replays only: it
        # drives, claims and fires nothing, and takes no driver lock.
        self._passive = passive
        self._registry = Registry(workflows)
        # Finished runs older than this many seconds are purged by the
        # engine that drives (runtime/retention.py); None keeps them for ever.
        self.retention: Optional[float] = retention_setting(retention)
        # Its figures, for Prometheus (runtime/metrics.py); kept across epochs.
        self.metrics = EngineMetrics(self)
        self._lock = _allocate_lock()
        self._pid: Optional[int] = None
        self._closed = False
        # (pid, outcome) of the start in progress in this process, under
        # _lock. Whoever comes meanwhile waits for the outcome, not for
        # _lock: over PostgreSQL under patch_all, building the epoch yields
        # (psycopg waits cooperatively), and another greenlet of the same
        # thread that then blocked on the native _lock froze the thread
        # with the starter in it, for ever (tests/test_global_events.py,
        # a reader greenlet and the main one starting one engine at once).
        self._starting: Optional[tuple[int, Future]] = None

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
            starting = self._starting
            if starting is None or starting[0] != pid:
                mine = Future()
                self._starting = (pid, mine)
        if starting is not None and starting[0] == pid:
            starting[1].result()  # the starter's error, if it failed
            return
        try:
            if self._pid is not None:
                # Forked: the threads of the parent's epoch did not survive
                # the fork; that epoch is dropped, and a new one begins.
                log.info("engine used in a forked process (pid %s); starting afresh", pid)
            self._epoch = epoch = Epoch(self, pid)
            epoch.hub.call_soon(epoch.runner.on_hub_start)
            epoch.hub.call_soon(retention.begin, self, epoch)
            epoch.hub.start()
            with self._lock:
                self._pid = pid
                self._starting = None
            _live_engines.add(self)
        except BaseException as exc:
            with self._lock:
                self._starting = None
            mine.set_exception(exc)
            raise
        mine.set_result(None)
    def shutdown(self) -> None:
        """Gate new work, end every run's greenlet (they resume on the next
        start), flush the store writer, stop the threads. After it returns
        nothing of this engine appends to any history. Idempotent."""
        with self._lock:
            self._closed = True
            starting = self._starting
        if starting is not None and starting[0] == os.getpid():
            starting[1].wait()  # a start in progress: its epoch is shut down too
        with self._lock:
            started = self._pid == os.getpid()
        if not started:
            return
        epoch = self._epoch
        # Child watchers first: the hub's own stop does not know them, and a
        # watcher must not record into a parent after the epoch closed.
        epoch.child_tasks.shutdown()
        # Steps queued but not started are dropped (their runs replay them in
        # the next epoch): started after shutdown() returned, they ran again
        # there (issue 16: 2-3 times). Steps already running get step_grace
        # to return while their runs still live, so their records land and
        # the next epoch does not run them again; a run whose step returned
        # asks for its next one in vain (the pool takes no more).
        epoch.steps.close(self.step_grace)
        self._log_abandoned_steps()
        epoch.hub.shutdown()
        epoch.queries.close()
        if epoch.leased:
            epoch.leases.stop_listening()
            epoch.leases.release_leases()
        epoch.writer.close()
        epoch.reader.close()
        epoch.driver_lock.release()
        # The hub thread is gone, so its state is ours now: release callers
        # still waiting for a result of this epoch.
        closed = _closed_while_waiting()
        for futures in epoch.waiters.values():
            for future in futures:
                future.set_exception(closed)
        epoch.waiters.clear()
        _live_engines.discard(self)

    def _log_abandoned_steps(self) -> None:
        now = time.time()
        for info, (since, _, _) in list(self._epoch.in_flight.items()):
            log.warning("shutdown: step %d (%s) of workflow %r, attempt %d, still runs after "
                        "%.1f s (step_grace=%s); it is abandoned: its outcome will not be "
                        "recorded, and the next engine runs it again", info.step, info.name,
                        info.workflow_id, info.attempt, now - since, self.step_grace)

    def steps_running(self, workflow_id: str, *,
                      namespace: Optional[str] = None) -> builtins.list[StepRunning]:
        """The step attempts of ``workflow_id`` running in this engine now
        (a hung step shows here with its start time)."""
        return self._steps_running(namespaces.qualify(namespace, workflow_id))

    def _steps_running(self, workflow_id: str) -> builtins.list[StepRunning]:
        return sorted((StepRunning(info.step, info.name, info.attempt, since)
                       for info, (since, _, _) in list(self._epoch.in_flight.items())
                       if info.workflow_id == workflow_id), key=lambda s: (s.step, s.attempt))

    @property
    def driving(self) -> bool:
        """This engine drives its store's runs (over SQLite: it holds the
        driver lock; otherwise it is a client of the process that does)."""
        self._ensure_started()
        return self._epoch.sharing.driving

    def readiness(self, timeout: float = 1.0) -> Readiness:
        """Whether this engine can take work now: not shut down, its store
        answers a read within ``timeout`` seconds (through the reader: the
        hub never waits) and, over PostgreSQL, its lease is current. Never
        raises for what it finds (see :mod:`aion_green.runtime.health`)."""
        return readiness(self, timeout)

    @property
    def unrunnable(self) -> dict[str, str]:
        """Runs this engine found and does not drive, and why."""
        return self._epoch.unrunnable if hasattr(self, "_epoch") else {}

    @property
    def resident_peak(self) -> int:
        """The most runs this engine held in memory at once (under a cap)."""
        return self._epoch.residency.resident_peak if hasattr(self, "_epoch") else 0

    @property
    def evictions(self) -> int:
        """How many times a parked run left memory (under a cap)."""
        return self._epoch.residency.evictions if hasattr(self, "_epoch") else 0

    def _forget_parent(self) -> None:
        """In a forked child: drop what belongs to the parent process."""
        # A lock held by a parent's thread at the fork would never be freed.
        self._lock = _allocate_lock()
        self._starting = None  # (a start of the parent's: its pid is not ours)
        self.metrics.after_fork()
        epoch = getattr(self, "_epoch", None)
        if epoch is None:
            return
        epoch.routing_lock = _allocate_lock()
        lock = epoch.driver_lock
        if getattr(lock, "_fd", None) is not None:
            fd, lock._fd = lock._fd, None
            try:
                os.close(fd)  # the parent's descriptor keeps its flock
            except OSError:  # pragma: no cover
                pass
        _live_engines.discard(self)

    def _backstop(self) -> None:
        """Never blocks: ask the threads to stop (``__del__``/``atexit``)."""
        self._closed = True
        epoch = getattr(self, "_epoch", None)
        if epoch is not None and self._pid == os.getpid():
            epoch.child_tasks.backstop()
            epoch.hub.backstop()

    def __del__(self) -> None:
        try:
            self._backstop()
        except Exception:  # pragma: no cover - interpreter teardown
            pass

    # -- public operations -------------------------------------------------------------------
    @overload
    def start(self, fn: Callable[[WorkflowContext, Unpack[_Ts]], _R], *args: Unpack[_Ts],
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None) -> WorkflowHandle[_R]: ...
    @overload
    def start(self, fn: str, *args: Any,
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None) -> WorkflowHandle[Any]: ...

    def start(self, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], _R]], *args: Unpack[_Ts],
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None) -> WorkflowHandle[Any]:
        """Start ``fn(ctx, *args)`` as workflow ``id`` (a new uuid if None) in
        ``namespace`` (``"default"`` if None; ids are unique per namespace).

        Idempotent by id: an existing run with the same type and arguments
        is returned as it is; different ones raise :class:`WorkflowIdConflict`.

        ``execution_timeout`` (seconds or a timedelta) bounds the workflow's
        whole work, over every run of a chain that continues as new: once it
        passes, the run ends with status ``timed_out`` (no cleanup) and
        ``result()`` raises :class:`WorkflowTimedOut`. It is recorded, so it
        holds across restarts (:mod:`aion_green.runtime.bounds`).
        """
        timeout_s = (None if execution_timeout is None
                     else execution_timeout_seconds(execution_timeout, "start(execution_timeout=...)"))
        ns = namespaces.DEFAULT if namespace is None else namespaces.check_namespace(namespace)
        wid = namespaces.new_id() if id is None else namespaces.check_id(id)
        key = namespaces.key(ns, wid)
        wname = self._registry.add(fn) if callable(fn) else ev.check_key(workflow_name(fn),
                                                                          "the workflow type")
        args_json = ev.encode(payloads.encode_args(args, f"the arguments of workflow {wname}"),
                              f"the arguments of workflow {wname}")
        self._ensure_started()
        epoch = self._epoch
        found: Union[str, Callable[..., Any]] = fn  # the function, once a name is looked up
        if not callable(found) and (self._registry.has_own() or (epoch.sharing.driving and not epoch.leased)):
            # Fail early for an unknown name (a typo) in an engine that runs
            # workflows. A process given none (one that only starts and
            # signals) may start what only other engines know: runs leased
            # on PostgreSQL, or a client of another process's SQLite engine.
            found = self._registry.get(wname)
        elif not callable(found):
            found = self._registry.find(wname) or found
            if not callable(found) and not epoch.sharing.driving:
                self._check_published(wname, args)
            elif not callable(found) and epoch.leased:
                self._check_live_engines(wname, args)
        if callable(found):
            # Before anything is recorded: a run whose arguments cannot bind
            # would fail inside with a TypeError (issue 16).
            check_arguments(wname, found, args)
        created, info = epoch.routing.create_run(key, wname, args_json,
                                                 execution_timeout=timeout_s)
        if not created and (info.workflow_type != wname or not _same_args(info.args, args_json)):
            raise WorkflowIdConflict(
                f"workflow id {wid!r} already exists as {info.workflow_type}"
                f"{tuple(info.args)!r}; it cannot be started again as {wname}"
                f"{tuple(json.loads(args_json))!r}. Use another id for different work"
            )
        return WorkflowHandle(self, wid, info.run_id, ns,
                              payloads.return_hint(found) if callable(found) else None)

    @_in_namespace
    def signal(self, workflow_id: str, name: str, payload: Any = None, *,
               idempotency_key: Optional[str] = None, run_id: Optional[str] = None,
               namespace: Optional[str] = None) -> int:
        """Send message ``name`` with a JSON ``payload`` to a workflow; it is
        recorded in the workflow's history (``MessageReceived``) before this
        returns, and kept until the workflow receives it. Returns its seq.

        With ``idempotency_key``, a repeated signal (a retry after a lost
        reply, say) is recorded once, and each repeat answers the seq of
        that record, also once the run has finished (the first one may have
        ended it). A finished run refuses any other signal with
        :class:`WorkflowNotRunning` and nothing is recorded; so does a
        ``run_id`` that is not the workflow's current run."""
        ev.check_key(workflow_id, "the workflow id")
        ev.check_key(name, "the message name")
        if idempotency_key is not None:
            ev.check_key(idempotency_key, "the idempotency key")
        value = payloads.encode(payload, f"the payload of message {name!r}")[0]
        self._ensure_started()
        epoch = self._epoch
        self._require_current(workflow_id, run_id, f"message {name!r}")
        dedup = None if idempotency_key is None else f"signal/{idempotency_key}"
        try:
            if not epoch.sharing.driving or epoch.routing.held_elsewhere(workflow_id):
                data: dict[str, Any] = {"name": name, "payload": value}
                if dedup is not None:
                    data["dedup"] = dedup
                return epoch.sharing.post(workflow_id, "message", data, time.time(),
                                          ev.MESSAGE_RECEIVED, dedup)
            future = Future()
            epoch.routing.route_message(workflow_id, name, value, time.time(), dedup,
                                        future_done(future))
            return int(epoch.routing.await_recorded(
                future, f"message {name!r} to workflow {workflow_id!r}"))
        except WorkflowNotRunning:
            # A repeat of a signal the run recorded before it finished (a
            # retry after a lost reply): that record is the answer.
            earlier = None if dedup is None else self._recorded_signal(workflow_id, dedup)
            if earlier is None:
                raise
            return earlier

    def _recorded_signal(self, workflow_id: str, dedup: str) -> Optional[int]:
        """The seq of the message with idempotency ``dedup`` in the
        workflow's current run, None when it has none."""
        for event in self._call_store(self._epoch.store.read, workflow_id):
            if event.type == ev.MESSAGE_RECEIVED and event.data.get("dedup") == dedup:
                return int(event.seq)
        return None

    @_in_namespace
    def terminate(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
                  namespace: Optional[str] = None) -> None:
        """End a running run now, without cleanup: ``WorkflowCancelled``
        (error type ``Terminated``) is recorded before this returns, no code
        of the workflow runs again, and nothing of it is recorded after.
        Works for any running run: one whose type no engine knows, one
        parked or evicted, one driven here or elsewhere. Its children run
        on. A finished run refuses with :class:`WorkflowNotRunning` (but one
        already terminated is fine). See :mod:`aion_green.runtime.termination`."""
        ev.check_key(workflow_id, "the workflow id")
        if not isinstance(reason, str):
            raise ConfigurationError(f"a terminate reason must be a string, got {reason!r}")
        self._ensure_started()
        self._require_current(workflow_id, run_id, "terminate")
        self._epoch.termination.terminate(workflow_id, reason)

    @_in_namespace
    def pause(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
              namespace: Optional[str] = None) -> int:
        """Pause a running run: ``WorkflowPaused`` is recorded before this
        returns (its seq). Until :meth:`unpause`, the run starts no step and
        fires no timer, and none of its waits returns: messages sent to it
        are recorded and kept for it. A step already running finishes and
        is recorded. The pause holds across restarts; terminate and the
        execution timeout still end a paused run. A finished run refuses
        with :class:`WorkflowNotRunning`. See :mod:`aion_green.runtime.bounds`."""
        return self._pause(workflow_id, True, reason, run_id)

    @_in_namespace
    def unpause(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
                namespace: Optional[str] = None) -> int:
        """Let a paused run go on: ``WorkflowUnpaused`` is recorded before
        this returns (its seq); timers that came due meanwhile fire now, and
        messages recorded meanwhile are delivered. (``resume`` is the
        rewind of a failed run: :meth:`resume`.)"""
        return self._pause(workflow_id, False, reason, run_id)

    def _pause(self, workflow_id: str, paused: bool, reason: str, run_id: Optional[str]) -> int:
        what = "pause" if paused else "unpause"
        ev.check_key(workflow_id, "the workflow id")
        if not isinstance(reason, str):
            raise ConfigurationError(f"{what}(reason=...): a reason is a string, got "
                                     f"{type(reason).__name__}")
        self._ensure_started()
        self._require_current(workflow_id, run_id, f"the {what}")
        return self._epoch.bounds.request(workflow_id, paused, reason)

    @_in_namespace
    def cancel(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
               namespace: Optional[str] = None) -> None:
        """Request cancellation: ``CancelRequested`` is recorded before this
        returns; the workflow sees :class:`aion.Cancelled` at its current or
        next wait, may clean up (even run steps), and ends
        ``WorkflowCancelled``. Asking twice records once; a finished run
        refuses with :class:`WorkflowNotRunning`."""
        ev.check_key(workflow_id, "the workflow id")
        if not isinstance(reason, str):
            raise ConfigurationError(f"a cancel reason is a string, got {type(reason).__name__}")
        self._ensure_started()
        epoch = self._epoch
        self._require_current(workflow_id, run_id, "the cancel request")
        future = Future()
        if epoch.sharing.driving and not epoch.routing.held_elsewhere(workflow_id):
            epoch.routing.route_cancel(workflow_id, reason, future_done(future))
        elif epoch.leased and epoch.termination.lease_holder(workflow_id) is None:
            # Nobody holds it (no engine knows its type, say): its owner's
            # inbox would never be read, and this waited for ever (issue 16).
            # Recorded at its head, the request is seen by whoever claims it.
            try:
                future.set_result(epoch.writer.call(epoch.store.request_cancel, workflow_id, reason,
                                                    time.time()).result())
            except WorkflowNotRunning as exc:
                future.set_exception(exc)
        else:
            try:
                future.set_result(epoch.sharing.post(workflow_id, "cancel", {"reason": reason}, time.time(),
                                             ev.CANCEL_REQUESTED, None))
            except WorkflowNotRunning as exc:
                future.set_exception(exc)
        try:
            epoch.routing.await_recorded(future, f"the cancel request of workflow {workflow_id!r}")
        except WorkflowNotRunning:
            # Asking again once the run ended on an earlier request is fine.
            if any(e.type == ev.CANCEL_REQUESTED for e in self._history(workflow_id)):
                return
            raise
        if epoch.sharing.driving and workflow_id in epoch.unrunnable:
            # No code of it can run here to see the request (issue 16: it
            # stayed running for ever): it ends now, without cleanup.
            ended = Future()
            epoch.hub.call_soon(epoch.termination.end_if_unrunnable, workflow_id, reason, future_done(ended))
            try:
                ended.result()
            except WorkflowNotRunning:
                pass

    @_in_namespace
    def query(self, workflow_id: str, name: str, *args: Any, timeout: float = 10.0,
              run_id: Optional[str] = None, namespace: Optional[str] = None) -> Any:
        """Ask a live run: ``handler(*args)`` of its ``ctx.set_query(name,
        handler)``, answered while it waits; never recorded. Raises
        :class:`QueryFailed` (the handler raised, the name is unknown, the run
        is not live here), :class:`WorkflowNotRunning` (it has finished) or
        :class:`Timeout` (no answer within ``timeout``: the handler runs on
        a query thread, so a slow one holds up only its own run, and only
        until this deadline)."""
        ev.check_key(workflow_id, "the workflow id")
        ev.check_key(name, "the query name")
        self._ensure_started()
        epoch = self._epoch
        self._require_current(workflow_id, run_id, f"query {name!r}")
        if not epoch.sharing.driving:
            raise QueryFailed(
                f"query {name!r} to workflow {workflow_id!r}: the runs of {self._store_name()} are "
                f"driven by {epoch.driver_lock.holder()}, and only the live run answers queries; "
                "ask through that process (its HTTP API, say)")
        pending = epoch.queries.ask(workflow_id, name, args, timeout)
        try:
            return pending.future.result(timeout)
        except Timeout:
            raise pending.timed_out() from None

    def poke(self) -> None:
        """Re-check due timers now; for tests that move the clock (freezegun).
        Never blocks."""
        self._ensure_started()
        epoch = self._epoch
        if epoch.sharing.driving:
            epoch.timers.poke()

    @overload
    def schedule(self, schedule_id: str, fn: Callable[[WorkflowContext, Unpack[_Ts]], object],
                 *args: Unpack[_Ts], cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> WorkflowHandle[Any]: ...
    @overload
    def schedule(self, schedule_id: str, fn: str, *args: Any, cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> WorkflowHandle[Any]: ...

    def schedule(self, schedule_id: str, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], object]],
                 *args: Unpack[_Ts], cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> WorkflowHandle[Any]:
        """Start ``fn(ctx, *args)`` on a trigger, durably: at each fire time
        of ``cron`` (five fields, UTC unless ``timezone``) or ``every`` (a
        timedelta or seconds, from ``start_at`` or from now), as run
        ``"<schedule_id>@<fire time>"``. ``overlap`` (skip, buffer_one,
        cancel_previous, allow_all) says what a fire does while the last run
        still runs; ``catch_up`` (all, one, skip) which fires missed while no
        engine ran still start (see :mod:`aion_green.runtime.schedules`). Idempotent
        by id; another spec under the id raises :class:`WorkflowIdConflict`.
        The handle is the schedule's own run (type ``"aion.schedule"``)."""
        return schedules.schedule(self, schedule_id, fn, args, cron=cron, every=every,
                                  start_at=start_at, timezone=timezone, overlap=overlap,
                                  catch_up=catch_up, namespace=namespace)

    def unschedule(self, schedule_id: str, timeout: Optional[float] = 30.0, *,
                   namespace: Optional[str] = None) -> None:
        """Cancel schedule ``schedule_id`` and wait (up to ``timeout``) for its
        end: it fires no more. Runs it started go on."""
        schedules.unschedule(self, schedule_id, timeout, namespace)

    def pause_schedule(self, schedule_id: str, note: str = "", *,
                       namespace: Optional[str] = None) -> None:
        """Pause schedule ``schedule_id``: from its next wait it fires nothing
        until resumed (a trigger still starts a run). Recorded in its
        history (a control message) before this returns; ``note`` says why,
        shown by :meth:`describe_schedule`."""
        if not isinstance(note, str):
            raise ConfigurationError(f"pause_schedule(note={note!r}): a note is a string")
        schedules.control(self, schedule_id, "pause", namespace, note=note)

    def resume_schedule(self, schedule_id: str, *, namespace: Optional[str] = None) -> None:
        """Resume a paused schedule: its fires missed while paused go by its
        ``catch_up`` policy (see :mod:`aion_green.runtime.schedules`)."""
        schedules.control(self, schedule_id, "resume", namespace)

    def trigger_schedule(self, schedule_id: str, *, namespace: Optional[str] = None) -> None:
        """Fire schedule ``schedule_id`` once now (run ``"<id>@<now>"``),
        under its ``overlap`` policy, paused or not."""
        schedules.control(self, schedule_id, "trigger", namespace)

    def update_schedule(self, schedule_id: str, *, cron: Optional[str] = schedules._UNSET,
                        every: Union[None, timedelta, float] = schedules._UNSET,
                        args: Optional[builtins.list[Any]] = schedules._UNSET,
                        start_at: Optional[datetime] = schedules._UNSET,
                        timezone: Optional[str] = schedules._UNSET,
                        overlap: Overlap = schedules._UNSET, catch_up: CatchUp = schedules._UNSET,
                        namespace: Optional[str] = None) -> None:
        """Change a schedule's spec: only what is given changes (``cron``
        replaces an interval and ``every`` a cron). Checked as
        :meth:`schedule` checks a new one; the next fires follow the new
        spec, from the update on."""
        spec = schedules.update_spec(self, schedule_id, {
            "cron": cron, "every": every, "args": args, "start_at": start_at,
            "timezone": timezone, "overlap": overlap, "catch_up": catch_up}, namespace)
        schedules.control(self, schedule_id, "update", namespace, spec=spec)

    def schedules(self, *, include_deleted: bool = False, limit: int = 100,
                  after_id: Optional[str] = None,
                  namespace: Optional[str] = None) -> builtins.list[ScheduleInfo]:
        """The schedules of the store, ordered by id (active ones; with
        ``include_deleted``, unscheduled ones too), each with its spec and,
        where this engine drives it, its next fire time."""
        return schedules.schedules(self, include_deleted, limit, after_id, namespace)

    def describe_schedule(self, schedule_id: str, *,
                          namespace: Optional[str] = None) -> ScheduleInfo:
        """One schedule (:class:`WorkflowNotFound` when the id names none)."""
        return schedules.describe_schedule(self, schedule_id, namespace)

    def purge(self, older_than: Union[timedelta, float], *, limit: Optional[int] = None,
              namespace: Optional[str] = None) -> int:
        """Delete from the store the runs that ended more than ``older_than``
        (a timedelta or seconds; 0: every finished run) ago, at most
        ``limit`` of them (None: all), of every namespace or of
        ``namespace``, with everything of their ids; returns how many.
        Never a running run; a chain of continue-as-new goes whole with its
        last run; a child by its own end. A purged id is unknown afterwards
        (:class:`WorkflowNotFound`) and may be started again. In
        transactions of 500 runs (see :mod:`aion_green.runtime.retention`)."""
        return retention.purge(self, older_than, limit, namespace)

    def engines(self) -> builtins.list[EngineInfo]:
        """The engines at work on this store: on PostgreSQL every engine
        whose entry is current, with the running runs each leases; on
        SQLite this engine alone (the file's driver, or its client)."""
        self._ensure_started()
        store = self._epoch.store
        if not self._epoch.leased:
            return [EngineInfo(self.engine_id, True, None, None, tuple(self.workflow_types()))]
        rows = self._call_store(store.engines_at_work, time.time())
        return [EngineInfo(engine_id, engine_id == self.engine_id, until, leased, tuple(types))
                for engine_id, until, types, leased in rows]

    def workflow_types(self) -> builtins.list[str]:
        """The names of the workflow types this engine can run (given to it,
        or decorated with ``@aion.workflow`` in this process), sorted."""
        return sorted(self._registry.names())

    def handle(self, workflow_id: str, *, namespace: Optional[str] = None) -> WorkflowHandle[Any]:
        ns = namespaces.DEFAULT if namespace is None else namespaces.check_namespace(namespace)
        return WorkflowHandle(self, namespaces.check_id(workflow_id), namespace=ns)

    @_in_namespace
    def result(self, workflow_id: str, timeout: Optional[float] = None, *,
               run_id: Optional[str] = None, namespace: Optional[str] = None) -> Any:
        """Wait for the workflow's end (the last run of a chain that
        continued as new); return its result or raise
        :class:`WorkflowFailed` (or :class:`Timeout` when ``timeout`` passes).
        With ``run_id``, that run's end: an earlier run of a chain raises
        :class:`WorkflowContinuedAsNew`."""
        ev.check_key(workflow_id, "the workflow id")
        if timeout is not None and not timeout >= 0:
            raise ConfigurationError(f"result(timeout={timeout!r}): a timeout is a number of "
                                     "seconds, 0 or more (None waits for ever)")
        if run_id is not None:
            ev.check_key(run_id, "result(run_id=...)")
        self._ensure_started()
        if run_id is not None:
            return self._result_of_run(workflow_id, run_id, timeout)
        return outcome(namespaces.local(workflow_id), self._wait_end(workflow_id, timeout))

    def _wait_end(self, workflow_id: str, timeout: Optional[float]) -> RunInfo:
        """The RunInfo of the workflow's end, once recorded (the last run of
        its chain); :class:`Timeout` after ``timeout`` seconds."""
        epoch = self._epoch
        # Lately ended: answered without a crossing to the hub (runtime/rewind.py forgets a resumed id).
        info: Optional[RunInfo] = (None if epoch.purges_running
                                   else epoch.recently_finished.get(workflow_id))
        if info is not None:
            return info
        future = Future()
        epoch.hub.call_soon(epoch.runner.register_waiter, workflow_id, future)
        deadline = None if timeout is None else _clock.monotonic() + timeout
        # Wait in slices: a registration that raced with shutdown() is never
        # served, and must not leave the caller waiting forever.
        while not future.done():
            left = None if deadline is None else deadline - _clock.monotonic()
            if left is not None and left <= 0:
                # Its waiter goes (a client polling a run that waits for days
                # left one behind per poll), and the store says whether the
                # id exists at all, or ended as the time ran out.
                epoch.hub.call_soon(epoch.runner.drop_waiter, workflow_id, future)
                info = self._call_store(epoch.store.get_run, workflow_id)
                if info is None:
                    raise WorkflowNotFound(
                        f"no workflow with id {workflow_id!r} in {self._store_name()}")
                if info.finished:
                    return info
                raise Timeout(
                    f"workflow {workflow_id!r} did not finish within {timeout} s; "
                    "it goes on running: call result() again to keep waiting"
                )
            if not future.wait(1.0 if left is None else min(left, 1.0)) and self._closed:
                future.set_exception(_closed_while_waiting())
        end: RunInfo = future.result()
        return end

    def _result_of_run(self, workflow_id: str, run_id: str, timeout: Optional[float]) -> Any:
        """``result(id, run_id=...)``: the end of that run alone."""
        deadline = None if timeout is None else _clock.monotonic() + timeout
        while True:
            info = self._run_of(workflow_id, run_id)
            if info.finished:
                return _run_outcome(info)
            left = None if deadline is None else deadline - _clock.monotonic()
            if left is not None and left <= 0:
                raise Timeout(f"run {run_id!r} of workflow {workflow_id!r} did not finish within "
                              f"{timeout} s; it goes on running: call result() again to keep "
                              "waiting")
            try:
                # In slices: should the run continue as new, the wait for
                # the chain's end would outlast it (the loop reads it again).
                end = self._wait_end(workflow_id, 1.0 if left is None else min(left, 1.0))
            except Timeout:
                continue
            if end.run_id == run_id:
                return _run_outcome(end)

    def _run_of(self, workflow_id: str, run_id: Optional[str]) -> RunInfo:
        """Run ``run_id`` of the workflow (None: its current run): the run
        row, or an earlier run of its chain read back from its archived
        history. :class:`WorkflowNotFound` for an unknown id or run."""
        info: Optional[RunInfo] = self._call_store(self._epoch.store.get_run, workflow_id)
        if info is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r} in {self._store_name()}")
        if run_id is None or run_id == info.run_id:
            return info
        events = self._call_store(self._epoch.store.read, workflow_id, 0, None, run_id)
        if not events:
            raise WorkflowNotFound(
                f"workflow {workflow_id!r} has no run {run_id!r} in {self._store_name()} (its "
                f"current run is {info.run_id!r})")
        first, last = events[0], events[-1]
        status = ev.STATUS_OF_TERMINAL.get(last.type, ev.RUNNING)
        return RunInfo(
            workflow_id, run_id, first.data.get("workflow_type", info.workflow_type), status,
            first.data.get("args", []),
            last.data.get("result") if status == ev.COMPLETED else None,
            last.data.get("error") if status in (ev.FAILED, ev.CANCELLED, ev.TIMED_OUT) else None,
            last.seq, first.at, last.at,
            next_run_id=last.data.get("run_id") if status == ev.CONTINUED else None,
            parent_id=info.parent_id, search_attributes=search_attributes(events))

    def _require_current(self, workflow_id: str, run_id: Optional[str], what: str) -> None:
        """A request that names run ``run_id`` is for the workflow's current
        run: refused (:class:`WorkflowNotRunning`) before anything is
        recorded when that run is an earlier one, not found when unknown."""
        if run_id is None:
            return
        ev.check_key(run_id, "the run id")
        current = self._call_store(self._epoch.store.get_run, workflow_id)
        if current is None or current.run_id == run_id:
            return  # (an unknown id is refused by the request itself, as without a run id)
        earlier = self._run_of(workflow_id, run_id)  # WorkflowNotFound for a run never seen
        raise WorkflowNotRunning(
            f"{what} for run {run_id!r} of workflow {workflow_id!r}: that run "
            f"{'continued as new' if earlier.status == ev.CONTINUED else 'ended'}; the current "
            f"run is {current.run_id!r}. Nothing was recorded")

    @_in_namespace
    def describe(self, workflow_id: str, *, run_id: Optional[str] = None,
                 namespace: Optional[str] = None) -> RunInfo:
        """What the store knows of the run; for a running run that this
        engine cannot drive, ``unrunnable`` says why (its type unknown here,
        its history unreadable). With ``run_id``, that run of the workflow:
        an earlier run of a chain that continued as new has the status
        ``continued`` and names the next run (``next_run_id``)."""
        ev.check_key(workflow_id, "the workflow id")
        if run_id is not None:
            ev.check_key(run_id, "describe(run_id=...)")
        self._ensure_started()
        epoch = self._epoch
        info = _opened(self._run_of(workflow_id, run_id))
        if run_id is not None and info.finished:
            return info
        info = self._bounds_of(info)
        why = epoch.unrunnable.get(workflow_id)
        if why is None and epoch.leased and not info.finished:
            why = self._unrunnable_on_postgres(info)
        if why is not None and not info.finished:
            info = dataclasses.replace(info, unrunnable=why)
        running = self._steps_running(workflow_id) if epoch.in_flight else None
        return dataclasses.replace(info, steps_running=tuple(running)) if running else info

    def _bounds_of(self, info: RunInfo) -> RunInfo:
        """``info`` with its execution deadline and, running, whether it is
        paused: both read from its history (runtime/bounds.py)."""
        store = self._epoch.store
        events = self._call_store(store.read, info.workflow_id, 0, 1)
        if not events:
            return info
        paused = not info.finished and self._call_store(
            store.last_of_types, info.workflow_id, tuple(PAUSE_TYPES)) == ev.WORKFLOW_PAUSED
        return dataclasses.replace(info, execution_deadline=deadline_of(events[0].data),
                                   paused=paused)

    def list(self, status: Optional[str] = None,
             workflow_type: Union[None, str, Callable[..., Any]] = None,
             limit: int = 100, after_id: Optional[str] = None, *,
             started_after: Optional[search.Moment] = None,
             started_before: Optional[search.Moment] = None,
             parent: Optional[str] = None,
             attributes: Optional[Mapping[str, Any]] = None,
             namespace: Optional[str] = None,
             id_prefix: Optional[str] = None) -> builtins.list[RunInfo]:
        """Runs ordered by id, a page of at most ``limit`` (``after_id``: the
        last id of the previous page), filtered by status (one of
        running/completed/failed/cancelled/continued), workflow type, the
        current run's start (``started_after <= start < started_before``, an
        aware datetime or seconds since the epoch), ``parent`` (the workflow
        id that started them as children) and search ``attributes`` (name ->
        value, all must match by text form: see :mod:`aion_green.runtime.search`)
        and ``id_prefix`` (the ids that begin with it), in ``namespace``
        (``"default"`` if None). Each :class:`RunInfo` names its ``parent_id``
        and its ``search_attributes``."""
        _count(limit, "list(limit=...)", 1)
        ns = namespaces.DEFAULT if namespace is None else namespaces.check_namespace(namespace)
        if after_id is not None:
            after_id = namespaces.key(ns, namespaces.check_id(after_id, "list(after_id=...)"))
        status, wtype = _status_and_type(status, workflow_type)
        filters = search.run_filter(started_after, started_before, parent, attributes, "list", ns,
                                    id_prefix)
        self._ensure_started()
        runs = self._call_store(self._epoch.store.list_runs, status, wtype, limit, after_id,
                                filters=filters)
        runs = [_opened(r) for r in runs]
        return runs if ns == namespaces.DEFAULT else [_public_run(r) for r in runs]

    def count(self, status: Optional[str] = None,
              workflow_type: Union[None, str, Callable[..., Any]] = None, *,
              started_after: Optional[search.Moment] = None,
              started_before: Optional[search.Moment] = None,
              parent: Optional[str] = None,
              attributes: Optional[Mapping[str, Any]] = None,
              namespace: Optional[str] = None, id_prefix: Optional[str] = None) -> int:
        """How many runs :meth:`list` with the same filters finds, over all its pages."""
        status, wtype = _status_and_type(status, workflow_type)
        filters = search.run_filter(started_after, started_before, parent, attributes, "count",
                                    namespace, id_prefix)
        self._ensure_started()
        return int(self._call_store(self._epoch.store.count_runs, status, wtype, filters=filters))

    def count_by_status(self, workflow_type: Union[None, str, Callable[..., Any]] = None, *,
                        started_after: Optional[search.Moment] = None,
                        started_before: Optional[search.Moment] = None,
                        parent: Optional[str] = None,
                        attributes: Optional[Mapping[str, Any]] = None,
                        namespace: Optional[str] = None,
                        id_prefix: Optional[str] = None) -> dict[str, int]:
        """:meth:`count` per status: ``{"running": 3, "completed": 10, ...}``,
        every status named (0 for none)."""
        _, wtype = _status_and_type(None, workflow_type)
        filters = search.run_filter(started_after, started_before, parent, attributes,
                                    "count_by_status", namespace, id_prefix)
        self._ensure_started()
        return dict(self._call_store(self._epoch.store.count_runs_by_status, wtype,
                                     filters=filters))

    @_in_namespace
    def history(self, workflow_id: str, after_seq: int = 0,
                run_id: Optional[str] = None, limit: Optional[int] = None, *,
                namespace: Optional[str] = None) -> builtins.list[ev.Event]:
        """The events of the workflow's current run, or of run ``run_id`` (an
        earlier run that continued as new: its ``WorkflowStarted`` names the
        one before, in ``continued_from``)."""
        return self._history(workflow_id, after_seq, run_id, limit)

    def _history(self, workflow_id: str, after_seq: int = 0, run_id: Optional[str] = None,
                 limit: Optional[int] = None) -> builtins.list[ev.Event]:
        ev.check_key(workflow_id, "the workflow id")
        _count(after_seq, "history(after_seq=...)", 0)
        if limit is not None:
            _count(limit, "history(limit=...)", 1)
        if run_id is not None:
            ev.check_key(run_id, "history(run_id=...)")
        self._ensure_started()
        events: builtins.list[ev.Event] = self._call_store(self._epoch.store.read, workflow_id,
                                                           after_seq, limit, run_id)
        if not events and after_seq == 0:
            which = "" if run_id is None else f" with a run {run_id!r}"
            raise WorkflowNotFound(
                f"no workflow with id {workflow_id!r}{which} in {self._store_name()}")
        return events

    def events(self, after: Optional[int] = None, *,
               types: global_events.Names = None, statuses: global_events.Names = None,
               limit: int = 100, namespace: Optional[str] = None) -> EventPage:
        """A page of the events of every run of ``namespace`` (``"default"``
        if None) in commit order, the store-wide stream
        (:mod:`aion_green.runtime.global_events`): the events after the
        global cursor ``after`` (0: from the first; None: none yet, only the
        cursor of now), filtered by event ``types`` and by the current
        ``statuses`` of their runs. Follow ``page.next``."""
        return global_events.read_page(self, after, types, statuses, limit, namespace)

    def event_head(self) -> int:
        """The global position of the last recorded event (0 before any)."""
        return global_events.event_head(self)

    @_in_namespace
    def fork(self, workflow_id: str, from_seq: int, *, id: Optional[str] = None,  # noqa: A002
             run_id: Optional[str] = None, namespace: Optional[str] = None) -> WorkflowHandle[Any]:
        """A new workflow ``id`` (in the same namespace) that replays events
        2..``from_seq`` of a run of ``workflow_id`` (unchanged), then goes
        live (:mod:`aion_green.runtime.rewind`)."""
        new_id = None if id is None else namespaces.within(namespaces.namespace_of(workflow_id), id)
        return self._public_handle(rewind.fork(self, workflow_id, from_seq, new_id, run_id))

    @_in_namespace
    def resume(self, workflow_id: str, from_seq: Optional[int] = None, *,
               namespace: Optional[str] = None) -> WorkflowHandle[Any]:
        """A failed or cancelled run, archived, begins anew in place from its
        events 2..``from_seq`` (default: :mod:`aion_green.runtime.rewind`)."""
        return self._public_handle(rewind.resume(self, workflow_id, from_seq))

    def _public_handle(self, handle: WorkflowHandle[Any]) -> WorkflowHandle[Any]:
        """A handle the runtime made with a key, as the caller names it."""
        key = handle.workflow_id
        return WorkflowHandle(self, namespaces.local(key), handle.run_id,
                              namespaces.namespace_of(key))

    def _store_name(self) -> str:
        return getattr(self._epoch.store, "path", None) or str(self.url)

    def _check_published(self, wname: str, args: tuple[Any, ...]) -> None:
        """A client of a SQLite file starting a type it does not know: the
        ``aion-green worker`` that drives the file publishes its types and
        their parameters (``<db>.worker``); refuse what it cannot run
        (issue 16: the run stayed running for ever)."""
        epoch = self._epoch
        from aion_green.runtime.sharing import probe_driver

        path = getattr(epoch.store, "path", None)
        if not path or path == ":memory:" or epoch.leased:
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
        engines = self._call_store(self._epoch.store.live_engines, time.time())
        # (This engine's own entry: it does not know the type, and is not one
        # of the others; it was left out only while its start had not yet
        # published it.)
        engines.pop(self.engine_id, None)
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
        engines = self._call_store(self._epoch.store.live_engines, time.time())
        if not engines or any(info.workflow_type in types for types in engines.values()):
            return None
        return (f"none of the {len(engines)} engine(s) running over this database knows workflow "
                f"type {info.workflow_type!r}; start one that registers it, or end the run "
                "with terminate")

    def _call_store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a read of the reader's store (``fn`` names a method of the
        writer's store; the reader's own instance runs it)."""
        epoch = self._epoch
        method = getattr(epoch.reader.store, fn.__name__)
        if kwargs:
            method = functools.partial(method, **kwargs)
        return epoch.reader.call(method, *args).result()

def _status_and_type(status: Optional[str], workflow_type: Union[None, str, Callable[..., Any]]
                     ) -> tuple[Optional[str], Optional[str]]:
    if status is not None and status not in ev.STATUSES:
        raise ConfigurationError(
            f"unknown status {status!r}; choose one of {', '.join(ev.STATUSES)}"
        )
    return status, None if workflow_type is None else workflow_name(workflow_type)


def _run_outcome(info: RunInfo) -> Any:
    """What ``result(id, run_id=...)`` gives for a finished run."""
    if info.status == ev.CONTINUED:
        raise WorkflowContinuedAsNew(info.workflow_id, info.run_id, info.next_run_id)
    return outcome(info.workflow_id, info)


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


# The store threads held across a fork (_before_fork), released after it.
_held_for_fork: list[Any] = []


def _before_fork() -> None:
    """Before ``os.fork()``: keep every live engine's store threads between
    two operations until the fork is done. A fork while one of them was
    inside SQLite copied SQLite's global mutexes held (its allocator's), and
    the child's first SQLite call (its engine's new store) waited forever.
    A writer that does not come out within 5 s (waiting out a full disk)
    is not waited for; the fork goes on, and says so."""
    pid = os.getpid()
    for engine in list(_live_engines):
        epoch = getattr(engine, "_epoch", None)
        if engine._pid != pid or epoch is None:
            continue
        for writer in (epoch.writer, epoch.reader):
            if writer.hold_for_fork(5.0):
                _held_for_fork.append(writer)
            else:
                log.warning("fork while the engine's %s was busy for 5 s: the child's first "
                            "use of SQLite may hang", writer.name)


def _after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release_after_fork()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn's workers under ``--preload``): no thread of
    the parent's engines survived. Each is started afresh on its next use
    (``_ensure_started`` sees the new pid); the child lets go of the
    parent's driver lock, which the parent still holds."""
    _after_fork_in_parent()  # (the child's copies of the held locks)
    for engine in list(_live_engines):
        engine._forget_parent()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _same_args(recorded: Any, args_json: str) -> bool:
    """Whether a start's arguments are those recorded: compared as values,
    out of their codec's envelopes (an encrypting codec seals the same value
    differently each time)."""
    given = json.loads(args_json)
    if recorded == given:
        return True
    if not isinstance(recorded, list) or len(recorded) != len(given):
        return False
    return all(payloads.decode(a) == payloads.decode(b) for a, b in zip(recorded, given))
