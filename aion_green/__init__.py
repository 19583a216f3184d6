"""aion_green: durable workflows for synchronous Python, on gevent."""
from .children import ChildHandle
from .context import WorkflowContext
from .engine import Engine, WorkflowHandle
from .errors import (
    AionError,
    Cancelled,
    ConfigurationError,
    EngineClosed,
    FencedOut,
    InternalError,
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
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
)
from .events import Event
from .fanout import Step
from .registry import workflow
from .schedules import SCHEDULE_WORKFLOW
from .steps import Retry, StepInfo, step_info
from .store import IEventStore, RunInfo, SQLiteStore, StepRunning
from .supervision import ChildSpec
from .triggers import Cron

__all__ = [
    "AionError", "Cancelled", "ChildHandle", "ChildSpec", "ConfigurationError", "Cron", "Engine",
    "EngineClosed", "Event", "FencedOut", "IEventStore", "InternalError", "NonDeterminismError",
    "NonRetryableError", "QueryFailed", "RestartIntensityExceeded", "Retry", "RunInfo",
    "SCHEDULE_WORKFLOW", "SQLiteStore", "SequenceConflict", "SerializationError", "Step",
    "StepArgumentsChanged", "StepError", "StepInfo", "StepRunning", "StepTimeout",
    "StoreCorrupt", "StoreError", "StoreLost", "StoreUnavailable", "Timeout",
    "WorkflowArgumentsInvalid", "WorkflowCancelled",
    "WorkflowContext", "WorkflowFailed", "WorkflowHandle", "WorkflowIdConflict", "WorkflowNotFound",
    "WorkflowNotRegistered", "WorkflowNotRunning", "step_info", "workflow",
]
__version__ = "0.1.0"
