"""Workflow registration: ``@aion.workflow`` and name lookup."""
from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar, Union, overload

from .errors import ConfigurationError, WorkflowNotRegistered
from .events import check_key

F = TypeVar("F", bound=Callable[..., Any])

# Every decorated workflow by name, for engines that were not given a list.
_DECORATED: dict[str, Callable[..., Any]] = {}


@overload
def workflow(fn: F) -> F: ...
@overload
def workflow(fn: None = None, *, name: Optional[str] = None) -> Callable[[F], F]: ...


def workflow(fn: Optional[F] = None, *, name: Optional[str] = None) -> Any:
    """Mark a function as a workflow, registered as ``module.qualname`` or
    as ``name``. The function receives ``ctx`` first, then its arguments."""

    def mark(f: F) -> F:
        if not callable(f):
            raise ConfigurationError(f"@aion.workflow needs a function, got {f!r}")
        wname = check_key(name or f"{f.__module__}.{f.__qualname__}", "a workflow's name")
        f.__aion_workflow__ = wname  # type: ignore[attr-defined]
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

    def __init__(self, workflows: Any = ()) -> None:
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

    def get(self, wname: str) -> Callable[..., Any]:
        fn = self._own.get(wname) or _DECORATED.get(wname)
        if fn is None:
            known = ", ".join(sorted(set(self._own) | set(_DECORATED))) or "none"
            raise WorkflowNotRegistered(
                f"workflow type {wname!r} is not registered with this engine (known: {known}); "
                "pass it in Engine(workflows=[...]) or import the module that defines it"
            )
        return fn
