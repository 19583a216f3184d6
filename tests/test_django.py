"""The example Django project (examples/django_app.py) under real gunicorn
with the gevent worker (two workers, with and without --preload), on a
loopback port: a view starts a workflow, another shows its state, the
engine's API and console answer beside them."""
import http.client
import time

import pytest
from test_gunicorn import call, gunicorn_serving

pytest.importorskip("django", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("gunicorn", reason="the web extra is not installed: pip install -e '.[web]'")


@pytest.fixture(params=[False, True], ids=["no-preload", "preload"])
def shop(request, tmp_path):
    with gunicorn_serving("examples.django_app:application", tmp_path,
                          {"AION_GREEN_DB": f"sqlite:///{tmp_path / 'orders.db'}"},
                          request.param, "/health/") as (port, _proc):
        yield port


def test_a_view_starts_a_workflow_another_shows_its_state(shop):
    port = shop
    status, doc = call(port, "POST", "/orders/o-1/")
    assert status == 202 and doc["workflow_id"] == "order-o-1" and doc["run_id"]
    # Started again (a retried request): the same run, nothing new.
    status, again = call(port, "POST", "/orders/o-1/")
    assert status == 202 and again["run_id"] == doc["run_id"]
    deadline = time.monotonic() + 20
    while True:
        status, state = call(port, "GET", "/orders/o-1/")
        if state["steps"] == ["reserve"]:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert status == 200 and state["status"] == "running" and state["result"] is None
    status, doc = call(port, "POST", "/orders/o-1/approve/?by=ana")
    assert status == 200 and doc["recorded_at_seq"] > 0
    deadline = time.monotonic() + 20
    while call(port, "GET", "/orders/o-1/")[1]["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = call(port, "GET", "/orders/o-1/")[1]
    assert state["steps"] == ["reserve", "charge"]
    assert state["result"]["approved_by"] == "ana" and state["result"]["payment"]["charged"]
    assert call(port, "GET", "/orders/none/")[0] == 404
    # The engine's API and console beside the views.
    status, doc = call(port, "GET", "/aion/v1/workflows/order-o-1")
    assert status == 200 and doc["status"] == "completed"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/aion/ui/runs")
    response = conn.getresponse()
    page = response.read().decode()
    conn.close()
    assert response.status == 200 and "order-o-1" in page and 'href="/aion/ui/run?id=order-o-1"' in page
