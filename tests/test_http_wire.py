"""The HTTP API on the wire, against hostile or unlucky clients (issue 16,
"Clients and the wire"): ids of any characters under every server, bad
bodies, streams of runs that are gone or done, long histories, secrets and
server paths, dead ports, idle connections, and a worker stopping under
load. Real servers throughout: wsgiref in a thread, and gevent.pywsgi in an
``aion-green worker --http`` subprocess."""
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from socketserver import ThreadingMixIn
from urllib.parse import quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from conftest import wait_until
from worker_process import WorkerProcess, worker_env

import aion_green as aion
from aion_green.transport.client import Client
from aion_green.transport.wsgi import WSGIApp

TOKEN = "wire-token"

FLOWS = '''
import aion_green as aion


@aion.workflow(name="wire.echo")
def echo(ctx, x):
    return x


@aion.workflow(name="wire.inbox")
def inbox(ctx, name):
    ctx.set_query(name, lambda: "here")
    return ctx.receive(name, timeout=60)


def fail_here(x):
    raise ValueError(f"bad value {x}")


@aion.workflow(name="wire.fail")
def fail(ctx):
    return ctx.step(fail_here, 7, retry=aion.Retry(max_attempts=1))


def one(i):
    return i


@aion.workflow(name="wire.long")
def long(ctx, n):
    return sum(ctx.step(one, i) for i in range(n))
'''

# Ids the engine accepts, each of which some server or route got wrong.
IDS = ["café", "日本/語", "a/result", "a/history", "x/signals/y", "100%", "%2F", "a b+c?d#e&f=g",
       "/lead", "trail/", "a//b", "🙂", "-", "workflows"]


class Worker(WorkerProcess):
    """``aion-green worker wireflows --http 127.0.0.1:0 --json`` in a real process."""

    def __init__(self, directory, *extra, address="127.0.0.1:0"):
        self.db = directory / "wire.db"
        super().__init__(directory, f"sqlite:///{self.db}", "wireflows", "--token", TOKEN, *extra,
                         address=address)
        self.url = self.http


def _flows_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wire")
    (directory / "wireflows.py").write_text(FLOWS)
    return directory


class _Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Wsgiref:
    """The API of an in-process engine under wsgiref's (threaded) server."""

    def __init__(self, directory, **app_options):
        sys.path.insert(0, str(directory))
        try:
            import wireflows
        finally:
            sys.path.remove(str(directory))
        self.db = directory / "wire.db"
        self.engine = aion.Engine(f"sqlite:///{self.db}",
                                  workflows=[wireflows.echo, wireflows.inbox, wireflows.fail,
                                             wireflows.long])
        self.app = WSGIApp(self.engine, token=TOKEN, **app_options)
        self.server = make_server("127.0.0.1", 0, self.app, server_class=_Threaded,
                                  handler_class=_Quiet)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.engine.shutdown()


@pytest.fixture(scope="module", params=["wsgiref", "gevent.pywsgi"])
def server(request, tmp_path_factory):
    directory = _flows_dir(tmp_path_factory)
    served = Wsgiref(directory) if request.param == "wsgiref" else Worker(directory)
    served.kind = request.param
    yield served
    served.stop()


