"""Bounds over the wire (issue 18): the execution timeout and pause/unpause
against a real ``aion-green worker --http`` process, with a plain HTTP
client, with :class:`aion_green.transport.client.Client`, and with the
command line. The workflows' steps append to a file, so a test sees from
outside whether a step ran while the run was paused."""
import json
import time
from datetime import timedelta

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess

import aion_green as aion
from aion_green.transport.client import Client

TOKEN = "bounds-token"

FLOWS = '''
import aion_green as aion


def note(path, text):
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\\n")
    return text


@aion.workflow(name="hb.waiter")
def waiter(ctx):
    return ctx.receive("never")


@aion.workflow(name="hb.stepper")
def stepper(ctx, path):
    ctx.step(note, path, "one")
    got = ctx.receive("go")
    ctx.step(note, path, "two " + str(got))
    ctx.sleep(0.5)
    ctx.step(note, path, "three")
    return got
'''


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bounds")
    (directory / "boundflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'bounds.db'}", "boundflows",
                           "--token", TOKEN)
    yield served
    served.stop()


def call(worker, method, path, query=None, body=None):
    return worker.call(method, path, query, body, token=TOKEN)


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def types(worker, wid):
    status, doc = call(worker, "GET", f"/v1/workflows/{wid}/history")
    assert status == 200, doc
    return [e["type"] for e in doc["events"]]


def test_over_http_a_run_past_its_execution_timeout_ends_timed_out(worker):
    status, doc = call(worker, "POST", "/v1/workflows",
                       body={"workflow": "hb.waiter", "id": "h-late", "execution_timeout": 1})
    assert status == 200, doc
    status, doc = call(worker, "GET", "/v1/workflows/h-late")
    assert doc["status"] == "running" and doc["execution_deadline"] > time.time()
    deadline = doc["execution_deadline"]
    status, doc = call(worker, "GET", "/v1/workflows/h-late/result", {"timeout": 20})
    assert (status, doc["error"]["code"]) == (409, "timed_out"), doc
    assert doc["error"]["detail"]["type"] == "TimedOut"
    assert doc["error"]["detail"]["execution_deadline"] == deadline
    status, doc = call(worker, "GET", "/v1/workflows/h-late")
    assert doc["status"] == "timed_out" and "paused" not in doc
    assert types(worker, "h-late")[-1] == "WorkflowTimedOut"
    status, doc = call(worker, "GET", "/v1/workflows", {"status": "timed_out"})
    assert "h-late" in [run["workflow_id"] for run in doc["runs"]]


@pytest.mark.parametrize("value", [0, -5, 0.0, "5", True, [1], {"s": 1}])
def test_over_http_a_bad_execution_timeout_is_a_400_naming_the_field(worker, value):
    status, doc = call(worker, "POST", "/v1/workflows",
                       body={"workflow": "hb.waiter", "id": "h-bad", "execution_timeout": value})
    assert status == 400, doc
    assert doc["error"]["code"] == "invalid_argument"
    assert doc["error"].get("field") == "execution_timeout", doc
    assert "execution_timeout" in doc["error"]["message"]
    status, doc = call(worker, "GET", "/v1/workflows/h-bad")
    assert status == 404  # nothing was recorded


