"""The ``ctx`` a workflow receives: every call that touches the outside world
or the clock goes through it, so it can be recorded and replayed.

A context belongs to one run and is used only by that run's greenlet on the
engine's hub thread.
"""
from __future__ import annotations

import hashlib
import logging
import random as _random
import uuid as _uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import gevent
from greenlet import GreenletExit

from . import events as ev
from .errors import AionError, NonDeterminismError, SequenceConflict, StepError, StoreUnavailable
from .replay import HistoryCursor
from .steps import NO_RETRY, Retry, StepInfo, step_name

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine

log = logging.getLogger("aion_green.context")

_STEP_TYPES = frozenset({ev.STEP_COMPLETED, ev.STEP_FAILED})


class _UnrecordedStep(Exception):
    """A step ran but the store was unavailable for its record."""

    def __init__(self, event: ev.NewEvent) -> None:
        self.event = event


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


class WorkflowContext:
    """The workflow's handle on the engine (``ctx``)."""

    def __init__(self, engine: "Engine", workflow_id: str, run_id: str,
                 workflow_type: str, history: Sequence[ev.Event]) -> None:
        self._engine = engine
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.workflow_type = workflow_type
        self._cursor = HistoryCursor(workflow_id, history)
        self._step_ordinal = 0
        self._rng: Optional[_random.Random] = None
        # Invariant: once set, every later ctx call raises it and the run
        # fails with it, even if the workflow code catches it.
        self._divergence: Optional[NonDeterminismError] = None

    # -- state -------------------------------------------------------------------------
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
        if self._rng is None:
            seed = hashlib.sha256(f"{self.workflow_id}\x00{self.run_id}".encode()).digest()
            self._rng = _random.Random(int.from_bytes(seed[:16], "big"))
        return self._rng

    # -- steps --------------------------------------------------------------------------
    def step(self, fn: Callable[..., Any], *args: Any, retry: Optional[Retry] = None,
             name: Optional[str] = None) -> Any:
        """Run ``fn(*args)`` once, durably, on the step pool, and return its
        (JSON) result. On replay the recorded result is returned and ``fn``
        does not run. A step that fails for good raises :class:`StepError`."""
        self._check()
        policy = retry or NO_RETRY
        self._step_ordinal += 1
        ordinal = self._step_ordinal
        sname = name or step_name(fn)
        key = {"step": ordinal, "name": sname}
        attempt = 0
        backoff_due = 0.0
        while True:
            recorded = self._take(_STEP_TYPES, key, lambda: f"step {ordinal} ({sname})")
            if recorded is not None:
                attempt = recorded.data.get("attempt", attempt + 1)
                if recorded.type == ev.STEP_COMPLETED:
                    return recorded.data.get("result")
                if not recorded.data.get("retryable"):
                    raise self._step_error(ordinal, sname, recorded.data, attempt)
                backoff_due = policy.delay(attempt)
                continue
            if backoff_due:
                gevent.sleep(backoff_due)
            attempt += 1
            info = StepInfo(self.workflow_id, self.run_id, ordinal, sname, attempt)
            event = self._engine._run_step(self, fn, args, info, policy)
            if event.type == ev.STEP_COMPLETED:
                return event.data["result"]
            if not event.data["retryable"]:
                raise self._step_error(ordinal, sname, event.data, attempt)
            backoff_due = policy.delay(attempt)

    @staticmethod
    def _step_error(ordinal: int, name: str, data: dict[str, Any], attempt: int) -> StepError:
        error = data.get("error") or {}
        return StepError(ordinal, name, error.get("type", "Exception"),
                         error.get("message", ""), attempt)

    # -- recording -----------------------------------------------------------------------
    def _check(self) -> None:
        if self._divergence is not None:
            raise self._divergence
        if self._engine._hub.closing:
            # The engine is shutting down: a workflow that swallowed its
            # GreenletExit must not start new work in a closing epoch.
            raise GreenletExit()

    def _take(self, types: frozenset[str], key: dict[str, Any],
              expected: Callable[[], str]) -> Optional[ev.Event]:
        try:
            return self._cursor.take(types, key, expected)
        except NonDeterminismError as exc:
            self._divergence = exc
            raise

    def _append(self, new_events: list[ev.NewEvent]) -> int:
        """Append durably (group commit) and return the new head seq; only
        then does the workflow go on (record before wake). A store that is
        unavailable (locked, disk full) is retried with backoff until it
        recovers or the engine shuts down: the workflow never sees it."""
        delay = 0.05
        while True:
            waiter, done = self._engine._hub.native_waiter()
            self._engine._writer.submit_append(self.workflow_id, self._cursor.head_seq, new_events, done)
            try:
                return self._await_append(waiter, new_events[-1].at)
            except StoreUnavailable as exc:
                log.warning("workflow %r: append failed (%s); retrying in %.2f s",
                            self.workflow_id, exc, delay)
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _await_append(self, waiter: Any, at: float) -> int:
        try:
            head = waiter.get()
        except SequenceConflict as exc:
            raise RunLost(str(exc)) from None
        except StoreUnavailable:
            raise
        except AionError as exc:
            raise RunAborted(exc) from None
        self._cursor.advance_live(head, at)
        return int(head)

    def _await_step(self, waiter: Any) -> ev.NewEvent:
        """Wait for a live step attempt that the pool runs and records (see
        Engine._run_step). If the store refused the record for a passing
        fault, the record (not the step) is retried."""
        try:
            event, head = waiter.get()
        except SequenceConflict as exc:
            raise RunLost(str(exc)) from None
        except _UnrecordedStep as exc:
            self._append([exc.event])
            return exc.event
        except AionError as exc:
            raise RunAborted(exc) from None
        self._cursor.advance_live(head, event.at)
        return event

    def _finish_check(self, ending: str) -> None:
        """Called by the engine when the workflow function ended."""
        self._check()
        try:
            self._cursor.check_end(ending)
        except NonDeterminismError as exc:
            self._divergence = exc
            raise

