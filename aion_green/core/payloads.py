"""Payloads: the values a workflow's history holds for its code, as JSON.

A *payload* is a value of the user's: a workflow's arguments and result, a
step's result, a message's payload, a child's arguments, a query's answer.
History stores JSON, and this module turns values into it and back:

- **Encoding** goes through the standard JSON encoder, whose ``default``
  hook is this module's converter: JSON's own types pass untouched (no cost
  on the hot path), and ``datetime`` (ISO 8601, its offset kept), ``date``,
  ``time``, ``Decimal`` (a string, every digit kept), ``UUID``, ``Enum``
  (its value), dataclasses (a dict of their fields), pydantic models (their
  JSON dump), sets (a list), and every type registered with
  :func:`register`, become JSON. Anything else is refused at the call with a
  :class:`SerializationError` that names the value and what to do.
- **Decoding** gives the value back as the *declared* type: a step's result
  as its function's return annotation says, a workflow's arguments as its
  parameters say, a message as ``ctx.receive(..., type=...)`` says. The
  declared type drives it (``list[Order]``, ``Optional[datetime]``,
  ``dict[str, Decimal]``, ``tuple[int, str]``...); without one, the JSON
  value comes back as it is. Live and on replay alike: the workflow always
  sees the value decoded from its record.
- **A codec** (:func:`configure`), over the encoded bytes: compression,
  encryption. A payload written with one is an envelope ``{"$aion_codec":
  NAME, "data": BASE64}`` in the history, opened on the way back by the
  codec of that name (keep the old one in ``codecs=`` while you rotate).
- **A size limit** (:func:`configure`, ``max_bytes``): a payload larger
  once encoded is refused at the call.

Configuration is per process, as the registry of ``@aion.workflow`` types
is: every engine of the process writes and reads payloads the same way.

Thread contract: :func:`register` and :func:`configure` at import or start
up, before payloads flow; encoding and decoding from any thread.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import sys
import types
import typing
import uuid
import weakref
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

from zope.interface import Attribute, Interface, implementer

from aion_green.core.errors import ConfigurationError, SerializationError

#: The key of a codec's envelope in the history.
ENVELOPE = "$aion_codec"


class IPayloadCodec(Interface):  # type: ignore[misc]  # zope.interface is untyped
    """Transforms a payload's encoded bytes (its JSON in UTF-8) both ways."""

    name = Attribute("A short name recorded with each payload it encoded (str).")

    def encode(data: bytes) -> bytes:  # type: ignore[empty-body]  # noqa: N805
        """The bytes to store."""

    def decode(data: bytes) -> bytes:  # type: ignore[empty-body]  # noqa: N805
        """The bytes :meth:`encode` was given."""


@implementer(IPayloadCodec)
class ZlibCodec:
    """Compression with zlib (``level`` 1-9): for large, repetitive payloads."""

    def __init__(self, level: int = 6) -> None:
        self.name = "zlib"
        self.level = level

    def encode(self, data: bytes) -> bytes:
        import zlib

        return zlib.compress(data, self.level)

    def decode(self, data: bytes) -> bytes:
        import zlib

        return zlib.decompress(data)


class _TypeConverter(NamedTuple):
    cls: type
    to_json: Callable[[Any], Any]
    from_json: Callable[[Any], Any]


class _Settings:
    def __init__(self) -> None:
        self.converters: list[_TypeConverter] = []
        self.codec: Optional[Any] = None
        self.codecs: dict[str, Any] = {}
        self.max_bytes: Optional[int] = None


_settings = _Settings()


def register(cls: type, to_json: Callable[[Any], Any], from_json: Callable[[Any], Any]) -> None:
    """Teach payloads a type: ``to_json(value)`` gives a JSON value (which
    may hold other convertible values), ``from_json(data)`` the value back,
    for a declared ``cls`` (or a subclass's instance, when encoding). A type
    registered again replaces the earlier converter::

        aion.payloads.register(Money, to_json=lambda m: [str(m.amount), m.currency],
                               from_json=lambda d: Money(Decimal(d[0]), d[1]))
    """
    if not isinstance(cls, type):
        raise ConfigurationError(f"payloads.register({cls!r}, ...): pass a class")
    if not callable(to_json) or not callable(from_json):
        raise ConfigurationError(f"payloads.register({cls.__name__}, ...): to_json and "
                                 "from_json are functions")
    _settings.converters = [c for c in _settings.converters if c.cls is not cls]
    _settings.converters.insert(0, _TypeConverter(cls, to_json, from_json))