def raw(port, method, target, body=None, headers=None, timeout=30):
    """One raw HTTP request: (status, headers, parsed JSON body or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        conn.request(method, target, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


# -- 1. ids of any characters, under every server ---------------------------------------------
def test_any_id_round_trips_through_the_client_under_every_server(server):
    """wsgiref and gevent.pywsgi hand over a path percent-decoded as latin-1:
    "café" came back as "cafÃ©" (not found), and "a/result" was read as the
    result of run "a"."""
    client = Client(server.url, token=TOKEN)
    for wid in IDS:
        handle = client.start("wire.echo", wid, id=wid)
        assert handle.result(timeout=10) == wid, wid
        assert client.describe(wid).workflow_id == wid
        assert client.history(wid)[0].data["args"] == [wid]
        assert [e.seq for e in client.events(wid)] == [e.seq for e in client.history(wid)]
    # A signal's and a query's names may hold any character too.
    client.start("wire.inbox", "g/é", id="x/signals/g/é")
    assert client.query("x/signals/g/é", "g/é") == "here"
    client.signal("x/signals/g/é", "g/é", "ü")
    assert client.result("x/signals/g/é", timeout=10) == "ü"


def test_any_id_round_trips_in_raw_http_with_percent_encoding(server):
    """The path form with UTF-8 percent-encoding ("/v1/workflows/caf%C3%A9"),
    and the query form (?workflow_id=) that no server can misread."""
    client = Client(server.url, token=TOKEN)
    for wid in IDS:
        client.start("wire.echo", wid, id=wid).result(timeout=10)
        status, _, reply = raw(server.port, "GET", "/v1/workflows?" + urlencode({"workflow_id": wid}))
        assert (status, reply["workflow_id"]) == (200, wid), reply
        status, _, reply = raw(server.port, "GET", "/v1/workflows/result?" + urlencode({"workflow_id": wid}))
        assert (status, reply["result"]) == (200, wid), reply
        if "/" in wid and server.kind == "wsgiref":
            continue  # wsgiref gives no raw path: an encoded "/" cannot be told apart
        status, _, reply = raw(server.port, "GET", "/v1/workflows/" + quote(wid, safe=""))
        assert (status, reply["workflow_id"]) == (200, wid), reply
        status, _, reply = raw(server.port, "GET", f"/v1/workflows/{quote(wid, safe='')}/result")
        assert (status, reply["result"]) == (200, wid), reply


def test_an_idempotency_key_header_in_utf8_is_the_id(server):
    """Header values reach the app as latin-1 characters: the key "café"
    started the run "cafÃ©"."""
    body = json.dumps({"workflow": "wire.echo", "args": [1]})
    status, _, reply = raw(server.port, "POST", "/v1/workflows", body=body,
                           headers={"Idempotency-Key": "clé-1".encode()})
    assert status == 200 and reply["workflow_id"] == "clé-1" and reply["run_id"]
    status, _, reply = raw(server.port, "POST", "/v1/workflows", body=body,
                           headers={"Idempotency-Key": b"\xff-key"})
    assert status == 400 and "Idempotency-Key header is not valid UTF-8" in reply["error"]["message"]


def test_an_id_that_is_not_utf8_is_a_400_naming_the_path(server):
    status, _, reply = raw(server.port, "GET", "/v1/workflows/%FF%FE")
    assert status == 400 and "not valid UTF-8" in reply["error"]["message"], reply
    status, _, reply = raw(server.port, "GET", "/v1/workflows?workflow_id=%FF")
    assert status == 400 and "query string" in reply["error"]["message"], reply


# -- 2. hostile bodies and parameters: a 4xx naming the field or the limit, never a 500 -----------
DEEP = b"[" * 100000 + b"]" * 100000
HOSTILE = [
    # (method, route, body, headers, status, text in the message)
    ("POST", "/v1/workflows", DEEP, {}, 400, "nesting depth limit of 64"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": ' + b"[" * 70 + b"]" * 70 + b"}", {},
     400, "nesting depth limit of 64"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": [' + b"7" * 5000 + b"]}", {},
     400, "number size limit is 64 digits"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": [' + b"7" * 4000 + b"]}", {},
     400, "number size limit is 64 digits"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": [1e999]}', {}, 400, "number size limit"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": [1], "id": "\\ud800"}', {}, 400,
     "'id' holds a lone surrogate"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.\\ud800"}', {}, 400, "'workflow' holds a lone surrogate"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": [1]', {}, 400, "not valid JSON"),
    ("POST", "/v1/workflows", b"\xff\xfe{}", {}, 400, "the body is not valid UTF-8"),
    ("POST", "/v1/workflows", b'"text"', {}, 400, "must be a JSON object, got str"),
    ("POST", "/v1/workflows", b'{"workflow": ["wire.echo"]}', {}, 400, "'workflow' must be"),
    ("POST", "/v1/workflows", b'{"workflow": "wire.echo", "args": {"x": 1}}', {}, 400,
     "'args' must be a JSON array"),
    ("POST", "/v1/workflows/g/signals/n", b'{"payload": ' + b"[" * 900 + b"]" * 900 + b"}", {}, 400,
     "nesting depth limit"),
    ("POST", "/v1/workflows/g/signals/n", b'{"payload": 1, "idempotency_key": ["k"]}', {}, 400,
     "'idempotency_key' must be a string"),
    ("POST", "/v1/workflows/g/queries/n", b'{"timeout": 1e999}', {}, 400, "number size limit"),
    ("POST", "/v1/workflows/g/queries/n", b'{"timeout": true}', {}, 400, "'timeout' must be"),
    ("POST", "/v1/workflows/g/cancel", b'{"reason": {"why": 1}}', {}, 400, "'reason' must be a string"),
    ("GET", "/v1/workflows/g/history?after=99999999999999999999999", None, {}, 400,
     "'after' has more than 18 digits"),
    ("GET", "/v1/workflows/g/events?after=99999999999999999999999", None, {}, 400,
     "'after' has more than 18 digits"),
    ("GET", "/v1/workflows/g/events", None, {"Last-Event-ID": "99999999999999999999999"}, 400,
     "'Last-Event-ID' has more than 18 digits"),
    ("GET", "/v1/workflows/g/events", None, {"Last-Event-ID": "soon"}, 400, "'Last-Event-ID' must be"),
    ("GET", "/v1/workflows?limit=99999999999999999999999", None, {}, 400, "'limit' has more than 18"),
    ("GET", "/v1/workflows?workflow_id=g&colour=red", None, {}, 400, "unknown query parameter(s) colour"),
    ("GET", "/v1/workflows/nope?workflow_id=g", None, {}, 404, "no route"),
    ("POST", "/v1/workflows/signals?workflow_id=g", b"{}", {}, 400, "'name' (query)"),
]


@pytest.mark.parametrize("method,route,body,headers,status,text", HOSTILE,
                         ids=[f"{m} {r[:40]} {(b or b'')[:20]!r} {s}" for m, r, b, _, s, _ in HOSTILE])
def test_hostile_input_is_a_4xx_naming_the_field_or_limit_and_records_nothing(
        server, method, route, body, headers, status, text):
    """Before: nested JSON was a RecursionError (500), an int of more than
    4,300 digits a ValueError, a huge 'after' an OverflowError in SQLite
    (500), an id with a lone surrogate a StoreError (500)."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.inbox", "n", id="g")
    wait_until(lambda: "TimerStarted" in [e.type for e in client.history("g")], what="g to wait")
    before = {run.workflow_id: client.history(run.workflow_id) for run in client.list(limit=1000)}
    got, _, reply = raw(server.port, method, route, body=body, headers=headers)
    assert got == status, reply
    assert text in reply["error"]["message"], reply
    after = {run.workflow_id: client.history(run.workflow_id) for run in client.list(limit=1000)}
    assert after == before, "a refused request changed a history"


