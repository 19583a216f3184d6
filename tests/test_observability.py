"""Structured logs (aion_green.logs) and OpenTelemetry tracing (aion_green.tracing)."""
import json
import logging
import sys

import pytest
from conftest import SQLITE_ONLY, park_two_step_run, wait_until

import aion_green as aion
from aion_green.core import logs
from aion_green.runtime import tracing


def identity(x):
    return x


def boom():
    raise ValueError("no luck")


_flaky_calls = []


def flaky(token):
    _flaky_calls.append(token)
    if _flaky_calls.count(token) == 1:
        raise ConnectionError("try again")
    return token


@aion.workflow(name="tests.obs.two_steps")
def two_steps(ctx, x):
    return ctx.step(identity, ctx.step(identity, x))


@aion.workflow(name="tests.obs.fails")
def fails(ctx):
    ctx.step(identity, 1)
    raise KeyError("missing")


@aion.workflow(name="tests.obs.retries")
def retries(ctx, token):
    return ctx.step(flaky, token, retry=aion.Retry(max_attempts=3, initial_interval=0))


@aion.workflow(name="tests.obs.step_fails")
def step_fails(ctx):
    return ctx.step(boom)


def records(caplog, event):
    return [r for r in caplog.records if getattr(r, "aion_event", None) == event]


# -- structured logs ------------------------------------------------------------------------
def test_a_run_logs_its_start_and_end_with_structured_fields(make_engine, caplog):
    caplog.set_level(logging.INFO, logger="aion_green")
    engine = make_engine(two_steps)
    assert engine.start(two_steps, 5, id="logged").result(10) == 5
    info = engine.describe("logged")
    wait_until(lambda: records(caplog, "run.ended"), what="the run's end record")
    (started,) = records(caplog, "run.started")
    (ended,) = records(caplog, "run.ended")
    for record in (started, ended):
        assert record.aion_workflow_id == "logged"
        assert record.aion_run_id == info.run_id
        assert record.aion_workflow_type == "tests.obs.two_steps"
        assert record.levelno == logging.INFO
        assert "'logged'" in record.getMessage()
    assert ended.aion_status == "completed"
    assert 0 <= ended.aion_duration < 10
    assert "completed after" in ended.getMessage()
    # Completed steps are DEBUG only: nothing per step at INFO.
    assert not [r for r in caplog.records if getattr(r, "aion_step", None) is not None]


def failed_run_records(make_engine, caplog, workflow_id):
    """Run ``fails`` as ``workflow_id``; the ``run.ended`` records logged."""
    caplog.set_level(logging.INFO, logger="aion_green")
    engine = make_engine(fails)
    with pytest.raises(aion.WorkflowFailed):
        engine.start(fails, id=workflow_id).result(10)
    wait_until(lambda: records(caplog, "run.ended"), what="the run's end record")
    return records(caplog, "run.ended")


def test_a_failed_run_is_an_error_record_naming_the_error_type(make_engine, caplog):
    (ended,) = failed_run_records(make_engine, caplog, "broken")
    assert ended.levelno == logging.ERROR
    assert ended.aion_status == "failed" and ended.aion_error_type == "KeyError"
    assert "failed after" in ended.getMessage() and "KeyError" in ended.getMessage()


def test_a_failed_step_attempt_is_a_warning_saying_whether_it_is_retried(make_engine, caplog):
    caplog.set_level(logging.INFO, logger="aion_green")
    engine = make_engine(retries, step_fails)
    assert engine.start(retries, "r-1", id="retried").result(10) == "r-1"
    (failed,) = records(caplog, "step.failed")
    assert failed.levelno == logging.WARNING
    assert (failed.aion_workflow_id, failed.aion_step, failed.aion_attempt) == ("retried", 1, 1)
    assert failed.aion_step_name == "flaky" and failed.aion_retryable is True
    assert failed.aion_error_type == "ConnectionError" and "retried" in failed.getMessage()
    caplog.clear()
    with pytest.raises(aion.WorkflowFailed):
        engine.start(step_fails, id="no-retry").result(10)
    (failed,) = records(caplog, "step.failed")
    assert failed.aion_retryable is False and failed.aion_error_type == "ValueError"


