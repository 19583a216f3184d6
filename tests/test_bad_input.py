"""Bad input gets a clear error that says what was wrong and what to do, and
loses nothing that was already recorded."""
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import SQLITE_ONLY, NativeGate, park_two_step_run, wait_until

import aion_green as aion
from aion_green.core import events as ev


def identity(x):
    return x


def not_json():
    return {"when": object()}


@aion.workflow
def echo(ctx, value):
    return ctx.step(identity, value)


def test_non_json_argument_is_refused_and_nothing_is_recorded(make_engine):
    engine = make_engine(echo)
    with pytest.raises(aion.SerializationError, match="arguments of workflow test_bad_input.echo"):
        engine.start(echo, {"x": object()}, id="bad-arg")
    assert engine.list() == []
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("bad-arg")


def test_non_json_step_result_fails_the_step_and_keeps_earlier_records(make_engine):
    @aion.workflow
    def leaky(ctx):
        ctx.step(identity, "kept")
        try:
            ctx.step(not_json, retry=aion.Retry(max_attempts=5))
        except aion.StepError as exc:
            return {"type": exc.error_type, "message": exc.message}

    engine = make_engine(leaky)
    out = engine.start(leaky, id="leaky").result(10)
    assert out["type"] == "aion_green.errors.SerializationError"
    assert "cannot be recorded" in out["message"] and "not_json" in out["message"]
    history = engine.history("leaky")
    assert history[1]["result"] == "kept"
    assert (history[2].type, history[2]["retryable"]) == (ev.STEP_FAILED, False)  # no retry of a bug


def test_non_json_workflow_result_fails_the_run_clearly(make_engine):
    @aion.workflow
    def returns_object(ctx):
        ctx.step(identity, 1)
        return object()

    engine = make_engine(returns_object)
    with pytest.raises(aion.WorkflowFailed, match="cannot be recorded"):
        engine.start(returns_object, id="obj").result(10)
    assert engine.describe("obj").error["kind"] == "serialization"
    assert engine.history("obj")[1]["result"] == 1


@SQLITE_ONLY
def test_unknown_workflow_type_at_recovery_is_left_alone_with_a_clear_error(make_engine, caplog):
    park_two_step_run(make_engine, "tests.retired", "orphan")
    from aion_green.core import registry

    registry._DECORATED.pop("tests.retired")
    second = make_engine(echo)
    assert second.start(echo, "other").result(10) == "other"  # the engine goes on
    wait_until(lambda: "orphan" in second.unrunnable, what="recovery to give up on 'orphan'")
    message = second.unrunnable["orphan"]
    assert "'tests.retired' is not registered" in message and "Engine(workflows=" in message
    assert "not registered" in caplog.text
    info = second.describe("orphan")
    assert info.status == "running"  # not failed: a later deploy may know it
    assert [e.type for e in second.history("orphan")] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED]
    with pytest.raises(aion.WorkflowNotRegistered, match="known:"):
        second.start("tests.retired")


def test_corrupt_database_file_is_reported_and_not_modified(tmp_path):
    path = tmp_path / "corrupt.db"
    garbage = b"this is not a database, it is a text file\n" * 200
    path.write_bytes(garbage)
    engine = aion.Engine(f"sqlite:///{path}", workflows=[echo])
    with pytest.raises(aion.StoreCorrupt, match="not an aion_green database or is damaged"):
        engine.start(echo, 1)
    assert path.read_bytes() == garbage
    engine.shutdown()


