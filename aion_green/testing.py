"""The pytest plugin for a user's own test suite (registered through the
package's ``pytest11`` entry point, so installing aion_green enables it).

Fixtures:

- ``aion_engine``: an :class:`~aion_green.Engine` on a SQLite file in the
  test's temporary directory, knowing every ``@aion.workflow`` the process
  imported; shut down after the test.
- ``aion_time``: time travel on freezegun. The clock is frozen at the
  test's start; ``aion_time.advance(timedelta(days=30))`` moves it and fires
  every durable timer that came due (recorded, as in production) before it
  returns, so a month-long sleep takes milliseconds. ``aion_time.now()`` is
  the frozen wall clock. ``time.monotonic`` and ``time.perf_counter`` keep
  running (a test's own timeouts, and the waits of the libraries it uses,
  measure real time); mark a test ``@pytest.mark.aion_time(freeze_monotonic=True)``
  to freeze them too.

Helper:

- :func:`check_replay`: replay the stored histories of a store against
  the workflow code of this process, without running anything, and fail
  with the first divergence (the run, the seq, what the code does now and
  what the history recorded). Run it in CI on a copy of production's
  database before deploying a change to workflow code.

Thread contract: fixtures and helpers are used from the test's own thread.
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

import pytest

# Loaded by pytest before any conftest: import nothing of aion_green (and so
# of gevent) here, or a suite that calls gevent.monkey.patch_all() in its
# conftest would patch too late. The fixtures and helpers import on use.
if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.workflows.context import WorkflowContext


class ReplayMismatch(AssertionError):
    """Stored histories that the current workflow code does not replay."""


class TimeTravel:
    """The ``aion_time`` fixture: a frozen clock that fires due timers."""

    def __init__(self, engine: "Engine", frozen: Any) -> None:
        self.engine = engine
        self._frozen = frozen

    def now(self) -> datetime:
        """The frozen wall clock, as an aware datetime (UTC)."""
        return datetime.fromtimestamp(time.time(), tz=timezone.utc)

    def advance(self, delta: Union[timedelta, float], settle: float = 5.0) -> None:
        """Move the clock by ``delta`` and return once every durable timer
        that came due has fired (its ``TimerFired`` is recorded)."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"advance({delta!r}): time only moves forward")
        # First let every run reach its wait (a sleep started just before
        # must be recorded at the old time, or it would move with the clock).
        self.settle(settle)
        self._frozen.tick(timedelta(seconds=seconds))
        from aion_green.core import clock as _clock

        engine = self.engine
        engine.poke()
        deadline = _clock.monotonic() + settle
        now = time.time()
        while _due_unpaused(engine, now):
            if _clock.monotonic() > deadline:
                raise AssertionError(f"timers due at {self.now().isoformat()} did not fire within "
                                     f"{settle} s of advance(); is a run waiting on a busy step?")
            engine.poke()
            _native_sleep(0.005)
        self.settle(settle)

    def settle(self, timeout: float = 5.0, step_wait: float = 0.5) -> None:
        """Return once every run of the engine waits (on time, a message, a
        child, or a step still running after ``step_wait`` seconds) with
        none of its records in flight.

        A step that returns at once is waited for: what its run does next
        (a ``ctx.sleep``, say) then happens before the clock moves, at the
        time it would have happened (it was recorded after the move, a month
        late, when the step's thread lost the race with ``advance``)."""
        from aion_green.core import clock as _clock

        engine = self.engine
        engine._ensure_started()  # (a test may move the clock before its first run)
        began = _clock.monotonic()
        deadline = began + timeout
        while True:
            quiet, steps = engine._epoch.hub.submit(_quiet, engine).result(timeout)
            if quiet and (not steps or _clock.monotonic() - began >= step_wait):
                return
            if _clock.monotonic() > deadline:
                raise AssertionError(f"the engine's runs did not come to rest within {timeout} s")
            _native_sleep(0.005)


def _due_unpaused(engine: Any, now: float) -> bool:
    """Whether a durable timer due at ``now`` belongs to a run that is not
    paused (a paused run's timers fire at its unpause: runtime/bounds.py)."""
    epoch = engine._epoch
    reader = epoch.reader
    due = reader.call(reader.store.due_timers, now, 100).result()
    return any(not epoch.bounds.paused_in_store(wid) for wid, _key, _at in due)


