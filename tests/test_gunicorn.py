"""The example Flask app under real gunicorn with the gevent worker (two
workers, with and without --preload, and over a file opened with
?leases=on), on a loopback port."""
import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import aion_green as aion
from aion_green.core import events as ev

pytest.importorskip("flask", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("gunicorn", reason="the web extra is not installed: pip install -e '.[web]'")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


@contextlib.contextmanager
def gunicorn_serving(app, tmp_path, env_extra, preload, health):
    """``app`` (``module:callable``) under real gunicorn, gevent worker, two
    workers, on a loopback port; yields ``(port, proc)`` once ``health``
    answers 200, and stops it after."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    env.pop("AION_GEVENT_PATCH", None)
    # (No control socket where gunicorn has one, 25 on: the older gunicorn
    # that an older gevent needs, 23, knows no such option.)
    from gunicorn.config import KNOWN_SETTINGS
    quiet = (["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS)
             else [])
    args = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", f"127.0.0.1:{port}",
            *quiet, "--graceful-timeout", "5", "--chdir", str(ROOT),
            *(["--preload"] if preload else []), app]
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(port, "GET", health, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not come up:\n{(tmp_path / 'gunicorn.log').read_text()}")
            time.sleep(0.1)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(params=["no-preload", "preload", "leases"])
def shop(request, tmp_path):
    """One worker drives the file's runs, the other is its client; with
    leases each drives the runs its requests start."""
    db = tmp_path / "shop.db"
    url = f"sqlite:///{db}" + ("?leases=on" if request.param == "leases" else "")
    with gunicorn_serving("examples.flask_app:app", tmp_path, {"AION_GREEN_DB": url},
                          request.param == "preload", "/health") as (port, proc):
        proc.leased = request.param == "leases"
        yield port, db, proc


def test_forty_waiting_requests_share_the_workers_and_health_answers(shop, tmp_path):
    port, db, proc = shop
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=41) as pool:
        orders = [pool.submit(call, port, "POST", f"/ship/{n}?delay=0.2") for n in range(40)]
        time.sleep(0.05)
        asked = time.monotonic()
        health = call(port, "GET", "/health", timeout=5)
        health_took = time.monotonic() - asked
        replies = [f.result(timeout=60) for f in orders]
    wall = time.monotonic() - began
    assert health[0] == 200 and health[1]["ok"]
    assert health_took < 1.0, f"/health took {health_took:.2f} s while 40 requests waited"
    assert replies == [(200, {"order": str(n), "shipped": True}) for n in range(40)]
    assert wall < 40 * 0.2 / 2, f"40 requests of 0.2 s took {wall:.2f} s"

    # A signal from a request handler, and the engine's own API under /aion.
    assert call(port, "POST", "/checkout/7")[0] == 202
    assert call(port, "POST", "/checkout/7/approve", {"by": "ann"})[0] == 200
    status, result = call(port, "GET", "/checkout/7")
    assert status == 200 and result["approved_by"] == "ann"
    assert result["receipt"]["key"] == "checkout-7/step-1"
    status, listing = call(port, "GET", "/aion/v1/workflows?limit=100")
    assert status == 200 and len(listing["runs"]) == 41

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    store = aion.SQLiteStore(str(db))
    try:
        runs = store.list_runs(None, None, 1000, None)
        assert len(runs) == 41 and all(r.status == "completed" for r in runs)
        owners = {owner for (owner,) in store._conn.execute("SELECT owner FROM runs")}
        if proc.leased:  # every run was held by the worker that drove it
            assert None not in owners and 1 <= len(owners) <= 2, owners
        else:
            assert owners == {None}
        for run in runs:
            history = store.read(run.workflow_id)
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            assert [e.type for e in history].count(ev.WORKFLOW_COMPLETED) == 1
    finally:
        store.close()


def test_any_id_round_trips_under_gunicorn(shop):
    """Issue 16: ids with non-ASCII characters or an encoded "/" through
    the API mounted at /aion (werkzeug's dispatcher under gunicorn), by the
    Client and by raw HTTP with percent-encoding."""
    from urllib.parse import quote

    from aion_green.transport.client import Client

    port, db, proc = shop
    client = Client(f"http://127.0.0.1:{port}/aion")
    for wid in ["café", "日本/語", "a/result", "x/signals/y", "100%", "a b+c?d#e", "🙂"]:
        assert client.start("shop.stamp", wid, id=wid).result(timeout=30)["order"] == wid
        assert client.describe(wid).workflow_id == wid
        status, reply = call(port, "GET", "/aion/v1/workflows/" + quote(wid, safe=""))
        assert (status, reply["workflow_id"]) == (200, wid)
        status, reply = call(port, "GET", f"/aion/v1/workflows/{quote(wid, safe='')}/result")
        assert (status, reply["result"]["order"]) == (200, wid)
