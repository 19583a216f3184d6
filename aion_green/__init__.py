"""aion_green: durable workflows for synchronous Python, on gevent.

The public names, nothing else. The light ones (errors, events, the
registry, the store's records) load with the package; the engine and what it
needs (gevent's hub, the SQLite store) load on the first use of a name that
needs them, so a process that imports only the HTTP client
(``aion_green.transport.client``) loads neither (issue 17)."""
import importlib
from typing import TYPE_CHECKING, Any

from aion_green import payloads  # the public module: aion.payloads.register(...)
from aion_green.core.errors import (
    AionError,
    Cancelled,
    ConfigurationError,
    EngineClosed,
    FencedOut,
    InternalError,
    NamespaceDenied,
    NonDeterminismError,
    NonRetryableError,
    QueryFailed,
    RestartIntensityExceeded,
    SequenceConflict,
    SerializationError,
    StepArgumentsChanged,
    StepError,
    StepTimeout,
    StoreCorrupt,
    StoreError,
    StoreLost,
    StoreUnavailable,
    Timeout,
    WorkflowArgumentsInvalid,
    WorkflowCancelled,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
    WorkflowTimedOut,
)
from aion_green.core.events import Event
from aion_green.core.registry import workflow
from aion_green.store import IEventStore, RunInfo, StepRunning

# Name -> the module that defines it, imported on first use (PEP 562).
_LAZY = {
    "ChildHandle": "workflows.children", "WorkflowContext": "workflows.context",
    "Engine": "runtime.engine", "WorkflowHandle": "runtime.engine", "Step": "workflows.fanout",
    "SCHEDULE_WORKFLOW": "runtime.schedules", "Retry": "workflows.steps",
    "StepInfo": "workflows.steps", "step_info": "workflows.steps",
    "SQLiteStore": "stores.sqlite.store", "ChildSpec": "workflows.supervision",
    "Cron": "runtime.triggers", "step": "workflows.declared", "WorkflowInfo": "workflows.context",
}

if TYPE_CHECKING:  # pragma: no cover - what the type checkers see
    from aion_green.runtime.engine import Engine, WorkflowHandle
    from aion_green.runtime.schedules import SCHEDULE_WORKFLOW
    from aion_green.runtime.triggers import Cron
    from aion_green.stores.sqlite.store import SQLiteStore
    from aion_green.workflows.children import ChildHandle
    from aion_green.workflows.context import WorkflowContext, WorkflowInfo
    from aion_green.workflows.declared import step
    from aion_green.workflows.fanout import Step
    from aion_green.workflows.steps import Retry, StepInfo, step_info
    from aion_green.workflows.supervision import ChildSpec


if not TYPE_CHECKING:
    # Hidden from type checkers: a module __getattr__ would make any name,
    # a typo too (``aion.Retyr``), an ``Any`` there; they see the imports above.
    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'aion_green' has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # the next lookup finds it directly
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AionError", "Cancelled", "ChildHandle", "ChildSpec", "ConfigurationError", "Cron", "Engine",
    "EngineClosed", "Event", "FencedOut", "IEventStore", "InternalError", "NamespaceDenied",
    "NonDeterminismError",
    "NonRetryableError", "QueryFailed", "RestartIntensityExceeded", "Retry", "RunInfo",
    "SCHEDULE_WORKFLOW", "SQLiteStore", "SequenceConflict", "SerializationError", "Step",
    "StepArgumentsChanged", "StepError", "StepInfo", "StepRunning", "StepTimeout",
    "StoreCorrupt", "StoreError", "StoreLost", "StoreUnavailable", "Timeout",
    "WorkflowArgumentsInvalid", "WorkflowCancelled", "WorkflowContinuedAsNew",
    "WorkflowContext", "WorkflowFailed", "WorkflowHandle", "WorkflowIdConflict", "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowNotRegistered", "WorkflowNotRunning", "WorkflowTimedOut", "payloads", "step",
    "step_info", "workflow",
]
__version__ = "0.1.0"