def _raw_socket(port, request, timeout=5):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize("length", ["-1", "-99999", "a lot", None])
def test_a_bad_or_missing_content_length_is_answered_at_once(server, length):
    """wsgiref read a body of Content-Length -1 (and one with no length) to
    the end of the connection: the request, and its thread, waited forever."""
    header = b"" if length is None else f"Content-Length: {length}\r\n".encode()
    reply = _raw_socket(server.port, b"POST /v1/workflows/g/cancel HTTP/1.1\r\nHost: x\r\n"
                        + f"Authorization: Bearer {TOKEN}\r\n".encode() + header + b"\r\n{}")
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500 or (length is None and status == 200), reply[:300]


# -- 3. event streams of unknown runs, and of finished runs -----------------------------------
def read_stream(port, target, headers=None, timeout=10):
    """An SSE response to its end: (status, [(event kind, data)]); a stream
    still open after ``timeout`` fails the test (socket timeout)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        response = conn.getresponse()
        if response.status != 200:
            return response.status, json.loads(response.read())
        frames, fields = [], {}
        for line in response:
            text = line.decode().rstrip("\r\n")
            if text and not text.startswith(":"):
                key, _, value = text.partition(":")
                fields[key] = value.strip()
            elif fields:
                frames.append((fields.get("event"), json.loads(fields["data"]) if "data" in fields else None))
                fields = {}
        return 200, frames
    finally:
        conn.close()


def test_a_stream_of_an_unknown_run_is_a_404_in_every_form(server):
    """A stream naming a run id and a cursor for a run that does not exist
    stayed open forever (an empty read past seq 0 is not 'not found')."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.echo", 1, id="known").result(timeout=10)
    run_id = client.describe("known").run_id
    for target, headers in [
            ("/v1/workflows/ghost/events", {}),
            ("/v1/workflows/ghost/events?after=5", {}),
            ("/v1/workflows/ghost/events?run_id=r1&after=5", {}),
            ("/v1/workflows/ghost/events?run_id=r1", {"Last-Event-ID": "5"}),
            ("/v1/workflows/events?workflow_id=ghost&run_id=r1&after=5", {}),
            ("/v1/workflows/known/events?run_id=not-a-run&after=3", {}),
            ("/v1/workflows/known/events?run_id=not-a-run", {"Last-Event-ID": "3"}),
            ("/v1/workflows/known/events?run_id=not-a-run", {}),
            ("/v1/workflows/ghost/history?after=5", {}),
            ("/v1/workflows/known/history?run_id=not-a-run&after=3", {})]:
        status, reply = read_stream(server.port, target, headers, timeout=5)
        assert status == 404 and reply["error"]["code"] == "not_found", (target, headers, reply)
    status, frames = read_stream(server.port, f"/v1/workflows/known/events?run_id={run_id}&after=1")
    assert status == 200 and frames[-1][0] == "end"