def configure(*, codec: Optional[Any] = None, codecs: Sequence[Any] = (),
              max_bytes: Optional[int] = None) -> None:
    """Set the codec payloads are written with (None: plain JSON), the
    codecs they may be read with besides it (the ones written before a
    rotation), and the largest encoded payload accepted (None: no limit).
    Each call sets all three."""
    from zope.interface.verify import verifyObject

    for one in ([codec] if codec is not None else []) + list(codecs):
        try:
            verifyObject(IPayloadCodec, one, tentative=True)  # duck typing is welcome
        except Exception as exc:
            raise ConfigurationError(f"payloads.configure: {one!r} is not a payload codec "
                                     f"(it needs name, encode(bytes), decode(bytes)): {exc}") from None
        if not isinstance(one.name, str) or not one.name:
            raise ConfigurationError(f"payloads.configure: the codec {one!r} needs a name")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                  or max_bytes < 1):
        raise ConfigurationError(f"payloads.configure(max_bytes={max_bytes!r}): a positive "
                                 "number of bytes, or None for no limit")
    _settings.codec = codec
    _settings.codecs = {one.name: one for one in [*codecs, *([codec] if codec else [])]}
    _settings.max_bytes = max_bytes


def reset() -> None:
    """Back to plain JSON: no registered type, no codec, no limit (tests)."""
    global _settings
    _settings = _Settings()


# -- encoding ---------------------------------------------------------------------------------
def default(value: Any) -> Any:
    """The JSON encoder's ``default``: a JSON value for what JSON lacks,
    or a TypeError naming the type."""
    for converter in _settings.converters:
        if isinstance(value, converter.cls):
            return converter.to_json(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise TypeError(f"the Decimal {value} is not a finite number")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    dump = getattr(value, "model_dump", None)  # pydantic 2
    if dump is not None and callable(dump) and hasattr(type(value), "model_fields"):
        return dump(mode="json")
    raise TypeError(f"a value of type {type(value).__module__}.{type(value).__qualname__} has no "
                    "JSON form")


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=default).encode


def to_text(value: Any, what: Union[str, Callable[[], str]]) -> str:
    """The JSON text of payload ``value`` (through its codec, if one is
    configured), within the size limit; else :class:`SerializationError`
    saying what ``what`` is and what to do."""
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        name = what if isinstance(what, str) else what()
        raise SerializationError(
            f"{name} cannot be recorded: {exc}. History holds JSON: pass JSON values, or "
            "datetime, date, Decimal, UUID, Enum, dataclasses, pydantic models, or register "
            "a converter for the type (aion.payloads.register)") from None
    codec = _settings.codec
    if codec is not None:
        sealed = base64.b64encode(codec.encode(text.encode("utf-8"))).decode("ascii")
        text = f'{{"{ENVELOPE}":{json.dumps(codec.name)},"data":"{sealed}"}}'
    limit = _settings.max_bytes
    if limit is not None and len(text) > limit:
        name = what if isinstance(what, str) else what()
        raise SerializationError(
            f"{name} is {len(text)} bytes once encoded; the payload size limit is {limit} "
            "bytes (aion.payloads.configure(max_bytes=...)): store large data elsewhere and "
            "pass its key")
    return text


def jsonable(value: Any, what: Union[str, Callable[[], str]]) -> Any:
    """``value`` as a JSON value, through the converter only (no codec, no
    limit): a query's answer, which is never recorded."""
    try:
        return json.loads(_dumps(value))
    except (TypeError, ValueError, RecursionError) as exc:
        name = what if isinstance(what, str) else what()
        raise SerializationError(f"{name} has no JSON form: {exc}") from None


def encode(value: Any, what: Union[str, Callable[[], str]]) -> tuple[Any, str]:
    """``(the JSON value history holds, its text)`` for payload ``value``."""
    text = to_text(value, what)
    kind = type(value)
    if _settings.codec is None and (kind is str or kind is int or kind is bool or value is None
                                    or kind is float):
        return value, text
    return json.loads(text), text


