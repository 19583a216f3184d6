"""Schedule control over the wire (issue 18): pause, resume, trigger and
update against a real ``aion-green worker --http`` process with a plain HTTP
client, through the ``Client``, and on the command line (over the worker's
HTTP API and over its store); bad requests are a 4xx naming what was wrong,
and nothing is recorded for them."""
import http.client
import json
import time
from urllib.parse import quote

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess

import aion_green as aion
from aion_green.transport.client import Client

TOKEN = "control-token"

FLOWS = '''
import aion_green as aion


@aion.workflow(name="ctl.tick")
def tick(ctx, tag):
    return tag
'''
YEARLY = "0 0 1 1 *"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("control")
    (directory / "ctlflows.py").write_text(FLOWS)
    db = f"sqlite:///{directory / 'control.db'}"
    served = WorkerProcess(directory, db, "ctlflows", "--token", TOKEN)
    served.db = db
    yield served
    served.stop()


def call(worker, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Authorization": f"Bearer {TOKEN}",
                                                       "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def create(worker, sid, **spec):
    status, doc = call(worker, "POST", "/v1/schedules", {
        "schedule_id": sid, "workflow": "ctl.tick", "args": [sid], **spec})
    assert status == 200, doc


def shown(worker, sid):
    status, doc = call(worker, "GET", "/v1/schedules/" + quote(sid, safe=""))
    assert status == 200, doc
    return doc


def fires(worker, sid):
    status, page = call(worker, "GET", "/v1/workflows?type=ctl.tick&limit=1000")
    assert status == 200
    return sorted(r["workflow_id"] for r in page["runs"] if r["workflow_id"].startswith(sid + "@"))


def controls(worker, sid):
    """The control messages recorded in every run of the schedule."""
    found, run = [], shown(worker, sid)["run_id"]
    while run:
        status, page = call(worker, "GET", f"/v1/workflows/{quote(sid, safe='')}/history"
                                           f"?run_id={run}&limit=1000")
        assert status == 200, page
        events = page["events"]
        found = [e["data"]["payload"]["op"] for e in events if e["type"] == "MessageReceived"
                 and e["data"]["name"] == "aion.schedule.control"] + found
        run = events[0]["data"].get("continued_from")
    return found


def test_over_http_pause_stops_the_fires_and_resume_brings_them_back(worker):
    create(worker, "ticker", every=1, catch_up="skip")
    wait_until(lambda: fires(worker, "ticker"), timeout=15, what="a first fire")
    assert call(worker, "POST", "/v1/schedules/ticker/pause", {"note": "deploy"}) == (
        200, {"schedule_id": "ticker", "paused": True})
    wait_until(lambda: shown(worker, "ticker")["paused"], what="the pause taken")
    doc = shown(worker, "ticker")
    assert (doc["status"], doc["note"], doc["next_fire"]) == ("paused", "deploy", None)
    before = fires(worker, "ticker")
    time.sleep(2.5)
    assert fires(worker, "ticker") == before
    assert call(worker, "POST", "/v1/schedules/ticker/resume", {}) == (
        200, {"schedule_id": "ticker", "paused": False})
    wait_until(lambda: len(fires(worker, "ticker")) > len(before), timeout=15,
               what="a fire after the resume")
    assert shown(worker, "ticker")["status"] == "active"
    assert controls(worker, "ticker") == ["pause", "resume"]
    call(worker, "DELETE", "/v1/schedules/ticker")


def test_over_http_trigger_fires_now_and_update_changes_the_spec(worker):
    create(worker, "yearly", cron=YEARLY)
    assert fires(worker, "yearly") == []
    assert call(worker, "POST", "/v1/schedules/yearly/trigger", {}) == (
        200, {"schedule_id": "yearly", "triggered": True})
    wait_until(lambda: fires(worker, "yearly"), timeout=15, what="the triggered run")
    assert call(worker, "POST", "/v1/schedules/yearly/update",
                {"cron": "30 2 * * *", "args": ["new"], "overlap": "allow_all"}) == (
        200, {"schedule_id": "yearly", "updated": True})
    wait_until(lambda: shown(worker, "yearly")["cron"] == "30 2 * * *", what="the update")
    doc = shown(worker, "yearly")
    assert (doc["args"], doc["overlap"], doc["every"]) == (["new"], "allow_all", None)
    assert doc["next_fire"].endswith("02:30:00+00:00")
    assert controls(worker, "yearly") == ["trigger", "update"]


@pytest.mark.parametrize("path, body, status, code, field", [
    ("/v1/schedules/nope/pause", {}, 404, "not_found", None),
    ("/v1/schedules/plain-run/trigger", {}, 404, "not_found", None),
    ("/v1/schedules/deleted/resume", {}, 409, "not_running", None),
    ("/v1/schedules/held/pause", {"note": 5}, 400, "invalid_argument", None),
    ("/v1/schedules/held/pause", {"reason": "x"}, 400, "invalid_argument", None),
    ("/v1/schedules/held/update", {}, 400, "invalid_argument", None),
    ("/v1/schedules/held/update", {"every": "often"}, 400, "invalid_argument", "every"),
    ("/v1/schedules/held/update", {"start_at": "2031-03-01T02:00:00"}, 400, "invalid_argument",
     "start_at"),
    ("/v1/schedules/held/update", {"cron": "61 * * * *"}, 400, "invalid_argument", None),
    ("/v1/schedules/held/update", {"overlap": "sometimes"}, 400, "invalid_argument", None),
    ("/v1/schedules/held/update", {"args": [1, 2, 3]}, 400, "invalid_argument", "args"),
])
def test_over_http_bad_control_requests_are_refused_before_anything_is_recorded(
        worker, path, body, status, code, field):
    if shown_or_none(worker, "held") is None:
        create(worker, "held", cron=YEARLY)
        create(worker, "deleted", cron=YEARLY)
        call(worker, "DELETE", "/v1/schedules/deleted")
        Client(worker.http, token=TOKEN).start("ctl.tick", "p", id="plain-run")
    got, doc = call(worker, "POST", path, body)
    assert (got, doc["error"]["code"]) == (status, code), doc
    if field is not None:
        assert doc["error"]["field"] == field
    assert controls(worker, "held") == []


def shown_or_none(worker, sid):
    status, doc = call(worker, "GET", "/v1/schedules/" + quote(sid, safe=""))
    return doc if status == 200 else None


def test_over_http_control_routes_want_post(worker):
    status, doc = call(worker, "GET", "/v1/schedules/held/pause")
    assert status == 405 and doc["error"]["allow"] == "POST"


def test_the_client_controls_schedules_with_the_engines_names(worker):
    from datetime import timedelta

    client = Client(worker.http, token=TOKEN)
    client.schedule("by-client", "ctl.tick", "c", cron=YEARLY)
    client.pause_schedule("by-client", note="why not")
    wait_until(lambda: client.describe_schedule("by-client").paused, what="the pause")
    assert client.describe_schedule("by-client").note == "why not"
    assert [s.status for s in client.schedules() if s.schedule_id == "by-client"] == ["paused"]
    client.resume_schedule("by-client")
    client.update_schedule("by-client", every=timedelta(hours=2))
    wait_until(lambda: client.describe_schedule("by-client").every == 7200, what="the update")
    assert client.describe_schedule("by-client").cron is None
    client.trigger_schedule("by-client")
    wait_until(lambda: fires(worker, "by-client"), what="the triggered run")
    with pytest.raises(aion.WorkflowNotFound):
        client.pause_schedule("no-such-schedule")
    with pytest.raises(aion.ConfigurationError, match="unknown argument"):
        client.update_schedule("by-client", when="now")


def cli(*args, rc=0):
    proc = run_python(["-m", "aion_green", *args], check=False, timeout=60)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.mark.parametrize("where", ["store", "http"])
def test_the_command_line_pauses_resumes_triggers_and_updates(worker, where):
    sid = f"cli-{where}"
    create(worker, sid, cron=YEARLY)
    base = ["--db", worker.db if where == "store" else worker.http, "--token", TOKEN, "--json"]
    assert json.loads(cli(*base, "schedule", "pause", sid, "--note", "n").stdout) == {
        "schedule_id": sid, "paused": True}
    wait_until(lambda: shown(worker, sid)["paused"], what="the pause")
    assert json.loads(cli(*base, "schedule", "show", sid).stdout)["note"] == "n"
    cli(*base, "schedule", "resume", sid)
    cli(*base, "schedule", "trigger", sid)
    wait_until(lambda: fires(worker, sid), what="the triggered run")
    cli(*base, "schedule", "update", sid, "--every", "3600", "--args", '"x"', "--catch-up", "all")
    wait_until(lambda: shown(worker, sid)["every"] == 3600, what="the update")
    doc = shown(worker, sid)
    assert (doc["args"], doc["catch_up"], doc["cron"], doc["paused"]) == (["x"], "all", None, False)
    assert controls(worker, sid) == ["pause", "resume", "trigger", "update"]
    # Bad input: exit 2 (usage), 1 (no such schedule), nothing recorded.
    cli(*base, "schedule", "update", sid, rc=2)
    cli(*base, "schedule", "update", sid, "--start-at", "tomorrow", rc=2)
    cli(*base, "schedule", "update", sid, "--cron", "* * * * *", "--every", "5", rc=2)
    cli(*base, "schedule", "pause", "no-such-schedule", rc=1)
    assert controls(worker, sid) == ["pause", "resume", "trigger", "update"]
