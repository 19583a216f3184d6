"""The ``ctx`` a workflow receives: every call that touches the outside world
or the clock goes through it, so it can be recorded and replayed.

A context belongs to one run and is used only by that run's greenlet on the
engine's hub thread.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import random as _random
import time
import uuid as _uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterator,
    NamedTuple,
    NoReturn,
    Optional,
    Sequence,
    TypeVar,
    Union,
    overload,
)

import gevent
from gevent.hub import Waiter
from greenlet import GreenletExit

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core import namespaces, payloads
from aion_green.core.errors import (
    AionError,
    Cancelled,
    FencedOut,
    NonDeterminismError,
    SequenceConflict,
    StepError,
    StoreError,
    Timeout,
)
from aion_green.core.history import CANCEL_KEY, run_key
from aion_green.workflows import children, fanout, messages, search, steps, versioning
from aion_green.workflows.children import ChildHandle
from aion_green.workflows.fanout import Step
from aion_green.workflows.host import Host, RunLog
from aion_green.workflows.replay import FirstRecorded, HistoryCursor, Own, reached

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import TypeVarTuple, Unpack  # see steps.py

    from aion_green.workflows.supervision import ChildSpec, Strategy

    _Ts = TypeVarTuple("_Ts")

log = logging.getLogger("aion_green.context")

_T = TypeVar("_T")
_R = TypeVar("_R")

_TIMER_STARTED = frozenset({ev.TIMER_STARTED})
_TIMER_CANCELLED = frozenset({ev.TIMER_CANCELLED})


class _ScopeExpired(BaseException):
    """The deadline of the ``ctx.timeout`` block with this timer key won a
    wait inside it; unwinds to that block (a BaseException, so the block's
    own ``except Exception`` cannot stop it)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``: unwinds the workflow (its
    ``finally`` blocks run) to end the run and begin the next one."""

    def __init__(self, args: list[Any]) -> None:
        super().__init__("continue as new")
        self.args_value = args


class RunLost(BaseException):
    """Another writer owns this run (``SequenceConflict``): unwind the
    workflow without recording anything more. Never seen by user code's
    ``except Exception``."""


class RunAborted(BaseException):
    """The store refused a record for a reason that is not passing (not
    ``StoreUnavailable``): unwind the run without recording anything more,
    so a workflow's ``except Exception`` can never go on past a record that
    was not made (a later replay would find a hole). The run stays
    unfinished in the store and resumes on a later start."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error




class WorkflowInfo(NamedTuple):
    """``ctx.info``: who this run is. ``attempt`` counts the times the run
    began in place: 1, plus one per ``engine.resume`` of it after it failed
    or was cancelled; ``generation`` its number in its chain (1, plus one
    per ``continue_as_new``); ``parent_id`` the workflow id of the run that
    started it (a child's), else None; ``started_at`` the time its
    ``WorkflowStarted`` was recorded (aware, UTC: the same on replay)."""

    workflow_id: str
    run_id: str
    namespace: str
    workflow_type: str
    attempt: int
    generation: int
    parent_id: Optional[str]
    started_at: datetime


class _Rare:
    """A run's state that only some runs need (sends, children, supervisors,
    ``ctx.random``, tracing), made on first use: one name on the context for
    all of it (see WorkflowContext.__init__)."""

    __slots__ = ("send_ordinal", "child_ordinal", "supervisor_ordinal", "children_ready",
                 "rng", "trace")

    def __init__(self) -> None:
        self.send_ordinal = 0
        self.child_ordinal = 0
        self.supervisor_ordinal = 0
        # Children whose run is known to exist (created or found by their
        # spawn-recovery task in this epoch).
        self.children_ready: set[str] = set()
        self.rng: Optional[_random.Random] = None
        # The run span's OpenTelemetry context (runtime/tracing.py); opaque here.
        self.trace: object = None