def test_completed_steps_are_logged_at_debug(make_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="aion_green")
    engine = make_engine(two_steps)
    run_id = engine.start(two_steps, 1, id="chatty").result(10) and engine.describe("chatty").run_id
    done = records(caplog, "step.completed")
    assert [(r.aion_step, r.aion_attempt, r.levelno) for r in done] == [
        (1, 1, logging.DEBUG), (2, 1, logging.DEBUG)]
    assert {r.aion_run_id for r in done} == {run_id}


@SQLITE_ONLY
def test_a_resumed_run_logs_how_many_events_it_replays(make_engine, caplog):
    caplog.set_level(logging.DEBUG, logger="aion_green")
    parked = park_two_step_run(make_engine, "tests.obs.parked", "parked")
    assert [r.aion_workflow_id for r in records(caplog, "run.interrupted")] == ["parked"]
    second = make_engine(parked)
    assert second.result("parked", timeout=10) is True
    (resumed,) = records(caplog, "run.resumed")
    assert resumed.aion_replayed == 2 and resumed.aion_workflow_type == "tests.obs.parked"
    assert "replaying 2 event(s)" in resumed.getMessage()
    assert records(caplog, "recovery")[-1].aion_resumed == 1  # the second engine's


def test_json_formatter_writes_the_fields_as_one_json_object(make_engine, caplog):
    ended = failed_run_records(make_engine, caplog, "as-json")
    formatter = logs.JsonFormatter()
    line = formatter.format(ended[0])
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "aion_green.runs"
    assert out["aion_event"] == "run.ended" and out["aion_workflow_id"] == "as-json"
    assert out["aion_status"] == "failed" and out["aion_error_type"] == "KeyError"
    assert "as-json" in out["message"] and out["time"].endswith("+00:00")
    for line in map(formatter.format, caplog.records):  # every record is one JSON object
        json.loads(line)


def test_json_formatter_keeps_user_extras_exceptions_and_values_that_are_not_json():
    logger = logging.getLogger("tests.obs.json")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "odd %s", ("one",),
                                   sys.exc_info(), extra={"tenant": "acme", "thing": object()})
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["message"] == "odd one" and out["tenant"] == "acme"
    assert out["thing"].startswith("<object object")
    assert "RuntimeError: kaput" in out["exception"]


