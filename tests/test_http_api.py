"""The HTTP API (a WSGI app) and its client: every endpoint with good and bad
input, the token, the resumable event stream, and the client giving the
same results as the in-process engine."""
import http.client
import io
import json
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.transport.client import Client
from aion_green.transport.wsgi import WSGIApp

TOKEN = "s3cret-token"


@aion.workflow(name="api.greet")
def greet(ctx, who):
    ctx.set_query("who", lambda: who)
    ctx.set_query("boom", lambda: 1 / 0)
    name = ctx.receive("name", timeout=30)
    return f"hello {who} and {name}"


@aion.workflow(name="api.fail")
def fail(ctx):
    raise ValueError("it broke")


@aion.workflow(name="api.quick")
def quick(ctx, x):
    return x


def call(app, method, path, body=None, raw=None, headers=None, query="", token=TOKEN):
    """Call the WSGI app in process: (status code, headers, JSON body)."""
    environ = {}
    setup_testing_defaults(environ)
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    environ.update({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                    "wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data))})
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for key, value in (headers or {}).items():
        environ[key] = value
    seen = {}

    def start_response(status, response_headers):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(response_headers)

    chunks = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], json.loads(chunks) if chunks else None


@pytest.fixture
def api(make_engine):
    engine = make_engine(greet, fail, quick)
    return engine, WSGIApp(engine, token=TOKEN, max_body=2048, max_wait=5)


# (method, path, body, query, expected status, expected error code or None, text in the message)
BAD = [
    ("POST", "/v1/workflows", {"workflow": "api.nope"}, "", 400, "invalid_argument", "not registered"),
    ("POST", "/v1/workflows", {"workflow": ""}, "", 400, "invalid_argument", "registered name"),
    ("POST", "/v1/workflows", {"workflow": 7}, "", 400, "invalid_argument", "got 7"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "args": "x"}, "", 400, "invalid_argument",
     "'args' must be a JSON array"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "args": [1], "id": 5}, "", 400,
     "invalid_argument", "'id' must be a string"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "argz": []}, "", 400, "invalid_argument",
     "unknown field(s) argz"),
    ("POST", "/v1/workflows", [1, 2], "", 400, "invalid_argument", "must be a JSON object"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "args": [1], "wait": 0}, "", 400,
     "invalid_argument", "'wait' must be a number of seconds above 0"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "args": [1], "wait": "soon"}, "", 400,
     "invalid_argument", "'wait' must be a number of seconds"),
    ("POST", "/v1/workflows", None, "", 400, "invalid_argument", "registered name"),
    ("POST", "/v1/workflows", {"workflow": "api.quick", "args": [1], "id": "q1"}, "", 409,
     "already_exists", "cannot be started again"),
    ("GET", "/v1/workflows", None, "status=sleeping", 400, "invalid_argument", "unknown status"),
    ("GET", "/v1/workflows", None, "limit=0", 400, "invalid_argument", "1 to 1000"),
    ("GET", "/v1/workflows", None, "limit=ten", 400, "invalid_argument", "whole number"),
    ("GET", "/v1/workflows", None, "colour=red", 400, "invalid_argument", "unknown query parameter"),
    ("DELETE", "/v1/workflows", None, "", 405, "method_not_allowed", "use GET, POST"),
    ("GET", "/v1/workflows/missing", None, "", 404, "not_found", "no workflow with id 'missing'"),
    ("GET", "/v1/workflows/missing/history", None, "", 404, "not_found", "'missing'"),
    ("GET", "/v1/workflows/missing/result", None, "", 404, "not_found", "'missing'"),
    ("GET", "/v1/workflows/g1/result", None, "timeout=0.05", 504, "timeout", "did not finish"),
    ("GET", "/v1/workflows/g1/result", None, "timeout=-1", 400, "invalid_argument", ">= 0"),
    ("GET", "/v1/workflows/f1/result", None, "", 409, "workflow_failed", "it broke"),
    ("GET", "/v1/workflows/g1/history", None, "after=-2", 400, "invalid_argument", "negative"),
    ("POST", "/v1/workflows/q1/signals/name", {"payload": 1}, "", 409, "not_running", "would never be read"),
    ("POST", "/v1/workflows/missing/signals/name", {"payload": 1}, "", 404, "not_found", "'missing'"),
    ("POST", "/v1/workflows/g1/signals/name", {"payload": float("inf")}, "", 400, "invalid_argument",
     "not valid JSON"),
    ("POST", "/v1/workflows/g1/signals/name", {"payload": 1, "key": "k"}, "", 400, "invalid_argument",
     "unknown field(s) key"),
    ("GET", "/v1/workflows/g1/signals/name", None, "", 405, "method_not_allowed", "use POST"),
    ("POST", "/v1/workflows/g1/queries/nope", {}, "", 422, "query_failed", "has no query 'nope'"),
    ("POST", "/v1/workflows/g1/queries/boom", {}, "", 422, "query_failed", "ZeroDivisionError"),
    ("POST", "/v1/workflows/g1/queries/who", {"args": {}}, "", 400, "invalid_argument", "JSON array"),
    ("POST", "/v1/workflows/g1/queries/who", {"timeout": "soon"}, "", 400, "invalid_argument",
     "number of seconds"),
    ("POST", "/v1/workflows/q1/queries/who", {}, "", 409, "not_running", "finished"),
    ("POST", "/v1/workflows/q1/cancel", {"reason": "late"}, "", 409, "not_running", "nothing left"),
    ("POST", "/v1/workflows/g1/cancel", {"reason": 3}, "", 400, "invalid_argument", "string"),
    ("GET", "/v2/things", None, "", 404, "not_found", "no route"),
]


