"""The web console (issue 19) over HTTP, as a browser's requests reach it,
against a real ``aion-green worker --http`` process with a plain HTTP
client: sign-in with the token and its session cookie (HttpOnly,
SameSite=Strict, Secure behind TLS), CSRF on every change, grants per
namespace, every value escaped, pages of a big run, errors as pages. The
browser itself drives it in tests/test_console_browser.py."""
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import wait_until
from worker_process import WorkerProcess, request

TOKEN = "console-secret"
NARROW = "narrow-secret"
FLOWS = Path(__file__).with_name("console_flows.py")
EVIL = "<script>alert(1)</script>"


def start_worker(tmp_path, *extra):
    shutil.copy(FLOWS, tmp_path / "console_flows.py")
    return WorkerProcess(tmp_path, f"sqlite:///{tmp_path / 'console.db'}", "console_flows", *extra)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("console")
    served = start_worker(directory, "--token", TOKEN, "--token", f"{NARROW}:team-a")
    try:
        api = Api(served.port, TOKEN)
        api.post("/v1/workflows", {"workflow": "console.order", "args": [1], "id": "o-1"})
        api.post("/v1/workflows", {"workflow": "console.fails", "id": EVIL})
        api.post("/v1/workflows", {"workflow": "console.parent", "id": "p-1"})
        api.post("/v1/workflows", {"workflow": "console.order", "args": [2], "id": "a-1",
                                   "namespace": "team-a"})
        api.post("/v1/workflows", {"workflow": "console.chain", "args": [2], "id": "ch"})
        api.post("/v1/workflows", {"workflow": "console.supervisor", "id": "sup"})
        api.post("/v1/schedules", {"schedule_id": "nightly <b>", "workflow": "console.kid",
                                   "args": [0], "cron": "0 3 * * *", "timezone": "UTC"})
        # Running: o-1 and the schedule's own run.
        wait_until(lambda: api.get("/v1/workflows/count", status="running")["count"] == 2
                   and all(api.get(f"/v1/workflows/{w}")["status"] == "completed"
                           for w in ("p-1", "ch", "sup")),
                   what="the runs to settle")
        yield served
    finally:
        served.stop()


class Api:
    """The JSON API with the bearer token (the setup's client)."""

    def __init__(self, port, token):
        self.port, self.token = port, token

    def get(self, path, wait=30, **query):
        """``wait``: the client's own timeout, seconds (above a ``timeout``
        the request asks the server to wait)."""
        status, _, body = request(self.port, "GET", path, query or None, token=self.token,
                                  timeout=wait)
        assert status == 200, body
        return body

    def post(self, path, body, **query):
        status, _, doc = request(self.port, "POST", path, query or None, body, token=self.token)
        assert status == 200, doc
        return doc


class Browser:
    """A cookie jar over plain requests: what a browser sends."""

    def __init__(self, port):
        self.port = port
        self.cookie = None
        self.csrf = None

    def go(self, method, path, query=None, body=None, headers=None, form=None):
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = f"aion_console={self.cookie}"
        if form is not None:
            import http.client
            from urllib.parse import urlencode
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            data = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            status, got, raw = response.status, dict(response.getheaders()), response.read()
            conn.close()
        else:
            status, got, raw = request(self.port, method, path, query, body, headers=sent)
        set_cookie = got.get("Set-Cookie")
        if set_cookie:
            value = re.match(r"aion_console=([^;]*)", set_cookie).group(1)
            self.cookie = value or None
        if isinstance(raw, bytes):
            text = raw.decode()
            found = re.search(r'name="aion-csrf" content="([^"]*)"', text)
            if found and found.group(1):
                self.csrf = found.group(1)
            return status, got, text
        return status, got, raw

    def page(self, path, **query):
        return self.go("GET", path, query or None)

    def act(self, path, body, csrf=True, **query):
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return self.go("POST", path, query or None, body, headers)

    def sign_in(self, token):
        status, headers, _ = self.go("POST", "/ui/login", form={"token": token, "next": "/ui/runs"})
        assert status == 303 and headers["Location"] == "/ui/runs", (status, headers)
        status, _, _ = self.page("/ui/runs")
        assert status == 200
        return self


