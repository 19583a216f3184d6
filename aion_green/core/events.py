"""Event types of a workflow history, and their JSON form.

A history is the append-only list of these events, numbered by ``seq`` from 1.
Every value stored in an event round-trips through :func:`encode`/:func:`decode`
(strict JSON), so what a live run sees is exactly what a replay will see.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, Optional, Union

from aion_green.core.errors import ConfigurationError, SerializationError

# -- event type names ---------------------------------------------------------
# Run family.
WORKFLOW_STARTED = "WorkflowStarted"
WORKFLOW_COMPLETED = "WorkflowCompleted"
WORKFLOW_FAILED = "WorkflowFailed"
WORKFLOW_CANCELLED = "WorkflowCancelled"
WORKFLOW_CONTINUED_AS_NEW = "WorkflowContinuedAsNew"
CANCEL_REQUESTED = "CancelRequested"
# Bounds (core/bounds.py): the run's execution timeout passed (terminal, data
# {"error": {...}, "execution_deadline"}); an operator paused or unpaused it
# (data {"reason"}; arrivals, never commands of the workflow).
WORKFLOW_TIMED_OUT = "WorkflowTimedOut"
WORKFLOW_PAUSED = "WorkflowPaused"
WORKFLOW_UNPAUSED = "WorkflowUnpaused"
# Step family.
STEP_COMPLETED = "StepCompleted"
STEP_FAILED = "StepFailed"
# Time family.
TIMER_STARTED = "TimerStarted"
TIMER_FIRED = "TimerFired"
TIMER_CANCELLED = "TimerCancelled"
# Message family.
MESSAGE_RECEIVED = "MessageReceived"
MESSAGE_SENT = "MessageSent"
# Child family.
CHILD_STARTED = "ChildStarted"
CHILD_COMPLETED = "ChildCompleted"
CHILD_FAILED = "ChildFailed"
# Supervision family.
CHILD_RESTARTED = "ChildRestarted"
# Versioning.
PATCH_MARKER = "PatchMarker"
# Search attributes (ctx.upsert_search_attributes): data {"attributes": {name: value}},
# a value None removing that name.
SEARCH_ATTRIBUTES_UPSERTED = "SearchAttributesUpserted"

CANCEL_REQUESTED_TYPES = frozenset({CANCEL_REQUESTED})
# The records of a step attempt (its outcome, or its timeout's).
STEP_TYPES = frozenset({STEP_COMPLETED, STEP_FAILED})
TERMINAL_TYPES = frozenset(
    {WORKFLOW_COMPLETED, WORKFLOW_FAILED, WORKFLOW_CANCELLED, WORKFLOW_CONTINUED_AS_NEW,
     WORKFLOW_TIMED_OUT}
)
EVENT_TYPES = frozenset(
    {
        WORKFLOW_STARTED,
        WORKFLOW_COMPLETED,
        WORKFLOW_FAILED,
        WORKFLOW_CANCELLED,
        WORKFLOW_CONTINUED_AS_NEW,
        CANCEL_REQUESTED,
        STEP_COMPLETED,
        STEP_FAILED,
        TIMER_STARTED,
        TIMER_FIRED,
        TIMER_CANCELLED,
        MESSAGE_RECEIVED,
        MESSAGE_SENT,
        CHILD_STARTED,
        CHILD_COMPLETED,
        CHILD_FAILED,
        CHILD_RESTARTED,
        PATCH_MARKER,
        SEARCH_ATTRIBUTES_UPSERTED,
        WORKFLOW_TIMED_OUT,
        WORKFLOW_PAUSED,
        WORKFLOW_UNPAUSED,
    }
)

# Run statuses, derived from the last event of a history.
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
CONTINUED = "continued"
TIMED_OUT = "timed_out"
STATUS_OF_TERMINAL = {
    WORKFLOW_COMPLETED: COMPLETED,
    WORKFLOW_FAILED: FAILED,
    WORKFLOW_CANCELLED: CANCELLED,
    WORKFLOW_CONTINUED_AS_NEW: CONTINUED,
    WORKFLOW_TIMED_OUT: TIMED_OUT,
}
STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLED, CONTINUED, TIMED_OUT)


class Event:
    """One recorded event: its ``seq``, its ``type``, its wall-clock time ``at``
    (seconds since the epoch) and its type-specific ``data``.

    A plain slotted class, not a frozen dataclass: one is built per record
    on the hot path, and a frozen dataclass costs several times more."""

    __slots__ = ("seq", "type", "at", "data")

    def __init__(self, seq: int, type: str, at: float, data: Optional[dict[str, Any]] = None) -> None:  # noqa: A002
        self.seq = seq
        self.type = type
        self.at = at
        self.data = {} if data is None else data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.seq, self.type, self.at, self.data) == (other.seq, other.type, other.at, other.data)

    __hash__ = None  # type: ignore[assignment]  # unhashable: a mutable value, compared by value

    def __repr__(self) -> str:
        return f"Event(seq={self.seq!r}, type={self.type!r}, at={self.at!r}, data={self.data!r})"

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.at, tz=timezone.utc)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "at": self.at, **self.data}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Event":
        data = dict(obj)
        return cls(seq=data.pop("seq"), type=data.pop("type"), at=data.pop("at"), data=data)

    def describe(self) -> str:
        """A short human form, used in error messages."""
        keys = ", ".join(f"{k}={self.data[k]!r}" for k in ("step", "name") if k in self.data)
        return f"{self.type}({keys})" if keys else self.type


class NewEvent(NamedTuple):
    """An event about to be appended (its ``seq`` is given by the append).

    ``encoded`` may carry ``data`` already as JSON text, so a hot path
    encodes once. (A NamedTuple: built once per step on the hot path, where
    a frozen dataclass costs several times more.)"""

    type: str
    at: float
    data: dict[str, Any] = {}
    encoded: Optional[str] = None

    def data_json(self) -> str:
        if self.encoded is not None:
            return self.encoded
        return json.dumps(self.data, separators=(",", ":"))


# -- the codec ------------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str


def encode(value: Any, what: Union[str, Callable[[], str]]) -> str:
    """Strict JSON text of ``value``; ``what`` (or ``what()``) names it in the error."""
    # Scalars skip the encoder object: a step result is often one, and this
    # runs once per step.
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return _encode_str(value)
    if value is None:
        return "null"
    try:
        return _dumps(value)
    except (TypeError, ValueError) as exc:
        name = what if isinstance(what, str) else what()
        raise SerializationError(
            f"{name} is not JSON-serialisable ({exc}); history stores JSON, so pass and "
            "return dicts, lists, strings, numbers, booleans or None"
        ) from None


_RESULT_OPEN = '{"result":'


def completed(at: float, value: Any, value_json: str) -> NewEvent:
    """``WorkflowCompleted`` with its data already encoded (from
    :func:`encode_decoded`): the store takes the result's JSON from it."""
    return NewEvent(WORKFLOW_COMPLETED, at, {"result": value}, _RESULT_OPEN + value_json + "}")


