"""Several engines over one SQLite file: one drives the runs, the others are
its clients, and a client takes over when the driver goes away. (Two
engines in one process contend for the lock as two processes would: an
flock belongs to an open file, not to a process.)"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import PATCHED, ROOT, SQLITE_ONLY, wait_until

import aion_green as aion
from aion_green.core import events as ev


@aion.workflow(name="sharing.greet")
def greet(ctx, who):
    ctx.set_query("who", lambda: who)
    name = ctx.receive("name")
    ctx.receive("done")
    return f"hello {who}, {name}"


@aion.workflow(name="sharing.quick")
def quick(ctx, x):
    return ctx.step(double, x)


def double(x):
    return 2 * x


@aion.workflow(name="sharing.relay")
def relay(ctx, n):
    if n == 0:
        ctx.receive("go")
        ctx.continue_as_new(1)
    return ctx.receive("go")  # the next run waits for a message of its own


def types(history):
    return [e.type for e in history]


@SQLITE_ONLY
def test_the_first_engine_drives_and_a_second_is_its_client(make_engine):
    driver = make_engine(greet, quick)
    assert driver.list() == [] and driver.driving
    client = make_engine(greet, quick)
    client.list()
    assert not client.driving
    # The client starts; the driver runs it; the client gets the result.
    assert client.start(quick, 21, id="q").result(timeout=10) == 42
    handle = client.start(greet, "ann", id="g")
    wait_until(lambda: len(client.history("g")) >= 1 and "g" in driver._epoch.runs, what="the driver")
    with pytest.raises(aion.QueryFailed, match="driven by process"):
        client.query("g", "who")
    assert driver.query("g", "who") == "ann"
    seq = client.signal("g", "name", "bob", idempotency_key="k")
    assert client.signal("g", "name", "bob", idempotency_key="k") == seq  # recorded once
    assert client.history("g")[seq - 1].type == ev.MESSAGE_RECEIVED
    client.signal("g", "done")
    assert handle.result(timeout=10) == "hello ann, bob"
    assert types(client.history("g")).count(ev.MESSAGE_RECEIVED) == 2
    with pytest.raises(aion.WorkflowNotRunning):
        client.signal("g", "name", "late")
    with pytest.raises(aion.WorkflowNotFound):
        client.signal("nope", "name", 1)
    client.start(greet, "cy", id="c")
    client.cancel("c", "no")
    with pytest.raises(aion.WorkflowCancelled, match="no"):
        client.result("c", timeout=10)
    client.cancel("c", "again")  # after the end it caused: fine, as in process
    assert [r.workflow_id for r in client.list()] == ["c", "g", "q"]
    wait_until(lambda: client._call_store(client._epoch.store.read_inbox, 0) == [], what="the inbox drained")


@SQLITE_ONLY
def test_a_client_takes_over_when_the_driver_stops(make_engine):
    driver = make_engine(greet)
    driver.start(greet, "ann", id="g")
    client = make_engine(greet)
    client.list()
    assert not client.driving
    wait_until(lambda: "g" in driver._epoch.runs)
    driver.shutdown()  # the run is parked on receive; the lock is released
    wait_until(lambda: client.driving, timeout=5, what="the client to take over")
    wait_until(lambda: "g" in client._epoch.runs, what="the run resumed by the new driver")
    assert client.query("g", "who") == "ann"
    client.signal("g", "name", "bob")
    client.signal("g", "done")
    assert client.result("g", timeout=10) == "hello ann, bob"


CLIENT = textwrap.dedent('''
    import json, os, sys
    if os.environ.get("AION_GEVENT_PATCH") == "1":
        from gevent import monkey; monkey.patch_all()
    import aion_green as aion

    @aion.workflow(name="sharing.quick")
    def quick(ctx, x):
        return ctx.step(lambda v: 2 * v, x)

    @aion.workflow(name="sharing.parked")
    def parked(ctx):
        return ctx.receive("go")

    with aion.Engine("sqlite:///" + sys.argv[1], workflows=[quick, parked]) as engine:
        results = []
        if sys.argv[3:] == ["release-parked"]:
            engine.signal("parked", "go", "went")
            results.append(engine.result("parked", timeout=30))
        results += [engine.start(quick, i, id=f"p{os.getpid()}-{i}").result(timeout=30)
                    for i in range(int(sys.argv[2]))]
        print(json.dumps({"driving": engine.driving, "results": results}))
''')


def test_processes_share_one_file_and_survive_the_drivers_sigkill(tmp_path):
    """Real processes: a driver, then three clients starting runs at once;
    the driver is SIGKILLed while a parked run waits; a client takes over,
    and every run ends once."""
    db = tmp_path / "shared.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("AION_GEVENT_PATCH", None)
    if PATCHED:
        env["AION_GEVENT_PATCH"] = "1"
    driver_code = textwrap.dedent('''
        import os, sys, time
        if os.environ.get("AION_GEVENT_PATCH") == "1":
            from gevent import monkey; monkey.patch_all()
        import aion_green as aion

        @aion.workflow(name="sharing.quick")
        def quick(ctx, x):
            return ctx.step(lambda v: 2 * v, x)

        @aion.workflow(name="sharing.parked")
        def parked(ctx):
            return ctx.receive("go")

        engine = aion.Engine("sqlite:///" + sys.argv[1], workflows=[quick, parked])
        engine.start(parked, id="parked")
        print("driving" if engine.driving else "client", flush=True)
        time.sleep(600)
    ''')
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    driver = subprocess.Popen([sys.executable, "-c", driver_code, str(db)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "driving"
        clients = [subprocess.Popen([sys.executable, str(script), str(db), "20"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(3)]
        outputs = [json.loads(c.communicate(timeout=60)[0].strip().splitlines()[-1]) for c in clients]
        assert all(o["results"] == [2 * i for i in range(20)] for o in outputs)
        assert not any(o["driving"] for o in outputs)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
    survivor = subprocess.run([sys.executable, str(script), str(db), "2", "release-parked"],
                              env=env, capture_output=True, text=True, timeout=60)
    assert survivor.returncode == 0, survivor.stderr
    output = json.loads(survivor.stdout.strip().splitlines()[-1])
    assert output == {"driving": True, "results": ["went", 0, 2]}
    store = aion.SQLiteStore(str(db))
    try:
        runs = store.list_runs(None, None, 1000, None)
        assert len(runs) == 63 and all(r.status == "completed" for r in runs)
        for run in runs:
            history = store.read(run.workflow_id)
            assert [e.seq for e in history] == list(range(1, len(history) + 1))
            assert types(history).count(ev.WORKFLOW_COMPLETED) == 1
    finally:
        store.close()


def test_an_inbox_message_is_recorded_once_though_its_run_continued_as_new(make_engine, db_url):
    """The failure window: the driver recorded a client's message, the run
    took it and continued as new, and the driver read the inbox again before
    the entry's delete had committed: routed once more, the message went
    into the new run's history too (its dedup keys are its own), and woke it."""
    import time

    from conftest import open_test_store

    driver = make_engine(relay)
    for attempt in range(5):  # the window is narrow: look more than once
        wid = f"r{attempt}"
        first = driver.start(relay, 0, id=wid).describe().run_id
        store = open_test_store(db_url)  # a client's post, without its wait
        try:
            store.post_inbox(wid, "message", json.dumps({"name": "go", "payload": attempt}),
                             time.time())
        finally:
            store.close()
        wait_until(lambda wid=wid, first=first: driver.describe(wid).run_id != first,
                   what="the continuation")
        wait_until(lambda: driver._call_store(driver._epoch.store.read_inbox, 0) == [],
                   what="the inbox drained")
        time.sleep(0.05)
        assert types(driver.history(wid)) == [ev.WORKFLOW_STARTED], driver.history(wid)
        assert types(driver.history(wid, run_id=first)).count(ev.MESSAGE_RECEIVED) == 1
