"""Step execution and the retry policy.

A step is the user's blocking side effect. It runs on the step pool (real OS
threads, never the hub thread); its outcome is returned to the workflow
greenlet as data, already reduced to the JSON that history will hold.
"""
from __future__ import annotations

import functools
import json.encoder
import logging
import math
import random as _random
import time
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, TypeVar, Union

import gevent
from gevent import monkey

from aion_green.core import clock as _clock
from aion_green.core import payloads
from aion_green.core.errors import (
    NonRetryableError,
    SerializationError,
    StepArgumentsChanged,
    error_message,
)
from aion_green.core.events import STEP_COMPLETED, STEP_FAILED, STEP_TYPES, Event, NewEvent
from aion_green.core.history import run_key
from aion_green.core.logs import step_fields
from aion_green.workflows.declared import DeclaredStep

if TYPE_CHECKING:  # pragma: no cover
    # For type checkers only (PEP 646 arrived in ``typing`` with 3.11, and
    # typing_extensions is not a dependency): ``ctx.step(fn, *args)`` checks
    # ``args`` against ``fn``'s parameters and returns what ``fn`` returns.
    from typing_extensions import TypeVarTuple, Unpack

    from aion_green.workflows.context import WorkflowContext

    _Ts = TypeVarTuple("_Ts")

_R = TypeVar("_R")

log = logging.getLogger("aion_green.steps")
_encode_str = json.encoder.encode_basestring_ascii
_tuple_new = tuple.__new__
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")

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
        for name in ("initial_interval", "max_interval"):
            _clock.seconds_of(getattr(self, name), f"Retry({name}={getattr(self, name)!r})")
        if not math.isfinite(self.backoff) or not math.isfinite(self.jitter):
            raise ValueError(f"Retry(backoff={self.backoff!r}, jitter={self.jitter!r}): "
                             "both must be finite numbers")
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


class StepInfo(NamedTuple):
    """What a running step knows of itself; ``aion.step_info()`` returns it.

    ``idempotency_key`` is stable across attempts and crashes (workflow id +
    step ordinal, and the run's number once the workflow continued as new):
    pass it to the outside world so a repeated call is recognised there.
    """

    workflow_id: str
    run_id: str
    step: int
    name: str
    attempt: int
    generation: int = 1  # 1 for the first run of the id, +1 per continue_as_new

    @property
    def idempotency_key(self) -> str:
        return f"{run_key(self.workflow_id, self.generation)}/step-{self.step}"




# A native thread-local: steps run on real pool threads.
_local = monkey.get_original("_thread", "_local")()


def step_info() -> StepInfo:
    """The :class:`StepInfo` of the step running on this thread."""
    info: Optional[StepInfo] = getattr(_local, "info", None)
    if info is None:
        raise RuntimeError("aion.step_info() is only available inside a running step")
    return info


def check_timeout(timeout: Seconds, what: str) -> float:
    """A step attempt's timeout in seconds: positive, else a ValueError naming ``what``."""
    limit = _clock.seconds_of(timeout, what)
    if not limit > 0:
        raise ValueError(f"{what}: a step's timeout is a positive number of seconds or a "
                         "timedelta")
    return limit


def step_name(fn: Callable[..., Any]) -> str:
    """The name a step's records give it: the function's qualified name
    (``charge``, ``Billing.charge``); through ``functools.partial`` and
    ``@aion.step``, the function's; an object that is called, its class's.
    Never a ``repr`` (it would hold an address, another on every run)."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif type(fn) is DeclaredStep:
            fn = fn.fn
        else:
            break
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def error_data(error: BaseException) -> dict[str, Any]:
    cls = type(error)
    module = cls.__module__
    qual = cls.__qualname__ if module in ("builtins", None) else f"{module}.{cls.__qualname__}"
    return {"type": qual, "message": error_message(error)}


# -- the digest of a step's arguments (issue 16) ------------------------------------------------
# A step's record carries a digest of the arguments it ran with, so that a
# replay that reaches it with other arguments (a deploy changed them) is a
# divergence rather than a recorded result silently returned for different
# work. Steps run in process, so their arguments need not be JSON: a value
# that is not counts by its type alone. Records made before digests existed
# have none, and are not compared. CRC-32 of the arguments' JSON, not a
# cryptographic hash: it guards against mistakes, not an adversary, and
# blake2b cost 9 % of a trivial step's instructions (bench/instructions.py,
# 1,373 k -> 1,498 k per workflow of 10 steps).
_crc32 = zlib.crc32
_args_json = json.JSONEncoder(separators=(",", ":"), default=lambda value: (
    f"<{type(value).__module__}.{type(value).__qualname__}>")).encode
NO_ARGS_DIGEST = _crc32(b"[]")


def args_digest(args: tuple[Any, ...]) -> int:
    """The digest of a step's arguments, as its records carry it."""
    if not args:
        return NO_ARGS_DIGEST
    if len(args) == 1:  # the common case, without the encoder object
        (value,) = args
        kind = type(value)
        if kind is int:
            return _crc32(f"[{int.__repr__(value)}]".encode())
        if kind is str:
            return _crc32(f"[{_encode_str(value)}]".encode())
    try:
        text = _args_json(args)
    except (TypeError, ValueError):  # keys that are not strings, a cycle: their shape only
        text = _args_json([f"<{type(a).__module__}.{type(a).__qualname__}>" for a in args])
    return _crc32(text.encode())


