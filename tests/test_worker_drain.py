"""SIGTERM drains a worker (issue 18): with a real ``aion-green worker
--http`` process, a SIGTERM while a request is in flight and a step is
running. New requests get 503 with Retry-After (the worker still accepts
them: a client is told to go elsewhere, not refused), the request in flight
and the step finish within the grace period (the step's completion is
recorded, and the run's end), then the process exits 0."""
import signal
import threading
import time

from conftest import wait_until
from worker_process import WorkerProcess, request

from aion_green.stores.sqlite.store import SQLiteStore

FLOWS = '''
import os
import time

import aion_green as aion


def slow(marker):
    open(marker, "w").close()  # the step is running
    time.sleep(2.0)
    return "done"


@aion.workflow(name="drain.slow")
def slow_flow(ctx, marker):
    return ctx.step(slow, marker)
'''
TOKEN = "drain-token"


def test_sigterm_answers_new_requests_503_and_lets_the_request_and_step_in_flight_finish(
        tmp_path):
    (tmp_path / "drainflows.py").write_text(FLOWS)
    db = tmp_path / "drain.db"
    marker = tmp_path / "step-running"
    worker = WorkerProcess(tmp_path, f"sqlite:///{db}", "drainflows", "--token", TOKEN,
                           "--grace", "20")
    try:
        status, _, started = request(worker.port, "POST", "/v1/workflows", token=TOKEN, body={
            "workflow": "drain.slow", "args": [str(marker)], "id": "slow-1"})
        assert status == 200, started
        wait_until(marker.exists, timeout=20, what="the step to run")
        in_flight = {}

        def wait_result():  # the request in flight: a wait for the run's end
            in_flight["reply"] = request(worker.port, "GET", "/v1/workflows/slow-1/result",
                                         {"timeout": 30}, token=TOKEN, timeout=40)

        waiter = threading.Thread(target=wait_result)
        waiter.start()
        time.sleep(0.3)
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New work during the drain: 503 with Retry-After, nothing started.
        status, headers, body = request(worker.port, "POST", "/v1/workflows", token=TOKEN, body={
            "workflow": "drain.slow", "args": [str(tmp_path / "other")], "id": "slow-2"})
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert headers.get("Retry-After") == "1"
        status, _, body = request(worker.port, "GET", "/health/ready")
        assert status == 503 and "draining" in body["error"]["message"]
        waiter.join(40)
        status, _, body = in_flight["reply"]
        assert status == 200 and body["result"] == "done", body
        assert worker.proc.wait(timeout=30) == 0
        assert time.monotonic() - began < 15  # it stopped once the work was done, not at the grace
    finally:
        out, err = worker.stop()
    store = SQLiteStore(str(db))
    try:
        assert [e.type for e in store.read("slow-1")] == [
            "WorkflowStarted", "StepCompleted", "WorkflowCompleted"]
        assert store.get_run("slow-2") is None
    finally:
        store.close()
    assert not (tmp_path / "other").exists()