def test_a_stream_of_a_finished_run_ends_after_its_last_event(server):
    """A stream with a cursor at or past the terminal event of a finished
    run stayed open forever (and the Client reconnected to it forever)."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.echo", 2, id="done").result(timeout=10)
    history = client.history("done")
    last = history[-1].seq
    run_id = client.describe("done").run_id
    status, frames = read_stream(server.port, "/v1/workflows/done/events?after=0")
    assert status == 200
    assert [kind for kind, _ in frames] == ["run", *[e.type for e in history], "end"]
    for target, headers in [(f"/v1/workflows/done/events?after={last}", {}),
                            ("/v1/workflows/done/events", {}),  # a live tail of an ended run
                            ("/v1/workflows/done/events", {"Last-Event-ID": str(last)})]:
        status, frames = read_stream(server.port, target, headers, timeout=5)
        assert (status, [kind for kind, _ in frames]) == (200, ["run", "end"]), (target, headers)
    # A cursor past the run's last event (or below 0) names no event of it: a 400.
    for target, headers, field in [
            (f"/v1/workflows/done/events?after={last + 50}", {}, "after"),
            (f"/v1/workflows/done/events?run_id={run_id}", {"Last-Event-ID": str(last + 9)},
             "Last-Event-ID"),
            ("/v1/workflows/done/events?after=-1", {}, "after")]:
        status, _, reply = raw(server.port, "GET", target, headers=headers)
        assert status == 400 and reply["error"]["code"] == "invalid_argument", (target, reply)
        assert field in reply["error"]["message"]
    got = []
    finished = threading.Event()

    def follow():
        got.extend(client.events("done", after_seq=last))
        finished.set()

    threading.Thread(target=follow, daemon=True).start()
    assert finished.wait(10), "Client.events past the end of a finished run did not return"
    assert got == []


# -- 4. histories a page at a time ------------------------------------------------------------
def test_a_stream_without_a_cursor_is_a_live_tail(server):
    """No cursor: the events recorded after the attach, not the run's past;
    after=0 gives the past too."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.inbox", "ping", id="tail")
    wait_until(lambda: any(e.type == "TimerStarted" for e in client.history("tail")),
               what="the run to wait for its message")
    head = client.history("tail")[-1].seq
    got = []

    def tail():
        for event in client.events("tail", after_seq=None):
            got.append(event)

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    time.sleep(0.5)  # the stream is attached
    client.signal("tail", "ping", "pong")
    assert client.result("tail", timeout=10) == "pong"
    reader.join(10)
    assert got and got[0].seq == head + 1, [(e.seq, e.type) for e in got]
    assert got[-1].type == "WorkflowCompleted"
    status, frames = read_stream(server.port, "/v1/workflows/tail/events?after=0")
    assert [kind for kind, _ in frames][1:3] == ["WorkflowStarted", "TimerStarted"]


def test_history_answers_a_page_with_a_next_cursor_and_refuses_a_limit_over_the_max(server):
    client = Client(server.url, token=TOKEN)
    client.start("wire.long", 30, id="long").result(timeout=30)
    everything = client.history("long")
    assert len(everything) > 30
    seqs, after = [], 0
    while after is not None:
        status, _, page = raw(server.port, "GET", f"/v1/workflows/long/history?limit=7&after={after}")
        assert status == 200 and len(page["events"]) <= 7
        seqs += [e["seq"] for e in page["events"]]
        after = page["next"]
    assert seqs == [e.seq for e in everything]
    status, _, reply = raw(server.port, "GET", "/v1/workflows/long/history?limit=1001")
    assert status == 400 and "1 to 1000 events per page" in reply["error"]["message"]


