"""The SQLite store's file under names and hands it does not expect (issue
16): the same file through a symbolic link or a hard link, and the file
deleted or replaced under a running engine. One file has one driver and one
journal whatever name each process was given; a file gone from under the
engine stops it with a clear error instead of losing what it writes."""
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import NativeGate, wait_until

import aion_green as aion

# One engine process over the URL in argv[1]: says whether it drives, starts
# argv[3] runs of 20 steps named after argv[2], waits for their results, then
# waits for a line on stdin. Each step appends "<idempotency key> <pid>" to
# the file argv[4] (its side effect).
_ENGINE = r"""
import os, signal, sys
signal.alarm(120)  # a bound, should the test die first
import aion_green as aion

URL, TAG, RUNS, EFFECTS = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def effect(i):
    with open(EFFECTS, "a") as f:
        f.write(f"{aion.step_info().idempotency_key} {os.getpid()}\n")
    return i

@aion.workflow(name="files.work")
def work(ctx, n):
    return sum(ctx.step(effect, i) for i in range(n))

try:
    engine = aion.Engine(URL, workflows=[work])
    engine.list(limit=1)
except aion.AionError as exc:
    print(f"refused {type(exc).__name__}: {exc}", flush=True)
    sys.exit(3)
print("driver" if engine.driving else "client", flush=True)
sys.stdin.readline()  # go
handles = [engine.start(work, 20, id=f"{TAG}-{k}") for k in range(RUNS)]
print("results", [h.result(timeout=60) for h in handles], flush=True)
sys.stdin.readline()  # stop
engine.shutdown()
"""