# -- sign-in ----------------------------------------------------------------------------------
def test_a_page_without_a_session_leads_to_sign_in_and_keeps_where_it_was_going(worker):
    browser = Browser(worker.port)
    status, headers, _ = browser.page("/ui/run", id="o-1")
    assert status == 303
    assert headers["Location"] == "/ui/login?next=%2Fui%2Frun%3Fid%3Do-1"
    status, _, text = browser.page("/ui/login", next="/ui/run?id=o-1")
    assert status == 200 and 'type="password"' in text and 'value="/ui/run?id=o-1"' in text
    assert browser.cookie is None


def test_a_wrong_token_signs_nobody_in(worker):
    browser = Browser(worker.port)
    status, headers, text = browser.go("POST", "/ui/login", form={"token": "guess"})
    assert status == 401 and "not this server&#x27;s token" in text
    assert "Set-Cookie" not in headers and browser.cookie is None
    assert browser.page("/ui/runs")[0] == 303


def test_sign_in_sets_a_strict_httponly_cookie_for_the_console_only(worker):
    browser = Browser(worker.port)
    status, headers, _ = browser.go("POST", "/ui/login", form={"token": TOKEN, "next": "/ui/triage"})
    assert status == 303 and headers["Location"] == "/ui/triage"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui;" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    # Behind a TLS proxy it is Secure.
    status, headers, _ = Browser(worker.port).go(
        "POST", "/ui/login", form={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"})
    assert status == 303 and "; Secure" in headers["Set-Cookie"]
    # The token itself is not the cookie.
    assert TOKEN not in cookie


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/elsewhere",
                                    "/ui/../v1/workflows", "/ui\\evil", "/ui//evil.example"])
def test_sign_in_goes_back_to_console_pages_only(worker, target):
    status, headers, _ = Browser(worker.port).go("POST", "/ui/login",
                                                 form={"token": TOKEN, "next": target})
    assert status == 303 and headers["Location"] == "/ui/runs"


