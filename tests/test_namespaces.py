"""Namespaces and grants (issue 18): every run belongs to a namespace
("default" unless named), ids are unique per namespace, a run's children and
messages stay in it, and a run of another namespace is invisible. Over HTTP a
token grants every namespace (``SECRET``) or some (``SECRET:ns1,ns2``); a
request outside its grant is a 403 ``namespace_denied`` and does nothing. In
Python, and against a real ``aion-green worker --http`` process with a plain
HTTP client, the Client and the CLI."""
import http.client
import json
from urllib.parse import urlencode

import pytest
import worker_process
from conftest import run_python, wait_until
from worker_process import WorkerProcess

import aion_green as aion
from aion_green.core import events as ev
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


@aion.workflow(name="ns.echo")
def echo(ctx, value):
    """Answers who it is, then waits for 'go' and returns what came."""
    ctx.set_query("me", lambda: [ctx.namespace, ctx.workflow_id, value])
    return {"me": [ctx.namespace, ctx.workflow_id], "value": value,
            "got": ctx.receive("go", timeout=120)}


@aion.workflow(name="ns.kid")
def kid(ctx, n):
    return {"kid": ctx.workflow_id, "ns": ctx.namespace, "n": n}


@aion.workflow(name="ns.parent")
def parent(ctx, child_id):
    """A child under a chosen id and one under a made id; a message to a
    sibling by its id; all in the parent's namespace."""
    named = ctx.start_child(kid, 1, id=child_id)
    made = ctx.start_child(kid, 2)
    ctx.upsert_search_attributes({"customer": "c-" + ctx.namespace})
    ctx.send("sibling", "go", "from " + ctx.workflow_id)
    return {"named": named.result(), "made": made.result(), "ids": [named.workflow_id,
                                                                     made.workflow_id]}