def test_a_request_holds_one_page_of_a_big_history(tmp_path_factory):
    """/history and the event stream read a run's whole history per request
    (40 streams of a big run: 187 -> 887 MiB): each read of the store now
    takes at most one page, and the client follows the pages."""
    served = Wsgiref(_flows_dir(tmp_path_factory), page=7)
    reads = []
    history = served.engine.history

    def counting(*args, **kwargs):
        events = history(*args, **kwargs)
        reads.append(len(events))
        return events

    served.engine.history = counting
    try:
        client = Client(served.url, token=TOKEN)
        client.start("wire.long", 30, id="big").result(timeout=30)
        reads.clear()
        events = client.history("big")
        assert [e.seq for e in events] == list(range(1, len(events) + 1)) and len(events) > 30
        status, _, page = raw(served.port, "GET", "/v1/workflows/big/history")
        assert (status, len(page["events"]), page["next"]) == (200, 7, 7)
        status, frames = read_stream(served.port, "/v1/workflows/big/events?after=0")
        assert [kind for kind, _ in frames][1:-1] == [e.type for e in events]
        assert [e.seq for e in client.events("big", after_seq=3)] == [e.seq for e in events[3:]]
        assert reads and max(reads) <= 7, reads
    finally:
        served.stop()


# -- 5. no secret and no server path in a response -------------------------------------------
def test_no_reply_names_the_servers_database_path(server):
    """Not-found messages carried the server's database path
    ("no workflow with id 'x' in /srv/data/orders.db")."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.inbox", "n", id="alive")
    for method, target, body in [
            ("GET", "/v1/workflows/nobody", None), ("GET", "/v1/workflows/nobody/history", None),
            ("GET", "/v1/workflows/nobody/result?timeout=5", None),
            ("GET", "/v1/workflows/nobody/events", None),
            ("GET", "/v1/workflows/alive/history?run_id=nope", None),
            ("POST", "/v1/workflows/nobody/signals/n", b"{}"),
            ("POST", "/v1/workflows/nobody/cancel", b"{}"),
            ("POST", "/v1/workflows/nobody/queries/n", b"{}")]:
        status, _, reply = raw(server.port, method, target, body=body)
        assert status == 404, (target, reply)
        text = json.dumps(reply)
        assert str(server.db.parent) not in text, (target, text)
        assert "nobody" in text or "nope" in text, text  # still says what was not found


def test_a_postgres_password_given_in_the_query_string_stays_secret(pg_url, tmp_path):
    """A password given as ?password= (libpq takes it there too) leaked into
    404 bodies and the worker's startup banner; only user:password@ was
    masked."""
    (tmp_path / "wireflows.py").write_text(FLOWS)
    secret = "hunter2-wire-secret"
    url = f"{pg_url}&password={secret}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aion_green", "--db", url, "worker", "wireflows",
         "--http", "127.0.0.1:0", "--token", TOKEN],
        cwd=tmp_path, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert "HTTP API on http://" in banner, (banner, proc.poll())
        port = int(banner.rsplit(":", 1)[1].split()[0].rstrip(")"))
        replies = [raw(port, "GET", "/v1/workflows/nobody"),
                   raw(port, "GET", "/v1/workflows/nobody/history?after=3"),
                   raw(port, "POST", "/v1/workflows/nobody/signals/n", body=b"{}")]
        assert [status for status, _, _ in replies] == [404, 404, 404], replies
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    for text in (banner, out, err, *[json.dumps(r) for _, _, r in replies]):
        assert secret not in text, text


# -- 6. failures without the server's tracebacks ----------------------------------------------
def test_a_failed_runs_error_keeps_type_and_message_but_not_the_servers_traceback(server):
    """Results, descriptions and histories carried the traceback, whose
    frames name the server's files, to remote clients."""
    client = Client(server.url, token=TOKEN)
    client.start("wire.fail", id="broken")
    with pytest.raises(aion.WorkflowFailed) as failed:
        client.result("broken", timeout=20)
    assert failed.value.error_type.endswith("StepError") and "bad value 7" in failed.value.message
    status, _, reply = raw(server.port, "GET", "/v1/workflows/broken/result")
    described = raw(server.port, "GET", "/v1/workflows/broken")[2]
    history = raw(server.port, "GET", "/v1/workflows/broken/history")[2]
    streamed = read_stream(server.port, "/v1/workflows/broken/events")[1]
    assert status == 409 and reply["error"]["detail"]["type"].endswith("StepError")
    assert "bad value 7" in reply["error"]["detail"]["message"]
    assert described["error"]["type"].endswith("StepError") and "bad value 7" in described["error"]["message"]
    for body in (reply, described, history, streamed):
        text = json.dumps(body)
        assert "traceback" not in text.lower() and ".py" not in text, text
    if hasattr(server, "engine"):  # the server's own history keeps it
        assert "traceback" in server.engine.describe("broken").error