def check_args(ctx: "WorkflowContext", record: Event, ordinal: int, name: str,
               args: tuple[Any, ...], digest: Optional[int]) -> int:
    """Replay: raise (and fail the run with) :class:`StepArgumentsChanged`
    when ``record`` ran with arguments other than ``args``; returns their
    digest (``digest``, if already computed) for the next record."""
    if digest is None:
        digest = args_digest(args)
    if record.data.get("args_crc", digest) != digest:
        error = StepArgumentsChanged(ctx.workflow_id, record.seq, ordinal, name, record.describe())
        ctx._divergence = error
        raise error
    return digest


def attempt_event(fn: Callable[..., Any], args: tuple[Any, ...], info: StepInfo,
                  policy: Retry) -> NewEvent:
    """Run one attempt on the calling (pool) thread and build the event that
    records it: the result as replay will see it (and its JSON), or the
    error. Never raises for a user's error, so the pool never prints a
    traceback of one."""
    _local.info = info
    try:
        value = fn(*args)
        value, text = payloads.encode(value, functools.partial(_result_name, info))
    except BaseException as exc:  # noqa: B036
        # Even SystemExit or KeyboardInterrupt: raised in a pool thread they
        # stop nothing but this attempt, which is recorded like any failure.
        return failed_event(info, policy, error_data(exc), policy.is_retryable(exc), args)
    finally:
        _local.info = None
    step, name, attempt = info.step, info.name, info.attempt
    digest = args_digest(args)
    encoded = (f'{{"step":{step},"name":{_encode_str(name)},"attempt":{attempt},'
               f'"args_crc":{digest},"result":{text}}}')
    if log.isEnabledFor(logging.DEBUG):  # the hot path: no record built while off
        log.debug("workflow %r: step %d (%s) attempt %d completed", info.workflow_id,
                  step, name, attempt, extra=step_fields(info, "step.completed"))
    # (NewEvent(...) without its Python __new__: once per step)
    return _tuple_new(NewEvent, (STEP_COMPLETED, time.time(),
                                 {"step": step, "name": name, "attempt": attempt,
                                  "args_crc": digest, "result": value},
                                 encoded))


def _result_name(info: StepInfo) -> str:
    return f"the result of step {info.step} ({info.name}) of workflow {info.workflow_id!r}"


def failed_event(info: StepInfo, policy: Retry, error: dict[str, Any], retryable: bool,
                 args: Optional[tuple[Any, ...]] = None) -> NewEvent:
    retryable = retryable and info.attempt < policy.max_attempts
    if log.isEnabledFor(logging.WARNING):
        extra = step_fields(info, "step.failed")
        extra.update(aion_retryable=retryable, aion_error_type=error["type"])
        log.warning("workflow %r: step %d (%s) attempt %d of %d failed (%s: %s); %s",
                    info.workflow_id, info.step, info.name, info.attempt, policy.max_attempts,
                    error["type"], error["message"],
                    "it will be retried" if retryable else "no retry", extra=extra)
    data = {"step": info.step, "name": info.name, "attempt": info.attempt, "error": error,
            "retryable": retryable}
    if args is not None:  # (a record without one is not compared on replay)
        data["args_crc"] = args_digest(args)
    return NewEvent(STEP_FAILED, time.time(), data)




