"""Workflow registration: ``@aion.workflow`` and name lookup."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union, overload

from aion_green.core.errors import (
    ConfigurationError,
    WorkflowArgumentsInvalid,
    WorkflowNotRegistered,
)
from aion_green.core.events import check_key

F = TypeVar("F", bound=Callable[..., Any])

# Every decorated workflow by name, for engines that were not given a list.
_DECORATED: dict[str, Callable[..., Any]] = {}


@overload
def workflow(fn: F) -> F: ...
@overload
def workflow(fn: None = None, *, name: Optional[str] = None) -> Callable[[F], F]: ...


def workflow(fn: Optional[F] = None, *, name: Optional[str] = None) -> Union[F, Callable[[F], F]]:
    """Mark a function as a workflow, registered as ``module.qualname`` or
    as ``name``. The function receives ``ctx`` first, then its arguments."""

    def mark(f: F) -> F:
        if not callable(f):
            raise ConfigurationError(f"@aion.workflow needs a function, got {f!r}")
        wname = check_key(name or f"{f.__module__}.{f.__qualname__}", "a workflow's name")
        f.__aion_workflow__ = wname  # type: ignore[attr-defined]  # a mark on the user's function
        _DECORATED[wname] = f
        return f

    return mark(fn) if fn is not None else mark


def workflow_name(fn: Union[str, Callable[..., Any]]) -> str:
    if isinstance(fn, str):
        return fn
    wname = getattr(fn, "__aion_workflow__", None)
    if wname is None:
        raise ConfigurationError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a workflow; decorate it with @aion.workflow"
        )
    return str(wname)


class Registry:
    """The workflows one engine can run: those it was given, then any
    decorated in the process."""

    def __init__(self, workflows: Iterable[Callable[..., Any]] = ()) -> None:
        self._own: dict[str, Callable[..., Any]] = {}
        for fn in workflows:
            self.add(fn)

    def add(self, fn: Callable[..., Any]) -> str:
        wname = workflow_name(fn)
        self._own[wname] = fn
        return wname

    def has_own(self) -> bool:
        """Whether this engine was given workflows (``Engine(workflows=...)``)."""
        return bool(self._own)

    def names(self) -> set[str]:
        """Every workflow type this engine can run."""
        return set(self._own) | set(_DECORATED)

    def find(self, wname: str) -> Optional[Callable[..., Any]]:
        """The function of ``wname`` if this engine knows it, else None."""
        return self._own.get(wname) or _DECORATED.get(wname)

    def get(self, wname: str) -> Callable[..., Any]:
        fn = self._own.get(wname) or _DECORATED.get(wname)
        if fn is None:
            known = ", ".join(sorted(set(self._own) | set(_DECORATED))) or "none"
            raise WorkflowNotRegistered(
                f"workflow type {wname!r} is not registered with this engine (known: {known}); "
                "pass it in Engine(workflows=[...]) or import the module that defines it"
            )
        return fn


# Signatures by function: inspect.signature costs tens of microseconds, and
# a service starts the same few workflow types over and over.
_SIGNATURES: dict[Callable[..., Any], Optional[inspect.Signature]] = {}


def _signature(fn: Callable[..., Any]) -> Optional[inspect.Signature]:
    try:
        return _SIGNATURES[fn]
    except (KeyError, TypeError):  # TypeError: an unhashable callable
        pass
    try:
        sig: Optional[inspect.Signature] = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or a C callable: nothing to check against
        sig = None
    try:
        _SIGNATURES[fn] = sig
    except TypeError:
        pass
    return sig


_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
          inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY,
          inspect.Parameter.VAR_KEYWORD)  # by their int values, 0..4


def parameters_of(fn: Callable[..., Any]) -> Optional[list[list[Any]]]:
    """The parameters of ``fn`` as JSON (``[name, kind, has_default]``
    each), for a process that cannot import it: a worker publishes them
    for the clients that start its types (``_cli_worker.py``)."""
    sig = _signature(fn)
    if sig is None:
        return None
    return [[p.name, int(p.kind), p.default is not p.empty] for p in sig.parameters.values()]


def signature_from(parameters: Sequence[Sequence[Any]]) -> Optional[inspect.Signature]:
    """The inverse of :func:`parameters_of` (None for a malformed list)."""
    try:
        return inspect.Signature([
            inspect.Parameter(str(name), _KINDS[kind],
                              default=None if has_default else inspect.Parameter.empty)
            for name, kind, has_default in parameters])
    except (TypeError, ValueError, IndexError):
        return None


# How many positional arguments (ctx included) each function takes, fewest
# and most, once a start bound to it: a later start with a count in that
# range needs no Signature.bind (~2.5 us, once per start, on the caller's
# thread). Only for functions that any such count binds to (no keyword-only
# parameter without a default).
_RANGES: dict[Callable[..., Any], tuple[int, float]] = {}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional_range(sig: inspect.Signature) -> Optional[tuple[int, float]]:
    fewest, most = 0, 0.0
    for param in sig.parameters.values():
        if param.kind in _POSITIONAL:
            most += 1
            if param.default is param.empty:
                fewest += 1
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            most = float("inf")
        elif param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is param.empty:
            return None
    return fewest, most


def check_arguments(wname: str, fn: Union[Callable[..., Any], inspect.Signature],
                    args: Sequence[Any]) -> None:
    """Raise :class:`WorkflowArgumentsInvalid` when ``fn(ctx, *args)`` could
    not be called: a run started so would record its start and then fail
    inside with a TypeError (issue 16). ``fn`` may be its signature."""
    if not isinstance(fn, inspect.Signature):
        try:
            fewest, most = _RANGES[fn]
        except (KeyError, TypeError):  # TypeError: an unhashable callable
            pass
        else:
            if fewest <= len(args) + 1 <= most:
                return
    sig = fn if isinstance(fn, inspect.Signature) else _signature(fn)
    if sig is None:
        return
    try:
        sig.bind(None, *args)
        if not isinstance(fn, inspect.Signature):
            found = _positional_range(sig)
            if found is not None:
                try:
                    _RANGES[fn] = found
                except TypeError:
                    pass
    except TypeError as exc:
        params = list(sig.parameters.values())[1:]
        shown = ", ".join(str(p) for p in params) or "no arguments"
        raise WorkflowArgumentsInvalid(
            wname,
            f"workflow {wname} cannot be started with the arguments {list(args)!r}: {exc} "
            f"(after ctx it takes: {shown}). Nothing was recorded; pass arguments that fit "
            "its parameters") from None