# -- tracing ------------------------------------------------------------------------------
@pytest.fixture
def spans():
    """Tracing on, through an SDK provider exporting to memory; off again after."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(tracer_provider=provider)
    exporter.provider = provider  # for spans of the tests' own
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


def finished(exporter, count, what):
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, what=what)
    return exporter.get_finished_spans()


def run_spans(found):
    return [s for s in found if s.name.startswith("workflow ")]


def step_spans(found):
    return [s for s in found if s.name.startswith("step ")]


def test_a_run_has_one_span_and_each_step_a_child_span(make_engine, spans):
    from opentelemetry.trace import StatusCode

    engine = make_engine(two_steps)
    assert engine.start(two_steps, 7, id="traced").result(10) == 7
    found = finished(spans, 3, "the run's span and its two step spans")
    (run,) = run_spans(found)
    assert run.name == "workflow tests.obs.two_steps"
    assert run.attributes["aion.workflow.id"] == "traced"
    assert run.attributes["aion.workflow.run_id"] == engine.describe("traced").run_id
    assert run.attributes["aion.workflow.type"] == "tests.obs.two_steps"
    assert run.attributes["aion.resumed"] is False and run.attributes["aion.status"] == "completed"
    assert run.parent is None and run.status.status_code != StatusCode.ERROR
    steps = sorted(step_spans(found), key=lambda s: s.attributes["aion.step.ordinal"])
    assert [s.name for s in steps] == ["step identity", "step identity"]
    assert [s.attributes["aion.step.ordinal"] for s in steps] == [1, 2]
    assert [s.attributes["aion.step.idempotency_key"] for s in steps] == ["traced/step-1",
                                                                          "traced/step-2"]
    for step in steps:
        assert step.parent.span_id == run.context.span_id
        assert step.context.trace_id == run.context.trace_id
        assert step.attributes["aion.step.attempt"] == 1
        assert run.start_time <= step.start_time <= step.end_time <= run.end_time


def test_a_retried_step_has_a_span_per_attempt_the_failed_one_in_error(make_engine, spans):
    from opentelemetry.trace import StatusCode

    engine = make_engine(retries)
    assert engine.start(retries, "r-2", id="traced-retry").result(10) == "r-2"
    found = finished(spans, 3, "the run's span and two attempt spans")
    first, second = sorted(step_spans(found), key=lambda s: s.attributes["aion.step.attempt"])
    assert [first.attributes["aion.step.attempt"], second.attributes["aion.step.attempt"]] == [1, 2]
    assert first.status.status_code == StatusCode.ERROR
    assert "ConnectionError" in first.status.description
    assert first.attributes["aion.step.retryable"] is True
    assert [e.name for e in first.events] == ["exception"]
    assert first.events[0].attributes["exception.type"] == "ConnectionError"
    assert second.status.status_code != StatusCode.ERROR
    assert first.attributes["aion.step.idempotency_key"] == second.attributes[
        "aion.step.idempotency_key"]


def test_a_failed_run_span_has_error_status_and_the_exception(make_engine, spans):
    from opentelemetry.trace import StatusCode

    engine = make_engine(fails)
    with pytest.raises(aion.WorkflowFailed):
        engine.start(fails, id="traced-fail").result(10)
    (run,) = run_spans(finished(spans, 2, "the failed run's span"))
    assert run.attributes["aion.status"] == "failed"
    assert run.status.status_code == StatusCode.ERROR and "KeyError" in run.status.description
    (exc,) = [e for e in run.events if e.name == "exception"]
    assert exc.attributes["exception.type"] == "KeyError"
    assert "raise KeyError" in exc.attributes["exception.stacktrace"]


def test_spans_made_inside_a_step_are_children_of_the_step_span(make_engine, spans):
    user_tracer = spans.provider.get_tracer("user")

    def inner():
        with user_tracer.start_as_current_span("user work"):
            return 1

    @aion.workflow(name="tests.obs.nested")
    def nested(ctx):
        return ctx.step(inner)

    engine = make_engine(nested)
    assert engine.start(nested, id="nested").result(10) == 1
    found = finished(spans, 3, "the run, step and user spans")
    (user,) = [s for s in found if s.name == "user work"]
    (step,) = step_spans(found)
    assert user.parent.span_id == step.context.span_id


def test_a_resumed_run_spans_only_the_steps_that_run_again(make_engine, spans):
    resumable = park_two_step_run(make_engine, "tests.obs.resumable", "resumable")
    # The first engine: its run span (interrupted at shutdown), step 1, and
    # step 2, which ran but whose record the shutdown left unwritten.
    before = finished(spans, 3, "the first engine's spans")
    (interrupted,) = run_spans(before)
    assert interrupted.attributes["aion.status"] == "interrupted"
    spans.clear()
    second = make_engine(resumable)
    assert second.result("resumable", timeout=10) is True
    found = finished(spans, 2, "the resumed run's spans")
    (run,) = run_spans(found)
    assert run.attributes["aion.resumed"] is True
    assert run.attributes["aion.replayed_events"] == 2
    assert run.attributes["aion.status"] == "completed"
    assert run.context.trace_id != interrupted.context.trace_id
    # Step 1 is replayed from history: it does not run, so it has no span.
    (step,) = step_spans(found)
    assert step.attributes["aion.step.ordinal"] == 2
    assert step.parent.span_id == run.context.span_id


def test_runs_started_while_tracing_is_off_have_no_spans(make_engine, spans):
    tracing.disable()
    engine = make_engine(two_steps)
    assert engine.start(two_steps, 1, id="untraced").result(10) == 1
    assert spans.get_finished_spans() == ()


def test_without_opentelemetry_tracing_cannot_be_enabled_and_runs_go_on(make_engine, monkeypatch):
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry fails
    assert tracing.available() is False
    with pytest.raises(aion.ConfigurationError, match=r"aion-green\[otel\]"):
        tracing.enable()
    assert not tracing.is_enabled()
    engine = make_engine(two_steps, retries)
    assert engine.start(two_steps, 3, id="plain").result(10) == 3
    assert engine.start(retries, "r-3", id="plain-retry").result(10) == "r-3"