_STEP_TYPES = STEP_TYPES


def _describe(ordinal: int, name: str) -> str:
    # Not a lambda in workflow_step: its cells would live as long as the wait.
    return f"step {ordinal} ({name})"


def workflow_step(ctx: "WorkflowContext", fn: Callable[[Unpack[_Ts]], _R], *args: Unpack[_Ts],
                  retry: Optional[Retry] = None, name: Optional[str] = None,
                  timeout: Optional[Seconds] = None) -> _R:
    """Run ``fn(*args)`` once, durably, on the step pool, and return its
    (JSON) result. On replay the recorded result is returned and ``fn``
    does not run. A step that fails for good raises :class:`StepError`.
    With ``timeout``, an attempt still running after that long is recorded
    as failed (:class:`~aion_green.errors.StepTimeout`, retried as ``retry``
    says); the function cannot be stopped, and its late outcome is dropped.

    (``ctx.step``, on the run's greenlet: the recorded outcome on replay;
    live, each attempt on the pool, retried after its backoff while the
    policy allows.)"""
    if ctx._divergence is not None or ctx._failure is not None or ctx._host.closing:
        ctx._check()  # raises
    if type(fn) is DeclaredStep:  # @aion.step: its options, where the call gives none
        declared = fn
        fn = declared.fn  # type: ignore[assignment]  # (the declared function's own type)
        retry = declared.retry if retry is None else retry
        timeout = declared.timeout if timeout is None else timeout
        name = name or declared.name
    policy = retry or NO_RETRY
    limit = None if timeout is None else check_timeout(timeout, f"ctx.step(..., timeout={timeout!r})")
    ctx._step_ordinal += 1
    ordinal = ctx._step_ordinal
    sname = name or getattr(fn, "__qualname__", None) or step_name(fn)
    attempt = 0
    backoff_due = 0.0
    cursor = ctx._cursor
    # Records found once this call went live answer its own attempts; only
    # replayed ones are checked against the arguments (their digest, once).
    live = False
    digest: Optional[int] = None
    while True:
        if cursor.next_command() is None:
            # Live: run the next attempt; the pool records it, and its
            # event is then the next command.
            if backoff_due:
                gevent.sleep(backoff_due)
                backoff_due = 0.0
            if cursor.paused:  # no step starts while the run is paused (core/bounds.py)
                ctx._hold()
            info = _tuple_new(StepInfo, (ctx._key, ctx.run_id, ordinal, sname,
                                         attempt + 1, ctx.generation))
            if limit is None:
                ctx._host.run_step(ctx._recorder, fn, args, info, policy)
            else:
                ctx._host.run_step(ctx._recorder, fn, args, info, policy, limit)
            live = True
        try:
            found = ctx._next_command()
        except BaseException:
            # Abandoned (a cancel request or a deadline came first, or the
            # run ends): a late record of this attempt is not a command of
            # the workflow's path: passed over, and not kept.
            cursor.skip_step(ordinal, attempt + 1)
            raise
        data = found.data
        if found.type in _STEP_TYPES and data.get("step") == ordinal and data.get("name") == sname:
            cursor.consume(found)  # (ctx._take's check, inlined: this runs once per step)
            recorded = found
        else:  # a divergence: _take raises NonDeterminismError and fails the run
            taken = ctx._take(_STEP_TYPES, {"step": ordinal, "name": sname},
                              functools.partial(_describe, ordinal, sname), found)
            assert taken is not None
            recorded, data = taken, taken.data
        if not live and "args_crc" in data:
            digest = check_args(ctx, recorded, ordinal, sname, args, digest)
        attempt = data.get("attempt", attempt + 1)
        if recorded.type == STEP_COMPLETED:
            # fn's result as its return annotation declares it, decoded from
            # the record (core/payloads.py): the same live and on replay. A
            # JSON value of an undeclared or JSON type is returned as it is.
            result = data.get("result")
            hint = payloads.return_hint(fn)
            if hint is None and type(result) is not dict:
                return result  # type: ignore[return-value]
            return payloads.decode(result, hint)  # type: ignore[no-any-return]
        if not data.get("retryable"):
            raise ctx._step_error(ordinal, sname, data, attempt)
        backoff_due = policy.delay(attempt)