def test_over_http_a_paused_run_runs_no_step_and_takes_no_message_until_unpaused(worker,
                                                                                  tmp_path):
    effects = tmp_path / "effects.txt"
    status, _ = call(worker, "POST", "/v1/workflows",
                     body={"workflow": "hb.stepper", "args": [str(effects)], "id": "h-pause"})
    assert status == 200
    wait_until(lambda: lines(effects) == ["one"], what="the first step")
    status, doc = call(worker, "POST", "/v1/workflows/h-pause/pause", body={"reason": "ops"})
    assert status == 200 and doc["paused"] is True and doc["workflow_id"] == "h-pause"
    assert types(worker, "h-pause")[doc["seq"] - 1] == "WorkflowPaused"
    status, doc = call(worker, "GET", "/v1/workflows/h-pause")
    assert doc["status"] == "running" and doc["paused"] is True
    status, doc = call(worker, "POST", "/v1/workflows/h-pause/signals/go", body={"payload": 7})
    assert status == 200  # recorded while paused
    time.sleep(0.8)
    assert lines(effects) == ["one"]  # no step ran while paused
    assert types(worker, "h-pause")[-2:] == ["WorkflowPaused", "MessageReceived"]
    status, doc = call(worker, "POST", "/v1/workflows/h-pause/unpause", body={})
    assert status == 200 and doc["paused"] is False
    status, doc = call(worker, "GET", "/v1/workflows/h-pause/result", {"timeout": 20})
    assert status == 200 and doc["result"] == 7
    assert lines(effects) == ["one", "two 7", "three"]
    status, doc = call(worker, "GET", "/v1/workflows/h-pause")
    assert "paused" not in doc
    # A finished run: 409 not_running, nothing recorded; an unknown one: 404.
    before = types(worker, "h-pause")
    for action in ("pause", "unpause"):
        status, doc = call(worker, "POST", f"/v1/workflows/h-pause/{action}", body={})
        assert (status, doc["error"]["code"]) == (409, "not_running"), doc
        status, doc = call(worker, "POST", f"/v1/workflows/nobody/{action}", body={})
        assert (status, doc["error"]["code"]) == (404, "not_found")
    assert types(worker, "h-pause") == before
    status, doc = call(worker, "POST", "/v1/workflows/h-pause/pause", body={"reason": 5})
    assert (status, doc["error"]["code"]) == (400, "invalid_argument")
    assert "reason" in doc["error"]["message"]
    status, doc = call(worker, "POST", "/v1/workflows/h-pause/pause", body={"nope": 1})
    assert status == 400 and "nope" in doc["error"]["message"]
    status, doc = call(worker, "GET", "/v1/workflows/h-pause/pause")
    assert status == 405


def test_the_client_starts_with_a_timeout_and_pauses_as_the_engine_does(worker, tmp_path):
    client = Client(worker.http, token=TOKEN)
    handle = client.start("hb.waiter", id="c-late", execution_timeout=timedelta(seconds=1))
    with pytest.raises(aion.WorkflowTimedOut) as raised:
        handle.result(timeout=20)
    assert raised.value.deadline == client.describe("c-late").execution_deadline
    with pytest.raises(aion.ConfigurationError, match="execution_timeout"):
        client.start("hb.waiter", id="c-bad", execution_timeout=-1)
    effects = tmp_path / "client.txt"
    client.start("hb.stepper", str(effects), id="c-pause")
    wait_until(lambda: lines(effects) == ["one"], what="the first step")
    seq = client.pause("c-pause", "hold on")
    assert client.history("c-pause")[seq - 1].data["reason"] == "hold on"
    assert client.describe("c-pause").paused
    client.signal("c-pause", "go", "x")
    time.sleep(0.5)
    assert lines(effects) == ["one"]
    client.unpause("c-pause")
    assert client.result("c-pause", timeout=20) == "x"
    with pytest.raises(aion.WorkflowNotRunning):
        client.pause("c-pause")


