"""Schedules over HTTP, the Client and the CLI (issue 18): list, create,
show, delete, against a real ``aion-green worker --http`` process."""
import functools
import json
import time
from urllib.parse import quote

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess
from worker_process import call as worker_call

import aion_green as aion
from aion_green.transport.client import Client

TOKEN = "sched-token"

FLOWS = '''
import aion_green as aion


@aion.workflow(name="sched.tick")
def tick(ctx, tag):
    return tag


@aion.workflow(name="sched.other")
def other(ctx):
    return ctx.receive("never", timeout=60)
'''


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sched")
    (directory / "schedflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'sched.db'}", "schedflows",
                           "--token", TOKEN)
    yield served
    served.stop()


call = functools.partial(worker_call, token=TOKEN, timeout=60)


def test_a_schedule_is_created_listed_shown_fires_and_is_deleted_over_http(worker):
    status, created = call(worker, "POST", "/v1/schedules", body={
        "schedule_id": "every/sec", "workflow": "sched.tick", "args": ["t"], "every": 1})
    assert status == 200 and created["schedule_id"] == "every/sec" and created["run_id"]
    # The same spec again: the same schedule (idempotent); another spec: a 409.
    assert call(worker, "POST", "/v1/schedules", body={
        "schedule_id": "every/sec", "workflow": "sched.tick", "args": ["t"], "every": 1}) == (
        200, created)
    status, doc = call(worker, "POST", "/v1/schedules", body={
        "schedule_id": "every/sec", "workflow": "sched.tick", "args": ["u"], "every": 1})
    assert (status, doc["error"]["code"]) == (409, "already_exists")
    path = "/v1/schedules/" + quote("every/sec", safe="")
    status, shown = call(worker, "GET", path)
    assert status == 200 and shown["status"] == "active" and shown["every"] == 1.0
    assert shown["workflow"] == "sched.tick" and shown["args"] == ["t"]
    assert shown["next_fire"] is not None  # the worker drives it: it answers its query
    status, listed = call(worker, "GET", "/v1/schedules")
    assert status == 200 and [s["schedule_id"] for s in listed["schedules"]] == ["every/sec"]

    def fired():
        status, page = call(worker, "GET", "/v1/workflows", {"type": "sched.tick"})
        return [r for r in page["runs"] if r["status"] == "completed"]

    wait_until(fired, timeout=15, what="a fire of the schedule to run")
    runs = fired()
    assert runs[0]["workflow_id"].startswith("every/sec@") and runs[0]["result"] == "t"
    status, doc = call(worker, "DELETE", path, {"timeout": 10})
    assert (status, doc) == (200, {"schedule_id": "every/sec", "deleted": True})
    assert call(worker, "GET", "/v1/schedules")[1]["schedules"] == []
    status, page = call(worker, "GET", "/v1/schedules", {"include_deleted": "true"})
    assert [s["status"] for s in page["schedules"]] == ["deleted"]
    count = len(fired())
    time.sleep(2.5)
    assert len(fired()) == count, "a deleted schedule fired"
    assert call(worker, "DELETE", path)[0] == 200  # deleting again is fine


@pytest.mark.parametrize("body, field", [
    ({"workflow": "sched.tick", "every": 5}, "schedule_id"),
    ({"schedule_id": "b1", "every": 5}, "workflow"),
    ({"schedule_id": "b2", "workflow": "sched.tick"}, "cron"),
    ({"schedule_id": "b3", "workflow": "sched.tick", "every": 5, "cron": "* * * * *"}, "cron"),
    ({"schedule_id": "b4", "workflow": "sched.tick", "every": "5"}, "every"),
    ({"schedule_id": "b5", "workflow": "sched.tick", "every": -1}, "every"),
    ({"schedule_id": "b6", "workflow": "sched.tick", "cron": "61 * * * *"}, "61"),
    ({"schedule_id": "b7", "workflow": "sched.tick", "every": 5, "overlap": "sometimes"},
     "overlap"),
    ({"schedule_id": "b8", "workflow": "sched.tick", "every": 5, "start_at": "tomorrow"},
     "start_at"),
    ({"schedule_id": "b9", "workflow": "sched.tick", "every": 5,
      "start_at": "2031-03-01T02:00:00"}, "start_at"),
    ({"schedule_id": "b10", "workflow": "sched.nope", "every": 5}, "sched.nope"),
    ({"schedule_id": "b11", "workflow": "sched.tick", "every": 5, "colour": "red"}, "colour"),
])
def test_bad_input_is_a_400_naming_what_and_creates_nothing(worker, body, field):
    status, doc = call(worker, "POST", "/v1/schedules", body=body)
    assert status == 400 and doc["error"]["code"] == "invalid_argument", doc
    assert field in doc["error"]["message"], doc
    schedule_id = body.get("schedule_id")
    if schedule_id:
        assert call(worker, "GET", f"/v1/schedules/{schedule_id}")[0] == 404


