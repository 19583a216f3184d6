"""Step execution and the retry policy.

A step is the user's blocking side effect. It runs on the step pool (real OS
threads, never the hub thread); its outcome is returned to the workflow
greenlet as data, already reduced to the JSON that history will hold.
"""
from __future__ import annotations

import random as _random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Optional, Union

from gevent import monkey

from .errors import NonRetryableError, SerializationError
from .events import roundtrip

Seconds = Union[float, int, timedelta]


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True)
class Retry:
    """Retry policy of a step: at most ``max_attempts`` attempts, waiting
    ``initial_interval * backoff ** (n - 1)`` (capped at ``max_interval``,
    with up to ``jitter`` of it added at random) after the n-th failure.
    Exceptions in ``non_retryable`` (and any :class:`NonRetryableError`) fail
    the step at once."""

    max_attempts: int = 3
    initial_interval: Seconds = 1.0
    backoff: float = 2.0
    max_interval: Seconds = 60.0
    jitter: float = 0.0
    non_retryable: tuple[type[BaseException], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry(max_attempts={self.max_attempts}): need at least 1 attempt")
        if self.backoff < 1:
            raise ValueError(f"Retry(backoff={self.backoff}): the backoff factor must be >= 1")
        if _seconds(self.initial_interval) < 0 or _seconds(self.max_interval) < 0:
            raise ValueError("Retry intervals must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        base = min(_seconds(self.initial_interval) * self.backoff ** (attempt - 1),
                   _seconds(self.max_interval))
        return base + (base * self.jitter * _random.random() if self.jitter else 0.0)

    def is_retryable(self, error: BaseException) -> bool:
        return not isinstance(error, (NonRetryableError, SerializationError, *self.non_retryable))


NO_RETRY = Retry(max_attempts=1)


@dataclass(frozen=True)
class StepInfo:
    """What a running step knows of itself; ``aion.step_info()`` returns it.

    ``idempotency_key`` is stable across attempts and crashes (workflow id +
    step ordinal): pass it to the outside world so a repeated call is
    recognised there.
    """

    workflow_id: str
    run_id: str
    step: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}/step-{self.step}"


# A native thread-local: steps run on real pool threads.
_local = monkey.get_original("_thread", "_local")()


def step_info() -> StepInfo:
    """The :class:`StepInfo` of the step running on this thread."""
    info = getattr(_local, "info", None)
    if info is None:
        raise RuntimeError("aion.step_info() is only available inside a running step")
    return info


def step_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def error_data(error: BaseException) -> dict[str, Any]:
    cls = type(error)
    module = cls.__module__
    qual = cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"
    return {"type": qual, "message": str(error)}


def execute(fn: Callable[..., Any], args: tuple[Any, ...], info: StepInfo,
            policy: Retry) -> tuple[bool, Any]:
    """Run one attempt on the calling (pool) thread.

    Returns ``(True, json_value)`` or ``(False, (error_data, retryable))``;
    never raises, so the pool never prints a traceback of a user's error.
    """
    _local.info = info
    try:
        value = fn(*args)
        return True, roundtrip(value, f"the result of step {info.step} ({info.name})")
    except Exception as exc:
        return False, (error_data(exc), policy.is_retryable(exc))
    finally:
        _local.info = None