def test_the_session_drives_the_api_under_ui_and_changes_need_the_csrf_token(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, doc = browser.page("/ui/api/v1/workflows", status="running", type="console.order")
    assert status == 200 and [r["workflow_id"] for r in doc["runs"]] == ["o-1"]
    before = Api(worker.port, TOKEN).get("/v1/workflows/o-1")["head_seq"]
    # A change without the CSRF token: refused, nothing recorded.
    status, _, doc = browser.act("/ui/api/v1/workflows/signals", {"payload": 1}, csrf=False,
                                 workflow_id="o-1", name="other")
    assert status == 401 and doc["error"]["code"] == "unauthenticated"
    assert "CSRF" in doc["error"]["message"]
    status, _, doc = browser.go("POST", "/ui/api/v1/workflows/signals",
                                {"workflow_id": "o-1", "name": "other"}, {"payload": 1},
                                {"X-CSRF-Token": "0" * 32})
    assert status == 401
    assert Api(worker.port, TOKEN).get("/v1/workflows/o-1")["head_seq"] == before
    # With it, the API's answer as the API gives it; errors too.
    status, _, doc = browser.act("/ui/api/v1/workflows/queries", {"args": []},
                                 workflow_id="o-1", name="progress")
    assert status == 200 and doc["answer"] == {"n": 1, "stage": "waiting for go"}
    status, _, doc = browser.act("/ui/api/v1/workflows/cancel", {}, workflow_id="nope")
    assert status == 404 and doc["error"]["code"] == "not_found"
    # The cookie is the console's: the API itself still wants the bearer token.
    status, _, doc = browser.page("/v1/workflows")
    assert status == 401


def test_signing_out_ends_the_session(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    cookie = browser.cookie
    # Sign-out is a POST carrying the CSRF token (a link elsewhere cannot sign you out).
    status, _, _ = browser.go("POST", "/ui/logout", form={"csrf": "wrong"})
    assert status == 403
    status, headers, _ = browser.go("POST", "/ui/logout", form={"csrf": browser.csrf})
    assert status == 303 and headers["Location"] == "/ui/login"
    assert "Max-Age=0" in headers["Set-Cookie"] and browser.cookie is None
    # The old cookie, replayed, no longer works: pages nor API.
    browser.cookie = cookie
    assert browser.page("/ui/runs")[0] == 303
    assert browser.page("/ui/api/v1/workflows")[0] == 401


def test_a_forged_or_tampered_cookie_is_no_session(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    who, nonce, expires, mac = browser.cookie.split(".")
    for forged in (f"{who}.{nonce}.{int(expires) + 10 ** 6}.{mac}", f"{who}.{nonce}.{expires}.{'0' * 64}",
                   "x.y.z", "", "a" * 5000):
        browser.cookie = forged
        assert browser.page("/ui/runs")[0] == 303, forged
        assert browser.page("/ui/api/v1/workflows")[0] == 401


def test_a_token_granting_one_namespace_sees_that_namespace_only(worker):
    browser = Browser(worker.port).sign_in(f"{NARROW}")
    # Its pages open on the namespace it is granted; links keep it.
    status, _, text = browser.page("/ui/runs")
    assert status == 200 and "a-1" in text and "o-1" not in text
    assert 'href="/ui/run?namespace=team-a&amp;id=a-1"' in text
    status, _, text = browser.page("/ui/runs", namespace="default")
    assert status == 403 and "not granted namespace &#x27;default&#x27;" in text
    assert "o-1" not in text
    status, _, text = browser.page("/ui/run", id="o-1", namespace="default")
    assert status == 403 and "o-1</code>" not in text
    # In its namespace, the id o-1 names nothing: as an id never seen.
    assert browser.page("/ui/run", id="o-1")[0] == 404
    status, _, doc = browser.page("/ui/api/v1/workflows")
    assert status == 403 and doc["error"]["code"] == "namespace_denied"
    status, _, doc = browser.act("/ui/api/v1/workflows/cancel", {}, workflow_id="o-1")
    assert status == 403 and doc["error"]["code"] == "namespace_denied"
    assert Api(worker.port, TOKEN).get("/v1/workflows/o-1")["status"] == "running"


def listed(text):
    """The ids a runs page lists (its rows' checkboxes), in order."""
    return re.findall(r'name="sel" value="([^"]+)"', text)


# -- pages ------------------------------------------------------------------------------------
def test_values_holding_html_show_as_text_everywhere(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    for path, query in (("/ui/runs", {}), ("/ui/run", {"id": EVIL}), ("/ui/triage", {}),
                        ("/ui/runs", {"prefix": EVIL}), ("/ui/run", {"id": EVIL + "x"}),
                        ("/ui/tree", {"id": EVIL})):
        status, headers, text = browser.page(path, **query)
        assert status in (200, 404), (path, status)
        assert "<script>alert" not in text and "<b>luck" not in text, path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, _, text = browser.page("/ui/run", id=EVIL)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "no &lt;b&gt;luck&lt;/b&gt;" in text  # the step's error message


def test_the_runs_list_filters_counts_and_pages_with_the_filters_in_its_links(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, text = browser.page("/ui/runs")
    assert status == 200
    counts = dict(re.findall(r'data-count="(\w+)".*?<b>(\d+)</b>', text))
    assert counts["running"] == "2" and counts["failed"] == "3" and int(counts["completed"]) >= 7
    status, _, text = browser.page("/ui/runs", prefix="p-1/", status="completed")
    assert listed(text) == ["p-1/kid-0", "p-1/kid-2"]
    status, _, text = browser.page("/ui/runs", prefix="p-1/", limit="1")
    assert listed(text) == ["p-1/kid-0"]
    following = re.search(r'id="next-page" href="([^"]+)"', text).group(1).replace("&amp;", "&")
    assert "prefix=p-1%2F" in following and "after=p-1%2Fkid-0" in following
    status, _, text = browser.page(following)
    assert status == 200 and listed(text) == ["p-1/kid-1"]
    status, _, text = browser.page("/ui/runs", attrs="customer=c-1")
    assert listed(text) == ["o-1"]
    status, _, text = browser.page("/ui/runs", type="console.kid", parent="p-1")
    assert listed(text) == ["p-1/kid-0", "p-1/kid-1", "p-1/kid-2"]
    for bad in ({"status": "lost"}, {"started_after": "soon"}, {"attrs": "novalue"},
                {"limit": "0"}):
        status, _, text = browser.page("/ui/runs", **bad)
        assert status == 400 and 'class="error"' in text, bad


def test_a_run_page_shows_summary_waits_history_and_actions(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, text = browser.page("/ui/run", id="o-1")
    assert status == 200
    assert 'data-status="running"' in text and "customer=c-1" in text
    assert 'data-wait="timer"' in text  # receive(timeout=) waits on a timer
    assert 'data-type="StepCompleted"' in text and "add" in text
    assert 'data-stream="/ui/api/v1/workflows/events?workflow_id=o-1' in text
    for action in ("signal", "query", "cancel", "terminate", "pause", "fork"):
        assert f'id="act-{action}"' in text
    status, _, text = browser.page("/ui/run", id="p-1")
    assert 'data-status="completed"' in text and 'id="act-cancel"' not in text
    assert "data-stream" not in text.split('id="timeline"')[1].split(">")[0]
    assert text.count('data-type="ChildStarted"') == 3
    status, _, text = browser.page("/ui/tree", id="p-1")
    assert status == 200
    assert re.findall(r'data-id="([^"]+)" data-status="(\w+)"', text) == [
        ("p-1", "completed"), ("p-1/kid-0", "completed"), ("p-1/kid-1", "failed"),
        ("p-1/kid-2", "completed")]
    status, _, text = browser.page("/ui/triage")
    assert status == 200 and "&lt;script&gt;" in text and "boom" in text and "p-1/kid-1" in text
    for path, query, code in (("/ui/run", {"id": "nope"}, 404), ("/ui/run", {}, 400),
                              ("/ui/tree", {"id": "nope"}, 404), ("/ui/elsewhere", {}, 404)):
        assert browser.page(path, **query)[0] == code, path


def test_a_big_run_opens_at_its_newest_events_and_pages_back_and_filters_failures(tmp_path):
    served = start_worker(tmp_path)  # no token: an open console
    try:
        api = Api(served.port, None)
        api.post("/v1/workflows", {"workflow": "console.many", "args": [20_000, 2000],
                                   "id": "big"})
        # (20,000 durable steps in a row: seconds here, 30 s and more in a loaded
        # CI run, where the client's default 30 s ran out first.)
        api.get("/v1/workflows/big/result", wait=150, timeout="120")
        head = api.get("/v1/workflows/big")["head_seq"]
        assert head > 20_000
        browser = Browser(served.port)
        started = time.monotonic()
        status, headers, text = browser.page("/ui/run", id="big")
        took = time.monotonic() - started
        assert status == 200 and browser.cookie  # an open console still keeps a session (CSRF)
        seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', text)]
        assert seqs == list(range(head, head - 100, -1))
        older = re.search(r'id="older" rel="next" href="([^"]+)"', text).group(1).replace("&amp;", "&")
        status, _, text = browser.page(older)
        assert [int(s) for s in re.findall(r'data-seq="(\d+)"', text)] == list(
            range(head - 100, head - 200, -1))
        status, _, text = browser.page("/ui/run", id="big", only="failures")
        kinds = re.findall(r'data-type="(\w+)"', text)
        assert kinds and set(kinds) == {"StepFailed"} and len(kinds) == 10
        assert took < 10, took  # a generous bound on a shared machine: it reads one page
    finally:
        served.stop()


def test_the_console_mounts_with_the_api_inside_a_flask_app(make_engine):
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    import aion_green as aion
    from aion_green.transport.wsgi import WSGIApp

    @aion.workflow(name="console.mounted")
    def mounted(ctx):
        return "ok"

    engine = make_engine(mounted)
    engine.start(mounted, id="m-1").result(timeout=20)
    app = flask.Flask("shop")

    @app.route("/")
    def home():
        return "the shop"

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/aion": WSGIApp(engine)})
    client = app.test_client()
    assert client.get("/").text == "the shop"
    page = client.get("/aion/ui/runs")
    assert page.status_code == 200 and "m-1" in page.text
    assert 'href="/aion/ui/run?id=m-1"' in page.text
    assert 'href="/aion/ui/static/console.css"' in page.text
    assert "Path=/aion/ui" in page.headers["Set-Cookie"]
    assert client.get("/aion/ui/static/console.js").status_code == 200
    assert client.get("/aion/ui/api/v1/workflows").json["runs"][0]["workflow_id"] == "m-1"


def test_a_run_of_a_chain_names_the_runs_before_and_after_it(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, text = browser.page("/ui/run", id="ch")
    assert status == 200 and 'data-status="completed"' in text
    chain = text.split('id="chain"')[1].split("</ol>")[0]
    earlier = re.findall(r'run_id=([0-9a-f]+)', chain)
    assert len(earlier) == 2 and "(this run)" in chain
    # An earlier run: continued, naming the next.
    status, _, text = browser.page("/ui/run", id="ch", run_id=earlier[0])
    assert status == 200 and 'data-status="continued"' in text
    assert re.findall(r'run_id=([0-9a-f]+)', text.split('id="chain"')[1].split("</ol>")[0])


def test_the_tree_counts_a_supervisors_restarts(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, text = browser.page("/ui/tree", id="sup")
    assert status == 200
    nodes = re.findall(r'data-id="([^"]+)" data-status="(\w+)"', text)
    assert nodes == [("sup", "completed"), ("sup/sup-1/0", "failed"),
                     ("sup/sup-1/0-r1", "completed"), ("sup/sup-1/1", "completed")]
    assert "1 restart<" in text


def test_schedules_show_their_next_fire_and_their_controls_work(worker):
    browser = Browser(worker.port).sign_in(TOKEN)
    status, _, text = browser.page("/ui/schedules")
    assert status == 200 and "nightly &lt;b&gt;" in text and "0 3 * * *" in text
    assert re.search(r"\d{4}-\d\d-\d\dT03:00:00", text)  # its next fire
    path = re.search(r'data-path="([^"]+/pause)"', text).group(1).replace("&amp;", "&")
    assert path == "/ui/api/v1/schedules/nightly%20%3Cb%3E/pause"
    status, _, doc = browser.act(path, {})
    assert status == 200 and doc["paused"] is True
    # (The schedule's run takes the pause as a message: a moment later.)
    wait_until(lambda: "s-paused" in browser.page("/ui/schedules")[2], what="the pause")
    status, _, text = browser.page("/ui/schedules")
    assert 'data-path="/ui/api/v1/schedules/nightly%20%3Cb%3E/resume"' in text
    status, _, doc = browser.act("/ui/api/v1/schedules/nightly%20%3Cb%3E/resume", {})
    assert status == 200 and doc["paused"] is False


def test_triage_ranks_a_step_stuck_far_longer_than_usual(tmp_path):
    served = start_worker(tmp_path, "--grace", "1")
    try:
        api = Api(served.port, None)
        api.post("/v1/workflows", {"workflow": "console.hangs", "args": [0.01], "id": "quick"})
        api.get("/v1/workflows/quick/result", wait=60, timeout="30")
        for i in range(3):
            api.post("/v1/workflows", {"workflow": "console.sleeper", "args": [0.05],
                                       "id": f"nap-{i}"})
            api.get(f"/v1/workflows/nap-{i}/result", wait=60, timeout="30")
        api.post("/v1/workflows", {"workflow": "console.sleeper", "args": [3600], "id": "sleepy"})
        api.post("/v1/workflows", {"workflow": "console.hangs", "args": [120], "id": "hung"})
        api.post("/v1/workflows", {"workflow": "console.fails", "id": "bad"})
        wait_until(lambda: api.get("/v1/workflows/hung")["head_seq"] >= 2
                   and api.get("/v1/workflows/bad")["status"] == "failed", what="the runs")
        browser = Browser(served.port)
        status, _, text = browser.page("/ui/triage", min="1")
        assert status == 200 and "No stuck run" in text  # nap has not run long yet
        time.sleep(1.5)
        status, _, text = browser.page("/ui/triage", min="1")
        stuck = text.split('id="stuck"')[1]
        assert ">hung</a>" in stuck and "step nap running for" in stuck and "usually" in stuck
        assert ">sleepy</a>" in stuck and "timer t1 waited on for" in stuck
        failed = text.split('id="failed"')[1].split("</table>")[0]
        assert ">bad</a>" in failed and "boom" in failed and "no &lt;b&gt;luck" in failed
        # Without the low bar, a step of 1.5 s is not stuck (a minute at least).
        status, _, text = browser.page("/ui/triage")
        assert "No stuck run" in text
    finally:
        served.stop()


def test_pause_unpause_terminate_and_resume_from_the_console(tmp_path):
    served = start_worker(tmp_path)
    try:
        api = Api(served.port, None)
        api.post("/v1/workflows", {"workflow": "console.order", "args": [5], "id": "r-1"})
        wait_until(lambda: api.get("/v1/workflows/r-1")["head_seq"] >= 4, what="r-1 to wait")
        browser = Browser(served.port)
        status, _, text = browser.page("/ui/run", id="r-1")
        assert 'id="act-pause"' in text and 'id="act-unpause"' not in text
        status, _, doc = browser.act("/ui/api/v1/workflows/pause", {"reason": "look first"},
                                     workflow_id="r-1")
        assert status == 200 and doc["paused"] is True
        status, _, text = browser.page("/ui/run", id="r-1")
        assert "running (paused)" in text and 'id="act-unpause"' in text
        assert 'data-type="WorkflowPaused"' in text and "look first" in text
        status, _, doc = browser.act("/ui/api/v1/workflows/unpause", {}, workflow_id="r-1")
        assert status == 200 and doc["paused"] is False
        status, _, doc = browser.act("/ui/api/v1/workflows/terminate", {"reason": "enough"},
                                     workflow_id="r-1")
        assert status == 200 and doc["terminated"] is True
        wait_until(lambda: api.get("/v1/workflows/r-1")["status"] == "cancelled",
                   what="r-1 to end")
        status, _, text = browser.page("/ui/run", id="r-1")
        assert 'id="act-resume"' in text and 'id="act-terminate"' not in text
        status, _, doc = browser.act("/ui/api/v1/workflows/resume", {}, workflow_id="r-1")
        assert status == 200, doc
        wait_until(lambda: api.get("/v1/workflows/r-1")["status"] == "running",
                   what="r-1 to run again")
        api.post("/v1/workflows/signals", {"payload": "again"}, workflow_id="r-1", name="go")
        assert api.get("/v1/workflows/r-1/result", timeout="30")["result"] == {
            "n": 5, "got": "again"}
    finally:
        served.stop()
