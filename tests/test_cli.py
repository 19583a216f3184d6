"""The ``aion-green`` command, driven as a user would: a real process."""
import json

import pytest
from conftest import run_python, wait_until
from worker_process import WorkerProcess, worker_env

import aion_green as aion


def triple(x):
    return 3 * x


@aion.workflow(name="tests.cli_triple")
def tripler(ctx, x):
    return ctx.step(triple, x)


@aion.workflow(name="tests.cli_fails")
def fails(ctx):
    raise ValueError("no luck")


def test_list_and_show(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with aion.Engine(url, workflows=[tripler, fails]) as engine:
        engine.start(tripler, 5, id="t-5").result(10)
        try:
            engine.start(fails, id="f-1").result(10)
        except aion.WorkflowFailed:
            pass
    listing = run_python(["-m", "aion_green", "--db", url, "list"]).stdout
    assert "t-5" in listing and "tests.cli_triple" in listing and "completed" in listing
    assert "f-1" in listing and "failed" in listing
    failed = json.loads(run_python(["-m", "aion_green", "--db", url, "list", "--status", "failed",
                                    "--json"]).stdout)
    assert [run["workflow_id"] for run in failed] == ["f-1"]
    shown = run_python(["-m", "aion_green", "--db", url, "show", "t-5"]).stdout
    assert "result: 15" in shown
    assert "StepCompleted" in shown and "WorkflowCompleted" in shown
    data = json.loads(run_python(["-m", "aion_green", "--db", url, "show", "f-1", "--json"]).stdout)
    assert data["run"]["error"]["message"] == "no luck"
    assert [e["type"] for e in data["history"]] == ["WorkflowStarted", "WorkflowFailed"]


def test_exit_codes(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    missing = run_python(["-m", "aion_green", "--db", url, "show", "nope"], check=False)
    assert missing.returncode == 1 and "no workflow with id 'nope'" in missing.stderr
    bad = run_python(["-m", "aion_green", "--db", url, "list", "--status", "done"], check=False)
    assert bad.returncode == 2
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database" * 100)
    broken = run_python(["-m", "aion_green", "--db", f"sqlite:///{corrupt}", "list"], check=False)
    assert broken.returncode == 2 and "damaged" in broken.stderr


def test_looking_changes_nothing(tmp_path):
    """The CLI reads only: a due timer of a parked run does not fire, and
    the store's driver lock stays free for the engine that will drive it."""
    import fcntl
    import os
    import time

    from aion_green.core import events as ev
    from aion_green.store import Append

    path = tmp_path / "parked.db"
    store = aion.SQLiteStore(str(path))
    store.create_run("p", "tests.cli_unknown", "[]", "r", time.time() - 10)
    store.write_batch([Append("p", 1, [ev.NewEvent(ev.TIMER_STARTED, time.time() - 9,
                                                   {"timer": "t1", "fire_at": time.time() - 5})])])
    store.close()
    for command in (["list"], ["show", "p"]):
        proc = run_python(["-m", "aion_green", "--db", f"sqlite:///{path}", *command])
        assert "p" in proc.stdout
    store = aion.SQLiteStore(str(path))
    try:
        assert [e.type for e in store.read("p")] == [ev.WORKFLOW_STARTED, ev.TIMER_STARTED]
    finally:
        store.close()
    lock = f"{path}.driver"
    if os.path.exists(lock):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody kept it
        finally:
            os.close(fd)


WORKFLOWS = """
import aion_green as aion

def triple(x):
    return 3 * x

@aion.workflow(name="cliwork.triple")
def tripler(ctx, x):
    return ctx.step(triple, x) + ctx.receive("plus")
"""


def test_a_worker_drives_runs_until_sigterm_then_stops_cleanly(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    (tmp_path / "cliwork.py").write_text(WORKFLOWS)
    url = f"sqlite:///{tmp_path / 'work.db'}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("AION_GEVENT_PATCH", None)
    worker = subprocess.Popen([sys.executable, "-m", "aion_green", "--db", url, "worker", "cliwork"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        ready = worker.stdout.readline()
        assert "1 workflow type(s) (cliwork.triple)" in ready and "driving" in ready
        # Another process starts and signals; the worker drives the run.
        with aion.Engine(url) as client:
            assert not client.driving
            handle = client.start("cliwork.triple", 4, id="t")
            client.signal("t", "plus", 1)
            assert handle.result(timeout=20) == 13
            client.start("cliwork.triple", 5, id="parked")  # left waiting for "plus"
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "shutting down" in out and "stopped" in out
    proc = run_python(["-m", "aion_green", "--db", url, "show", "parked", "--json"])
    assert json.loads(proc.stdout)["run"]["status"] == "running"  # resumes with the next worker
    bad = run_python(["-m", "aion_green", "--db", url, "worker", "no_such_module"], check=False)
    assert bad.returncode == 2 and "cannot import 'no_such_module'" in bad.stderr


# -- the whole command line against a worker, as a user drives it ----------------------------
OPS = """
from datetime import timedelta

import aion_green as aion


def plus(a, b):
    return a + b


@aion.workflow(name="cliops.counter")
def counter(ctx, start):
    state = {"n": start}
    ctx.set_query("total", lambda: state["n"])
    ctx.set_query("times", lambda k: state["n"] * k)
    while True:
        add = ctx.receive("add")
        if add == 0:
            return state["n"]
        state["n"] = ctx.step(plus, state["n"], add)


@aion.workflow(name="cliops.slow")
def slow(ctx, n):
    total = 0
    for i in range(n):
        total = ctx.step(plus, total, i)
        ctx.sleep(timedelta(seconds=0.1))
    return total


@aion.workflow(name="cliops.fails")
def fails(ctx):
    raise ValueError("no luck")


def note(tag):
    with open("effects.txt", "a") as f:
        f.write(tag + "\\n")
    return tag


def check_flag():
    import os

    if os.path.exists("broken.flag"):
        raise RuntimeError("the flag is up")
    return "ok"


@aion.workflow(name="cliops.flaky")
def flaky(ctx):
    return [ctx.step(note, "one"), ctx.step(check_flag)]
"""


class Worker(WorkerProcess):
    """``aion-green worker cliops --http 127.0.0.1:0 --json`` in a real process."""

    def __init__(self, directory, url):
        self.url = url
        super().__init__(directory, url, "cliops")


def cli(db, *args, rc=0):
    """One ``aion-green`` command; its exit code must be ``rc``."""
    proc = run_python(["-m", "aion_green", "--db", db, *args], check=False, timeout=60)
    assert proc.returncode == rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cliops")
    (directory / "cliops.py").write_text(OPS)
    started = Worker(directory, f"sqlite:///{directory / 'ops.db'}")
    yield started
    out, err = started.stop()
    assert started.proc.returncode == 0, err


def test_a_worker_with_http_says_where_it_serves(worker):
    assert worker.ready["driving"] is True
    assert {"cliops.counter", "cliops.slow", "cliops.fails"} <= set(worker.ready["types"])
    assert worker.http.startswith("http://127.0.0.1:")


def test_start_signal_query_and_result_through_the_store_and_the_http_api(worker):
    db, http = worker.url, worker.http
    assert cli(db, "start", "cliops.counter", "10", "--id", "c1").stdout == "c1\n"
    again = json.loads(cli(db, "start", "cliops.counter", "10", "--id", "c1", "--json").stdout)
    # Idempotent by id: the same run.
    assert again == {"workflow_id": "c1", "run_id": again["run_id"], "queued": False}
    assert again["run_id"] == json.loads(cli(db, "show", "c1", "--json").stdout)["run"]["run_id"]
    assert "recorded in c1 at seq 2" in cli(db, "signal", "c1", "add", "5").stdout
    # A SQLite client cannot reach the live run: it says where to ask.
    refused = cli(db, "query", "c1", "total", rc=6)
    assert f"aion-green --db {http} query c1 total" in refused.stderr
    assert cli(http, "query", "c1", "total").stdout == "15\n"
    answer = json.loads(cli(http, "query", "c1", "times", "2", "--json").stdout)
    assert answer == {"workflow_id": "c1", "name": "times", "answer": 30}
    assert "has no query 'nope'" in cli(http, "query", "c1", "nope", rc=6).stderr
    first = json.loads(cli(http, "signal", "c1", "add", "1", "--key", "k1", "--json").stdout)
    second = json.loads(cli(db, "signal", "c1", "add", "1", "--key", "k1", "--json").stdout)
    assert first["seq"] == second["seq"] and first["queued"] is False  # recorded once
    cli(http, "signal", "c1", "add", "0")
    assert cli(db, "result", "c1", "--timeout", "20").stdout == "16\n"
    assert json.loads(cli(http, "result", "c1", "--json").stdout)["result"] == 16
    assert "nothing was recorded" in cli(db, "signal", "c1", "add", "1", rc=5).stderr
    cli(http, "query", "c1", "total", rc=5)
    cli(db, "query", "c1", "total", rc=5)


def test_bad_input_says_what_to_do_and_records_nothing(worker):
    db, http = worker.url, worker.http
    before = json.loads(cli(db, "list", "--json").stdout)
    unknown = cli(db, "start", "cliops.nope", "1", rc=2).stderr
    assert "'cliops.nope' is not registered" in unknown and "cliops.counter" in unknown
    assert "Nothing was recorded" in unknown
    cli(http, "start", "cliops.nope", "1", rc=2)
    bad = cli(db, "start", "cliops.counter", "{bad", rc=2).stderr
    assert "argument 1 '{bad' is not a JSON value" in bad and "nothing was recorded" in bad
    as_json = json.loads(cli(db, "start", "cliops.counter", "abc", "--json", rc=2).stderr)
    assert as_json["error"] == "ConfigurationError" and "not a JSON value" in as_json["message"]
    cli(http, "start", "cliops.counter", "NaN", rc=2)
    assert json.loads(cli(db, "list", "--json").stdout) == before
    cli(db, "start", "cliops.counter", "1", "--id", "taken")
    assert "already exists" in cli(db, "start", "cliops.counter", "2", "--id", "taken", rc=2).stderr
    assert "payload" in cli(db, "signal", "taken", "add", "[1,", rc=2).stderr
    missing = json.loads(cli(http, "show", "nope", "--json", rc=1).stderr)
    assert missing["error"] == "WorkflowNotFound" and "'nope'" in missing["message"]
    cli(db, "signal", "nope", "add", "1", rc=1)
    cli(http, "cancel", "nope", rc=1)
    usage = json.loads(cli(db, "list", "--json", "--limit", "0", rc=2).stderr)
    assert usage["error"] == "UsageError"
    assert "unrecognized arguments: --bogus" in cli(db, "start", "cliops.counter", "--bogus",
                                                     rc=2).stderr


def test_waiting_shows_progress_and_exits_by_outcome(worker):
    import subprocess
    import sys

    db, http = worker.url, worker.http
    done = cli(db, "start", "cliops.slow", "3", "--wait", "--timeout", "30")
    assert done.stdout == "3\n"
    progress = done.stderr
    assert progress.index("WorkflowStarted") < progress.index("TimerFired") < progress.index(
        "WorkflowCompleted")
    doc = json.loads(cli(http, "start", "cliops.slow", "2", "--wait", "--json").stdout)
    assert doc["status"] == "completed" and doc["result"] == 1
    failed = cli(db, "start", "cliops.fails", "--id", "f1", "--wait", rc=3)
    assert "WorkflowFailed" in failed.stderr and "failed: ValueError: no luck" in failed.stderr
    outcome = cli(http, "result", "f1", "--json", rc=3)
    assert json.loads(outcome.stdout)["error"]["message"] == "no luck"
    assert json.loads(outcome.stderr)["error"] == "WorkflowFailed"
    late = cli(db, "start", "cliops.counter", "0", "--id", "w1", "--wait", "--timeout", "0.3", rc=4)
    assert "did not finish within 0.3 s" in late.stderr
    cli(http, "result", "w1", "--timeout", "0.2", rc=4)
    # show --follow prints the events as they come, until the end.
    follower = subprocess.Popen([sys.executable, "-m", "aion_green", "--db", http, "show", "w1",
                                 "--follow", "--timeout", "30"], env=worker_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline().startswith("w1  cliops.counter(0,)  running")
        cli(db, "signal", "w1", "add", "4")
        cli(http, "cancel", "w1", "--reason", "enough")
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 3, err
    assert out.index("MessageReceived") < out.index("CancelRequested")
    assert "WorkflowCancelled" in out and "was cancelled: enough" in err
    assert "was cancelled: enough" in cli(db, "result", "w1", rc=3).stderr
    cli(db, "cancel", "w1")  # asked again after the end it asked for: fine
    cli(db, "signal", "w1", "add", "1", rc=5)
    failed_runs = json.loads(cli(db, "list", "--status", "failed", "--json").stdout)
    assert [run["workflow_id"] for run in failed_runs] == ["f1"]
    slow_runs = json.loads(cli(http, "list", "--type", "cliops.slow", "--json").stdout)
    assert len(slow_runs) == 2 and {run["status"] for run in slow_runs} == {"completed"}
    page = json.loads(cli(http, "list", "--limit", "1", "--after", "f1", "--json").stdout)
    assert len(page) == 1 and page[0]["workflow_id"] > "f1"


def test_after_sigterm_commands_queue_and_the_next_worker_resumes_the_parked_run(tmp_path):
    (tmp_path / "cliops.py").write_text(OPS)
    db = f"sqlite:///{tmp_path / 'next.db'}"
    first = Worker(tmp_path, db)
    http = first.http
    try:
        cli(db, "start", "cliops.counter", "1", "--id", "parked")
        cli(db, "signal", "parked", "add", "2")
        assert cli(http, "query", "parked", "total").stdout == "3\n"
    finally:
        out, err = first.stop()
    assert first.proc.returncode == 0, err
    assert "shutting down" in err and "stopped" in err  # --json: stdout had its one document
    assert not (tmp_path / "next.db.worker").exists()
    cli(http, "list", rc=7)  # its API went with it
    queued = json.loads(cli(db, "signal", "parked", "add", "4", "--json").stdout)
    assert queued == {"workflow_id": "parked", "name": "add", "seq": None, "queued": True}
    assert "no worker drives" in cli(db, "query", "parked", "total", rc=6).stderr
    cli(db, "result", "parked", "--timeout", "0.3", rc=4)
    started = cli(db, "start", "cliops.counter", "5", "--id", "later")
    assert started.stdout == "later\n" and "no worker drives" in started.stderr
    cli(db, "signal", "later", "add", "0")
    second = Worker(tmp_path, db)
    try:
        cli(db, "signal", "parked", "add", "0")
        assert cli(db, "result", "parked", "--timeout", "30").stdout == "7\n"
        assert cli(second.http, "result", "later", "--timeout", "30").stdout == "5\n"
    finally:
        second.stop()
    assert second.proc.returncode == 0


def test_resume_and_fork_reuse_recorded_outcomes(worker):
    from pathlib import Path

    directory = Path(worker.url[len("sqlite:///"):]).parent
    effects = directory / "effects.txt"
    (directory / "broken.flag").write_text("up")
    failed = cli(worker.url, "start", "cliops.flaky", "--id", "fl-1", "--wait", rc=3)
    assert "the flag is up" in failed.stderr
    assert effects.read_text().splitlines() == ["one"]
    # The fault is fixed: resume runs the failed step again, not the first.
    (directory / "broken.flag").unlink()
    resumed = json.loads(cli(worker.url, "resume", "fl-1", "--wait", "--json").stdout)
    assert resumed["status"] == "completed" and resumed["result"] == ["one", "ok"]
    assert effects.read_text().splitlines() == ["one"]
    shown = json.loads(cli(worker.url, "show", "fl-1", "--json").stdout)
    assert shown["history"][0]["resumed_from"]["seq"] == 2
    # A fork from seq 2 (after the first step) replays it and runs on.
    forked = json.loads(cli(worker.url, "fork", "fl-1", "--from", "2", "--id", "fl-fork",
                            "--wait", "--json").stdout)
    assert forked["result"] == ["one", "ok"]
    assert effects.read_text().splitlines() == ["one"]
    # Bad asks: nothing written, and a clear reason.
    again = cli(worker.url, "resume", "fl-1", rc=2)
    assert "fork" in again.stderr  # a completed run is forked, not resumed
    cli(worker.url, "fork", "nope", "--from", "2", rc=1)
    far = cli(worker.url, "fork", "fl-1", "--from", "99", rc=2)
    assert "99" in far.stderr
    # Through the worker's HTTP API as well (POST /v1/workflows/ID/fork).
    remote = json.loads(cli(worker.http, "fork", "fl-1", "--from", "2", "--id", "fl-http",
                            "--wait", "--json").stdout)
    assert remote["result"] == ["one", "ok"]
    assert effects.read_text().splitlines() == ["one"]
    listed = json.loads(cli(worker.url, "list", "--type", "cliops.flaky", "--json").stdout)
    assert sorted(run["workflow_id"] for run in listed) == ["fl-1", "fl-fork", "fl-http"]


def test_a_start_whose_arguments_do_not_fit_is_refused_through_the_store_and_the_api(worker):
    """Issue 16: `start cliops.counter` without its argument was accepted, and
    the run failed in the worker with a TypeError."""
    db, http = worker.url, worker.http
    before = json.loads(cli(db, "list", "--json").stdout)
    missing = cli(db, "start", "cliops.counter", "--id", "argless", rc=2).stderr
    assert "cliops.counter" in missing and "'start'" in missing and "Nothing was recorded" in missing
    extra = json.loads(cli(db, "start", "cliops.counter", "1", "2", "--json", rc=2).stderr)
    assert extra["error"] == "WorkflowArgumentsInvalid" and "too many" in extra["message"]
    over_http = cli(http, "start", "cliops.counter", "--id", "argless", rc=2).stderr
    assert "'start'" in over_http
    assert json.loads(cli(db, "list", "--json").stdout) == before


def test_terminate_ends_a_run_the_worker_drives_through_the_store_and_the_api(worker):
    """Issue 16: a run had no way to end but its own code; `terminate` ends
    it now, through the worker that drives it, without its cleanup."""
    db, http = worker.url, worker.http
    cli(db, "start", "cliops.counter", "1", "--id", "term-db")
    cli(db, "start", "cliops.counter", "1", "--id", "term-http")
    done = json.loads(cli(db, "terminate", "term-db", "--reason", "ops", "--json").stdout)
    assert done == {"workflow_id": "term-db", "terminated": True}
    cli(http, "terminate", "term-http")
    for wid in ("term-db", "term-http"):
        failed = json.loads(cli(db, "result", wid, "--timeout", "20", "--json", rc=3).stderr)
        assert failed["error"] == "WorkflowCancelled"
    shown = json.loads(cli(http, "show", "term-db", "--json").stdout)
    assert shown["run"]["error"]["type"] == "Terminated" and shown["run"]["error"]["reason"] == "ops"
    assert "nothing was recorded" in cli(db, "signal", "term-db", "add", "1", rc=5).stderr
    cli(db, "terminate", "term-db")  # again: fine
    cli(http, "terminate", "nope", rc=1)


def test_an_engine_client_of_the_worker_refuses_types_and_arguments_the_worker_cannot_run(worker):
    """Issue 16: a process that is a client of the worker (a web app beside
    it) started a type no engine knew, and the run stayed running for ever."""
    with aion.Engine(worker.url) as client:
        assert not client.driving
        before = [r.workflow_id for r in client.list(limit=1000)]
        with pytest.raises(aion.WorkflowNotRegistered, match="cliops.counter"):
            client.start("cliops.nope", 1, id="client-nope")
        with pytest.raises(aion.WorkflowArgumentsInvalid, match="'start'"):
            client.start("cliops.counter", id="client-short")
        assert [r.workflow_id for r in client.list(limit=1000)] == before
        handle = client.start("cliops.slow", 2, id="client-ok")
        assert handle.result(timeout=20) == 1


def test_show_says_why_a_run_of_a_type_the_worker_does_not_know_is_not_running(worker, tmp_path):
    """Issue 16: such a run showed as running, with nothing to say it never
    would; `show` now says why, and how to end it."""
    from aion_green.store import sqlite_path_from_url
    from aion_green.transport.client import Client

    # Created as it was while no worker ran (a start is refused now that
    # one publishes its types): a run of a type nobody drives.
    store = aion.SQLiteStore(sqlite_path_from_url(worker.url))
    try:
        store.create_run("ghost-run", "cliops.ghost", "[]", "r-ghost", 1.0)
    finally:
        store.close()
    with Client(worker.http) as api:
        wait_until(lambda: api.describe("ghost-run").unrunnable is not None, what="the worker")
    shown = cli(worker.url, "show", "ghost-run").stdout
    assert "not running: workflow type 'cliops.ghost' is not registered" in shown
    assert "aion-green terminate ghost-run" in shown
    over_http = json.loads(cli(worker.http, "show", "ghost-run", "--json").stdout)
    assert "'cliops.ghost' is not registered" in over_http["run"]["unrunnable"]
    cli(worker.url, "terminate", "ghost-run")
    assert "not running" not in cli(worker.url, "show", "ghost-run").stdout