def test_damaged_pages_are_reported_and_the_file_is_not_modified(tmp_path, make_engine):
    url = f"sqlite:///{tmp_path / 'torn.db'}"
    engine = make_engine(echo, url=url)
    for i in range(50):
        engine.start(echo, "x" * 500, id=f"w{i}").result(10)
    engine.shutdown()
    path = tmp_path / "torn.db"
    # Fold the WAL into the file first so the damage hits the main file.
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 2, len(data), 4096):  # scribble over pages after the first
        data[offset:offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    with pytest.raises(aion.StoreError, match="damaged|malformed"):
        broken = aion.Engine(url, workflows=[echo])
        try:
            broken.list()
            for i in range(50):
                broken.history(f"w{i}")
        finally:
            broken.shutdown()
    assert path.read_bytes() == damaged


def test_locked_database_is_a_clear_error_and_recovers_when_released(tmp_path, make_engine):
    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    make_engine(echo, url=url).start(echo, "before", id="before").result(10)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = make_engine(echo, url=url, busy_timeout=0.2)
        with pytest.raises(aion.StoreUnavailable, match="locked by another process"):
            engine.start(echo, "during", id="during")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert engine.start(echo, "after", id="after").result(10) == "after"
    assert engine.result("before", timeout=5) == "before"
    with pytest.raises(aion.WorkflowNotFound):
        engine.describe("during")


def test_database_locked_by_another_process_while_a_workflow_runs_is_waited_out(tmp_path, make_engine):
    """Another process takes the database lock while a step runs, so the
    step's record meets the lock: the record is retried until the lock is
    gone (about 1 s), the step does not run again, nothing is lost."""
    path = tmp_path / "busy.db"
    engine = make_engine(url=f"sqlite:///{path}", busy_timeout=0.1)
    in_step, locked = NativeGate(), NativeGate()
    calls = []

    def step_while_locked():
        calls.append(1)
        in_step.set()
        locked.wait(10)
        return "recorded"

    @aion.workflow
    def during_lock(ctx):
        return ctx.step(step_while_locked)

    handle = engine.start(during_lock, id="during-lock")
    assert in_step.wait(10)
    code = (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(1.0)\n"
        "c.execute('ROLLBACK')\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline().strip() == "locked"
        started = time.monotonic()
        locked.set()
        assert handle.result(15) == "recorded"
        assert time.monotonic() - started >= 0.5  # it really waited the lock out
    assert calls == [1]
    assert [e.type for e in engine.history("during-lock")] == [
        ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.WORKFLOW_COMPLETED]


def test_engine_arguments_are_checked():
    with pytest.raises(aion.ConfigurationError, match="at least one step thread"):
        aion.Engine(step_workers=0)
    with pytest.raises(aion.ConfigurationError, match="not a workflow"):
        aion.Engine(workflows=[identity])


def test_start_with_a_bad_id_is_refused(make_engine):
    engine = make_engine(echo)
    with pytest.raises(aion.ConfigurationError, match="non-empty string"):
        engine.start(echo, 1, id="")


def test_an_unreachable_postgres_database_is_a_clear_error_without_the_password():
    engine = aion.Engine("postgresql://postgres:hunter2@127.0.0.1:5432/aion_no_such_db",
                         workflows=[echo], busy_timeout=2)
    with pytest.raises(aion.StoreUnavailable) as error:
        engine.start(echo, 1)
    message = str(error.value)
    assert "postgresql://postgres@127.0.0.1:5432/aion_no_such_db" in message
    assert "hunter2" not in message
    engine.shutdown()




def test_a_refused_record_stops_the_run_even_if_the_workflow_catches_everything(make_engine, db_url):
    """The store refuses step 3's record with a lasting error (not a passing
    lock): the run must stop right there, even though the workflow wraps the
    step in ``except Exception``, so no later step is recorded over the hole.
    The next engine over a healthy store resumes and finishes it."""
    def noted(i):
        return i * 10

    @aion.workflow(name="tests.catches_all")
    def catches_all(ctx):
        out = [ctx.step(noted, 1), ctx.step(noted, 2)]
        try:
            out.append(ctx.step(noted, 3))
        except Exception:
            out.append("swallowed")
        out += [ctx.step(noted, 4), ctx.step(noted, 5)]
        return out

    engine = make_engine(catches_all)
    engine._ensure_started()
    real_write = engine._epoch.store.write_batch
    refused = []

    def refusing(ops):
        for op in ops:
            events = getattr(op, "events", ())
            if not refused and any(e.data.get("step") == 3 for e in events):
                refused.append(op)
                raise aion.StoreError("simulated: the device went away")
        return real_write(ops)

    engine._epoch.store.write_batch = refusing
    with pytest.raises(aion.StoreError, match="device went away"):
        engine.start(catches_all, id="hole").result(10)
    assert [e["step"] for e in engine.history("hole") if e.type == ev.STEP_COMPLETED] == [1, 2]
    assert engine.describe("hole").status == "running"
    engine.shutdown()

    second = make_engine(catches_all)
    assert second.result("hole", timeout=10) == [10, 20, 30, 40, 50]
    steps = [e["step"] for e in second.history("hole") if e.type == ev.STEP_COMPLETED]
    assert steps == [1, 2, 3, 4, 5]


@SQLITE_ONLY
def test_a_full_disk_is_waited_out_by_the_running_workflow(make_engine):
    """The disk fills while a step runs (a page limit on the writer's
    connection stands in for it): the step's record is retried until there
    is room again; the step ran once and its result is kept."""
    calls = []
    in_step, go_on = NativeGate(), NativeGate()

    def big_result():
        calls.append(1)
        in_step.set()
        go_on.wait(10)
        return "y" * 50_000

    @aion.workflow
    def fills_disk(ctx):
        return len(ctx.step(big_result))

    engine = make_engine(fills_disk)
    handle = engine.start(fills_disk, id="full")
    assert in_step.wait(10)
    conn = engine._epoch.store._conn
    engine._epoch.writer.call(lambda: conn.execute(
        "PRAGMA max_page_count=" + str(conn.execute("PRAGMA page_count").fetchone()[0]))).result(5)
    go_on.set()
    with pytest.raises(aion.Timeout):
        handle.result(timeout=0.5)  # stuck on the full disk, not failed
    assert engine.describe("full").status == "running"
    # The writer thread is parked in its retry backoff, so the queue behind
    # it is not served: lift the limit on its connection directly (SQLite
    # serialises calls on one connection).
    conn.execute("PRAGMA max_page_count=1073741823")
    assert handle.result(timeout=15) == 50_000
    assert calls == [1]
