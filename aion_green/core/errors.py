"""The closed family of aion_green errors.

Every error derives from :class:`AionError`. Each docstring says whose fault
it is: the user's (a wrong argument, a nondeterministic workflow, a finished
run), the environment's (a locked or corrupt database), or ours (an engine
invariant broken: "this is a bug in aion_green").

Control-flow signals that must not be swallowed by ``except Exception``
derive from :class:`BaseException` instead (see ``Cancelled`` in later
issues).
"""
from __future__ import annotations

from typing import Any, Optional


class AionError(Exception):
    """Base of every error aion_green raises."""


class ConfigurationError(AionError):
    """The user's fault: a bad engine argument, store URL or registration."""


class WorkflowArgumentsInvalid(ConfigurationError):
    """The user's fault: the arguments given to start a workflow do not fit
    the parameters of its function (after ``ctx``): one is missing, or there
    are too many. Nothing was recorded; start it again with arguments that
    fit. (Checked where the starting engine knows the function.)"""

    def __init__(self, workflow_type: str, message: str) -> None:
        self.workflow_type = workflow_type
        super().__init__(message)


class SerializationError(AionError):
    """The user's fault: a value that must go into history is not JSON.

    Workflow arguments, step results and workflow results are recorded as
    JSON; convert the value to dicts, lists, strings, numbers, booleans and
    None before passing or returning it.
    """


class WorkflowNotRegistered(AionError):
    """The user's fault: a workflow type that this engine does not know.

    Register it with ``Engine(workflows=[...])`` or decorate it with
    ``@aion.workflow`` in a module the process imports.
    """


class WorkflowNotFound(AionError):
    """The user's fault: no run with that workflow id exists in the store."""


class NamespaceDenied(AionError):
    """The caller's token is not granted the namespace it asked for (the
    HTTP API's 403 ``namespace_denied``); nothing was done or shown."""


class WorkflowNotRunning(AionError):
    """The user's fault: the run has finished, so a message to it would never
    be read; nothing was recorded."""


class WorkflowIdConflict(AionError):
    """The user's fault: a workflow id reused with another type or arguments.

    Starting with an existing id is idempotent only when the workflow type
    and arguments are the same; pick a new id for different work.
    """


class EngineClosed(AionError):
    """The user's fault: the engine was shut down; create a new ``Engine``."""


class Timeout(AionError):
    """A wait ran past its time limit (a result wait, or a workflow deadline)."""


class StepTimeout(Timeout):
    """A step's attempt did not return within its ``timeout``: recorded as a
    failed attempt (retried as its policy says). The function itself cannot
    be interrupted; whatever it returns later is dropped."""


class StoreError(AionError):
    """The environment's fault: the store could not do what was asked.

    Nothing that was already recorded is lost; the failed write recorded
    nothing.
    """


class StoreUnavailable(StoreError):
    """The store is locked by another process or cannot be reached."""

    #: True when the write may have been committed all the same: a session
    #: to a database server cut while its answer was on its way. A retry of
    #: the same write is recognised by the store (stores/batch.py).
    maybe_written = False


class FencedOut(StoreError):
    """The environment's: this engine lost the right to write (its database
    session, and with it the driver lock, ended while another engine took
    over). It writes nothing more; the runs go on in the engine that drives
    now. Start a new Engine to rejoin."""


class StoreCorrupt(StoreError):
    """The store file is not a database, or is damaged. It was not modified."""


class StoreLost(StoreError):
    """The environment's: the store's file was deleted or replaced while the
    engine had it open. What it wrote from then on would be lost with the
    unlinked file, so it writes nothing more; the failed call recorded
    nothing. Put the file back and start a new Engine."""


class SequenceConflict(StoreError):
    """Two writers on one history: the append named a stale ``expected_seq``.

    The loser stops touching that run; it never retries blindly.
    """

    def __init__(self, workflow_id: str, expected_seq: int, actual_seq: int) -> None:
        self.workflow_id = workflow_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        super().__init__(
            f"history of workflow {workflow_id!r} is at seq {actual_seq}, "
            f"but the append expected seq {expected_seq}: another writer owns this run"
        )


class NonDeterminismError(AionError):
    """The user's fault: replay of a workflow diverged from its history.

    The workflow code made a different call than the one recorded at that
    point. Workflow code must be deterministic: take time, randomness and
    every side effect from ``ctx`` (``ctx.now()``, ``ctx.random()``,
    ``ctx.step(...)``), and version changes with ``ctx.patched(...)``.
    """

    def __init__(self, workflow_id: str, seq: Optional[int], expected: str, found: str) -> None:
        self.workflow_id = workflow_id
        self.seq = seq
        self.expected = expected
        self.found = found
        where = f"at seq {seq}" if seq is not None else "at the end of the history"
        super().__init__(
            f"workflow {workflow_id!r} diverged from its history {where}: "
            f"the code now does {expected}, the history recorded {found}. "
            "Check that the workflow code is deterministic (use ctx.now(), ctx.random(), "
            "ctx.step()) and that runs started under older code are replayed by compatible code."
        )