# -- 7. a client's event stream against a dead port -------------------------------------------
def _dead_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: connections are refused


class _Enough(BaseException):
    """Ends a client's loop from inside (the client retries OSErrors only)."""


def _counting(monkeypatch, for_seconds=None):
    """Count the client's connection attempts; after ``for_seconds``, the
    next attempt ends the loop with _Enough."""
    import time

    attempts = []
    original = Client._connection
    until = None if for_seconds is None else time.monotonic() + for_seconds

    def connection(self, read_timeout):
        if until is not None and time.monotonic() > until:
            raise _Enough()
        attempts.append(1)
        return original(self, read_timeout)

    monkeypatch.setattr(Client, "_connection", connection)
    return attempts


def test_the_event_stream_of_a_dead_port_backs_off(monkeypatch):
    """Client.events() reconnected at once after each refusal: 72,000
    connection attempts in 3 s."""
    attempts = _counting(monkeypatch, for_seconds=2.0)
    client = Client(f"http://127.0.0.1:{_dead_port()}", token=TOKEN)

    def follow():
        try:
            list(client.events("any"))
        except _Enough:
            pass

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    thread.join(15)
    assert not thread.is_alive()
    assert 3 <= len(attempts) <= 12, f"{len(attempts)} connection attempts in 2 s"


def test_the_event_stream_of_a_dead_port_gives_up_with_a_clear_error(monkeypatch):
    import time

    attempts = _counting(monkeypatch)
    client = Client(f"http://127.0.0.1:{_dead_port()}", token=TOKEN, max_backoff=0.4)
    began = time.monotonic()
    with pytest.raises(aion.StoreUnavailable) as gave_up:
        list(client.events("any", give_up_after=2.0))
    took = time.monotonic() - began
    assert 1.0 <= took <= 4.0, took
    assert "gave up after 2.0 s" in str(gave_up.value) and "is the server running" in str(gave_up.value)
    assert len(attempts) <= 10


# -- 8. idle and half-open connections --------------------------------------------------------
def _sockets_of(pid):
    import os

    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def test_a_worker_bounds_its_connections_and_cuts_idle_ones(tmp_path_factory):
    """``aion-green worker --http`` kept every connection that sent nothing
    (3,000 half-open connections, all held): now it serves at most
    --http-connections at once, and closes one that sends nothing for
    --http-read-timeout seconds."""
    import socket
    import time

    worker = Worker(_flows_dir(tmp_path_factory), "--http-connections", "4",
                    "--http-read-timeout", "1")
    idle = []
    try:
        baseline = _sockets_of(worker.proc.pid)
        one = socket.create_connection(("127.0.0.1", worker.port), timeout=5)
        began = time.monotonic()
        assert one.recv(1) == b"", "the server answered a request that was never sent"
        assert 0.5 < time.monotonic() - began < 4, "an idle connection was not cut after its read timeout"
        one.close()
        for _ in range(30):
            idle.append(socket.create_connection(("127.0.0.1", worker.port), timeout=20))
        time.sleep(0.3)
        held = _sockets_of(worker.proc.pid) - baseline
        assert held <= 4, f"the worker holds {held} connections; it may serve 4 at once"
        began = time.monotonic()
        status, _, reply = raw(worker.port, "GET", "/healthz", timeout=30)
        assert (status, reply) == (200, {"ok": True})
        assert time.monotonic() - began < 15
        cut = 0
        for sock in idle:
            try:
                cut += sock.recv(1) == b""
            except OSError:
                cut += 1
        assert cut == len(idle), "an idle connection was kept open"
    finally:
        for sock in idle:
            sock.close()
        out, err = worker.stop()
    assert worker.proc.returncode == 0, err