'''

flows = {}
exec(compile(FLOWS, "ns_flows", "exec"), flows)
echo, kid, parent = flows["echo"], flows["kid"], flows["parent"]


# -- in Python ------------------------------------------------------------------------------

def test_one_id_names_a_run_in_each_namespace(make_engine):
    engine = make_engine(echo)
    a = engine.start(echo, "in a", id="order-1", namespace="shop-a")
    b = engine.start(echo, "in b", id="order-1", namespace="shop-b")
    d = engine.start(echo, "in default", id="order-1")
    assert (a.namespace, b.namespace, d.namespace) == ("shop-a", "shop-b", "default")
    assert len({a.run_id, b.run_id, d.run_id}) == 3
    # Each workflow sees its own id and namespace.
    wait_until(lambda: engine.query("order-1", "me", namespace="shop-b") == [
        "shop-b", "order-1", "in b"], what="the run in shop-b to answer")
    engine.signal("order-1", "go", "b!", namespace="shop-b")
    assert b.result(timeout=10) == {"me": ["shop-b", "order-1"], "value": "in b", "got": "b!"}
    # The others did not get it: still running, and their histories hold no message.
    for ns in ("shop-a", "default"):
        assert engine.describe("order-1", namespace=ns).status == ev.RUNNING
        assert not any(e.type == ev.MESSAGE_RECEIVED
                       for e in engine.history("order-1", namespace=ns))
    info = engine.describe("order-1", namespace="shop-b")
    assert (info.workflow_id, info.namespace, info.status) == ("order-1", "shop-b", "completed")
    assert engine.describe("order-1").namespace == "default"
    # The same id and arguments again: the same run (idempotent per namespace).
    assert engine.start(echo, "in a", id="order-1", namespace="shop-a").run_id == a.run_id
    with pytest.raises(aion.WorkflowIdConflict):
        engine.start(echo, "other", id="order-1", namespace="shop-a")
    engine.cancel("order-1", "done", namespace="shop-a")
    with pytest.raises(aion.WorkflowCancelled):
        a.result(timeout=10)
    assert engine.describe("order-1").status == ev.RUNNING  # default's run goes on


def test_lists_and_counts_see_one_namespace(make_engine):
    engine = make_engine(echo)
    for i in range(3):
        engine.start(echo, i, id=f"r-{i}", namespace="team-x")
    engine.start(echo, 9, id="r-0")
    engine.start(echo, 8, id="solo", namespace="team-y")
    listed = engine.list(namespace="team-x")
    assert [(r.workflow_id, r.namespace) for r in listed] == [
        ("r-0", "team-x"), ("r-1", "team-x"), ("r-2", "team-x")]
    assert [r.workflow_id for r in engine.list()] == ["r-0"]
    assert [r.workflow_id for r in engine.list(namespace="team-y")] == ["solo"]
    assert engine.list(namespace="nobody") == []
    # Paging goes by id within the namespace.
    page = engine.list(namespace="team-x", limit=2)
    assert [r.workflow_id for r in page] == ["r-0", "r-1"]
    assert [r.workflow_id for r in engine.list(namespace="team-x", after_id="r-1")] == ["r-2"]
    assert engine.count(namespace="team-x") == 3 and engine.count() == 1
    assert engine.count_by_status(namespace="team-y")["running"] == 1
    assert engine.count(namespace="nobody") == 0


def test_children_and_messages_stay_in_the_namespace(make_engine):
    engine = make_engine(echo, kid, parent)
    sibling = engine.start(echo, "s", id="sibling", namespace="ops")
    engine.start(echo, "default's sibling", id="sibling")
    handle = engine.start(parent, "kid-1", id="p", namespace="ops")
    out = handle.result(timeout=15)
    assert out["named"] == {"kid": "kid-1", "ns": "ops", "n": 1}
    assert out["made"]["ns"] == "ops" and out["ids"][0] == "kid-1"
    assert "\x1f" not in out["made"]["kid"] and out["made"]["kid"] == out["ids"][1]
    assert sibling.result(timeout=10)["got"] == "from p"
    assert engine.describe("sibling").status == ev.RUNNING  # the default one heard nothing
    # The children are runs of "ops", naming their parent by its id.
    kids = engine.list(namespace="ops", parent="p")
    assert {k.workflow_id for k in kids} == set(out["ids"])
    assert all(k.parent_id == "p" and k.namespace == "ops" for k in kids)
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("kid-1")
    # The parent's history shows ids, as the workflow named them.
    started = [e.data["id"] for e in handle.history() if e.type == ev.CHILD_STARTED]
    assert started == out["ids"]
    sent = [e.data["to"] for e in handle.history() if e.type == ev.MESSAGE_SENT]
    assert sent == ["sibling"]
    assert [r.workflow_id for r in engine.list(namespace="ops", attributes={"customer": "c-ops"})
            ] == ["p"]


def test_a_run_of_another_namespace_is_not_found_as_a_missing_id_is(make_engine):
    engine = make_engine(echo)
    engine.start(echo, 1, id="hidden", namespace="secret-team")
    errors = []
    for ns in ("default", "other"):
        for call in (lambda ns=ns: engine.describe("hidden", namespace=ns),
                     lambda ns=ns: engine.history("hidden", namespace=ns),
                     lambda ns=ns: engine.result("hidden", timeout=0, namespace=ns),
                     lambda ns=ns: engine.signal("hidden", "go", 1, namespace=ns),
                     lambda ns=ns: engine.cancel("hidden", namespace=ns),
                     lambda ns=ns: engine.terminate("hidden", namespace=ns)):
            with pytest.raises(aion.WorkflowNotFound) as info:
                call()
            errors.append(str(info.value))
            assert "secret-team" not in str(info.value) and "\x1f" not in str(info.value)
    # The same answers in a namespace where the id never was.
    assert errors[:6] == errors[6:]
    # Nothing was recorded in the hidden run by any of it.
    history = engine.history("hidden", namespace="secret-team")
    assert not {e.type for e in history} & {ev.MESSAGE_RECEIVED, ev.CANCEL_REQUESTED,
                                             ev.WORKFLOW_CANCELLED}
    assert engine.describe("hidden", namespace="secret-team").status == ev.RUNNING


def test_bad_namespaces_and_ids_are_refused_before_anything_is_recorded(make_engine):
    engine = make_engine(echo)
    for bad in ("", "has space", "-lead", "x" * 65, "a\x1fb", 7):
        with pytest.raises(aion.ConfigurationError, match="namespace"):
            engine.start(echo, 1, id="x", namespace=bad)
    with pytest.raises(aion.ConfigurationError, match="U\\+001F"):
        engine.start(echo, 1, id="shop\x1fx")
    with pytest.raises(aion.ConfigurationError, match="namespace"):
        engine.list(namespace="no/slash")
    assert engine.list() == [] and engine.count() == 0


def test_a_schedule_fires_in_its_namespace(make_engine):
    engine = make_engine(echo)
    engine.schedule("tick", echo, "fired", every=0.2, namespace="cron-ns")
    wait_until(lambda: [r for r in engine.list(namespace="cron-ns", workflow_type="ns.echo")],
               what="a fire in cron-ns")
    fired = engine.list(namespace="cron-ns", workflow_type="ns.echo")[0]
    assert fired.workflow_id.startswith("tick@") and fired.namespace == "cron-ns"
    assert engine.list(workflow_type="ns.echo") == []
    assert [s.schedule_id for s in engine.schedules(namespace="cron-ns")] == ["tick"]
    assert engine.schedules() == []
    engine.unschedule("tick", namespace="cron-ns")
    assert engine.describe_schedule("tick", namespace="cron-ns").status == "deleted"


# -- over HTTP, against a real worker ----------------------------------------------------------

ALL, TEAM, OTHER = "all-secret", "team-secret", "other-secret"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ns")
    (directory / "nsflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'ns.db'}", "nsflows",
                           "--token", ALL, "--token", f"{TEAM}:team,shared",
                           "--token", f"{OTHER}:other")
    yield served
    served.stop()


def call(worker, method, path, query=None, body=None, token=ALL):
    """A plain HTTP request: (status, the raw bytes of its body), to compare
    answers byte for byte."""
    conn = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        target = path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, target, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def jcall(worker, method, path, query=None, body=None, token=ALL):
    """:func:`worker_process.call` with this file's token: (status, JSON)."""
    return worker_process.call(worker, method, path, query, body, token)


def test_over_http_ids_are_per_namespace_and_grants_hold(worker):
    status, doc = jcall(worker, "POST", "/v1/workflows", token=TEAM,
                        body={"workflow": "ns.echo", "args": ["t"], "id": "o-1",
                              "namespace": "team"})
    assert (status, doc["namespace"], doc["workflow_id"]) == (200, "team", "o-1")
    status, doc = jcall(worker, "POST", "/v1/workflows", {"namespace": "other"}, token=OTHER,
                        body={"workflow": "ns.echo", "args": ["o"], "id": "o-1"})
    assert (status, doc["namespace"]) == (200, "other")
    # The same id in two namespaces: two runs, each answering for itself.
    _, team_run = jcall(worker, "GET", "/v1/workflows/o-1", {"namespace": "team"}, token=TEAM)
    _, other_run = jcall(worker, "GET", "/v1/workflows/o-1", {"namespace": "other"})
    assert team_run["args"] == ["t"] and other_run["args"] == ["o"]
    assert team_run["namespace"] == "team" and team_run["run_id"] != other_run["run_id"]
    # A token outside its grant: 403, nothing recorded, nothing listed.
    wait_until(lambda: "TimerStarted" in str(jcall(worker, "GET", "/v1/workflows/o-1/history",
                                                   {"namespace": "other"})),
               what="the run in 'other' to wait for its message")
    _, before = jcall(worker, "GET", "/v1/workflows/o-1/history", {"namespace": "other"})
    denied = [
        ("GET", "/v1/workflows/o-1", {"namespace": "other"}, None),
        ("GET", "/v1/workflows", {"namespace": "other"}, None),
        ("GET", "/v1/workflows/count", {"namespace": "other"}, None),
        ("GET", "/v1/workflows/o-1/history", {"namespace": "other"}, None),
        ("GET", "/v1/workflows/o-1/events", {"namespace": "other", "after": 0}, None),
        ("GET", "/v1/workflows/o-1/result", {"namespace": "other", "timeout": 0}, None),
        ("POST", "/v1/workflows/o-1/signals/go", None, {"payload": 1, "namespace": "other"}),
        ("POST", "/v1/workflows/o-1/queries/me", None, {"namespace": "other"}),
        ("POST", "/v1/workflows/o-1/cancel", {"namespace": "other"}, {}),
        ("POST", "/v1/workflows/o-1/terminate", None, {"namespace": "other"}),
        ("POST", "/v1/workflows", None, {"workflow": "ns.echo", "args": [1], "id": "new",
                                         "namespace": "other"}),
        ("GET", "/v1/schedules", {"namespace": "other"}, None),
        # No namespace named is the default one, which TEAM's grant leaves out.
        ("GET", "/v1/workflows", None, None),
    ]
    for method, path, query, body in denied:
        status, doc = jcall(worker, method, path, query, body, token=TEAM)
        assert (status, doc["error"]["code"]) == (403, "namespace_denied"), (method, path, doc)
        assert doc["error"]["field"] == "namespace" and OTHER not in json.dumps(doc)
    _, after = jcall(worker, "GET", "/v1/workflows/o-1/history", {"namespace": "other"})
    assert after == before
    status, doc = jcall(worker, "GET", "/v1/workflows/new", {"namespace": "other"})
    assert status == 404  # the denied start created nothing
    # A granted namespace with nothing in it lists nothing, and the token of
    # every namespace reaches them all.
    assert jcall(worker, "GET", "/v1/workflows", {"namespace": "shared"}, token=TEAM) == (
        200, {"runs": [], "next": None})
    status, doc = jcall(worker, "GET", "/v1/workflows", {"namespace": "team"})
    assert status == 200 and [r["workflow_id"] for r in doc["runs"]] == ["o-1"]
    # A wrong token is still a 401, whatever the namespace.
    status, doc = jcall(worker, "GET", "/v1/workflows", {"namespace": "team"}, token="nope")
    assert (status, doc["error"]["code"]) == (401, "unauthenticated")
    # The run's own operations, in its namespace.
    status, _ = jcall(worker, "POST", "/v1/workflows/o-1/signals/go", {"namespace": "team"},
                      {"payload": "hi"}, token=TEAM)
    assert status == 200
    status, doc = jcall(worker, "GET", "/v1/workflows/o-1/result",
                        {"namespace": "team", "timeout": 10}, token=TEAM)
    assert status == 200 and doc["result"] == {"me": ["team", "o-1"], "value": "t", "got": "hi"}
    _, other_run = jcall(worker, "GET", "/v1/workflows/o-1", {"namespace": "other"})
    assert other_run["status"] == "running"


def test_over_http_another_namespace_answers_as_an_id_never_seen(worker):
    jcall(worker, "POST", "/v1/workflows", body={"workflow": "ns.echo", "args": [1],
                                                 "id": "twin", "namespace": "team"})
    for path in ("/v1/workflows/twin", "/v1/workflows/twin/history",
                 "/v1/workflows/twin/result", "/v1/workflows/twin/events"):
        seen_elsewhere = call(worker, "GET", path, {"namespace": "shared"})
        # The id exists nowhere in "shared" either way; the same id in a
        # namespace where no run ever had it gives the same bytes.
        never = call(worker, "GET", path, {"namespace": "empty-ns"})
        assert seen_elsewhere[0] == 404 and seen_elsewhere == never, path
    for path, body in (("/v1/workflows/twin/signals/go", {"payload": 1}),
                       ("/v1/workflows/twin/cancel", {}), ("/v1/workflows/twin/terminate", {})):
        assert call(worker, "POST", path, {"namespace": "shared"}, body) == call(
            worker, "POST", path, {"namespace": "empty-ns"}, body)
    status, raw = call(worker, "GET", "/v1/workflows/twin", {"namespace": "shared"})
    assert b"team" not in raw and b"\\u001f" not in raw


def test_over_http_bad_namespaces_and_tokens_are_clear_400s(worker):
    for query, body in (({"namespace": "has space"}, None), ({"namespace": ""}, None),
                        (None, {"workflow": "ns.echo", "namespace": 5}),
                        ({"namespace": "a"}, {"workflow": "ns.echo", "namespace": "b"})):
        method = "GET" if body is None else "POST"
        status, doc = jcall(worker, method, "/v1/workflows", query, body)
        assert (status, doc["error"]["code"], doc["error"]["field"]) == (
            400, "invalid_argument", "namespace"), (query, body, doc)


def test_the_client_and_the_command_line_name_namespaces(worker):
    client = Client(worker.http, token=TEAM, namespace="team")
    handle = client.start("ns.echo", "c", id="cl-1")
    assert handle.namespace == "team"
    assert client.describe("cl-1").namespace == "team"
    with pytest.raises(aion.NamespaceDenied):
        client.describe("cl-1", namespace="other")
    with pytest.raises(aion.WorkflowNotFound):
        client.describe("cl-1", namespace="shared")
    assert "cl-1" in [r.workflow_id for r in client.list()]
    client.signal("cl-1", "go", 1)
    assert handle.result(timeout=10)["got"] == 1
    # The CLI: --namespace, and a token with its grant in AION_GREEN_TOKEN.
    env = {"AION_GREEN_TOKEN": f"{TEAM}:team"}
    proc = run_python(["-m", "aion_green", "--db", worker.http, "--json", "--namespace", "team",
                       "start", "ns.echo", '"cli"', "--id", "cli-1"], env_extra=env,
                      check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["workflow_id"] == "cli-1"
    assert client.describe("cli-1").args == ["cli"]
    proc = run_python(["-m", "aion_green", "--db", worker.http, "--json", "--namespace", "other",
                       "show", "cli-1"], env_extra=env, check=False, timeout=60)
    assert proc.returncode == 2 and "not granted namespace 'other'" in proc.stderr


def test_a_worker_refuses_a_malformed_token_before_it_starts(tmp_path):
    proc = run_python(["-m", "aion_green", "--db", f"sqlite:///{tmp_path / 'x.db'}", "worker",
                       "json", "--http", "127.0.0.1:0", "--token", "s:bad/name"],
                      check=False, timeout=60)
    assert proc.returncode == 2 and "namespace" in proc.stderr
