"""Fork and resume through the HTTP API, the Client and the CLI, against a
real ``aion-green worker --http`` process with a plain HTTP client. Steps
count their runs in a file, so "did not run again" is checked from outside
the worker."""
import json
from pathlib import Path

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess, call

import aion_green as aion
from aion_green.transport.client import Client

TOKEN = "rewind-token"

FLOWS = '''
from pathlib import Path

import aion_green as aion


def work(tally, n):
    with open(tally, "a") as f:
        f.write(f"{n}\\n")
    if n == 3 and Path(tally + ".broken").exists():
        raise aion.NonRetryableError("step 3 is broken")
    return n * 10


@aion.workflow(name="rw.pipeline")
def pipeline(ctx, tally):
    return sum(ctx.step(work, tally, n) for n in (1, 2, 3, 4))
'''


def ran(tally):
    return [int(x) for x in Path(tally).read_text().split()] if Path(tally).exists() else []


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rewind")
    (directory / "rwflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'rw.db'}", "rwflows",
                           "--token", TOKEN)
    served.dir = directory
    yield served
    served.stop()


def _failed_run(worker, wid):
    tally = str(worker.dir / f"{wid}.tally")
    Path(tally + ".broken").write_text("")
    client = Client(worker.http, token=TOKEN)
    client.start("rw.pipeline", tally, id=wid)
    with pytest.raises(aion.WorkflowFailed):
        client.result(wid, timeout=20)
    assert ran(tally) == [1, 2, 3]
    return client, tally


def test_over_http_resume_runs_a_failed_run_again_from_what_failed(worker):
    client, tally = _failed_run(worker, "r-1")
    failed = client.describe("r-1")
    Path(tally + ".broken").unlink()
    status, doc = call(worker, "POST", "/v1/workflows/r-1/resume", body={}, token=TOKEN)
    assert status == 200 and doc["workflow_id"] == "r-1" and doc["run_id"] != failed.run_id
    assert client.result("r-1", timeout=20) == 100
    # Steps 1 and 2 were reused, not run again; 3 ran again, then 4.
    assert ran(tally) == [1, 2, 3, 3, 4]
    # The failed run is kept, archived, under its run id.
    assert client.describe("r-1", run_id=failed.run_id).status == "failed"
    # A completed run is not resumed: a 400 saying why, nothing written.
    status, doc = call(worker, "POST", "/v1/workflows/r-1/resume", body={}, token=TOKEN)
    assert (status, doc["error"]["code"]) == (400, "invalid_argument")
    assert "fork it" in doc["error"]["message"] and ran(tally) == [1, 2, 3, 3, 4]


def test_over_http_fork_reuses_events_up_to_a_seq_under_a_new_id(worker):
    client, tally = _failed_run(worker, "f-1")
    history = client.history("f-1")
    second = [e.seq for e in history if e.type == "StepCompleted"][1]
    Path(tally + ".broken").unlink()
    status, doc = call(worker, "POST", "/v1/workflows/f-1/fork",
                       body={"from_seq": second, "id": "f-1-again"}, token=TOKEN)
    assert status == 200 and doc["workflow_id"] == "f-1-again" and doc["from"] == "f-1"
    assert client.result("f-1-again", timeout=20) == 100
    assert ran(tally) == [1, 2, 3, 3, 4]  # 1 and 2 reused from the source
    assert client.describe("f-1").status == "failed"  # the source is not changed
    started = client.history("f-1-again")[0]
    assert started.data["forked_from"]["workflow_id"] == "f-1"
    # The same new id again: 409, nothing run.
    status, doc = call(worker, "POST", "/v1/workflows/f-1/fork",
                       body={"from_seq": second, "id": "f-1-again"}, token=TOKEN)
    assert (status, doc["error"]["code"]) == (409, "already_exists")
    # Bad input names the field; an unknown id is a 404.
    for body in ({}, {"from_seq": 0}, {"from_seq": "2"}, {"from_seq": True}):
        status, doc = call(worker, "POST", "/v1/workflows/f-1/fork", body=body,
                           token=TOKEN)
        assert (status, doc["error"]["code"], doc["error"]["field"]) == (
            400, "invalid_argument", "from_seq"), body
    status, doc = call(worker, "POST", "/v1/workflows/f-1/fork",
                       body={"from_seq": 10_000}, token=TOKEN)
    assert status == 400 and doc["error"]["code"] == "invalid_argument"
    status, doc = call(worker, "POST", "/v1/workflows/nobody/fork", body={"from_seq": 2},
                       token=TOKEN)
    assert (status, doc["error"]["code"]) == (404, "not_found")
    status, doc = call(worker, "GET", "/v1/workflows/f-1/fork", token=TOKEN)
    assert status == 405
    assert ran(tally) == [1, 2, 3, 3, 4]


def test_the_client_and_the_command_line_fork_and_resume_through_a_worker(worker):
    client, tally = _failed_run(worker, "c-1")
    Path(tally + ".broken").unlink()
    forked = client.fork("c-1", 2, id="c-1-fork")
    assert forked.workflow_id == "c-1-fork" and forked.result(timeout=20) == 100
    env = {"AION_GREEN_TOKEN": TOKEN}
    proc = run_python(["-m", "aion_green", "--db", worker.http, "--json", "resume", "c-1",
                       "--wait", "--timeout", "30"], env_extra=env, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert client.describe("c-1").status == "completed"
    proc = run_python(["-m", "aion_green", "--db", worker.http, "--json", "fork", "c-1",
                       "--from", "2", "--id", "c-1-cli"], env_extra=env, check=False,
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["workflow_id"] == "c-1-cli"
    wait_until(lambda: client.describe("c-1-cli").status == "completed", timeout=20,
               what="the CLI's fork to complete")
