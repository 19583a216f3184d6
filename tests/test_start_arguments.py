"""Starting a workflow with arguments that cannot bind to its function's
parameters is refused before anything is recorded (issue 16: such a run
was accepted and then failed inside with a TypeError)."""
import pytest
from test_http_api import call

import aion_green as aion
from aion_green.transport.wsgi import WSGIApp


@aion.workflow(name="startargs.charge")
def charge(ctx, order_id, amount, currency="EUR"):
    return [order_id, amount, currency]


@aion.workflow(name="startargs.many")
def many(ctx, first, *rest):
    return [first, *rest]


def test_a_start_missing_an_argument_is_refused_and_records_nothing(make_engine):
    engine = make_engine(charge)
    with pytest.raises(aion.WorkflowArgumentsInvalid) as raised:
        engine.start(charge, "o-1", id="short")
    message = str(raised.value)
    assert "startargs.charge" in message and "'amount'" in message
    assert "Nothing was recorded" in message
    assert isinstance(raised.value, aion.ConfigurationError)
    assert engine.list() == []
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("short")
    # Arguments that fit still start (a default may be left out).
    assert engine.start(charge, "o-1", 5, id="ok").result(10) == ["o-1", 5, "EUR"]


def test_a_start_by_name_with_an_extra_argument_is_refused(make_engine):
    engine = make_engine(charge, many)
    with pytest.raises(aion.WorkflowArgumentsInvalid, match="too many positional arguments"):
        engine.start("startargs.charge", "o-1", 5, "USD", "extra", id="long")
    with pytest.raises(aion.WorkflowArgumentsInvalid, match="'first'"):
        engine.start("startargs.many", id="none")
    assert engine.list() == []
    assert engine.start("startargs.many", 1, 2, 3, id="varargs").result(10) == [1, 2, 3]


def test_an_http_start_whose_arguments_do_not_fit_is_a_400_naming_args(make_engine):
    engine = make_engine(charge)
    app = WSGIApp(engine, token=None)
    status, _, body = call(app, "POST", "/v1/workflows",
                           {"workflow": "startargs.charge", "args": ["o-1"], "id": "h1"}, token=None)
    assert status == 400
    assert body["error"]["code"] == "invalid_argument" and body["error"]["field"] == "args"
    assert "startargs.charge" in body["error"]["message"] and "'amount'" in body["error"]["message"]
    assert engine.list() == []


def test_a_schedule_whose_arguments_do_not_fit_is_refused_before_it_is_recorded(make_engine):
    """Every fire of it would have started a run that failed with a TypeError."""
    engine = make_engine(charge)
    with pytest.raises(aion.WorkflowArgumentsInvalid, match="'amount'"):
        engine.schedule("nightly", charge, "o-1", every=60)
    with pytest.raises(aion.WorkflowArgumentsInvalid, match="too many"):
        engine.schedule("nightly", "startargs.charge", 1, 2, 3, 4, every=60)
    assert engine.list() == []


def _positional(ctx, a, b=1, /):
    return a


def _kw_only(ctx, a, *, key):
    return a


def _kw_default(ctx, a, *, key=2, **extra):
    return a


def _star(ctx, *rest):
    return rest


def _none(ctx):
    return None


class _Callable:
    def __call__(self, ctx, a, b=0):
        return a


@pytest.mark.parametrize("fn", [charge, many, _positional, _kw_only, _kw_default, _star, _none,
                                _Callable(), lambda ctx, x=1: x])
def test_a_start_is_refused_exactly_when_python_could_not_call_the_workflow(fn):
    # Once a count of arguments bound, later starts with a count in the
    # function's range skip the binding: a count outside it is still refused,
    # and an answer never depends on what was asked before.
    import inspect

    from aion_green.core.registry import check_arguments

    sig = inspect.signature(fn)
    for _ in range(2):
        for count in (3, 0, 1, 2, 4, 5, 1, 3):
            args = tuple(range(count))
            try:
                sig.bind(None, *args)
                fits = True
            except TypeError:
                fits = False
            if fits:
                check_arguments("w", fn, args)
            else:
                with pytest.raises(aion.WorkflowArgumentsInvalid):
                    check_arguments("w", fn, args)


def test_ids_drawn_by_the_engine_are_version_4_uuids_in_hex(make_engine):
    import uuid

    from aion_green.core.namespaces import new_id

    drawn = {new_id() for _ in range(2000)}
    assert len(drawn) == 2000
    for value in drawn:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    engine = make_engine(charge)
    handle = engine.start(charge, "o-1", 5)  # no id given: one is drawn
    for value in (handle.workflow_id, handle.run_id):
        assert uuid.UUID(hex=value).version == 4 and len(value) == 32
    assert handle.run_id != handle.workflow_id
    assert handle.result(10) == ["o-1", 5, "EUR"]