@pytest.mark.parametrize("method,path,body,query,status,code,text", BAD,
                         ids=[f"{m} {p}?{q} -> {s}" for m, p, _, q, s, _, _ in BAD])
def test_every_endpoint_refuses_bad_input_with_a_4xx_and_records_nothing(
        api, method, path, body, query, status, code, text):
    engine, app = api
    for start in ({"workflow": "api.greet", "args": ["ann"], "id": "g1"},
                  {"workflow": "api.quick", "args": [0], "id": "q1"}, {"workflow": "api.fail", "id": "f1"}):
        assert call(app, "POST", "/v1/workflows", start)[0] == 200
    engine.result("q1", timeout=10)
    with pytest.raises(aion.WorkflowFailed):
        engine.result("f1", timeout=10)
    wait_until(lambda: ev.TIMER_STARTED in [e.type for e in engine.history("g1")])
    before = {run.workflow_id: engine.history(run.workflow_id) for run in engine.list()}

    got_status, _, reply = call(app, method, path, body, query=query)
    assert got_status == status, reply
    assert reply["error"]["code"] == code
    assert text in reply["error"]["message"]
    after = {run.workflow_id: engine.history(run.workflow_id) for run in engine.list()}
    assert after == before, "a refused request changed a history"


def test_good_input_on_every_endpoint(api):
    engine, app = api
    status, _, reply = call(app, "POST", "/v1/workflows", {"workflow": "api.greet", "args": ["ann"]},
                            headers={"HTTP_IDEMPOTENCY_KEY": "order-1"})
    assert (status, reply) == (200, {"workflow_id": "order-1", "namespace": "default",
                                     "run_id": engine.describe("order-1").run_id})
    # The same key again is the same run (idempotent), not a second one.
    assert call(app, "POST", "/v1/workflows", {"workflow": "api.greet", "args": ["ann"]},
                headers={"HTTP_IDEMPOTENCY_KEY": "order-1"})[2] == reply
    assert call(app, "GET", "/v1/workflows/order-1")[2]["status"] == "running"
    wait_until(lambda: ev.TIMER_STARTED in [e.type for e in engine.history("order-1")])
    assert call(app, "POST", "/v1/workflows/order-1/queries/who", {"timeout": 5})[2]["answer"] == "ann"
    status, _, reply = call(app, "POST", "/v1/workflows/order-1/signals/name",
                            {"payload": "bob", "idempotency_key": "k1"})
    assert status == 200 and reply["seq"] > 1
    # Repeated with the same key (a retry after a lost reply): recorded once.
    assert call(app, "POST", "/v1/workflows/order-1/signals/name", {"payload": "bob"},
                headers={"HTTP_IDEMPOTENCY_KEY": "k1"})[2]["seq"] == reply["seq"]
    status, _, reply = call(app, "GET", "/v1/workflows/order-1/result", query="timeout=5")
    assert (status, reply["result"]) == (200, "hello ann and bob")
    events = call(app, "GET", "/v1/workflows/order-1/history")[2]["events"]
    assert [e["type"] for e in events].count("MessageReceived") == 1
    assert [e["seq"] for e in call(app, "GET", "/v1/workflows/order-1/history",
                                   query="after=2")[2]["events"]] == list(range(3, len(events) + 1))
    for i in range(5):
        call(app, "POST", "/v1/workflows", {"workflow": "api.quick", "args": [i], "id": f"page-{i}"})
    page = call(app, "GET", "/v1/workflows", query="limit=3&type=api.quick")[2]
    assert [r["workflow_id"] for r in page["runs"]] == ["page-0", "page-1", "page-2"]
    rest = call(app, "GET", "/v1/workflows", query=f"limit=3&type=api.quick&after={page['next']}")[2]
    assert [r["workflow_id"] for r in rest["runs"]] == ["page-3", "page-4"] and rest["next"] is None
    call(app, "POST", "/v1/workflows", {"workflow": "api.greet", "args": ["x"], "id": "c/1"})
    status, _, reply = call(app, "POST", "/v1/workflows/c/1/cancel", {"reason": "no"})
    assert (status, reply["cancel_requested"]) == (200, True)
    status, _, reply = call(app, "GET", "/v1/workflows/c/1/result", query="timeout=5")
    assert status == 409 and reply["error"]["code"] == "cancelled"
    assert reply["error"]["workflow_id"] == "c/1"
    assert call(app, "GET", "/healthz", token=None)[2] == {"ok": True}