def _quiet(engine: Any) -> tuple[bool, bool]:
    """Hub thread: (every live run is parked with nothing in flight, some
    of them wait for a step attempt that runs now)."""
    epoch = engine._epoch
    if epoch.residency.admission or epoch.residency.pinned():
        # Runs wait for a place (under a cap, or woken out of memory), or a
        # record is on its way to a run out of memory (a child's end: the
        # run is brought back to take it).
        return False, False
    if epoch.child_tasks.armed_spawn_retry_count() or epoch.early:
        return False, False  # a child being created; a run created and not yet driven
    if any(wid not in epoch.runs for wid in epoch.recorders):
        return False, False  # a start in flight
    residency = epoch.residency
    for child in epoch.child_tasks.watched_children():
        if child not in epoch.runs and not residency.absent_here(child) \
                and child not in epoch.unrunnable:
            # The child ended, and its watcher is still to record that into
            # the parent (which may be out of memory, to be brought back).
            return False, False
    if epoch.runs.any_starting():
        return False, False  # a run's history is being read
    for ctx in epoch.runs.contexts():
        if not ctx._parked:
            return False, False
        recorder = ctx._recorder
        if recorder._next is not None and recorder._next != ctx._cursor.head_seq:
            return False, False
    # (A step's task leaves the pool after its record is submitted: no gap
    # between the attempt and its record where the run looks at rest.)
    return True, epoch.steps.outstanding() > 0


def _native_sleep(seconds: float) -> None:
    from gevent import monkey

    monkey.get_original("time", "sleep")(seconds)


@pytest.fixture
def aion_engine(tmp_path: Path) -> Iterator["Engine"]:
    """An :class:`~aion_green.Engine` on a SQLite file in the test's
    temporary directory, knowing every ``@aion.workflow`` the process
    imported; shut down after the test."""
    from aion_green.runtime.engine import Engine

    engine = Engine(f"sqlite:///{tmp_path / 'aion-test.db'}")
    try:
        yield engine
    finally:
        engine.shutdown()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "aion_time(freeze_monotonic=False): the aion_time fixture's options; "
        "freeze_monotonic=True freezes time.monotonic and time.perf_counter with the wall clock")


@pytest.fixture
def aion_time(aion_engine: "Engine", request: Any) -> Iterator[TimeTravel]:
    """Time travel over ``aion_engine``: the wall clock frozen at the
    test's start, moved by :meth:`TimeTravel.advance`. Mark the test
    ``@pytest.mark.aion_time(freeze_monotonic=True)`` to freeze
    ``time.monotonic`` and ``time.perf_counter`` too."""
    from freezegun import freeze_time

    marker = request.node.get_closest_marker("aion_time")
    freeze_monotonic = bool(marker is not None and marker.kwargs.get("freeze_monotonic"))
    freezer = freeze_time(datetime.now(tz=timezone.utc))
    frozen = freezer.start()
    try:
        if not freeze_monotonic:
            _thaw_monotonic(freezer)
        yield TimeTravel(aion_engine, frozen)
    finally:
        freezer.stop()


def _thaw_monotonic(freezer: Any) -> None:
    """Give ``time.monotonic``, ``time.perf_counter`` (and their ``_ns``
    forms) back their real functions while the wall clock stays frozen,
    wherever freezegun put its fakes: in ``time`` and in every module that
    imported them by name. (Its ``stop()`` puts the reals back as usual.)"""
    from freezegun import api

    reals = {name: getattr(api, f"real_{name}") for name in
             ("monotonic", "perf_counter", "monotonic_ns", "perf_counter_ns")
             if hasattr(api, f"real_{name}") and hasattr(time, name)}
    for name, real in reals.items():
        setattr(time, name, real)
    kept = {id(real) for real in reals.values()}
    for module, attribute, original in freezer.undo_changes:
        if id(original) in kept:
            setattr(module, attribute, original)


# -- the replay checker -------------------------------------------------------------------
class _ReplayDone(BaseException):
    """The replayed code reached the end of the recorded history."""


