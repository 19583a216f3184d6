"""Operations (issue 18): ``/health/live``, ``/health/ready`` and
``/metrics``. Through a real ``aion-green worker --http`` process and a
plain HTTP client, and in process: the figures after known work, a store
that stops answering (a SQLite file deleted, a reader held, a private
PostgreSQL server stopped), the token, and an engine without
``prometheus_client``."""
import http.client
import io
import json
import sys
import time
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import NativeGate, wait_until
from gevent import monkey
from prometheus_client.parser import text_string_to_metric_families
from worker_process import WorkerProcess

import aion_green as aion
from aion_green.core.errors import ConfigurationError
from aion_green.transport.wsgi import WSGIApp

TOKEN = "metrics-token"
_native_sleep = monkey.get_original("time", "sleep")

FLOWS = '''
import aion_green as aion


def add(a, b):
    return a + b


def broken(x):
    raise ValueError(f"broken {x}")


@aion.workflow(name="mx.sum")
def total(ctx, n):
    return sum(ctx.step(add, i, 1) for i in range(n))


@aion.workflow(name="mx.fail")
def fail(ctx):
    return ctx.step(broken, 1, retry=aion.Retry(max_attempts=2, initial_interval=0.01))


@aion.workflow(name="mx.wait")
def wait(ctx):
    return ctx.receive("go", timeout=600)


@aion.workflow(name="mx.nap")
def nap(ctx):
    ctx.sleep(600)
    return "woke"
'''


# -- helpers ---------------------------------------------------------------------------------
class Worker(WorkerProcess):
    """``aion-green worker mxflows --http 127.0.0.1:0 --json --token ...``."""

    def __init__(self, directory):
        (directory / "mxflows.py").write_text(FLOWS)
        self.db = directory / "mx.db"
        super().__init__(directory, f"sqlite:///{self.db}", "mxflows", "--token", TOKEN)