def test_an_id_that_names_no_schedule_is_a_404(worker):
    call(worker, "POST", "/v1/workflows", body={"workflow": "sched.other", "id": "plain"})
    for method in ("GET", "DELETE"):
        for sid in ("nobody", "plain"):
            status, doc = call(worker, method, f"/v1/schedules/{sid}")
            assert (status, doc["error"]["code"]) == (404, "not_found"), (method, sid)
    assert call(worker, "GET", "/v1/workflows/plain")[1]["status"] == "running"


def test_the_client_and_the_command_line_manage_schedules(worker):
    client = Client(worker.http, token=TOKEN)
    handle = client.schedule("nightly", "sched.tick", "n", cron="0 2 * * *")
    assert handle.workflow_id == "nightly" and handle.run_id
    info = client.describe_schedule("nightly")
    assert (info.cron, info.status, info.workflow) == ("0 2 * * *", "active", "sched.tick")
    assert info.next_fire.endswith("T02:00:00+00:00")
    with pytest.raises(aion.WorkflowNotFound):
        client.describe_schedule("nobody")
    env = {"AION_GREEN_TOKEN": TOKEN}

    def cli(*args, rc=0):
        proc = run_python(["-m", "aion_green", "--db", worker.http, "--json", *args],
                          check=False, timeout=60, env_extra=env)
        assert proc.returncode == rc, (args, proc.stdout, proc.stderr)
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    created = cli("schedule", "create", "hourly", "sched.tick", '"h"', "--every", "3600",
                  "--overlap", "buffer_one")
    assert created["schedule_id"] == "hourly" and created["run_id"]
    listed = cli("schedule", "list")
    assert {s["schedule_id"] for s in listed} >= {"hourly", "nightly"}
    shown = cli("schedule", "show", "hourly")
    assert (shown["every"], shown["overlap"], shown["args"]) == (3600.0, "buffer_one", ["h"])
    cli("schedule", "create", "bad", "sched.tick", "--every", "5", "--start-at", "soon", rc=2)
    cli("schedule", "show", "nobody", rc=1)
    assert cli("schedule", "delete", "hourly") == {"schedule_id": "hourly", "deleted": True}
    client.unschedule("nightly", timeout=10)
    assert {s.schedule_id for s in client.schedules()}.isdisjoint({"hourly", "nightly"})
    assert {s.schedule_id: s.status for s in client.schedules(include_deleted=True)}[
        "nightly"] == "deleted"


def test_the_engine_lists_and_describes_schedules(make_engine):
    @aion.workflow(name="sched.local")
    def local(ctx):
        return 1

    engine = make_engine(local)
    engine.schedule("s-1", local, cron="*/5 * * * *")
    engine.schedule("s-2", local, every=60)
    wait_until(lambda: all(s.next_fire for s in engine.schedules()), what="both to answer")
    assert [s.schedule_id for s in engine.schedules()] == ["s-1", "s-2"]
    assert engine.describe_schedule("s-2").every == 60.0
    engine.unschedule("s-1", timeout=10)
    assert [s.schedule_id for s in engine.schedules()] == ["s-2"]
    assert engine.describe_schedule("s-1").status == "deleted"