class WorkflowContext:
    """The workflow's handle on the engine (``ctx``)."""

    def __init__(self, host: Host, workflow_id: str, run_id: str,
                 workflow_type: str, history: Sequence[ev.Event], recorder: RunLog) -> None:
        # The engine, as far as this run may reach it (workflows/host.py).
        self._host = host
        # The run's key (its id within its namespace: core/namespaces.py),
        # which names it to the engine; the id and namespace, which name it
        # to the workflow's code.
        self._key = workflow_id
        self.workflow_id = namespaces.local(workflow_id)
        self.run_id = run_id
        self.workflow_type = workflow_type
        self._cursor = HistoryCursor(self.workflow_id, history)
        # The run's number within its workflow id (continue_as_new adds one).
        self.generation: int = int(history[0].data.get("generation", 1))
        self._recorder = recorder
        # The doorbell: rung (on the hub thread) whenever an event of this run
        # is recorded or its recording failed. A wake is only a doorbell: the
        # waiter re-reads the history.
        self._bell = Waiter()
        self._parked = False  # Invariant: true only while the greenlet waits on _bell
        # Step attempts started whose record has not reached this context
        # yet, and steps waiting to start (such a run stays in memory:
        # runtime/residency.py _evictable).
        self._busy = 0
        self._step_ordinal = 0
        self._timer_ordinal = 0
        # Timers started and not yet fired or cancelled (key -> fire_at), as
        # this run knows them; the timer service asks here before firing.
        self._timers: dict[str, float] = {}
        self._received: dict[str, int] = {}  # messages consumed per name
        self._patches: dict[str, bool] = {}  # ctx.patched answers, once per id
        # Search attributes as this run knows them (workflows/search.py):
        # carried over by its WorkflowStarted, then its own upserts.
        self._search_attributes: dict[str, Any] = dict(
            history[0].data.get("search_attributes") or {})
        self._queries: dict[str, Callable[..., Any]] = {}
        # Set here though most runs never change them: CPython keeps a
        # context's attributes inline (no dict of its own: 1.6 KB less, and
        # one object less for the cyclic GC per resident run) only while
        # every name a context sets is among the class's shared keys, which
        # take at most 29 names and stop taking new ones once a few
        # instances exist (3.11-3.13). So every context sets all its names
        # here, and no other; what can be derived is a property (namespace,
        # the run's keys), and what only some runs need (sends, children,
        # supervisors, ctx.random, tracing) is one _Rare made on first use.
        # 26 names (tests/test_context_names.py).
        self._parent_id: Optional[str] = None  # set by the engine as a child's run begins
        self._failure: Optional[BaseException] = None
        self._more: Optional[_Rare] = None
        # Keys of the deadline timers of the enclosing ctx.timeout blocks.
        self._scopes: tuple[str, ...] = ()
        # Invariant: true until a recorded cancel request was raised here.
        self._cancel_pending = True
        # Queries whose handler reads this run now, on a query thread (the
        # engine's gate, opened when the handler returns, and the query's
        # monotonic deadline): the run resumes from a wait only once each is
        # open or past its deadline, so a handler reads a run that stands
        # still (runtime/queries.py). Hub thread only.
        self._query_gates: tuple[tuple[Any, float], ...] = ()
        # Invariant: once set, every later ctx call raises it and the run
        # fails with it, even if the workflow code catches it.
        self._divergence: Optional[NonDeterminismError] = None
        # The run's greenlet, which terminate kills (termination.py): a
        # gevent Greenlet, which gevent leaves untyped.
        self._greenlet: Any = None

    # -- state -------------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        """The namespace the run belongs to."""
        return namespaces.namespace_of(self._key)

    @property
    def _run_key(self) -> str:
        """Names this run (generation included) in the ids it derives."""
        return run_key(self._key, self.generation)

    @property
    def _parent_key(self) -> tuple[str, str]:
        """Names this run to its child tasks."""
        return (self._key, self.run_id)

    def _rare(self) -> _Rare:
        more = self._more
        if more is None:
            more = self._more = _Rare()
        return more

    @property
    def is_replaying(self) -> bool:
        """True while the workflow re-executes recorded history."""
        return self._cursor.replaying

    def now(self) -> datetime:
        """The recorded time of the event being applied (UTC), the same on replay."""
        self._check()
        return datetime.fromtimestamp(self._cursor.current_at, tz=timezone.utc)

    def random(self) -> float:
        """A float in [0, 1) from a generator seeded by workflow id and run id."""
        self._check()
        return self._random().random()

    def uuid4(self) -> _uuid.UUID:
        """A version-4 UUID from the same seeded generator: the same on replay."""
        self._check()
        return _uuid.UUID(int=self._random().getrandbits(128), version=4)

    def _random(self) -> _random.Random:
        more = self._rare()
        if more.rng is None:
            # A forked or resumed run goes on from its source's generator
            # (rewind.py): the records it copied may hold values drawn from it.
            basis = (self._cursor.event(1).data.get("random_seed")
                     or f"{self._key}\x00{self.run_id}")
            seed = hashlib.sha256(basis.encode()).digest()
            more.rng = _random.Random(int.from_bytes(seed[:16], "big"))
        return more.rng

    # -- steps --------------------------------------------------------------------------
    step = steps.workflow_step  # ctx.step(fn, *args, retry=, name=): no wrapper frame

    # -- durable time ------------------------------------------------------------------
    def sleep(self, duration: Union[timedelta, float, int]) -> None:
        """Sleep durably: the deadline is recorded, survives restarts, and
        its firing is recorded before the workflow wakes."""
        seconds = _clock.seconds_of(duration, f"ctx.sleep({duration!r})")
        if seconds < 0:
            raise ValueError(f"ctx.sleep({duration!r}): a duration must not be negative")
        self._sleep(seconds=seconds)

    def sleep_until(self, when: datetime) -> None:
        """Sleep durably until ``when`` (a timezone-aware datetime)."""
        if when.tzinfo is None:
            raise ValueError(
                f"ctx.sleep_until({when!r}): pass a timezone-aware datetime "
                "(datetime(..., tzinfo=timezone.utc)); a naive one is ambiguous")
        self._sleep(at=when.timestamp())

    def _sleep(self, seconds: float = 0.0, at: Optional[float] = None) -> None:
        key = self._start_timer(seconds, at)
        fired = self._race(("timer", key))
        self._cursor.consume_arrival(fired)
        self._cursor.drop_arrival(fired)

    def _start_timer(self, seconds: float = 0.0, at: Optional[float] = None) -> str:
        """Record (or replay) TimerStarted for the next timer, due ``at``
        (a timestamp) or ``seconds`` after it is first recorded; return its
        key. (Numbers, not a callable: a closure's cells would stay in the
        frame of a run parked on the timer, objects for the cyclic GC.)"""
        self._check()
        self._timer_ordinal += 1
        key = f"t{self._timer_ordinal}"
        recorded = self._take(_TIMER_STARTED, {"timer": key}, lambda: f"timer {key}")
        if recorded is None:
            recorded = self._record(ev.NewEvent(
                ev.TIMER_STARTED, time.time(),
                {"timer": key, "fire_at": at if at is not None else time.time() + seconds}))
        if ("timer", key) not in self._cursor.arrivals and key not in self._timers:
            self._timers[key] = recorded.data["fire_at"]
            self._host.arm_timer(recorded.data["fire_at"], self._key, key)
        return key

    def _timer_due(self, key: str, now: float) -> None:
        """Hub thread, from the timer service: record the firing (once)."""
        fire_at = self._timers.get(key)
        if fire_at is None or fire_at > now or self._recorder.closed:
            return
        del self._timers[key]
        event = ev.NewEvent(ev.TIMER_FIRED, now, {"timer": key})
        try:
            self._recorder.submit(lambda rec: [event])
        except AionError as exc:  # the run is ending or the engine closing
            log.debug("timer %s of %r not fired: %s", key, self.workflow_id, exc)

    # -- messages ------------------------------------------------------------------------
    @overload
    def receive(self, name: str, timeout: Union[timedelta, float, int, None] = None) -> Any: ...

    @overload
    def receive(self, name: str, timeout: Union[timedelta, float, int, None] = None, *,
                as_type: type[_T]) -> _T: ...

    def receive(self, name: str, timeout: Union[timedelta, float, int, None] = None, *,
                as_type: Any = None) -> Any:
        """The next message ``name`` (its payload), in the order they were
        recorded; one recorded before this call was kept for it. With
        ``timeout``, raises :class:`aion.Timeout` if the deadline's firing is
        recorded first (the message, if it comes later, is kept for the next
        receive). ``as_type``: the payload as that type (``datetime``, a
        dataclass, ``list[Order]``...: :mod:`aion_green.payloads`), else its
        JSON value."""
        return messages.receive(self, name, timeout, as_type)

    def send(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Send message ``name`` to another workflow, exactly once (see
        :func:`aion_green.messages.send`)."""
        messages.send(self, workflow_id, name, payload)

    # -- children and fan-out ------------------------------------------------------------
    @overload
    def start_child(self, fn: Callable[[WorkflowContext, Unpack[_Ts]], _R], *args: Unpack[_Ts],
                    id: Optional[str] = None) -> ChildHandle[_R]: ...  # noqa: A002
    @overload
    def start_child(self, fn: str, *args: Any,
                    id: Optional[str] = None) -> ChildHandle[Any]: ...  # noqa: A002

    def start_child(self, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], _R]],
                    *args: Unpack[_Ts], id: Optional[str] = None) -> ChildHandle[Any]:  # noqa: A002
        """Start workflow ``fn(ctx, *args)`` as a child of this run and
        return its handle (``child.result()`` waits for its end). The start
        is recorded (``ChildStarted``, with the child's id: ``id``, or
        ``"<this id>/child-<n>"``) before the child is created, and the
        child exists when this returns. The child runs on when this run
        ends; its end is recorded here only while this run lives."""
        return children.start_child(self, fn, args, id)

    def _child_ready(self, child_id: str) -> None:
        """Hub thread, from the child's spawn-recovery task (a greenlet: the
        bell is rung from the hub's callback context)."""
        self._note_child_ready(child_id)
        gevent.get_hub().loop.run_callback(self._ring)

    def _note_child_ready(self, child_id: str) -> None:
        self._rare().children_ready.add(child_id)

    def parallel(self, items: Sequence[Union[Step[Any], ChildHandle[Any]]]) -> list[Any]:
        """Run the steps (``aion.Step(fn, *args, retry=...)``) at once and
        wait for them and for the children (handles from ``start_child``);
        their results in the order of ``items``. Once all have ended, the
        first failure recorded is raised (a :class:`StepError`, or
        :class:`aion.WorkflowFailed` for a child)."""
        return fanout.fan_out(self, items, first=False)

    def race(self, items: Sequence[Union[Step[Any], ChildHandle[Any]]]) -> tuple[int, Any]:
        """Like :meth:`parallel`, but the first end recorded wins: returns
        ``(index, result)`` of the winner (or raises its error). The losers
        are dropped: a running step is not awaited (its late record is
        passed over), a losing child is cancelled."""
        return fanout.fan_out(self, items, first=True)

    def supervise(self, children: Sequence[ChildSpec], strategy: Strategy = "one_for_one",
                  intensity: int = 1, period: Union[timedelta, float] = timedelta(seconds=5)) -> list[Any]:
        """Supervise child workflows as an OTP supervisor does (see
        :mod:`aion_green.supervision`): start ``children`` (``aion.ChildSpec``)
        in order, restart them by their restart type and ``strategy``, and
        return once none is left to run (each child's last result, or None
        for one that did not complete). More than ``intensity`` restarts
        within ``period`` end the children in reverse start order and raise
        :class:`aion.RestartIntensityExceeded`. Every restart is recorded
        (``ChildRestarted``) before the new child starts."""
        from aion_green.workflows.supervision import supervise

        return supervise(self, children, strategy, intensity, period)

    def patched(self, change_id: str) -> bool:
        """Versioning: True where this run takes the new code of change
        ``change_id`` (see :mod:`aion_green.versioning`)."""
        return versioning.patched(self, change_id)

    def deprecate_patch(self, change_id: str) -> None:
        """Replaces ``ctx.patched(change_id)`` once every run takes the new
        branch (see :mod:`aion_green.versioning`)."""
        versioning.deprecate_patch(self, change_id)

    def upsert_search_attributes(self, attributes: dict[str, Any]) -> None:
        """Set (or, with a value of None, remove) this workflow's search
        attributes, by which ``engine.list``/``count`` and the HTTP API
        (``?attr.NAME=VALUE``) find it. Values are a str, int, float or bool;
        anything else raises :class:`aion.ConfigurationError` here, nothing
        recorded. Recorded, so replay-safe; see :mod:`aion_green.workflows.search`
        for the limits."""
        search.upsert(self, attributes)

    @property
    def search_attributes(self) -> dict[str, Any]:
        """This workflow's search attributes now (a copy)."""
        return dict(self._search_attributes)

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and begin a fresh run of the same workflow id with
        ``args``, on a new history (this one is archived: see
        ``engine.history(id, run_id=...)``), so an endless workflow keeps a
        bounded history. ``engine.result(id)`` waits for the last run. Ids
        the new run derives (step keys, child ids) are its own. Messages
        recorded here and not yet received do not carry over."""
        self._check()
        raise ContinueAsNew(payloads.encode_args(args, f"the arguments of {self.workflow_type}"))

    def _cancel_timer(self, key: str) -> None:
        """Record TimerCancelled (always, even if a firing raced it in: the
        record, not the race, decides what a replay does)."""
        self._timers.pop(key, None)
        if self._take(_TIMER_CANCELLED, {"timer": key}, lambda: f"cancel timer {key}") is None:
            self._record(ev.NewEvent(ev.TIMER_CANCELLED, time.time(), {"timer": key}))

    @staticmethod
    def _step_error(ordinal: int, name: str, data: dict[str, Any], attempt: int) -> StepError:
        error = data.get("error") or {}
        return StepError(ordinal, name, error.get("type", "Exception"),
                         error.get("message", ""), attempt)

    # -- recording -----------------------------------------------------------------------
    def _check(self) -> None:
        if self._divergence is not None:
            raise self._divergence
        if self._failure is not None:
            # Unwinding (terminated, evicted, lost): a ``finally`` of the
            # workflow starts nothing new, not even a step (issue 16).
            raise self._failure
        if self._host.closing:
            # The engine is shutting down: a workflow that swallowed its
            # GreenletExit must not start new work in a closing epoch.
            raise GreenletExit()

    def _take(self, types: frozenset[str], key: dict[str, Any],
              expected: Callable[[], str], found: Optional[ev.Event] = None) -> Optional[ev.Event]:
        try:
            return self._cursor.take(types, key, expected, found)
        except NonDeterminismError as exc:
            self._divergence = exc
            raise

    # -- deadlines, cancellation, queries ---------------------------------------------------
    @contextmanager
    def timeout(self, duration: Union[timedelta, float, int, datetime]) -> Iterator[None]:
        """A deadline over a block: if its firing is recorded before what a
        wait inside the block waits for, the wait is abandoned and
        :class:`aion.Timeout` is raised here; a replay takes the same branch
        from the record. An aware ``datetime`` is the deadline itself."""
        if isinstance(duration, datetime):
            if duration.tzinfo is None:
                raise ValueError(f"ctx.timeout({duration!r}): pass a timezone-aware datetime")
            key = self._start_timer(at=duration.timestamp())
        else:
            key = self._start_timer(_clock.seconds_of(duration, f"ctx.timeout({duration!r})"))
        self._scopes += (key,)
        expired = False
        try:
            yield
        except _ScopeExpired as exc:
            if exc.key != key:
                raise
            expired = True
            raise Timeout(f"workflow {self.workflow_id!r}: the block did not finish within "
                          f"{duration}") from None
        except GreenletExit:
            # Killed by shutdown: the block is not left and its deadline
            # stands. A TimerCancelled recorded here would be appended by a
            # closing epoch, and the next epoch, which fires the timer, would
            # diverge at its next timer (seen in test_schedules' restarts).
            expired = True
            raise
        finally:
            self._scopes = _without(self._scopes, key)
            if not expired:
                self._cancel_timer(key)
            # Its deadline's firing, if recorded, is looked for by no one
            # now (a loop of timeout blocks kept each, for as long as the run).
            fired = self._cursor.arrivals.get(("timer", key))
            if fired is not None:
                self._cursor.drop_arrival(fired)

    @property
    def info(self) -> WorkflowInfo:
        """Who this run is: :class:`WorkflowInfo` (from its history: the
        same on replay)."""
        started = self._cursor.event(1)
        return WorkflowInfo(self.workflow_id, self.run_id, self.namespace, self.workflow_type,
                            int(started.data.get("attempt", 1)), self.generation,
                            self._parent_id, started.time)

    def set_query(self, name: str, handler: Callable[..., Any]) -> None:
        """Answer ``engine.query(id, name, *args)`` with ``handler(*args)``,
        from the live run while it waits. Never recorded. The handler runs
        on one of the engine's query threads while the run stands still, at
        most until the query's deadline; it must only read (never wait on
        anything, never change the run's state)."""
        if not callable(handler):
            raise TypeError(f"ctx.set_query({name!r}, ...): the handler must be callable")
        self._queries[name] = handler

    def _race(self, own: Own,
              abandon: Optional[Callable[[], None]] = None,
              go_live: Optional[Callable[[], None]] = None) -> ev.Event:
        """Wait for ``own()`` (an event this wait is for; or the arrival
        whose key ``own`` is) unless a cancel
        request, or the deadline of an enclosing ``ctx.timeout`` block, is
        recorded first; the first recorded wins, live and on replay alike.
        ``go_live()`` is called each time the record decides nothing yet
        (so work starts only when no recorded interruption wins first)."""
        first = FirstRecorded(self, own, go_live)
        winner: ev.Event = self._wait(first)
        if winner is first.mine:
            return winner
        if abandon is not None:
            abandon()
        self._cursor.consume_arrival(winner)
        if winner.type == ev.CANCEL_REQUESTED:
            self._cancel_pending = False  # delivered once; cleanup may wait again
            raise Cancelled(winner.data.get("reason", ""))
        raise _ScopeExpired(winner.data["timer"])

    def _wait(self, ready: Callable[[], Optional[_T]]) -> _T:
        """Park until ``ready()`` gives something (it reads the history)."""
        while True:
            if self._failure is not None:
                raise self._failure
            found = ready()
            if found is not None:
                return found
            self._park()

    def _hold(self) -> None:
        """Before a step goes live: park while the run is paused (an
        unpause, or the run's end, rings the bell)."""
        self._wait(self._unheld)

    def _unheld(self) -> Optional[bool]:
        return None if self._cursor.paused else True

    def _next_command(self) -> ev.Event:
        """A step's wait for its record: ``_race(cursor.next_command)``, raced
        only once something could interrupt it (a cancel request recorded and
        not yet raised, an enclosing timeout block): the hot path."""
        cursor = self._cursor
        while True:
            if (self._failure is not None or self._scopes
                    or (self._cancel_pending and CANCEL_KEY in cursor.arrivals)):
                return self._race(cursor.next_command)
            found = cursor.next_command()
            if found is not None:
                return found
            self._park(True)

    def _park(self, stepping: bool = False) -> None:
        """Wait for the next event recorded for this run (or a failure);
        ``stepping``: for the record of the step attempt it just started."""
        bell = self._bell
        bell.clear()
        self._parked = True
        host = self._host
        if host.tracks_parking:
            host.parked(self, stepping)
        try:
            bell.get()
        finally:
            self._parked = False
            if host.tracks_parking:
                host.unparked(self)
        if self._query_gates and self._failure is None:
            # (A run rung with a failure set, evicted say, unwinds at once:
            # residency counts on it, before any arrival reaches its recorder.)
            self._await_queries()

    def _await_queries(self) -> None:
        """Woken while query handlers read this run: wait until they return
        or their deadlines pass. Handlers that begin while it waits are
        waited for too (they read a run that stands still), but never past
        the latest deadline of those there at the wake, so a stream of
        queries cannot hold the run for ever."""
        cap = max(deadline for _, deadline in self._query_gates)
        while True:
            now = _clock.monotonic()
            pending = tuple(entry for entry in self._query_gates
                            if not entry[0].is_set() and entry[1] > now)
            self._query_gates = pending
            if not pending or now >= cap:
                return
            gate, deadline = pending[0]
            gate.wait(min(deadline, cap) - now)

    def _record(self, event: ev.NewEvent, final: bool = False,
                queued: Optional[Callable[[], None]] = None) -> ev.Event:
        """Record one command of this workflow: it is durable before the
        workflow goes on (record before wake). A non-final command is then
        consumed like a replayed one; the final one is not matched at all
        (a run that diverged still ends with exactly one terminal event).
        ``queued()`` runs once the append is queued, before it is durable:
        a write it queues then commits with it or after it, never before."""
        if self._failure is not None:
            # Unwinding (evicted, or the store refused an earlier record):
            # a ``finally`` of the workflow must not record anything more.
            raise self._failure
        # No closures here: their cells would live as long as the wait.
        target = self._recorder.submit_events([event], final=final)
        assert target is not None, "a live run's recorder is initialised"
        if queued is not None:
            queued()
        cursor = self._cursor
        self._wait(functools.partial(reached, cursor, target))
        if final:
            return cursor.event(target)
        recorded = self._take(frozenset({event.type}), {}, functools.partial(str, event.type))
        assert recorded is not None and recorded.seq == target
        return recorded

    def _on_recorded(self, events: Sequence[ev.Event]) -> None:
        """Hub thread: events of this run became durable, in seq order."""
        self._cursor.add(events)
        self._ring()

    def _ring(self) -> None:
        if self._parked:
            self._parked = False
            self._bell.switch(None)

    def _on_failed(self, error: BaseException) -> None:
        """Hub thread: the store refused a record of this run."""
        if self._failure is None:
            if isinstance(error, (SequenceConflict, FencedOut)):
                # Another writer owns the run now: drop it here, silently.
                self._failure = RunLost(str(error))
            elif isinstance(error, AionError):
                self._failure = RunAborted(error)
            else:
                self._failure = RunAborted(StoreError(f"recording failed: {error!r}"))
        self._ring()

    def _finish_check(self, ending: str) -> None:
        """Called by the engine when the workflow function ended."""
        self._check()
        try:
            self._cursor.check_end(ending)
        except NonDeterminismError as exc:
            self._divergence = exc
            raise


def _without(scopes: tuple[str, ...], key: str) -> tuple[str, ...]:
    """``scopes`` but ``key``. (A function of its own: a generator
    expression in ``timeout`` would make ``key`` a cell of its frame, one
    more object per run parked in a timeout block.)"""
    return tuple(k for k in scopes if k != key)