def result_json(event: NewEvent) -> Optional[str]:
    """The JSON of a terminal event's ``result`` (None for none), for the
    run's row: cut from the event's own encoding when :func:`completed`
    built it, so it is encoded once."""
    value = event.data.get("result")
    if value is None:
        return None
    encoded = event.encoded
    if encoded is not None and encoded.startswith(_RESULT_OPEN) and len(event.data) == 1:
        return encoded[len(_RESULT_OPEN):-1]
    return json.dumps(value)


# The longest id or name accepted: ids are primary keys in both stores and
# appear in every event row, log line and URL of their run.
MAX_KEY_LENGTH = 1000


def check_key(value: object, what: str) -> str:
    """``value`` if it can be a workflow id, type or message name in every
    store; else :class:`ConfigurationError` saying what is wrong.

    Ids and names are stored as text columns, not as escaped JSON: SQLite's
    driver refuses a lone surrogate (``"\\ud800"``) and PostgreSQL a NUL.
    Checked before a record joins a group commit, where it would fail the
    other runs' records with it (issue 16: 47 of 200 runs ran a step twice)."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {_short(value)}")
    if len(value) > MAX_KEY_LENGTH:
        raise ConfigurationError(f"{what} is {len(value)} characters long; the limit is "
                                 f"{MAX_KEY_LENGTH}: use a shorter one (a hash of it, say)")
    if "\x00" in value:
        raise ConfigurationError(f"{what} {_short(value)} holds U+0000 (NUL) at position "
                                 f"{value.index(chr(0))}, which no store can hold in an id or "
                                 "name: leave it out")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{what} {_short(value)} holds an unpaired surrogate ({value[exc.start]!r} at "
            f"position {exc.start}), which is not text a store can hold: decode it properly "
            "(or use its escaped form)") from None
    return value


# Search attributes: the most names one workflow id holds, the longest name,
# the longest string value. An attribute is an index entry, not a payload:
# what does not fit belongs in the workflow's arguments or a query.
MAX_SEARCH_ATTRIBUTES = 64
MAX_ATTRIBUTE_NAME = 100
MAX_ATTRIBUTE_TEXT = 1000


def check_attribute_name(name: object, what: str) -> str:
    """``name`` if it can name a search attribute: an id-like key
    (:func:`check_key`) of at most :data:`MAX_ATTRIBUTE_NAME` characters,
    without "=" (the command line reads ``--attr NAME=VALUE``)."""
    check_key(name, what)
    assert isinstance(name, str)
    if len(name) > MAX_ATTRIBUTE_NAME:
        raise ConfigurationError(f"{what} is {len(name)} characters long; a search attribute's "
                                 f"name has at most {MAX_ATTRIBUTE_NAME}")
    if "=" in name:
        raise ConfigurationError(f"{what} {_short(name)} holds '='; a search attribute's name "
                                 "may not (the command line reads --attr NAME=VALUE)")
    return name


def check_attribute_value(value: object, what: str) -> object:
    """``value`` if it can be a search attribute's value: a JSON scalar, a
    ``str`` (at most :data:`MAX_ATTRIBUTE_TEXT` characters), an ``int`` of
    64 bits, a finite ``float`` or a ``bool``; else :class:`ConfigurationError`
    naming the attribute."""
    kind = type(value)
    if kind is str:
        assert isinstance(value, str)
        if len(value) > MAX_ATTRIBUTE_TEXT:
            raise ConfigurationError(f"{what} is a string of {len(value)} characters; the limit "
                                     f"is {MAX_ATTRIBUTE_TEXT}: index a shorter key")
        if value:
            check_key(value, what)
        return value
    if kind is bool:
        return value
    if kind is int:
        assert isinstance(value, int)
        if not -(2 ** 63) <= value < 2 ** 63:
            raise ConfigurationError(f"{what} = {_short(value)} does not fit in 64 bits; "
                                     "index it as a string")
        return value
    if kind is float:
        assert isinstance(value, float)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigurationError(f"{what} = {value!r} is not a finite number")
        return value
    raise ConfigurationError(
        f"{what} is {_short(value)} of type {kind.__name__}; a search attribute holds one "
        "scalar: a str, int, float or bool (None removes the attribute)")


def attribute_text(value: object) -> str:
    """The text form a search attribute is matched by: a string as it is,
    any other scalar as its JSON text (``42``, ``1.5``, ``true``)."""
    if type(value) is str:
        assert isinstance(value, str)
        return value
    return json.dumps(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "...'" + f" ({len(text)} characters)"


def decode(text: str) -> Any:
    return json.loads(text)


# Types whose JSON round trip gives back an equal value of the same type.
_STABLE = (str, int, float, bool, type(None))


def roundtrip(value: Any, what: Union[str, Callable[[], str]]) -> Any:
    """The value as replay will see it (tuples become lists, keys strings)."""
    return encode_decoded(value, what)[0]


def encode_decoded(value: Any, what: Union[str, Callable[[], str]]) -> tuple[Any, str]:
    """``(value as replay will see it, its JSON text)``, encoding once."""
    text = encode(value, what)
    if type(value) in _STABLE:
        return value, text
    return json.loads(text), text