def test_a_body_that_stops_halfway_is_a_408_after_the_read_timeout(tmp_path_factory):
    """A request whose body never arrives in full held its greenlet (and
    connection) forever; now the read times out and the answer says so."""
    import time

    worker = Worker(_flows_dir(tmp_path_factory), "--http-read-timeout", "1")
    try:
        began = time.monotonic()
        reply = _raw_socket(worker.port, b"POST /v1/workflows HTTP/1.1\r\nHost: x\r\n"
                            + f"Authorization: Bearer {TOKEN}\r\n".encode()
                            + b"Content-Length: 100\r\n\r\n{\"workflow\": ", timeout=10)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
        assert time.monotonic() - began < 5
        assert Client(worker.url, token=TOKEN).list() == []
    finally:
        worker.stop()


# -- 9. a worker stopping while requests wait -------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopping_worker_answers_its_long_polls_503_with_retry_after(tmp_path_factory, signum):
    """SIGINT to a worker dropped the requests in flight (a result wait got
    no answer at all: the process exited under its greenlets). Now each
    answers 503 with Retry-After, an event stream ends, and the runs go on
    with the next worker."""
    import time

    directory = _flows_dir(tmp_path_factory)
    worker = Worker(directory)
    client = Client(worker.url, token=TOKEN)
    for i in range(5):
        client.start("wire.inbox", "n", id=f"w{i}")
    replies = {}

    def wait(i):
        try:
            replies[i] = raw(worker.port, "GET", f"/v1/workflows/w{i}/result?timeout=30", timeout=40)
        except Exception as exc:  # noqa: BLE001 - the failure being tested
            replies[i] = exc

    stream = {}

    def follow():
        stream["frames"] = read_stream(worker.port, "/v1/workflows/w0/events", timeout=40)[1]

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(5)]
    threads.append(threading.Thread(target=follow))
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    worker.proc.send_signal(signum)
    for thread in threads:
        thread.join(60)
    worker.proc.wait(timeout=30)  # the one signal stops it (a second could land in its exit)
    out, err = worker.stop()
    assert worker.proc.returncode == 0, err
    for i in range(5):
        assert not isinstance(replies[i], Exception), f"request {i} was dropped: {replies[i]!r}"
        status, headers, body = replies[i]
        assert status == 503 and body["error"]["code"] == "unavailable", replies[i]
        assert headers.get("Retry-After") == "1"
    assert stream["frames"][0][0] == "run" and "end" not in [kind for kind, _ in stream["frames"]]

    successor = Worker(directory)
    try:
        client = Client(successor.url, token=TOKEN)
        client.signal("w3", "n", "after the restart")
        assert client.result("w3", timeout=20) == "after the restart"
    finally:
        successor.stop()


def test_a_clients_result_wait_outlives_a_worker_restart(tmp_path_factory):
    """A Client.result() wait while its worker stops (503, Retry-After) and
    the next one starts on the same address: it asks again, backing off,
    and gets the result (before: EngineClosed or a dropped connection)."""
    import time

    directory = _flows_dir(tmp_path_factory)
    address = f"127.0.0.1:{_dead_port()}"
    worker = Worker(directory, address=address)
    client = Client(worker.url, token=TOKEN, max_backoff=0.5)
    client.start("wire.inbox", "n", id="r1")
    got = {}

    def wait():
        try:
            got["result"] = client.result("r1", timeout=60)
        except Exception as exc:  # noqa: BLE001 - the failure being tested
            got["error"] = exc

    def follow():
        got["events"] = [e.seq for e in client.events("r1")]

    threads = [threading.Thread(target=wait), threading.Thread(target=follow)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(timeout=30)
    worker.stop()
    successor = Worker(directory, address=address)
    try:
        client.signal("r1", "n", "still here")
        for thread in threads:
            thread.join(60)
        assert got.pop("result", got) == "still here"
        # The stream ended with the worker and resumed with the next: no gap, no duplicate.
        assert got["events"] == [e.seq for e in client.history("r1")]
    finally:
        successor.stop()
