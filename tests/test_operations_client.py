"""Health and metrics through the ``Client`` and the CLI (issue 18), against
a real ``aion-green worker --http`` process: ``Client.health()``,
``Client.ready()``, ``Client.metrics()``; ``aion-green health [--ready]``
(exit 0 when it serves / can take work, 1 when not or when nothing
answers) and ``aion-green metrics`` (the Prometheus text)."""
import json
import socket
import subprocess
import sys

import pytest
from worker_process import WorkerProcess, worker_env

import aion_green as aion
from aion_green.transport.client import Client

FLOWS = '''
import aion_green as aion


@aion.workflow(name="ops.echo")
def echo(ctx, x):
    return ctx.step(str, x)
'''
TOKEN = "ops-token"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ops")
    (directory / "opsflows.py").write_text(FLOWS)
    served = WorkerProcess(directory, f"sqlite:///{directory / 'ops.db'}", "opsflows",
                           "--token", TOKEN)
    yield served
    served.stop()


def _dead_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args, db):
    return subprocess.run([sys.executable, "-m", "aion_green", "--db", db, "--token", TOKEN,
                           *args], env=worker_env(), capture_output=True, text=True, timeout=60)


def test_the_client_asks_a_worker_whether_it_serves_is_ready_and_for_its_metrics(worker):
    client = Client(f"http://127.0.0.1:{worker.port}", token=TOKEN)
    assert client.start("ops.echo", 7, id="e-1").result(timeout=20) == "7"
    assert client.health() is True
    ready = client.ready()
    assert ready["ok"] is True and ready["driving"] is True and ready["checks"]["store"] == "ok"
    text = client.metrics()
    assert "# TYPE aion_steps_completed_total counter" in text
    completed = [line for line in text.splitlines()
                 if line.startswith("aion_steps_completed_total")]
    assert completed and float(completed[0].split()[-1]) >= 1
    assert "# EOF" in client.metrics(openmetrics=True)
    with pytest.raises(aion.AionError) as refused:  # /metrics wants the token
        Client(f"http://127.0.0.1:{worker.port}").metrics()
    assert "token" in str(refused.value).lower() or "Bearer" in str(refused.value)
    nobody = Client(f"http://127.0.0.1:{_dead_port()}")
    with pytest.raises(aion.StoreUnavailable):
        nobody.health()
    with pytest.raises(aion.StoreUnavailable):
        nobody.ready()


def test_the_cli_health_exits_0_when_it_serves_and_1_when_nothing_answers(worker, tmp_path):
    url = f"http://127.0.0.1:{worker.port}"
    live = cli("health", db=url)
    assert live.returncode == 0 and live.stdout.strip() == "serving", live
    ready = cli("health", "--ready", "--json", db=url)
    assert ready.returncode == 0, ready
    doc = json.loads(ready.stdout)
    assert doc["ok"] is True and doc["checks"]["store"] == "ok"
    dead = cli("health", "--ready", db=f"http://127.0.0.1:{_dead_port()}")
    assert dead.returncode == 1 and dead.stdout.startswith("not ready"), dead
    store = cli("health", "--ready", db=f"sqlite:///{worker.directory / 'ops.db'}")
    assert store.returncode == 0 and "store: ok" in store.stdout, store


def test_the_cli_prints_a_worker_s_metrics(worker, tmp_path):
    url = f"http://127.0.0.1:{worker.port}"
    Client(url, token=TOKEN).start("ops.echo", 1, id="m-1").result(timeout=20)
    out = cli("metrics", db=url)
    assert out.returncode == 0, out
    assert "# TYPE aion_steps_completed_total counter" in out.stdout
    assert any(line.startswith("aion_runs") for line in out.stdout.splitlines())
    local = cli("metrics", db=f"sqlite:///{tmp_path / 'x.db'}")
    assert local.returncode == 2 and "--db http://HOST:PORT" in local.stderr, local