def encode_args(args: Sequence[Any], what: str) -> list[Any]:
    """Arguments as history holds them: each one a payload (so they stay a
    list, each in its own envelope under a codec)."""
    if (_settings.codec is None and _settings.max_bytes is None
            and all(type(a) in _NATIVE for a in args)):
        return list(args)  # (the common case: nothing to convert)
    return [encode(arg, f"{what} (argument {i})")[0] for i, arg in enumerate(args, 1)]


_NATIVE = (str, int, bool, float, type(None))


# -- decoding ---------------------------------------------------------------------------------
def opened(data: Any) -> Any:
    """``data`` out of its codec's envelope, if it is in one."""
    if type(data) is dict and ENVELOPE in data and len(data) == 2:
        name = data[ENVELOPE]
        codec = _settings.codecs.get(name)
        if codec is None:
            raise SerializationError(
                f"a payload was written with codec {name!r}, which this process does not have: "
                "aion.payloads.configure(codec=..., codecs=[...]) must name it to read it")
        return json.loads(codec.decode(base64.b64decode(data["data"])).decode("utf-8"))
    return data


def decode(data: Any, hint: Any = None) -> Any:
    """Payload ``data`` (as history holds it) as the type ``hint`` declares
    (None or ``Any``: as it is, out of its codec's envelope)."""
    data = opened(data)
    if hint is None or hint is Any or hint is object:
        return data
    return _as(data, hint)


def _as(data: Any, hint: Any) -> Any:
    if hint is None or hint is Any or hint is object:
        return data
    if hint is type(None):
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _as(data, typing.get_args(hint)[0])
    if origin is Union or (sys.version_info >= (3, 10) and origin is types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _as(data, option)
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
        return data
    if origin is typing.Literal:
        return data
    if origin in (list, set, frozenset, Sequence, Iterable, typing.List) or (
            origin is not None and origin.__module__ == "collections.abc"
            and origin.__name__ in ("Sequence", "MutableSequence", "Iterable", "Collection",
                                    "Set", "MutableSet")):
        (item,) = typing.get_args(hint) or (Any,)
        items = [_as(x, item) for x in data] if isinstance(data, list) else data
        return set(items) if origin in (set, frozenset) else items
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(data, list):
            return data
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_as(x, args[0]) for x in data)
        if args and len(args) == len(data):
            return tuple(_as(x, a) for x, a in zip(data, args))
        return tuple(data)
    if origin is dict or (origin is not None and getattr(origin, "__name__", "") in
                          ("Mapping", "MutableMapping")):
        args = typing.get_args(hint)
        value_hint = args[1] if len(args) == 2 else Any
        return {k: _as(v, value_hint) for k, v in data.items()} if isinstance(data, dict) else data
    if not isinstance(hint, type):
        return data  # a TypeVar, a string annotation that did not resolve: as it is
    for converter in _settings.converters:
        if issubclass(hint, converter.cls):
            return converter.from_json(data)
    if data is None:
        return None
    if hint in (str, int, float, bool, list, dict):
        if hint is float and type(data) is int:
            return float(data)
        if hint is tuple and isinstance(data, list):
            return tuple(data)
        return data
    if hint is tuple:
        return tuple(data) if isinstance(data, list) else data
    if issubclass(hint, _dt.datetime):
        return hint.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(hint, _dt.date):
        return hint.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(hint, _dt.time):
        return hint.fromisoformat(data) if isinstance(data, str) else data
    if issubclass(hint, decimal.Decimal):
        return hint(str(data))
    if issubclass(hint, uuid.UUID):
        return hint(str(data))
    if issubclass(hint, enum.Enum):
        return hint(data)
    if dataclasses.is_dataclass(hint) and isinstance(data, dict):
        hints = _hints(hint)
        fields = {f.name for f in dataclasses.fields(hint) if f.init}
        build: Any = hint
        return build(**{k: _as(v, hints.get(k)) for k, v in data.items() if k in fields})
    validate = getattr(hint, "model_validate", None)  # pydantic 2
    if validate is not None and hasattr(hint, "model_fields"):
        return validate(data)
    if issubclass(hint, (set, frozenset)) and isinstance(data, list):
        return hint(data)
    return data