def check_replay(url: Optional[str] = None, workflow_ids: Optional[Sequence[str]] = None,
                 workflows: Sequence[Callable[..., Any]] = (), limit: int = 10_000) -> int:
    """Replay the stored histories of the store at ``url`` (every run, or
    those of ``workflow_ids``) against this process's workflow code; nothing
    runs and nothing is written. Returns how many histories were checked;
    raises :class:`ReplayMismatch` naming every run whose replay diverged
    (first divergence of each), or whose workflow type is not registered."""
    from aion_green.core.errors import AionError
    from aion_green.runtime.engine import Engine

    # Passive: it drives, claims and fires nothing; it takes no lock.
    engine = Engine(url, workflows=list(workflows), recover=False, passive=True)
    engine.list(limit=1)  # open the store
    problems: list[str] = []
    checked = 0
    try:
        store = engine._epoch.reader.store
        if workflow_ids is None:
            infos, after = [], None
            while True:
                page = engine._epoch.reader.call(store.list_runs, None, None, 500, after).result()
                infos.extend(page)
                if len(page) < 500 or len(infos) >= limit:
                    break
                after = page[-1].workflow_id
        else:
            infos = [engine.describe(wid) for wid in workflow_ids]
        for info in infos[:limit]:
            history = engine._epoch.reader.call(store.read, info.workflow_id).result()
            try:
                fn = engine._registry.get(info.workflow_type)
            except AionError as exc:
                problems.append(f"{info.workflow_id}: {exc}")
                continue
            checked += 1
            problem = _replay_one(engine, fn, info, history)
            if problem:
                problems.append(problem)
    finally:
        engine.shutdown()
    if problems:
        raise ReplayMismatch(f"{len(problems)} of {checked} stored histories do not replay with "
                             "the current workflow code:\n  " + "\n  ".join(problems))
    return checked


def _replay_one(engine: "Engine", fn: Any, info: Any, history: list[Any]) -> Optional[str]:
    """Replay one history on the engine's hub. Whatever would act on the
    world (a step, a record, creating a child, sending a message, a cancel)
    is refused or skipped; the replay ends where the history ends."""
    from aion_green.core import namespaces, payloads
    from aion_green.core.errors import NonDeterminismError
    from aion_green.workflows import declared

    recorded = history[:-1] if history and history[-1].type in _TERMINAL else history

    def run() -> Optional[str]:
        host = _ReplayHost(engine._epoch.host)
        ctx = _replay_context()(host, info.workflow_id, info.run_id, info.workflow_type,
                                recorded, _NoRecorder())
        host.ctx = ctx
        declared.enter(ctx)  # its @aion.step calls replay as steps
        if info.parent_id is not None:
            ctx._parent_id = namespaces.local(info.parent_id)
        args = recorded[0].data.get("args", info.args)
        args = payloads.decode_args(args, payloads.parameter_hints(fn, skip=1))  # as the run saw them
        try:
            fn(ctx, *args)
        except _ReplayDone:
            return None
        except NonDeterminismError as exc:
            return f"{info.workflow_id}: {exc}"
        except BaseException:  # noqa: BLE001 - the workflow's own end
            if ctx._divergence is not None:
                return f"{info.workflow_id}: {ctx._divergence}"
        try:
            ctx._finish_check("the workflow to end")
        except NonDeterminismError as exc:
            return f"{info.workflow_id}: {exc}"
        return None

    return engine._epoch.hub.submit(run).result(60)  # type: ignore[no-any-return]


_TERMINAL = frozenset({"WorkflowCompleted", "WorkflowFailed", "WorkflowCancelled",
                       "WorkflowContinuedAsNew"})


class _ReplayHost:
    """The engine's host for a replay that must not act on the world: a
    step ends the replay, a child counts as created, a message or a cancel
    to another run as delivered; the rest is the engine's."""

    def __init__(self, host: Any) -> None:
        self._host = host
        self.tracks_parking = False
        self.ctx: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def run_step(self, *args: Any, **kwargs: Any) -> None:
        raise _ReplayDone()

    def ensure_child(self, parent: Any, data: dict[str, Any]) -> None:
        self.ctx._note_child_ready(data["id"])

    def route_message(self, *args: Any) -> None:
        args[-1](None, None)

    def route_cancel(self, *args: Any) -> None:
        args[-1](None, None)


class _NoRecorder:
    closed = True  # nothing may be recorded (late retries check this)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise _ReplayDone()

    def submit_events(self, *args: Any, **kwargs: Any) -> Any:
        raise _ReplayDone()


@functools.lru_cache(maxsize=None)
def _replay_context() -> type[WorkflowContext]:
    """The context a replay check runs the workflow with: it records
    nothing and never waits (the history's end ends the replay). A class of
    its own, not methods set on a context: names set on instances of
    WorkflowContext count towards the ones CPython keeps inline for every
    run of the process (workflows/context.py)."""
    from aion_green.workflows.context import WorkflowContext

    class ReplayContext(WorkflowContext):
        def _wait(self, ready: Callable[[], Optional[Any]]) -> Any:
            found = ready()
            if found is None:
                raise _ReplayDone()  # live from here: the history ends
            return found

        def _record(self, *args: Any, **kwargs: Any) -> Any:
            raise _ReplayDone()

    return ReplayContext