def test_start_and_wait_in_one_request(api):
    engine, app = api
    # Ended within the wait: the result, as GET .../result gives it.
    status, _, reply = call(app, "POST", "/v1/workflows",
                            {"workflow": "api.quick", "args": [{"n": 7}], "id": "sw1", "wait": 10})
    assert status == 200, reply
    assert reply["status"] == "completed" and reply["result"] == {"n": 7}
    assert reply["workflow_id"] == "sw1" and reply["run_id"] == engine.describe("sw1").run_id
    # Still going when the wait is over: started (durably) and said so.
    status, _, reply = call(app, "POST", "/v1/workflows",
                            {"workflow": "api.greet", "args": ["bo"], "id": "sw2", "wait": 0.2})
    assert status == 200, reply
    assert reply["status"] == "running" and "result" not in reply
    assert engine.describe("sw2").status == "running"
    # A failed end is the error /result answers; the run was started all the same.
    status, _, reply = call(app, "POST", "/v1/workflows",
                            {"workflow": "api.fail", "id": "sw3", "wait": 10})
    assert status == 409 and reply["error"]["code"] == "workflow_failed"
    assert "it broke" in reply["error"]["message"]
    assert engine.describe("sw3").status == "failed"
    # A wait past the server's max_wait (5 s here) waits max_wait.
    status, _, reply = call(app, "POST", "/v1/workflows",
                            {"workflow": "api.quick", "args": [2], "id": "sw4", "wait": 3600})
    assert status == 200 and reply["result"] == 2
    # Without a wait: the answer as before (no status).
    status, _, reply = call(app, "POST", "/v1/workflows", {"workflow": "api.quick", "args": [3]})
    assert status == 200 and set(reply) == {"workflow_id", "run_id", "namespace"}


def test_the_token_is_checked_on_every_route_but_health(api):
    engine, app = api
    for token in (None, "wrong", ""):
        status, headers, reply = call(app, "POST", "/v1/workflows", {"workflow": "api.quick", "args": [1]},
                                      token=token)
        assert status == 401 and reply["error"]["code"] == "unauthenticated"
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert call(app, "GET", "/v1/workflows", token=token)[0] == 401
    assert engine.list() == []
    assert call(app, "GET", "/healthz", token=None)[0] == 200
    status, _, reply = call(app, "GET", "/v1/workflows",
                            headers={"HTTP_AUTHORIZATION": f"Basic {TOKEN}"}, token=None)
    assert status == 401
    assert call(make_open := WSGIApp(engine), "GET", "/v1/workflows", token=None)[0] == 200
    assert make_open.token is None