def spawn_engine(url, tag, runs, effects):
    from crash_campaign import worker_env

    proc = subprocess.Popen([sys.executable, "-c", _ENGINE, url, tag, str(runs), str(effects)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=worker_env(False))
    return proc, proc.stdout.readline().strip()


def stop(proc):
    """Tell the process to stop (a line on its stdin) and reap it."""
    try:
        proc.communicate("\n", timeout=30)
    except (BrokenPipeError, ValueError):
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def integrity(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def test_two_processes_over_a_file_and_a_symlink_to_it_have_one_driver_and_run_each_step_once(
        tmp_path):
    """One engine process opens the file by its name, another through a
    symbolic link in another folder. Before the fix, each locked
    ``<name given>.driver``: two drivers, both ran the runs they saw, steps
    ran twice. Now both name the real file: exactly one drives."""
    real = tmp_path / "data" / "aion.db"
    real.parent.mkdir()
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.db"
    link.symlink_to(real)
    effects = tmp_path / "effects"
    first, role_first = spawn_engine(f"sqlite:///{real}", "a", 5, effects)
    second, role_second = spawn_engine(f"sqlite:///{link}", "b", 5, effects)
    try:
        assert sorted([role_first, role_second]) == ["client", "driver"], (role_first, role_second)
        for proc in (first, second):
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in (first, second):
            assert proc.stdout.readline().strip() == f"results {[sum(range(20))] * 5}"
    finally:
        stop(first)
        stop(second)
    lines = effects.read_text().split()
    keys, pids = lines[::2], lines[1::2]
    assert len(keys) == 10 * 20 and len(set(keys)) == len(keys), "a step ran twice"
    driver = first if role_first == "driver" else second
    assert set(pids) == {str(driver.pid)}
    assert integrity(real) == [("ok",)]
    assert not os.path.exists(f"{link}-wal") and not os.path.exists(f"{link}.driver")


def test_a_second_process_over_a_hard_link_to_a_driven_file_is_refused_and_nothing_runs_twice(
        tmp_path):
    """One engine process drives a file; a hard link to it is made, and a
    second engine process opens the link. Before the fix it became a second
    driver with a journal of its own (``link.db-wal``) over the same file:
    steps ran twice and integrity_check failed. Now the second opener is
    refused, saying why and what to do, and the first goes on unharmed."""
    real = tmp_path / "aion.db"
    link = tmp_path / "link.db"
    effects = tmp_path / "effects"
    first, role = spawn_engine(f"sqlite:///{real}", "a", 5, effects)
    try:
        assert role == "driver"
        os.link(real, link)
        second, refusal = spawn_engine(f"sqlite:///{link}", "b", 5, effects)
        stop(second)
        assert refusal.startswith("refused ConfigurationError"), refusal
        assert "hard links" in refusal and "Give the file one name" in refusal
        assert str(link) in refusal
        first.stdin.write("go\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == f"results {[sum(range(20))] * 5}"
    finally:
        stop(first)
    lines = effects.read_text().split()
    assert len(lines[::2]) == 5 * 20 and len(set(lines[::2])) == 5 * 20, "a step ran twice"
    assert set(lines[1::2]) == {str(first.pid)}
    assert not os.path.exists(f"{link}-wal")
    assert integrity(real) == [("ok",)]


def test_a_file_with_two_names_is_refused_before_anything_is_written(tmp_path):
    """A file that already has a second name (a hard link) is refused at
    open, whichever name is given, and neither the file nor its folder is
    touched: no journal, no lock file."""
    real = tmp_path / "aion.db"
    with aion.Engine(f"sqlite:///{real}", workflows=[]) as engine:
        engine.list()
    os.link(real, tmp_path / "copy.db")
    before = real.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    for name in ("aion.db", "copy.db"):
        engine = aion.Engine(f"sqlite:///{tmp_path / name}", workflows=[])
        with pytest.raises(aion.ConfigurationError, match="2 names on its disk"):
            engine.list()
        engine.shutdown()
    assert real.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing


# -- the file deleted or replaced under the engine --------------------------------------------
@aion.workflow(name="files.waits")
def waits(ctx):
    return ctx.receive("go", timeout=60)


@aion.workflow(name="files.echo")
def echo(ctx, value):
    return ctx.step(lambda v: v, value)


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_under_the_engine_stops_its_writes_with_a_clear_error(
        tmp_path, how, caplog):
    """The database file is removed (``rm``) or replaced by another file
    while the engine runs. Before the fix the engine went on writing into
    the unlinked file: starts and signals "succeeded" and were lost at exit.
    Now every write is refused with StoreLost naming the file and what to
    do, reads too (within a second), and the file in its place is left as
    it is."""
    path = tmp_path / "aion.db"
    engine = aion.Engine(f"sqlite:///{path}", workflows=[waits, echo])
    try:
        assert engine.start(echo, 1, id="before").result(10) == 1
        engine.start(waits, id="waiting")
        wait_until(lambda: len(engine.history("waiting")) >= 2, what="the run to wait")
        if how == "deleted":
            os.remove(path)
        else:
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()
            os.replace(other, path)
        replaced_bytes = path.read_bytes() if how == "replaced" else None
        for attempt in (lambda: engine.start(echo, 2, id="after"),
                        lambda: engine.signal("waiting", "go", 1),
                        lambda: engine.cancel("waiting")):
            with pytest.raises(aion.StoreLost) as lost:
                attempt()
            message = str(lost.value)
            assert str(path) in message and how in message
            assert "Stop every engine over this file" in message
        time.sleep(0.6)  # reads look at the file at most every 0.5 s
        with pytest.raises(aion.StoreLost):
            engine.list()
        with pytest.raises(aion.StoreLost):
            engine.history("before")
        # The engine's own polls say it once, and stop: no warning a poll.
        wait_until(lambda: "no more requests are taken" in caplog.text
                   and "no more runs are taken" in caplog.text, what="the polls to stop")
        time.sleep(0.5)
        assert "could not be read" not in caplog.text
    finally:
        engine.shutdown()
    if how == "replaced":
        assert path.read_bytes() == replaced_bytes, "the file put in its place was written"
    else:
        assert not path.exists()


def test_a_step_that_ends_after_the_file_was_deleted_does_not_leave_its_caller_waiting(tmp_path):
    """The file is deleted while a run is in a step. Window: the step's
    record is the first write after the deletion. It is refused (StoreLost)
    and the caller waiting for the run's result is told, not left waiting
    for a write that cannot happen."""
    path = tmp_path / "aion.db"
    entered, gate = NativeGate(), NativeGate()

    def held(x):
        entered.set()
        gate.wait(30)
        return x

    @aion.workflow(name="files.held")
    def parked(ctx):
        return ctx.step(held, 5)

    with aion.Engine(f"sqlite:///{path}", workflows=[parked]) as engine:
        handle = engine.start(parked, id="parked")
        assert entered.wait(10)
        os.remove(path)
        gate.set()
        with pytest.raises(aion.StoreLost, match="was deleted"):
            handle.result(timeout=10)