def get(port, target, token=TOKEN, method="GET", body=None):
    """One plain HTTP request: (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, target, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def figures(text):
    """A scrape as {(sample name, ((label, value), ...)): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(engine):
    content_type, body = engine.metrics.exposition()
    assert content_type.startswith("text/plain")
    return figures(body.decode())


def call(app, path, token=None, headers=None):
    """The WSGI app in process: (status, headers, body bytes)."""
    environ = {}
    setup_testing_defaults(environ)
    environ.update({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                    "wsgi.input": io.BytesIO(b""), "CONTENT_LENGTH": "0"})
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    environ.update(headers or {})
    seen = {}

    def start_response(status, response_headers):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(response_headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


def one(x):
    return x


@aion.workflow(name="mx.local")
def local(ctx, n):
    return [ctx.step(one, i) for i in range(n)]


@aion.workflow(name="mx.park")
def park(ctx):
    return ctx.receive("go", timeout=600)


# -- through a real worker process ------------------------------------------------------------
@pytest.fixture
def worker(tmp_path):
    served = Worker(tmp_path)
    yield served
    served.stop()


def test_health_routes_need_no_token_and_metrics_does(worker):
    port = worker.port
    for path in ("/health/live", "/health/ready", "/healthz"):
        status, _, body = get(port, path, token=None)
        assert status == 200, (path, body)
        assert json.loads(body)["ok"] is True
    status, _, body = get(port, "/health/ready", token=None)
    assert json.loads(body) == {"ok": True, "driving": True, "checks": {"store": "ok"}}
    status, headers, body = get(port, "/metrics", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["code"] == "unauthenticated"
    assert b"aion_" not in body
    assert get(port, "/metrics", token="wrong")[0] == 401
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"aion_steps_started_total" in body
    assert get(port, "/health/ready", method="POST", token=None)[0] == 405


def test_metrics_after_known_work_show_the_steps_runs_and_histograms(worker):
    port = worker.port
    for i in range(4):
        assert get(port, "/v1/workflows", method="POST",
                   body={"workflow": "mx.sum", "args": [3], "id": f"sum-{i}"})[0] == 200
        status, _, body = get(port, f"/v1/workflows/sum-{i}/result?timeout=30")
        assert status == 200 and json.loads(body)["result"] == 6
    assert get(port, "/v1/workflows", method="POST", body={"workflow": "mx.fail", "id": "f"})[0] == 200
    status, _, body = get(port, "/v1/workflows/f/result?timeout=30")
    assert status == 409 and json.loads(body)["error"]["code"] == "workflow_failed"
    for name in ("mx.wait", "mx.nap"):
        assert get(port, "/v1/workflows", method="POST", body={"workflow": name, "id": name})[0] == 200

    def scraped():
        status, _, body = get(port, "/metrics")
        assert status == 200
        return figures(body.decode())

    # Two timers: the nap's sleep and the wait's receive timeout, each armed
    # once its TimerStarted is recorded.
    # (And the hub's lag, from its first probe, half a second after the start.)
    wait_until(lambda: scraped()[("aion_timers_pending", ())] == 2
               and ("aion_hub_lag_seconds", ()) in scraped(), what="the two timers")
    seen = scraped()
    # 4 runs of 3 steps, and one step that failed twice (max_attempts=2).
    assert seen[("aion_steps_started_total", ())] == 14
    assert seen[("aion_steps_completed_total", ())] == 12
    assert seen[("aion_steps_failed_total", ())] == 2
    assert seen[("aion_step_duration_seconds_count", ())] == 14
    assert seen[("aion_step_duration_seconds_bucket", (("le", "+Inf"),))] == 14
    assert 0 < seen[("aion_step_duration_seconds_sum", ())] < 14 * 5
    runs = {labels[0][1]: value for (name, labels), value in seen.items() if name == "aion_runs"}
    assert runs == {"running": 2, "completed": 4, "failed": 1, "cancelled": 0, "continued": 0,
                    "timed_out": 0}
    # Every record went through a group commit: 7 creations, 12 + 2 steps,
    # 5 ends, the nap's timer and the rest; each commit has a duration.
    commits = seen[("aion_commit_batch_size_count", ())]
    assert commits >= 1 and seen[("aion_commit_batch_size_sum", ())] >= 7 + 14 + 5
    assert seen[("aion_commit_duration_seconds_count", ())] == commits
    assert seen[("aion_commit_duration_seconds_bucket", (("le", "+Inf"),))] == commits
    # The wait and the nap: in memory, or (by default, as their timers are
    # ten minutes away) parked out of it.
    assert seen[("aion_resident_runs", ())] + seen[("aion_evicted_runs", ())] == 2
    assert seen[("aion_driving", ())] == 1
    assert 0 <= seen[("aion_hub_lag_seconds", ())] < 5
    assert {labels for name, labels in seen if name == "aion_queue_depth"} == {
        (("queue", q),) for q in ("writer", "reader", "steps", "hub")}


def test_ready_is_503_once_the_sqlite_file_is_gone_and_live_stays_200(worker):
    """The worker's database file is deleted under it: every read of the
    store fails from then on (StoreLost). Ready says so, without the path."""
    port = worker.port
    assert get(port, "/health/ready", token=None)[0] == 200
    worker.db.unlink()

    def not_ready():
        return get(port, "/health/ready", token=None)[0] == 503

    wait_until(not_ready, timeout=10, what="ready to answer 503")
    status, headers, body = get(port, "/health/ready", token=None)
    error = json.loads(body)["error"]
    assert error["code"] == "unavailable" and headers.get("Retry-After") == "1"
    assert error["checks"] == {"store": "a read failed (StoreLost)"}
    assert "store" in error["message"]
    assert str(worker.directory) not in body.decode() and "mx.db" not in body.decode()
    assert get(port, "/health/live", token=None)[0] == 200


# -- in process -------------------------------------------------------------------------------
def test_ready_is_503_while_the_reader_does_not_answer_within_the_bound(make_engine):
    engine = make_engine(local)
    app = WSGIApp(engine, token=TOKEN, ready_timeout=0.2)
    assert call(app, "/health/ready")[0] == 200
    gate = NativeGate()
    engine._epoch.reader.submit_call(lambda: gate.wait(30), lambda value, error: None)
    try:
        status, headers, body = call(app, "/health/ready")
        assert status == 503 and headers["Retry-After"] == "1"
        error = json.loads(body)["error"]
        assert error["checks"] == {"store": "no answer to a read within 0.2 s"}
        assert error["message"] == "not ready: store: no answer to a read within 0.2 s"
        # Meanwhile a scrape leaves the store's count out rather than wait.
        engine.metrics.count_timeout = 0.2
        seen = scrape(engine)
        assert not any(name == "aion_runs" for name, _ in seen)
        assert seen[("aion_queue_depth", (("queue", "reader"),))] >= 1
    finally:
        gate.set()
    wait_until(lambda: call(app, "/health/ready")[0] == 200, what="ready again")
    assert any(name == "aion_runs" for name, _ in scrape(engine))


def test_ready_says_shut_down_and_a_draining_server_is_not_ready(make_engine):
    engine = make_engine(local)
    app = WSGIApp(engine)
    app.drain()
    status, _, body = call(app, "/health/ready")
    assert status == 503 and json.loads(body)["error"]["checks"] == {
        "server": "draining: it is shutting down"}
    assert call(app, "/health/live")[0] == 200  # still serving what is in flight
    engine.shutdown()
    app.draining = False
    status, _, body = call(app, "/health/ready")
    assert status == 503 and json.loads(body)["error"]["checks"] == {"engine": "shut down"}


def test_metrics_wants_the_token_and_health_does_not(make_engine):
    app = WSGIApp(make_engine(local), token=TOKEN)
    assert call(app, "/metrics")[0] == 401
    assert call(app, "/metrics", token="nope")[0] == 401
    assert call(app, "/metrics", token=TOKEN)[0] == 200
    assert call(app, "/health/live")[0] == 200
    assert call(app, "/health/ready")[0] == 200
    status, headers, body = call(app, "/metrics", token=TOKEN,
                                 headers={"HTTP_ACCEPT": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_a_step_timeout_counts_as_a_failed_attempt_and_its_late_return_as_nothing(make_engine):
    gate = NativeGate()

    def held():
        gate.wait(30)
        return "late"

    @aion.workflow(name="mx.timeout")
    def timed(ctx):
        return ctx.step(held, timeout=0.2, retry=aion.Retry(max_attempts=1))

    engine = make_engine(timed)
    with pytest.raises(aion.WorkflowFailed):
        engine.start(timed, id="t").result(30)
    gate.set()
    wait_until(lambda: not engine._epoch.in_flight and engine._epoch.steps.queued() == 0)
    _native_sleep(0.1)  # the held attempt returns, and its outcome is dropped
    seen = scrape(engine)
    assert seen[("aion_steps_started_total", ())] == 1
    assert seen[("aion_steps_failed_total", ())] == 1
    assert seen[("aion_steps_completed_total", ())] == 0
    assert seen[("aion_step_duration_seconds_bucket", (("le", "0.25"),))] == 1  # the 0.2 s limit


def test_hub_lag_shows_a_blocked_hub(make_engine):
    engine = make_engine(local)
    engine.start(local, 1, id="warm").result(30)
    wait_until(lambda: engine.metrics.hub_lag is not None, what="a first lag probe")
    # A blocking call on the hub (what a bug, or a C extension, would do):
    # nothing runs there for 0.8 s, and the probe's timer wakes late.
    engine._epoch.hub.call_soon(_native_sleep, 0.8)
    wait_until(lambda: scrape(engine)[("aion_hub_lag_seconds", ())] >= 0.25, timeout=10,
               what="the lag to show the blocked hub")
    wait_until(lambda: scrape(engine)[("aion_hub_lag_seconds", ())] < 0.25, timeout=10,
               what="the lag to settle once the hub is free")


def test_two_engines_in_one_process_keep_their_own_figures(make_engine, tmp_path):
    first = make_engine(local, url=f"sqlite:///{tmp_path / 'a.db'}")
    second = make_engine(local, url=f"sqlite:///{tmp_path / 'b.db'}")
    first.start(local, 3, id="a").result(30)
    second.start(local, 5, id="b").result(30)
    second.start(local, 1, id="c").result(30)
    assert first.metrics.registry is not second.metrics.registry
    assert scrape(first)[("aion_steps_completed_total", ())] == 3
    assert scrape(second)[("aion_steps_completed_total", ())] == 6
    assert scrape(second)[("aion_runs", (("status", "completed"),))] == 2
    from prometheus_client import REGISTRY, generate_latest

    assert b"aion_steps" not in generate_latest(REGISTRY)  # never the process's registry


def test_without_prometheus_client_the_engine_runs_and_metrics_says_what_to_install(
        make_engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    engine = make_engine(local)
    assert engine.start(local, 2, id="x").result(30) == [0, 1]
    assert engine.metrics.available is False
    with pytest.raises(ConfigurationError, match=r"aion-green\[metrics\]"):
        engine.metrics.registry  # noqa: B018
    app = WSGIApp(engine)
    status, headers, body = call(app, "/metrics")
    error = json.loads(body)["error"]
    assert status == 503 and error["code"] == "unavailable"
    assert "prometheus_client" in error["message"] and "aion-green[metrics]" in error["message"]
    assert "Retry-After" not in headers  # asking again will not help
    assert call(app, "/health/ready")[0] == 200


# -- PostgreSQL -------------------------------------------------------------------------------
def test_on_postgres_ready_wants_the_lease_and_metrics_count_the_leased_runs(make_engine, pg_url):
    engine = make_engine(park, url=pg_url)
    engine.start(park, id="p")
    wait_until(lambda: engine.readiness().ready, what="the engine's lease")
    state = engine.readiness()
    assert state.checks == {"store": "ok", "lease": "ok"} and state.driving
    wait_until(lambda: scrape(engine).get(("aion_leased_runs", ())) == 1, what="the leased run")
    seen = scrape(engine)
    assert seen[("aion_driving", ())] == 1
    assert seen[("aion_runs", (("status", "running"),))] == 1
    # The lease ran out (its renewals did not reach the store): not ready.
    engine._epoch.leases.lease_until = time.time() - 30
    state = engine.readiness()
    assert not state.ready and state.checks["lease"].startswith("ran out 30 s ago")
    assert scrape(engine)[("aion_driving", ())] == 0


def test_on_postgres_lease_renewals_never_miss_under_a_flood_of_steps(make_engine, pg_url):
    """Issue 21: while 200 runs do tiny steps as fast as they can, the
    engine renews the lease of a parked run every third of the lease, each
    renewal committed before the leases it extends run out."""
    engine = make_engine(park, local, url=pg_url, lease=1.5)
    engine.start(park, id="p")
    figures = engine.metrics.leases
    wait_until(lambda: figures.renewals >= 1, what="a first renewal")
    began = time.monotonic()
    while time.monotonic() - began < 2.0:  # at least four renewals under the flood
        handles = [engine.start(local, 20, id=f"f{began}-{k}") for k in range(200)]
        for handle in handles:
            assert len(handle.result(60)) == 20
    assert figures.renewals >= 4
    assert (figures.missed, figures.lost) == (0, 0), \
        f"{figures.missed} of {figures.renewals} renewals missed; least spare {figures.tightest} s"
    seen = scrape(engine)
    assert seen[("aion_lease_renewals_total", ())] >= 4
    assert seen[("aion_lease_renewals_missed_total", ())] == 0


def test_on_postgres_a_renewal_that_commits_after_its_leases_ran_out_counts_as_missed(
        make_engine, pg_url):
    """A blocked hub (a C call that never yields) holds the heartbeat past
    the lease: the renewal that follows came too late, and says so."""
    engine = make_engine(park, url=pg_url, lease=0.6)
    engine.start(park, id="p")
    figures = engine.metrics.leases
    wait_until(lambda: figures.renewals >= 1, what="a first renewal")
    assert figures.missed == 0
    engine._epoch.hub.call_soon(_native_sleep, 1.2)
    wait_until(lambda: figures.missed >= 1, timeout=10, what="the late renewal to count as missed")
    assert figures.tightest is not None and figures.tightest < 0
    assert scrape(engine)[("aion_lease_renewals_missed_total", ())] >= 1
    engine.signal("p", "go", 1)  # nobody else took it: the run goes on here
    assert engine.result("p", timeout=10) == 1


def test_on_postgres_ready_is_503_once_the_server_stops(make_engine):
    """A private server (never the shared one) stops under a ready engine."""
    from conftest import private_postgres_or_skip

    with private_postgres_or_skip() as server:
        engine = make_engine(park, url=server.url, lease=2.0)
        app = WSGIApp(engine, token=TOKEN)
        wait_until(lambda: call(app, "/health/ready")[0] == 200, what="ready")
        server.halt()
        status, _, body = call(app, "/health/ready")
        assert status == 503
        error = json.loads(body)["error"]
        assert error["checks"]["store"] == "a read failed (StoreUnavailable)"
        assert str(server.port) not in body.decode() and "postgres@" not in body.decode()
        engine.kill_timeout = 1.0
        engine.shutdown()