def test_bodies_over_the_limit_and_malformed_json_are_refused(api):
    engine, app = api
    big = {"workflow": "api.quick", "args": ["x" * 4096]}
    status, _, reply = call(app, "POST", "/v1/workflows", big)
    assert status == 413 and "body size limit of this server is 2048" in reply["error"]["message"]
    for raw in (b"{", b'{"workflow": NaN}'):
        status, _, reply = call(app, "POST", "/v1/workflows", raw=raw)
        assert status == 400 and "not valid JSON" in reply["error"]["message"]
    status, _, reply = call(app, "POST", "/v1/workflows", raw=b"\xff\xfe")
    assert status == 400 and "not valid UTF-8" in reply["error"]["message"]
    assert engine.list() == []


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(api):
    engine, app = api
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield engine, server.server_port
    server.shutdown()
    server.server_close()


def test_the_client_starts_and_waits_in_one_request(served, monkeypatch):
    """``Client.start(wait=S)``: a run that ends within S hands its outcome
    to the handle (one request: result() asks nothing more), a failed one
    its error; a run still going is as without wait."""
    engine, port = served
    client = Client(f"http://127.0.0.1:{port}", token=TOKEN)
    requests = []
    call_ = client._call
    monkeypatch.setattr(client, "_call", lambda *a, **k: requests.append(a[:2]) or call_(*a, **k))

    handle = client.start(quick, {"n": 7}, id="cw1", wait=10)
    assert handle.result(timeout=5) == {"n": 7}
    assert requests == [("POST", "/v1/workflows")]
    assert handle.run_id == engine.describe("cw1").run_id

    requests.clear()
    failed = client.start("api.fail", id="cw2", wait=10)
    assert requests == [("POST", "/v1/workflows")]
    assert failed.workflow_id == "cw2" and engine.describe("cw2").status == "failed"
    with pytest.raises(aion.WorkflowFailed, match="it broke") as raised:
        failed.result()
    assert raised.value.workflow_id == "cw2" and raised.value.error_type == "ValueError"

    going = client.start(greet, "al", id="cw3", wait=0.2)
    assert engine.describe("cw3").status == "running"
    wait_until(lambda: ev.TIMER_STARTED in [e.type for e in engine.history("cw3")])
    client.signal("cw3", "name", "bo")
    assert going.result(timeout=10) == "hello al and bo"  # asked the server, as before

    for bad in (0, -1, "soon", True):
        with pytest.raises(aion.ConfigurationError, match="wait"):
            client.start(quick, 1, wait=bad)


def read_frames(response, count):
    """Read ``count`` event frames (not the run frame) from an SSE response."""
    frames, fields = [], {}
    while len(frames) < count:
        line = response.readline().decode().rstrip("\n")
        if line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        elif fields:
            if "id" in fields:
                frames.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
            fields = {}
    return frames


def test_the_event_stream_resumes_after_a_cut_without_gaps_or_duplicates(served):
    engine, port = served
    client = Client(f"http://127.0.0.1:{port}", token=TOKEN)
    client.start("api.greet", "ann", id="s1")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/workflows/s1/events?after=0",
                 headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    first = read_frames(response, 2)  # WorkflowStarted, TimerStarted
    conn.close()  # the connection is cut mid-run
    client.signal("s1", "name", "bob")
    assert client.result("s1", timeout=10) == "hello ann and bob"

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/v1/workflows/s1/events",
                 headers={"Authorization": f"Bearer {TOKEN}", "Last-Event-ID": str(first[-1][0])})
    response = conn.getresponse()
    history = engine.history("s1")
    rest = read_frames(response, len(history) - len(first))
    assert response.read() == b"event: end\ndata: {}\n\n"  # the stream ends after the run's end
    conn.close()
    seqs = [seq for seq, _, _ in first + rest]
    assert seqs == list(range(1, len(history) + 1))
    assert [kind for _, kind, _ in first + rest] == [e.type for e in history]
    # The client's own iterator resumes the same way.
    assert [e.seq for e in client.events("s1", after_seq=2)] == list(range(3, len(history) + 1))


