"""The ``aion-green`` command, driven as a user would: a real process."""
import json

from conftest import run_python

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

    from aion_green import events as ev
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
