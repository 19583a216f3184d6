"""Steps declared once: ``@aion.step(retry=..., timeout=...)``.

A function decorated with :func:`step` keeps its name, signature and
docstring. Called from a workflow's code (on the run's greenlet), it runs as
``ctx.step(fn, *args, retry=..., timeout=...)``: recorded once, replayed
from the record, retried as declared. Called anywhere else (a step's own
thread, a script, a test) it is the plain function. ``ctx.step(charge, x)``
on a declared step takes its declared options too; options given at the
call win.

Which run, if any, the calling greenlet is: the engine names each run's
greenlet here as it begins (:func:`enter`) and lets go as it ends
(:func:`leave`): an attribute of the greenlet, or, for a greenlet that takes
none, a weak table, so a finished greenlet leaves no trace.
"""
from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar, Union, overload

from greenlet import getcurrent

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext
    from aion_green.workflows.steps import Retry, Seconds

_R = TypeVar("_R")

# A run's greenlet keeps its context in this attribute while the run is
# live (the engine's greenlets take attributes). Not a weak table entry:
# that was two weak references per resident run for the cyclic GC to walk
# (issue 21). The context holds its greenlet, so the attribute is removed
# as the run lets go (leave), and no cycle outlives the run.
_ATTRIBUTE = "_aion_context"
# The greenlet of each live run that takes no attribute -> its context, both
# weakly (a strong value would keep every such run alive for ever).
_RUNS: "weakref.WeakKeyDictionary[Any, weakref.ref[WorkflowContext]]" = weakref.WeakKeyDictionary()


def enter(ctx: "WorkflowContext") -> None:
    """The run's greenlet, as it begins: it is ``ctx``'s (until :func:`leave`)."""
    glet = getcurrent()
    try:
        setattr(glet, _ATTRIBUTE, ctx)
    except AttributeError:  # (a greenlet with no __dict__)
        _RUNS[glet] = weakref.ref(ctx)


def leave() -> None:
    """The run's greenlet lets go of its run (it ends, or is evicted)."""
    glet = getcurrent()
    if getattr(glet, _ATTRIBUTE, None) is not None:
        setattr(glet, _ATTRIBUTE, None)
    else:
        _RUNS.pop(glet, None)


def current() -> Optional["WorkflowContext"]:
    """The context of the run whose greenlet calls, or None."""
    glet = getcurrent()
    ctx: Optional["WorkflowContext"] = getattr(glet, _ATTRIBUTE, None)
    if ctx is not None:
        return ctx
    ref = _RUNS.get(glet)
    return None if ref is None else ref()


class DeclaredStep(Generic[_R]):
    """A function with a step's options (:func:`step`)."""

    def __init__(self, fn: Callable[..., _R], retry: Optional["Retry"],
                 timeout: Optional["Seconds"], name: Optional[str]) -> None:
        self.fn = fn
        self.retry = retry
        self.timeout = timeout
        self.name = name
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> _R:
        ctx = current()
        if ctx is None:
            return self.fn(*args)
        return ctx.step(self, *args)

    def __repr__(self) -> str:
        return f"<step {getattr(self.fn, '__qualname__', self.fn)!r}>"


@overload
def step(fn: Callable[..., _R]) -> DeclaredStep[_R]: ...


@overload
def step(*, retry: Optional["Retry"] = None, timeout: Optional["Seconds"] = None,
         name: Optional[str] = None) -> Callable[[Callable[..., _R]], DeclaredStep[_R]]: ...


def step(fn: Optional[Callable[..., _R]] = None, *, retry: Optional["Retry"] = None,
         timeout: Optional["Seconds"] = None, name: Optional[str] = None,
         ) -> Union[DeclaredStep[_R], Callable[[Callable[..., _R]], DeclaredStep[_R]]]:
    """Declare ``fn`` a step, with its retry policy, attempt timeout and
    recorded name (default: the function's qualified name)::

        @aion.step(retry=aion.Retry(max_attempts=5), timeout=30)
        def charge(order_id, amount): ...

        @aion.workflow
        def checkout(ctx, order_id):
            return charge(order_id, 42)     # a durable step, retried as declared

    Arguments are positional, as in ``ctx.step``. Bad options are refused
    here, when the module loads, not at the first call."""
    from aion_green.workflows.steps import Retry, check_timeout

    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"@aion.step(retry={retry!r}): pass an aion.Retry(...)")
    if timeout is not None:
        check_timeout(timeout, f"@aion.step(timeout={timeout!r})")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"@aion.step(name={name!r}): a step's name is a non-empty string")

    def declare(f: Callable[..., _R]) -> DeclaredStep[_R]:
        if isinstance(f, DeclaredStep):
            f = f.fn
        if not callable(f):
            raise TypeError(f"@aion.step decorates a function, got {f!r}")
        return DeclaredStep(f, retry, timeout, name)

    return declare if fn is None else declare(fn)
