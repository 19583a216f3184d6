"""Retention over the wire (issue 18): ``POST /v1/purge`` against a real
``aion-green worker --http`` process with a plain HTTP client, the
``Client``'s ``purge``, ``aion-green purge --older-than AGE`` over the store
and over HTTP, bad input as a 400 naming its field (a usage error on the
command line), and ``worker --retention AGE`` purging on a timer. Every
check of "gone" is made on the store itself, table by table."""
import http.client
import json

import pytest
from conftest import run_python, wait_until
from test_retention import rows_of
from worker_process import WorkerProcess

import aion_green as aion
from aion_green.stores import open_store
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


@aion.workflow(name="purge.done")
def done(ctx, n):
    ctx.upsert_search_attributes({"n": n})
    return n


@aion.workflow(name="purge.waits")
def waits(ctx):
    return ctx.receive("go", timeout=600)
'''
TOKEN = "purge-token"


@pytest.fixture
def worker(tmp_path):
    (tmp_path / "purgeflows.py").write_text(FLOWS)
    db = f"sqlite:///{tmp_path / 'purge.db'}"
    served = WorkerProcess(tmp_path, db, "purgeflows", "--token", TOKEN)
    served.db = db
    try:
        yield served
    finally:
        served.stop()


def call(worker, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def finish(worker, *wids):
    client = Client(worker.http, token=TOKEN)
    for i, wid in enumerate(wids):
        client.start("purge.done", i, id=wid)
    for wid in wids:
        client.result(wid, timeout=30)


def store_rows(worker, wid):
    store = open_store(worker.db)
    try:
        return rows_of(store, wid)
    finally:
        store.close()


def test_over_http_a_purge_deletes_finished_runs_and_they_answer_404(worker):
    finish(worker, "old-1", "old-2")
    assert call(worker, "POST", "/v1/workflows", {"workflow": "purge.waits", "id": "live"})[0] == 200
    assert store_rows(worker, "old-1")
    assert call(worker, "POST", "/v1/purge", {"older_than": 3600}) == (
        200, {"purged": 0, "older_than": 3600, "namespace": None})
    assert call(worker, "POST", "/v1/purge", {"older_than": 0, "limit": 1}) == (
        200, {"purged": 1, "older_than": 0, "namespace": None})
    assert call(worker, "POST", "/v1/purge", {"older_than": 0.0}) == (
        200, {"purged": 1, "older_than": 0.0, "namespace": None})
    for wid in ("old-1", "old-2"):
        assert store_rows(worker, wid) == {}
        for path in (f"/v1/workflows/{wid}", f"/v1/workflows/{wid}/result?timeout=1",
                     f"/v1/workflows/{wid}/history"):
            status, doc = call(worker, "GET", path)
            assert (status, doc["error"]["code"]) == (404, "not_found"), (path, doc)
    assert store_rows(worker, "live")  # running: kept
    status, doc = call(worker, "GET", "/v1/workflows/live")
    assert status == 200 and doc["status"] == "running"
    # The id may be started again, with other arguments.
    status, doc = call(worker, "POST", "/v1/workflows", {"workflow": "purge.done", "args": [9],
                                                         "id": "old-1"})
    assert status == 200
    assert call(worker, "GET", "/v1/workflows/old-1/result?timeout=20")[1]["result"] == 9


@pytest.mark.parametrize("body, field", [
    ({}, "older_than"),
    ({"older_than": -1}, "older_than"),
    ({"older_than": "30d"}, "older_than"),
    ({"older_than": True}, "older_than"),
    ({"older_than": 10, "limit": 0}, "limit"),
    ({"older_than": 10, "limit": 1.5}, "limit"),
    ({"older_than": 10, "limit": 2 ** 64}, "limit"),
])
def test_over_http_bad_purge_input_is_a_400_naming_the_field(worker, body, field):
    status, doc = call(worker, "POST", "/v1/purge", body)
    assert status == 400, doc
    assert doc["error"]["code"] == "invalid_argument" and doc["error"].get("field") == field, doc


def test_over_http_purge_wants_post_and_a_known_field(worker):
    status, doc = call(worker, "GET", "/v1/purge")
    assert status == 405 and doc["error"]["code"] == "method_not_allowed"
    status, doc = call(worker, "POST", "/v1/purge", {"older_than": 1, "everything": True})
    assert status == 400 and "everything" in doc["error"]["message"]


def test_the_client_purges_with_the_engines_signature(worker):
    from datetime import timedelta

    finish(worker, "c-1", "c-2", "c-3")
    client = Client(worker.http, token=TOKEN)
    assert client.purge(timedelta(hours=1)) == 0
    assert client.purge(0, limit=2) == 2
    assert client.purge(timedelta(0)) == 1
    with pytest.raises(aion.WorkflowNotFound):
        client.describe("c-3")
    with pytest.raises(aion.ConfigurationError):
        client.purge(-5)


def cli(*args, rc=0):
    proc = run_python(["-m", "aion_green", *args], check=False, timeout=60)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.mark.parametrize("where", ["store", "http"])
def test_the_command_line_purges_over_the_store_and_over_http(worker, where):
    finish(worker, "k-1", "k-2")
    base = ["--db", worker.db if where == "store" else worker.http, "--token", TOKEN]
    assert json.loads(cli(*base, "--json", "purge", "--older-than", "30d").stdout) == {
        "purged": 0, "older_than": 30 * 86400}
    assert json.loads(cli(*base, "--json", "purge", "--older-than", "0s", "--limit", "1").stdout)[
        "purged"] == 1
    text = cli(*base, "purge", "--older-than", "0").stdout
    assert "purged 1 run(s)" in text
    assert store_rows(worker, "k-1") == {} and store_rows(worker, "k-2") == {}
    cli(*base, "show", "k-1", rc=1)


@pytest.mark.parametrize("given, says", [
    ("30x", "not an age"), ("-1d", "0 or more"), ("d", "not an age"), ("", "not an age")])
def test_a_bad_age_on_the_command_line_is_a_usage_error_naming_the_option(tmp_path, given, says):
    proc = cli("--db", f"sqlite:///{tmp_path / 'x.db'}", "purge", f"--older-than={given}", rc=2)
    assert "--older-than" in proc.stderr and says in proc.stderr


def test_ages_take_days_hours_minutes_and_seconds():
    from aion_green.cli import age

    assert [age(t) for t in ("30d", "12h", "90m", "45s", "7", "1.5h", "2D")] == [
        2592000, 43200, 5400, 45, 7, 5400, 172800]


def test_a_worker_with_retention_purges_on_a_timer(tmp_path):
    (tmp_path / "purgeflows.py").write_text(FLOWS)
    db = f"sqlite:///{tmp_path / 'timer.db'}"
    served = WorkerProcess(tmp_path, db, "purgeflows", "--token", TOKEN, "--retention", "1s")
    served.db = db
    try:
        finish(served, "t-1")
        call(served, "POST", "/v1/workflows", {"workflow": "purge.waits", "id": "t-live"})
        wait_until(lambda: store_rows(served, "t-1") == {}, timeout=20,
                   what="the worker's periodic purge")
        assert call(served, "GET", "/v1/workflows/t-1")[0] == 404
        assert call(served, "GET", "/v1/workflows/t-live")[1]["status"] == "running"
        status, text = _metrics(served)
        assert status == 200 and "aion_runs_purged_total 1.0" in text
    finally:
        served.stop()


def _metrics(worker):
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_a_bad_retention_stops_the_worker_with_a_usage_error(tmp_path):
    proc = cli("--db", f"sqlite:///{tmp_path / 'x.db'}", "worker", "json", "--retention", "soon",
               rc=2)
    assert "--retention" in proc.stderr and "not an age" in proc.stderr


def test_over_http_a_purge_of_every_namespace_wants_a_token_granting_every_one(tmp_path):
    (tmp_path / "purgeflows.py").write_text(FLOWS)
    db = f"sqlite:///{tmp_path / 'ns.db'}"
    served = WorkerProcess(tmp_path, db, "purgeflows", "--token", TOKEN, "--token", "shop-only:shop")
    served.db = db
    try:
        client = Client(served.http, token=TOKEN)
        for ns in ("shop", "ops"):
            client.start("purge.done", 1, id="n-1", namespace=ns)
            client.result("n-1", timeout=30, namespace=ns)
        shop = Client(served.http, token="shop-only", namespace="shop")
        with pytest.raises(aion.NamespaceDenied):
            shop.purge(0, namespace="ops")
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        conn.request("POST", "/v1/purge", body=json.dumps({"older_than": 0}), headers={
            "Authorization": "Bearer shop-only", "Content-Type": "application/json"})
        response = conn.getresponse()
        doc = json.loads(response.read())
        conn.close()
        assert (response.status, doc["error"]["code"], doc["error"]["field"]) == (
            403, "namespace_denied", "namespace")
        assert client.count(namespace="shop") == client.count(namespace="ops") == 1
        assert shop.purge(0) == 1  # the client's namespace: shop's runs only
        assert client.count(namespace="shop") == 0 and client.count(namespace="ops") == 1
        assert client.purge(0) == 1  # an all-namespaces token: every namespace
        assert client.count(namespace="ops") == 0
    finally:
        served.stop()


def test_the_command_line_purges_one_namespace_over_the_store(worker):
    client = Client(worker.http, token=TOKEN)
    for ns in ("shop", "default"):
        client.start("purge.done", 1, id="cli-ns", namespace=ns)
        client.result("cli-ns", timeout=30, namespace=ns)
    out = cli("--db", worker.db, "--namespace", "shop", "--json", "purge", "--older-than", "0").stdout
    assert json.loads(out)["purged"] == 1
    assert client.count(namespace="shop") == 0 and client.describe("cli-ns").status == "completed"