def cli(db, *args, rc=0):
    """One ``aion-green --json`` command; its exit code must be ``rc``."""
    proc = run_python(["-m", "aion_green", "--db", db, "--json", *args], check=False, timeout=60,
                      env_extra={"AION_GREEN_TOKEN": TOKEN})
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_the_command_line_bounds_and_pauses_runs(worker, tmp_path):
    proc = cli(worker.http, "start", "hb.waiter", "--id", "cli-late", "--execution-timeout",
               "1s", "--wait", "--timeout", "30", rc=3)  # exit 3: the workflow failed
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "timed_out"
    proc = cli(worker.http, "start", "hb.waiter", "--id", "cli-bad", "--execution-timeout",
               "0", rc=2)
    assert "execution" in proc.stderr
    cli(worker.http, "start", "hb.waiter", "--execution-timeout", "soon", rc=2)
    effects = tmp_path / "cli.txt"
    cli(worker.http, "start", "hb.stepper", json.dumps(str(effects)), "--id", "cli-pause",
        "--execution-timeout", "1h")
    wait_until(lambda: lines(effects) == ["one"], what="the first step")
    paused = json.loads(cli(worker.http, "pause", "cli-pause", "--reason", "r").stdout)
    assert paused["paused"] is True and paused["seq"] > 0 and paused["queued"] is False
    shown = json.loads(cli(worker.http, "show", "cli-pause").stdout)
    assert shown["run"]["paused"] is True and shown["run"]["execution_deadline"] > time.time()
    cli(worker.http, "signal", "cli-pause", "go", '"z"')
    time.sleep(0.5)
    assert lines(effects) == ["one"]
    unpaused = json.loads(cli(worker.http, "unpause", "cli-pause").stdout)
    assert unpaused["paused"] is False
    done = json.loads(cli(worker.http, "result", "cli-pause", "--timeout", "20").stdout)
    assert done["result"] == "z"
    cli(worker.http, "pause", "cli-pause", rc=5)  # finished: exit 5, nothing recorded


def test_with_no_worker_the_command_line_queues_a_pause_for_the_next_one(tmp_path):
    """Over a SQLite file that no worker drives, a pause is queued as a
    cancel is, and the next worker records it before it runs anything."""
    (tmp_path / "boundflows.py").write_text(FLOWS)
    db = f"sqlite:///{tmp_path / 'idle.db'}"
    effects = tmp_path / "idle.txt"
    run_python(["-m", "aion_green", "--db", db, "start", "hb.stepper",
                json.dumps(str(effects)), "--id", "idle"])
    queued = json.loads(cli(db, "pause", "idle").stdout)
    assert queued["queued"] is True
    served = WorkerProcess(tmp_path, db, "boundflows", "--token", TOKEN)
    try:
        wait_until(lambda: "WorkflowPaused" in types(served, "idle"), what="the queued pause")
        time.sleep(0.5)
        # The pause came in before (or right after) its first step: either
        # way nothing more ran, and the run is held.
        assert lines(effects) in ([], ["one"])
        status, doc = call(served, "GET", "/v1/workflows/idle")
        assert doc["paused"] is True
        # A command over the file while a worker drives it: posted to the
        # worker's inbox, and confirmed once the worker recorded it.
        unpaused = json.loads(cli(db, "unpause", "idle").stdout)
        assert unpaused["queued"] is False and unpaused["seq"] > 0
        call(served, "POST", "/v1/workflows/idle/signals/go", body={"payload": 1})
        status, doc = call(served, "GET", "/v1/workflows/idle/result", {"timeout": 20})
        assert status == 200 and doc["result"] == 1
    finally:
        served.stop()


def test_over_http_pause_and_the_timeout_name_their_namespace(worker):
    status, doc = call(worker, "POST", "/v1/workflows", body={
        "workflow": "hb.waiter", "id": "h-ns", "namespace": "blue", "execution_timeout": 60})
    assert status == 200 and doc["namespace"] == "blue"
    status, doc = call(worker, "POST", "/v1/workflows/h-ns/pause", body={"namespace": "blue"})
    assert status == 200 and doc["paused"] is True
    status, doc = call(worker, "GET", "/v1/workflows/h-ns", {"namespace": "blue"})
    assert doc["paused"] is True and doc["execution_deadline"] > time.time()
    status, doc = call(worker, "POST", "/v1/workflows/h-ns/pause", body={})
    assert (status, doc["error"]["code"]) == (404, "not_found")  # not in the default namespace
