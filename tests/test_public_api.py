"""The public names stay where users import them, and the HTTP client can
be imported by a process that has no use for the engine (issue 17)."""
import json

from conftest import run_python

import aion_green as aion

PUBLIC = [
    "AionError", "Cancelled", "ChildHandle", "ChildSpec", "ConfigurationError", "Cron", "Engine",
    "EngineClosed", "Event", "FencedOut", "IEventStore", "InternalError", "NamespaceDenied",
    "NonDeterminismError",
    "NonRetryableError", "QueryFailed", "RestartIntensityExceeded", "Retry", "RunInfo",
    "SCHEDULE_WORKFLOW", "SQLiteStore", "SequenceConflict", "SerializationError", "Step",
    "StepArgumentsChanged", "StepError", "StepInfo", "StepRunning", "StepTimeout", "StoreCorrupt",
    "StoreError", "StoreLost", "StoreUnavailable", "Timeout", "WorkflowArgumentsInvalid",
    "WorkflowCancelled", "WorkflowContext", "WorkflowContinuedAsNew", "WorkflowFailed", "WorkflowHandle",
    "WorkflowIdConflict", "WorkflowNotFound", "WorkflowNotRegistered", "WorkflowNotRunning",
    "WorkflowTimedOut", "WorkflowInfo",
    "payloads", "step", "step_info", "workflow",
]


def test_the_public_names_are_pinned_and_each_resolves():
    assert sorted(aion.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(aion, name) is not None, name
    assert set(PUBLIC) <= set(dir(aion))
    assert aion.Engine.__module__ == "aion_green.runtime.engine"
    assert aion.store.SQLiteStore is aion.SQLiteStore
    from aion_green.stores import open_store

    assert aion.store.open_store is open_store  # (where it was, and where it lives now)


def test_importing_the_http_client_loads_neither_the_engine_nor_a_store():
    """Failure window: ``import aion_green.transport.client`` loaded the
    engine, gevent and sqlite3 (the package imported them all): a client
    process (a dashboard, a script in another venv) paid for all of it."""
    out = run_python(
        "import json, sys\n"
        "import aion_green.transport.client\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('aion_green', 'sqlite3',"
        " 'psycopg', 'gevent', 'greenlet')))))\n").stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not any(m.startswith(("aion_green.runtime", "aion_green.stores", "aion_green.workflows"))
                   for m in loaded), sorted(loaded)
    assert loaded.isdisjoint({"aion_green.hub_thread", "aion_green.watchers", "sqlite3", "psycopg",
                              "gevent", "greenlet"}), sorted(loaded)
    assert "aion_green.transport.client" in loaded


def test_the_engine_loads_on_first_use_of_its_name():
    out = run_python(
        "import sys\n"
        "import aion_green as aion\n"
        "print('aion_green.runtime.engine' in sys.modules)\n"
        "aion.Engine\n"
        "print('aion_green.runtime.engine' in sys.modules)\n").stdout
    assert out.split() == ["False", "True"]