class StepArgumentsChanged(NonDeterminismError):
    """The user's fault: replay reached a recorded step that the code now
    calls with other arguments (a deploy changed what a running workflow
    passes to it). Steps record a digest of their arguments; the old
    arguments stay on the path of runs recorded under the old code when the
    change is guarded with ``ctx.patched(change_id)``."""

    def __init__(self, workflow_id: str, seq: int, step: int, name: str, found: str) -> None:
        AionError.__init__(
            self,
            f"workflow {workflow_id!r} diverged from its history at seq {seq}: step {step} "
            f"({name}) is now called with arguments that differ from the ones recorded when it "
            "ran. A change to what a workflow passes to a step must not reach runs recorded "
            "under the old code: guard it with `if ctx.patched(\"<change id>\"):` (new "
            "arguments) `else:` (the old ones), so those runs replay the old branch")
        self.workflow_id = workflow_id
        self.seq = seq
        self.expected = f"step {step} ({name}) with other arguments"
        self.found = f"{found} with the arguments recorded then"
        self.step = step
        self.name = name


class StepError(AionError):
    """A step failed for good (after its retries); raised in the workflow.

    The original exception cannot be rebuilt from history, so the workflow
    sees this error on the live run and on replay alike; ``error_type`` is the
    qualified name of the original exception class.
    """

    def __init__(self, step: int, name: str, error_type: str, message: str, attempts: int) -> None:
        self.step = step
        self.name = name
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        super().__init__(
            f"step {step} ({name}) failed after {attempts} attempt(s): {error_type}: {message}"
        )


class NonRetryableError(Exception):
    """Raise (or subclass) this in a step to fail it at once, without retries."""


class WorkflowFailed(AionError):
    """The workflow run ended with an error; raised by ``handle.result()``."""

    def __init__(self, workflow_id: str, error: dict[str, Any]) -> None:
        self.workflow_id = workflow_id
        self.error_type: str = error.get("type", "Exception")
        self.message: str = error.get("message", "")
        self.error = error
        super().__init__(f"workflow {workflow_id!r} failed: {self.error_type}: {self.message}")


class WorkflowTimedOut(WorkflowFailed):
    """The run's execution timeout (``Engine.start(..., execution_timeout=)``)
    passed before it ended: it was ended there, with no cleanup (status
    ``timed_out``); raised by ``handle.result()``. ``deadline`` is the
    wall-clock time (seconds since the epoch) it had to end by. Not the
    workflow's fault alone: the bound was the caller's."""

    def __init__(self, workflow_id: str, error: dict[str, Any]) -> None:
        super().__init__(workflow_id, error)
        self.deadline: Optional[float] = error.get("execution_deadline")
        # Its message says it all ("workflow 'x' did not finish within its
        # execution timeout..."), without "failed: TimedOut:" before it.
        self.args = (self.message or f"workflow {workflow_id!r} timed out",)


class WorkflowContinuedAsNew(AionError):
    """That run of the workflow continued as new: it has no result of its
    own; ``next_run_id`` names the run it became. Raised by ``result(id,
    run_id=...)`` for an earlier run of a chain (``result(id)`` waits for
    the chain's end instead)."""

    def __init__(self, workflow_id: str, run_id: str, next_run_id: Optional[str]) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.next_run_id = next_run_id
        super().__init__(f"run {run_id!r} of workflow {workflow_id!r} continued as new "
                         f"(as run {next_run_id!r}); it has no result of its own")


class Cancelled(BaseException):
    """Raised in a workflow at its current or next wait once a cancel was
    requested (``engine.cancel``). A ``BaseException``, so ``except
    Exception`` cannot swallow it; cleanup in ``finally`` may still run steps.
    If it propagates, the run ends ``WorkflowCancelled``."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class WorkflowCancelled(WorkflowFailed):
    """The workflow run was cancelled; raised by ``handle.result()``."""


class RestartIntensityExceeded(AionError):
    """A supervisor (``ctx.supervise``) saw more restarts within its period
    than its intensity allows: it ended its children and fails, and its
    workflow with it unless caught (its parent then sees a failed child)."""


class QueryFailed(AionError):
    """A query could not be answered: its handler raised (the error's type
    and message are given), the name is unknown, or the run is not live."""


class InternalError(AionError):
    """Ours: an engine invariant was broken. This is a bug in aion_green."""


def error_message(error: BaseException) -> str:
    """``str(error)``, or a stand-in naming the type when the user's
    ``__str__`` itself raises: an error's text goes into history and into
    other callers' errors, and a second error while describing the first
    left a run running with its step re-run forever (issue 16)."""
    try:
        text = str(error)
    except BaseException as exc:  # noqa: B036 - any raise from user code, even SystemExit
        try:
            inner = type(exc).__name__
        except BaseException:  # pragma: no cover - paranoia: a type always has a name
            inner = "an error"
        return f"<str() of this {type(error).__name__} raised {inner}>"
    if type(text) is not str:  # pragma: no cover - str() always returns a str
        return f"<a {type(error).__name__}>"
    return text


# The family's public home is ``aion_green.errors``: a failed step records its
# error's type by that name (``aion_green.errors.StepTimeout``), as every
# release before the layers did, so histories and the code that reads them
# keep matching; pickling finds the classes there too.
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, BaseException) and _cls.__module__ == __name__:
        _cls.__module__ = "aion_green.errors"
del _cls
