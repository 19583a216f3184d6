"""Run identity (issue 18): a workflow id names a chain of runs
(continue_as_new begins the next under the same id). The start answers the
run it created; describe, history and result answer for exactly the run a
caller names, an earlier one included (status ``continued``); a signal,
query, cancel or terminate naming a run that is not the current one is
refused before anything is recorded. In Python, and over HTTP against a real
``aion-green worker --http`` process with a plain HTTP client."""
import functools
import json
import threading
import time

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess
from worker_process import call as worker_call

import aion_green as aion
from aion_green.core import events as ev
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


@aion.workflow(name="ids.chain")
def chain(ctx, n):
    """Continues as new n times, then waits for 'go' and returns what came."""
    ctx.set_query("n", lambda: n)
    if n > 0:
        ctx.continue_as_new(n - 1)
    return {"got": ctx.receive("go", timeout=120)}
'''

ns = {}
exec(compile(FLOWS, "ids_flows", "exec"), ns)
chain = ns["chain"]


def _chain_runs(engine, wid, first):
    """The run ids of the chain, first to current, by following next_run_id."""
    runs = [first]
    while True:
        info = engine.describe(wid, run_id=runs[-1])
        if info.status != ev.CONTINUED:
            return runs, info
        runs.append(info.next_run_id)


def _started_chain(engine, wid, n=2):
    handle = engine.start(chain, n, id=wid)
    wait_until(lambda: engine.describe(wid).run_id != handle.run_id
               and engine.query(wid, "n") == 0, what="the chain to reach its last run")
    runs, current = _chain_runs(engine, wid, handle.run_id)
    assert len(runs) == n + 1 and current.status == ev.RUNNING
    assert current.run_id == engine.describe(wid).run_id
    return handle, runs


def test_the_start_names_its_run_and_each_run_of_a_chain_answers_for_itself(make_engine):
    engine = make_engine(chain)
    handle, runs = _started_chain(engine, "c-1")
    assert handle.run_id == runs[0] and len(set(runs)) == 3
    first = engine.describe("c-1", run_id=runs[0])
    assert (first.status, first.run_id, first.next_run_id) == (ev.CONTINUED, runs[0], runs[1])
    assert first.args == [2] and first.workflow_type == "ids.chain"
    assert engine.describe("c-1", run_id=runs[1]).args == [1]
    # An earlier run's history is its own, ending where it continued.
    history = engine.history("c-1", run_id=runs[0])
    assert history[-1].type == ev.WORKFLOW_CONTINUED_AS_NEW
    assert history[-1].data["run_id"] == runs[1]
    # result() of an earlier run: it has none of its own, and says which run it became.
    with pytest.raises(aion.WorkflowContinuedAsNew) as info:
        engine.result("c-1", run_id=runs[0], timeout=5)
    assert (info.value.run_id, info.value.next_run_id) == (runs[0], runs[1])
    # The current run, named, behaves as the id does.
    engine.signal("c-1", "go", 7, run_id=runs[2])
    assert engine.result("c-1", run_id=runs[2], timeout=10) == {"got": 7}
    assert engine.result("c-1", timeout=10) == {"got": 7}
    assert engine.describe("c-1", run_id=runs[2]).status == ev.COMPLETED


def test_requests_naming_an_earlier_run_are_refused_and_record_nothing(make_engine):
    engine = make_engine(chain)
    _, runs = _started_chain(engine, "c-2")
    before = {run: len(engine.history("c-2", run_id=run)) for run in runs}
    for attempt in (lambda: engine.signal("c-2", "go", 1, run_id=runs[0]),
                    lambda: engine.cancel("c-2", "stop", run_id=runs[1]),
                    lambda: engine.terminate("c-2", "now", run_id=runs[0]),
                    lambda: engine.query("c-2", "n", run_id=runs[1])):
        with pytest.raises(aion.WorkflowNotRunning, match="not|current run"):
            attempt()
    assert {run: len(engine.history("c-2", run_id=run)) for run in runs} == before
    assert engine.describe("c-2").status == ev.RUNNING
    # A run the workflow never had: not found, nothing recorded.
    for attempt in (lambda: engine.describe("c-2", run_id="nope"),
                    lambda: engine.result("c-2", run_id="nope", timeout=1),
                    lambda: engine.signal("c-2", "go", 1, run_id="nope")):
        with pytest.raises(aion.WorkflowNotFound, match="nope"):
            attempt()
    assert {run: len(engine.history("c-2", run_id=run)) for run in runs} == before
    engine.signal("c-2", "go", 2)
    assert engine.result("c-2", timeout=10) == {"got": 2}


def test_a_result_wait_on_a_running_run_ends_when_it_continues_as_new(make_engine):
    """Failure window: the named run is running when the wait begins and
    continues as new meanwhile: the next run's end is not its answer."""
    @aion.workflow(name="ids.hop")
    def hop(ctx, n):
        if n:
            ctx.receive("hop", timeout=60)
            ctx.continue_as_new(n - 1)
        return "the chain's end"

    engine = make_engine(hop)
    handle = engine.start(hop, 1, id="h-1")
    outcome = []

    def wait():
        try:
            outcome.append(engine.result("h-1", run_id=handle.run_id, timeout=10))
        except aion.AionError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)  # the wait has begun on the running run
    engine.signal("h-1", "hop")
    waiter.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], aion.WorkflowContinuedAsNew), outcome
    assert outcome[0].next_run_id == engine.describe("h-1").run_id
    assert engine.result("h-1", timeout=10) == "the chain's end"
    assert engine.result("h-1", run_id=outcome[0].next_run_id, timeout=1) == "the chain's end"


# -- over HTTP, against a real worker --------------------------------------------------------

TOKEN = "ids-token"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ids")
    (directory / "idflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'ids.db'}", "idflows",
                           "--token", TOKEN)
    yield served
    served.stop()


call = functools.partial(worker_call, token=TOKEN)


def test_over_http_the_start_answers_its_run_and_an_earlier_run_answers_for_itself(worker):
    status, started = call(worker, "POST", "/v1/workflows",
                           body={"workflow": "ids.chain", "args": [1], "id": "w-1"})
    assert status == 200 and set(started) == {"workflow_id", "run_id", "namespace"}
    first = started["run_id"]

    def second():
        status, doc = call(worker, "GET", "/v1/workflows/w-1")
        return doc["run_id"] if status == 200 and doc["run_id"] != first else None

    wait_until(second, what="the chain's second run")
    status, doc = call(worker, "GET", "/v1/workflows/w-1", {"run_id": first})
    assert status == 200 and doc["status"] == "continued" and doc["run_id"] == first
    assert doc["next_run_id"] == second()
    status, doc = call(worker, "GET", "/v1/workflows/w-1/result", {"run_id": first, "timeout": 5})
    assert status == 409 and doc["error"]["code"] == "continued_as_new"
    assert doc["error"]["next_run_id"] == second() and doc["error"]["run_id"] == first
    status, doc = call(worker, "GET", "/v1/workflows/w-1/history", {"run_id": first})
    assert status == 200 and doc["events"][-1]["type"] == ev.WORKFLOW_CONTINUED_AS_NEW
    # Naming the earlier run: refused, nothing recorded.
    _, before = call(worker, "GET", "/v1/workflows/w-1/history")
    for path, body in (("/v1/workflows/w-1/signals/go", {"payload": 1, "run_id": first}),
                       ("/v1/workflows/w-1/queries/n", {"run_id": first}),
                       ("/v1/workflows/w-1/cancel", {"reason": "x", "run_id": first}),
                       ("/v1/workflows/w-1/terminate", {"reason": "x", "run_id": first})):
        status, doc = call(worker, "POST", path, body=body)
        assert (status, doc["error"]["code"]) == (409, "not_running"), (path, doc)
    _, after = call(worker, "GET", "/v1/workflows/w-1/history")
    assert after == before
    # An unknown run is a 404; a run id that is not a string, a 400 naming the field.
    status, doc = call(worker, "GET", "/v1/workflows/w-1", {"run_id": "nope"})
    assert (status, doc["error"]["code"]) == (404, "not_found")
    status, doc = call(worker, "POST", "/v1/workflows/w-1/signals/go",
                       body={"payload": 1, "run_id": 12})
    assert status == 400 and "run_id" in doc["error"]["message"]
    # The current run, named: as without a name.
    current = second()
    status, doc = call(worker, "POST", "/v1/workflows/w-1/signals/go",
                       body={"payload": 5, "run_id": current})
    assert status == 200
    status, doc = call(worker, "GET", "/v1/workflows/w-1/result",
                       {"run_id": current, "timeout": 10})
    assert status == 200 and doc["result"] == {"got": 5} and doc["run_id"] == current


def test_the_client_names_runs_as_the_engine_does(worker):
    client = Client(worker.http, token=TOKEN)
    handle = client.start("ids.chain", 1, id="w-2")
    assert handle.run_id
    wait_until(lambda: client.describe("w-2").run_id != handle.run_id, what="the second run")
    assert client.describe("w-2", run_id=handle.run_id).status == "continued"
    with pytest.raises(aion.WorkflowContinuedAsNew) as info:
        client.result("w-2", timeout=5, run_id=handle.run_id)
    assert info.value.next_run_id == client.describe("w-2").run_id
    with pytest.raises(aion.WorkflowNotRunning):
        client.signal("w-2", "go", 1, run_id=handle.run_id)
    client.signal("w-2", "go", 3, run_id=info.value.next_run_id)
    assert client.result("w-2", timeout=10) == {"got": 3}


def cli(db, *args, rc=0, env_extra=None):
    """One ``aion-green --json`` command; its exit code must be ``rc``."""
    proc = run_python(["-m", "aion_green", "--db", db, "--json", *args], check=False, timeout=60,
                      env_extra=env_extra)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_the_command_line_names_runs(worker):
    auth = {"AION_GREEN_TOKEN": TOKEN}
    started = cli(worker.http, "start", "ids.chain", "1", "--id", "w-3", env_extra=auth)
    first = started["run_id"]
    assert started["workflow_id"] == "w-3" and first
    client = Client(worker.http, token=TOKEN)
    wait_until(lambda: client.describe("w-3").run_id != first, what="the second run")
    second = client.describe("w-3").run_id
    ended = cli(worker.http, "result", "w-3", "--run", first, "--timeout", "5", rc=8,
                env_extra=auth)
    assert ended == {"workflow_id": "w-3", "run_id": first, "status": "continued",
                     "next_run_id": second}
    before = client.history("w-3")
    cli(worker.http, "signal", "w-3", "go", "1", "--run", first, rc=5, env_extra=auth)
    cli(worker.http, "cancel", "w-3", "--run", first, rc=5, env_extra=auth)
    cli(worker.http, "query", "w-3", "n", "--run", "nope", rc=1, env_extra=auth)
    assert client.history("w-3") == before
    cli(worker.http, "signal", "w-3", "go", "4", "--run", second, env_extra=auth)
    done = cli(worker.http, "result", "w-3", "--run", second, "--timeout", "10", env_extra=auth)
    assert done["result"] == {"got": 4} and done["run_id"] == second


def test_with_no_worker_a_request_naming_an_earlier_run_is_refused_not_queued(tmp_path):
    """Over a SQLite file that no worker drives, a signal or cancel is
    queued for the next worker: one naming an earlier run is refused here,
    before it is queued."""
    db = f"sqlite:///{tmp_path / 'idle.db'}"
    with aion.Engine(db, workflows=[chain]) as engine:
        handle = engine.start(chain, 1, id="q-1")
        wait_until(lambda: engine.describe("q-1").run_id != handle.run_id, what="the second run")
        wait_until(lambda: engine.query("q-1", "n") == 0, what="the second run to wait")
    cli(db, "signal", "q-1", "go", "1", "--run", handle.run_id, rc=5)
    cli(db, "cancel", "q-1", "--run", handle.run_id, rc=5)
    current = aion.Engine(db, passive=True)
    try:
        assert not any(e.type == ev.MESSAGE_RECEIVED for e in current.history("q-1"))
        queued = current._epoch.store.read_inbox(0, 100)
        assert queued == []
    finally:
        current.shutdown()
