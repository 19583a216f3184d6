"""Optional OpenTelemetry tracing: a span per run and per live step attempt.

Off until :func:`enable` is called, and only possible where
``opentelemetry-api`` is installed (``pip install aion-green[otel]``); it is
never a dependency of the engine. Enabling is process-wide (every engine of
the process) and applies to runs whose greenlet starts afterwards.

- ``workflow <type>``: one span each time a run is driven in an engine,
  from the start of its greenlet to its end or to the moment it lets go
  (evicted, interrupted by shutdown, dropped). A run resumed after a restart
  gets a new span with ``aion.resumed`` true and ``aion.replayed_events``;
  ``aion.status`` says how the span ended, and a failed run's span has
  error status and its exception event.
- ``step <name>``: one span per live attempt, a child of its run's span;
  error status when the attempt raised. Replayed steps do not run, so they
  have no span. The user's step function runs with the step span as the
  current span, so spans it creates (an HTTP client's, say) are its children.

Runs are greenlets on the engine's hub thread and steps run on pool
threads, so OpenTelemetry's implicit context is not what links them: the
run's span context is kept on its :class:`WorkflowContext` and handed to
each attempt explicitly. No span is ever made current on the hub thread.

Spans end on the thread that ends them and span processors run there: run
spans are ended on a step-pool thread (with their end time taken on the hub
thread), because the hub thread must never block and a processor may export
synchronously. Prefer ``BatchSpanProcessor`` all the same.
"""
from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Optional

from aion_green.core.errors import ConfigurationError, EngineClosed
from aion_green.core.events import STEP_FAILED
from aion_green.workflows.steps import Retry, StepInfo, attempt_event

# Invariant: None while tracing is off; the engine's only cost then is
# reading this name (runtime/runs.py checks it before anything else here).
tracer: Any = None
_api: Any = None  # the opentelemetry.trace module, once enabled


def available() -> bool:
    """Whether ``opentelemetry-api`` can be imported here."""
    try:
        importlib.import_module("opentelemetry.trace")
    except ImportError:
        return False
    return True


def enable(tracer_provider: Any = None) -> None:
    """Trace runs and steps through ``tracer_provider`` (default: the global
    one, ``opentelemetry.trace.get_tracer_provider()``). Raises
    :class:`ConfigurationError` when ``opentelemetry-api`` is not installed."""
    global tracer, _api
    try:
        api = importlib.import_module("opentelemetry.trace")
    except ImportError as exc:
        raise ConfigurationError(
            f"aion_green.tracing.enable(): opentelemetry-api is not installed ({exc}); "
            "pip install 'aion-green[otel]' (and an SDK or distro to export the spans)") from None
    from aion_green import __version__

    _api = api
    tracer = api.get_tracer("aion_green", __version__, tracer_provider=tracer_provider)


def disable() -> None:
    """Stop tracing (spans already started still end)."""
    global tracer
    tracer = None


def is_enabled() -> bool:
    return tracer is not None


def start_run(ctx: Any, replayed: int) -> Any:
    """Hub thread: start the span of a run's greenlet and keep its context on
    ``ctx`` for the run's steps. Never made current (see the module doc)."""
    active = tracer
    if active is None:
        return None
    span = active.start_span(f"workflow {ctx.workflow_type}", attributes={
        "aion.workflow.id": ctx.workflow_id, "aion.workflow.namespace": ctx.namespace,
        "aion.workflow.run_id": ctx.run_id,
        "aion.workflow.type": ctx.workflow_type, "aion.resumed": bool(replayed),
        "aion.replayed_events": replayed})
    ctx._rare().trace = _api.set_span_in_context(span)
    return span


def end_run(span: Any, outcome: str, final: Any, epoch: Any) -> None:
    """Hub thread: end a run's span, on a step-pool thread (at shutdown, here:
    the pool's threads may outlive the engine, and the span must not be lost)."""
    status = final.status if outcome == "ended" and final is not None else outcome
    end_time = time.time_ns()

    def end() -> None:
        span.set_attribute("aion.status", status)
        if status == "failed":
            error = final.error or {}
            _error(span, error.get("type", "Exception"), error.get("message", ""),
                   error.get("traceback"))
        elif status in ("aborted", "crashed"):
            _error(span, "aion_green." + status, f"the run could not be driven ({status})")
        span.end(end_time=end_time)

    if epoch.hub.closing:
        end()
        return
    try:
        epoch.steps.submit(end)
    except EngineClosed:
        end()


def attempt(fn: Callable[..., Any], args: tuple[Any, ...], info: StepInfo, policy: Retry,
            parent: Any) -> Any:
    """Pool thread: :func:`attempt_event` inside a step span, child of the
    run span whose context is ``parent``."""
    active = tracer
    if active is None:
        return attempt_event(fn, args, info, policy)
    with active.start_as_current_span(
            f"step {info.name}", context=parent, record_exception=False,
            set_status_on_exception=False, attributes={
                "aion.workflow.id": info.workflow_id, "aion.workflow.run_id": info.run_id,
                "aion.step.ordinal": info.step, "aion.step.name": info.name,
                "aion.step.attempt": info.attempt,
                "aion.step.idempotency_key": info.idempotency_key}) as span:

        raised = []

        def run(*a: Any) -> Any:
            try:
                return fn(*a)
            except Exception as exc:
                span.record_exception(exc)  # with its traceback, while it is at hand
                raised.append(exc)
                raise

        event = attempt_event(run, args, info, policy)
        if event.type == STEP_FAILED:
            error = event.data["error"]
            span.set_attribute("aion.step.retryable", bool(event.data["retryable"]))
            # A result that is not JSON fails the attempt without raising here.
            _error(span, error["type"], error["message"], exception_event=not raised)
    return event


def _error(span: Any, kind: str, message: str, stacktrace: Optional[str] = None,
           exception_event: bool = True) -> None:
    status = importlib.import_module("opentelemetry.trace.status")
    span.set_status(status.Status(status.StatusCode.ERROR, f"{kind}: {message}"))
    if exception_event:
        attributes = {"exception.type": kind, "exception.message": message}
        if stacktrace:
            attributes["exception.stacktrace"] = stacktrace
        span.add_event("exception", attributes)