# Type hints kept per Python function's code (with the annotations they
# were resolved from), and per other target (a class, a callable object)
# only while it lives. Kept per function object, every ``ctx.step(lambda:
# ...)`` was a new entry: the lambda and its closure kept for good (2,000
# steps, 2,000 entries) and ``get_type_hints`` called per step (issue 21).
_HINTS_BY_CODE: dict[types.CodeType, tuple[dict[str, Any], dict[str, Any]]] = {}
_HINTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_NO_HINTS: dict[str, Any] = {}  # (shared: callers only read it)


def _hints(target: Any) -> dict[str, Any]:
    """``typing.get_type_hints(target)``, kept (an unresolvable one: none)."""
    code = getattr(target, "__code__", None)
    if type(code) is types.CodeType:
        annotations = getattr(target, "__annotations__", None)
        if not annotations:
            return _NO_HINTS  # (a lambda: the usual step)
        kept = _HINTS_BY_CODE.get(code)
        if kept is not None and kept[0] == annotations:
            return kept[1]
        found = _type_hints(target)
        _HINTS_BY_CODE[code] = (dict(annotations), found)
        return found
    try:
        return _HINTS[target]
    except (KeyError, TypeError):
        pass
    found = _type_hints(target)
    try:
        _HINTS[target] = found
    except TypeError:  # not hashable, or no weak reference to it: not kept
        pass
    return found


def _type_hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # a forward reference to nothing, a C function: no hints
        return {}


def return_hint(fn: Any) -> Any:
    """The declared return type of ``fn`` (through ``functools.partial`` and
    ``@aion.step``), or None."""
    return _hints(_unwrapped(fn)).get("return")


# parameter_hints by (function, skip). Every run of a workflow with
# arguments asks on the hub thread; inspect.signature took ~15 % of the hub's
# CPU per one-step run at 50 HTTP clients (issue 21, BENCHMARKS.md).
_PARAMETERS: dict[tuple[Any, int], tuple[Any, ...]] = {}


def parameter_hints(fn: Any, skip: int = 0) -> list[Any]:
    """The declared types of ``fn``'s positional parameters after the first
    ``skip`` (a workflow's ``ctx``), None where undeclared; and, for a
    ``*args`` parameter, its type repeated (the last item, marked by the
    list being one longer than the named ones: see :func:`decode_args`).
    Kept per function, as its type hints are."""
    target = _unwrapped(fn)
    try:
        return list(_PARAMETERS[target, skip])
    except (KeyError, TypeError):  # TypeError: an unhashable callable
        pass
    found = _parameter_hints(target, skip)
    try:
        _PARAMETERS[target, skip] = tuple(found)
    except TypeError:
        pass
    return found


def _parameter_hints(target: Any, skip: int) -> list[Any]:
    import inspect

    hints = _hints(target)
    try:
        params = list(inspect.signature(target).parameters.values())[skip:]
    except (TypeError, ValueError):
        return []
    out: list[Any] = []
    for param in params:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            out.append(hints.get(param.name))
        elif param.kind == param.VAR_POSITIONAL:
            out.append(_Repeat(hints.get(param.name)))
            break
        else:
            break
    return out


class _Repeat(NamedTuple):
    hint: Any


def decode_args(args: Sequence[Any], hints: Sequence[Any]) -> list[Any]:
    """A workflow's recorded arguments as its parameters declare them."""
    out = []
    for i, value in enumerate(args):
        if i < len(hints) and not isinstance(hints[i], _Repeat):
            out.append(decode(value, hints[i]))
        elif hints and isinstance(hints[-1], _Repeat):
            out.append(decode(value, hints[-1].hint))
        else:
            out.append(decode(value))
    return out


def _unwrapped(fn: Any) -> Any:
    import functools

    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "fn") and type(fn).__name__ == "DeclaredStep":
            fn = fn.fn
        else:
            return fn


def plain(hint: Any) -> bool:
    """Whether a value declared ``hint`` needs no decoding beyond JSON (so
    the hot path can skip :func:`decode`)."""
    return (hint is None or hint is Any or hint in (str, int, bool, dict, list, object)
            ) and _settings.codec is None and not _settings.codecs