def test_the_client_stream_reconnects_through_cuts(served, monkeypatch):
    engine, port = served
    client = Client(f"http://127.0.0.1:{port}", token=TOKEN)
    client.start("api.greet", "ann", id="s2")
    wait_until(lambda: len(engine.history("s2")) >= 2)
    cuts = []
    original = Client._stream

    def cutting(self, workflow_id, after_seq, run_id, namespace=None):
        stream = original(self, workflow_id, after_seq, run_id, namespace)
        for n, item in enumerate(stream):
            yield item
            if n == 1 and len(cuts) < 3:  # one event after the run frame, then cut
                cuts.append(after_seq)
                stream.close()
                raise ConnectionResetError("cut by the test")

    monkeypatch.setattr(Client, "_stream", cutting)
    seen = []
    for event in client.events("s2"):
        seen.append(event.seq)
        if event.type == ev.TIMER_STARTED:
            client.signal("s2", "name", "cy")
    assert len(cuts) == 3
    assert seen == list(range(1, len(engine.history("s2")) + 1))


def scenario(engine):
    """One script of operations; returns what a caller observes."""
    seen = []
    handle = engine.start("api.greet", "ann", id="sc-1")
    wait_until(lambda: ev.TIMER_STARTED in [e.type for e in engine.history("sc-1")])
    seen.append(engine.query("sc-1", "who"))
    seen.append(engine.signal("sc-1", "name", {"n": [1, 2]}))
    seen.append(handle.result(timeout=10))
    seen.append(engine.start("api.quick", [1, "x"], id="sc-2").result(timeout=10))
    engine.start("api.greet", "bo", id="sc/3")
    engine.cancel("sc/3", "no need")
    for wid, action in [("sc/3", lambda: engine.result("sc/3", timeout=10)),
                        ("fail", lambda: engine.start("api.fail", id="sc-4").result(timeout=10)),
                        ("missing", lambda: engine.describe("nope")),
                        ("signal done", lambda: engine.signal("sc-2", "name", 1)),
                        ("conflict", lambda: engine.start("api.quick", 2, id="sc-2")),
                        ("unknown", lambda: engine.start("api.none")),
                        ("bad query", lambda: engine.query("sc-1", "who"))]:
        try:
            action()
            seen.append((wid, "no error"))
        except aion.AionError as exc:
            seen.append((wid, type(exc).__name__, getattr(exc, "error_type", None)))
    runs = engine.list(limit=2)
    seen.append([(r.workflow_id, r.status, r.result) for r in runs])
    seen.append([(r.workflow_id, r.status) for r in engine.list(after_id=runs[-1].workflow_id)])
    seen.append([(e.seq, e.type, {k: v for k, v in e.data.items() if k not in ("run_id", "fire_at")})
                 for e in engine.history("sc-1")])
    info = engine.describe("sc-2")
    seen.append((info.workflow_id, info.workflow_type, info.status, info.args, info.result))
    return seen


def test_the_client_gives_the_same_results_as_the_in_process_engine(make_engine, tmp_path):
    local = make_engine(greet, fail, quick, url=f"sqlite:///{tmp_path / 'local.db'}")
    expected = scenario(local)
    remote_engine = make_engine(greet, fail, quick, url=f"sqlite:///{tmp_path / 'remote.db'}")
    server = make_server("127.0.0.1", 0, WSGIApp(remote_engine, token=TOKEN),
                         server_class=_Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}", token=TOKEN) as client:
            assert scenario(client) == expected
    finally:
        server.shutdown()
        server.server_close()
    assert ("fail", "WorkflowFailed", "ValueError") in expected
    assert ("sc/3", "WorkflowCancelled", "Cancelled") in expected
    assert ("unknown", "WorkflowNotRegistered", None) in expected


def test_a_stream_served_by_a_greenlet_naps_on_its_hub():
    """gevent.pywsgi without patch_all (``aion-green worker --http``): the
    event stream's pause between looks must let the server's other
    greenlets run, not stop the whole hub as time.sleep would."""
    import gevent

    from aion_green.transport import wsgi

    order = []

    def stream():
        wsgi._pause(0.1)
        order.append("stream")

    jobs = [gevent.spawn(stream), gevent.spawn(order.append, "other request")]
    gevent.joinall(jobs, timeout=5)
    assert order == ["other request", "stream"]
