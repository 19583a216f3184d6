"""The SQLite store under faults: a full disk, a database locked by another
process, a process killed in the middle of its commits, a torn WAL, a damaged
file. Each fault gets a clear error; no history is corrupted (the file passes
``PRAGMA integrity_check``, every history runs 1..head with no gap, and what
was recorded stays recorded); the engine goes on once the fault ends."""
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import PATCHED, ROOT, NativeGate, wait_until

import aion_green as aion
from aion_green.core import events as ev


def note(i, k):
    return {"i": i, "k": k, "pad": "x" * (200 + k * 397 % 6000)}


def small(i):
    return i


@aion.workflow(name="faults.steps")
def steps(ctx, i, n):
    total = 0
    for k in range(n):
        total += ctx.step(note, i, k)["k"]
    return total


@aion.workflow(name="faults.echo")
def echo(ctx, value):
    return ctx.step(small, value)


def examine(path):
    """Open the file (or a copy) with plain sqlite3 and check it: integrity,
    and each history contiguous from seq 1, starting with WorkflowStarted,
    its head and its status matching its run row. Returns the histories,
    ``{workflow id: [(seq, type, data), ...]}``."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        runs = {wid: (head, status) for wid, head, status in
                conn.execute("SELECT workflow_id, (SELECT max(seq) FROM events e "
                             "WHERE e.workflow_id = runs.workflow_id), status FROM runs")}
        histories = {}
        for wid, seq, typ, data in conn.execute(
                "SELECT workflow_id, seq, type, data FROM events ORDER BY workflow_id, seq"):
            histories.setdefault(wid, []).append((seq, typ, data))
    finally:
        conn.close()
    assert set(histories) == set(runs)
    for wid, events in histories.items():
        head, status = runs[wid]
        assert [seq for seq, _, _ in events] == list(range(1, head + 1)), f"gap in {wid!r}"
        assert events[0][1] == ev.WORKFLOW_STARTED
        assert (events[-1][1] in ev.TERMINAL_TYPES) == (status != ev.RUNNING), wid
    return histories


def assert_extends(before, after):
    """Nothing recorded is lost: each history of ``before`` is a prefix of
    the same history in ``after``."""
    for wid, events in before.items():
        assert after.get(wid, [])[:len(events)] == events, f"history of {wid!r} lost records"


def step_ordinals(history):
    return [e["step"] for e in history if e.type == ev.STEP_COMPLETED]


# -- a full disk ------------------------------------------------------------------------------
class TinyFilesystem:
    """A real full disk: an 8 MB tmpfs, filled to the last block by a filler
    file; removing the filler frees the space. Needs root (CI runs as root)."""

    name = "tiny filesystem"

    def __init__(self, where):
        self.dir = where / "tiny"
        self.dir.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the page-limit variant covers this fault")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.dir)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                        "the page-limit variant covers this fault")
        self.filler = self.dir / "filler"

    def fill(self, engine):
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.dir).f_bavail == 0

    def free(self, engine):
        os.remove(self.filler)

    def close(self):
        if subprocess.run(["umount", str(self.dir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)


class PageLimit:
    """A full disk without a mount: SQLite's own limit on the database's
    pages (``max_page_count``) on the engine's writer connection makes every
    write that needs a new page fail with SQLITE_FULL, "database or disk is
    full", exactly as a full disk does."""

    name = "page limit"

    def __init__(self, where):
        self.dir = where

    def fill(self, engine):
        conn = engine._epoch.store._conn
        engine._epoch.writer.call(lambda: conn.execute(
            f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")).result(5)

    def free(self, engine):
        # The writer thread is parked in its retry backoff and serves nothing
        # else meanwhile: lift the limit on its connection directly (SQLite
        # serialises the calls on one connection).
        engine._epoch.store._conn.execute("PRAGMA max_page_count=1073741823")

    def close(self):
        pass


@pytest.fixture(params=[TinyFilesystem, PageLimit], ids=["tiny_filesystem", "page_limit"])
def full_disk(request, tmp_path):
    disk = request.param(tmp_path)
    yield disk
    disk.close()


def test_a_full_disk_parks_the_runs_refuses_starts_and_all_goes_on_once_space_is_freed(
        full_disk, caplog):
    """The disk fills while four runs are in a step whose result is large:
    their records cannot be written. Window: from the fill to the free. The
    runs wait (not failed, nothing lost, the step not run again), a start
    is refused at once with an error that says the disk is full and what to
    do, reads go on; once space is freed the runs finish with their results."""
    path = full_disk.dir / "aion.db"
    gate = NativeGate()
    calls = []

    def big(i):
        calls.append(i)
        gate.wait(30)
        return "z" * 300_000

    @aion.workflow(name="faults.fills")
    def fills(ctx, i):
        first = ctx.step(small, i)
        return [first, len(ctx.step(big, i))]

    engine = aion.Engine(f"sqlite:///{path}", workflows=[fills, echo])
    try:
        assert engine.start(echo, "before", id="before").result(10) == "before"
        handles = [engine.start(fills, i, id=f"fill-{i}") for i in range(4)]
        wait_until(lambda: len(calls) == 4, what="the four runs to enter their big step")
        recorded = {h.workflow_id: h.history() for h in handles}
        full_disk.fill(engine)
        gate.set()
        for handle in handles:
            with pytest.raises(aion.Timeout):
                handle.result(timeout=0.3)  # parked on the full disk, not failed

        began = time.monotonic()
        with pytest.raises(aion.StoreUnavailable) as refused:
            engine.start(echo, "during", id="during")
        assert time.monotonic() - began < 5  # told, not left waiting behind the parked runs
        message = str(refused.value)
        assert "disk is full" in message and "Free space" in message and str(path) in message
        assert "Nothing of this write was recorded" in message

        # Reads go on (a second connection); nothing recorded is lost.
        assert {i.workflow_id for i in engine.list(status="running")} == set(recorded)
        for wid, history in recorded.items():
            assert engine.describe(wid).status == "running"
            assert engine.history(wid) == history
        with pytest.raises(aion.WorkflowNotFound):
            engine.describe("during")
        wait_until(lambda: "append(s) wait for it" in caplog.text, what="the writer's warning")
        assert "disk is full" in caplog.text

        full_disk.free(engine)
        assert [h.result(timeout=20) for h in handles] == [[i, 300_000] for i in range(4)]
        assert sorted(calls) == [0, 1, 2, 3]  # each big step ran once
        for wid, history in recorded.items():
            assert engine.history(wid)[:len(history)] == history
            assert step_ordinals(engine.history(wid)) == [1, 2]
        with pytest.raises(aion.WorkflowNotFound):
            engine.describe("during")
        assert engine.start(echo, "after", id="after").result(10) == "after"
    finally:
        engine.shutdown()
    histories = examine(path)
    assert len(histories) == 6  # before, after and the four runs: "during" never was


@aion.workflow(name="faults.listens")
def listens(ctx):
    return len(ctx.receive("note", timeout=60))


def _within(seconds, call):
    """``call()`` on a thread of its own: ``(returned, raised)``; fails the
    test if it still runs after ``seconds`` (it is left to end on its own)."""
    import threading

    outcome = []

    def run():
        try:
            outcome.append((call(), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append((None, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds} s"
    return outcome[0]


def test_a_signal_or_a_cancel_on_a_full_disk_is_answered_at_once_like_a_start(full_disk):
    """The disk is full while a run waits for a message. Before the fix,
    ``signal()`` queued the message's record behind the writer, which waits
    out a full disk for a run's records, and blocked with no limit (a
    ``start()`` failed fast). Now each call answers within seconds with
    StoreUnavailable (the disk is full, what to do). The first signal's
    record was already queued when the disk refused it: the error says it
    is not recorded yet and waits in the queue; it is recorded, once, when
    space is freed. What comes while the writer waits (the cancel, a start,
    the signal again) is refused before anything is queued, and never
    recorded."""
    path = full_disk.dir / "aion.db"
    big = "y" * 300_000  # more than the free pages of the page-limit variant
    # The run stays in memory, so its message goes through its own queue of
    # records (an evicted run's does not: the test below).
    engine = aion.Engine(f"sqlite:///{path}", workflows=[listens, echo], evict_after=None)
    try:
        assert engine.start(echo, "done", id="done").result(10) == "done"
        handle = engine.start(listens, id="listens")
        wait_until(lambda: len(handle.history()) >= 2, what="the run to wait for its message")
        recorded = handle.history()
        full_disk.fill(engine)
        messages = []
        for call in (lambda: engine.signal("listens", "note", big, idempotency_key="n1"),
                     lambda: engine.cancel("listens"),
                     lambda: engine.start(echo, big, id="during"),
                     lambda: engine.fork("done", 2, id="forked"),
                     lambda: engine.signal("listens", "note", "again")):
            _, raised = _within(10, call)
            assert isinstance(raised, aion.StoreUnavailable), raised
            messages.append(str(raised))
            assert "disk is full" in messages[-1] and "Free space" in messages[-1]
            assert str(path) in messages[-1]
        assert "not recorded yet" in messages[0] and "idempotency_key" in messages[0]
        assert all("Nothing of this write was recorded" in m and "not recorded yet" not in m
                   for m in messages[1:])
        assert handle.history()[:len(recorded)] == recorded
        full_disk.free(engine)
        assert handle.result(timeout=20) == len(big)
        received = [e.data["payload"] for e in handle.history() if e.type == ev.MESSAGE_RECEIVED]
        assert received == [big]
        assert not any(e.type == ev.CANCEL_REQUESTED for e in handle.history())
        for never in ("during", "forked"):
            with pytest.raises(aion.WorkflowNotFound):
                engine.describe(never)
    finally:
        engine.shutdown()
    examine(path)


def test_a_signal_to_a_run_out_of_memory_on_a_full_disk_is_refused_and_loses_nothing(full_disk):
    """By default the listener, whose wait ends a minute from now, leaves
    memory at once. A message for it on a full disk is written straight to
    the store: refused at once with StoreUnavailable, nothing of it
    recorded; once space is freed the same call records it and the run,
    replayed, takes it."""
    path = full_disk.dir / "aion.db"
    big = "y" * 300_000
    engine = aion.Engine(f"sqlite:///{path}", workflows=[listens])
    try:
        handle = engine.start(listens, id="listens")
        wait_until(lambda: engine.evictions == 1 and len(handle.history()) >= 2,
                   what="the run to wait for its message out of memory")
        recorded = handle.history()
        full_disk.fill(engine)
        _, raised = _within(10, lambda: engine.signal("listens", "note", big))
        assert isinstance(raised, aion.StoreUnavailable), raised
        assert "disk is full" in str(raised) and "Nothing of this write was recorded" in str(raised)
        assert handle.history() == recorded
        full_disk.free(engine)
        engine.signal("listens", "note", big)
        assert handle.result(timeout=20) == len(big)
        received = [e.data["payload"] for e in handle.history() if e.type == ev.MESSAGE_RECEIVED]
        assert received == [big]
    finally:
        engine.shutdown()
    examine(path)


# -- a database locked by another process -----------------------------------------------------
_HOLDER = """
import signal, sqlite3, sys, time
signal.alarm(30)  # a bound, should the test die first
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
if sys.argv[2] == "wait":
    sys.stdin.readline()
else:
    time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def hold_lock(path, hold="wait"):
    """Another process that takes the database's write lock (``BEGIN
    EXCLUSIVE``) and keeps it until told (a line on its stdin) or for
    ``hold`` seconds."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(hold)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("release", ["rollback", "sigkill"])
def test_a_lock_held_by_another_process_is_waited_out_and_reads_go_on(tmp_path, release):
    """Another process holds the write lock while three runs finish a step.
    Window: from the lock to its release (a rollback, or the holder killed
    with the lock held). Their records wait the lock out (busy_timeout, then
    the writer's retries); a start past busy_timeout is told the database is
    locked; describe, list and history answer meanwhile (WAL readers do not
    need the write lock). After the release the runs finish, each step ran
    once, and the file is sound."""
    path = tmp_path / "locked.db"
    gate = NativeGate()
    calls = []

    def held(i):
        calls.append(i)
        gate.wait(30)
        return i * 10

    @aion.workflow(name="faults.held")
    def two_steps(ctx, i):
        return [ctx.step(small, i), ctx.step(held, i)]

    engine = aion.Engine(f"sqlite:///{path}", workflows=[two_steps, echo], busy_timeout=0.3)
    try:
        handles = [engine.start(two_steps, i, id=f"held-{i}") for i in range(3)]
        wait_until(lambda: len(calls) == 3, what="the three runs to enter their second step")
        holder = hold_lock(path)
        try:
            gate.set()
            for handle in handles:
                with pytest.raises(aion.Timeout):
                    handle.result(timeout=0.3)
            for handle in handles:
                began = time.monotonic()
                assert handle.describe().status == "running"
                assert [e.type for e in handle.history()] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED]
                assert len(engine.list()) == 3
                assert time.monotonic() - began < 1.0  # not behind the lock
            began = time.monotonic()
            with pytest.raises(aion.StoreUnavailable, match="locked by another process") as refused:
                engine.start(echo, "during", id="during")
            assert time.monotonic() - began < 5
            assert "raise busy_timeout" in str(refused.value)
        finally:
            if release == "rollback":
                holder.communicate("\n", timeout=10)
            else:
                holder.send_signal(signal.SIGKILL)
                holder.communicate(timeout=10)
        assert [h.result(timeout=15) for h in handles] == [[i, i * 10] for i in range(3)]
        assert sorted(calls) == [0, 1, 2]
        with pytest.raises(aion.WorkflowNotFound):
            engine.describe("during")
        assert engine.start(echo, "after", id="after").result(10) == "after"
    finally:
        engine.shutdown()
    assert set(examine(path)) == {"held-0", "held-1", "held-2", "after"}


def test_a_start_during_a_short_lock_succeeds_once_the_lock_is_released(tmp_path):
    """A lock held for 1 s, shorter than the engine's busy_timeout: a start
    made meanwhile waits for it and then succeeds."""
    path = tmp_path / "short.db"
    engine = aion.Engine(f"sqlite:///{path}", workflows=[echo], busy_timeout=10)
    try:
        assert engine.start(echo, "before", id="before").result(10) == "before"
        holder = hold_lock(path, hold=1.0)
        began = time.monotonic()
        handle = engine.start(echo, "during", id="during")
        assert time.monotonic() - began >= 0.5  # it waited for the lock
        assert handle.result(10) == "during"
        holder.communicate(timeout=10)
        assert holder.returncode == 0
    finally:
        engine.shutdown()
    assert set(examine(path)) == {"before", "during"}


# -- a process killed in the middle of its commits --------------------------------------------
_WORKER = """
import os, sys
if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey
    monkey.patch_all()
import aion_green as aion


def note(i, k):
    return {"i": i, "k": k, "pad": "x" * (200 + k * 397 % 6000)}


@aion.workflow(name="faults.steps")
def steps(ctx, i, n):
    return sum(ctx.step(note, i, k)["k"] for k in range(n))


url, runs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with aion.Engine(url, workflows=[steps]) as engine:
    print("ready", flush=True)
    handles = [engine.start(steps, i, n, id=f"w{i:02d}") for i in range(runs)]
    print("done", [h.result(60) for h in handles], flush=True)
"""


def _worker(path, runs, n):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["AION_GEVENT_PATCH"] = "1" if PATCHED else "0"
    return subprocess.Popen([sys.executable, "-c", _WORKER, f"sqlite:///{path}", str(runs), str(n)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_in_the_middle_of_commits_never_tears_the_file_or_a_history(tmp_path):
    """An engine process commits step records of thirty runs (group commits,
    several WAL frames each, records that overflow their page, checkpoints
    every 200 pages) and is SIGKILLed at a random moment, again and again.
    Window: anywhere in its start, its recovery, a commit or a checkpoint.
    After each kill the file passes integrity_check, every history is
    contiguous and extends the one seen after the kill before; the last
    process finishes every run with the right result, each step recorded
    once."""
    path = tmp_path / "killed.db"
    runs, n = 30, 600
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    seen, kills = {}, 0
    for _ in range(10):
        worker = _worker(path, runs, n)
        try:
            assert worker.stdout.readline().strip() == "ready", worker.stderr.read()
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            worker.send_signal(signal.SIGKILL)
            out, err = worker.communicate(timeout=20)
        if "done" in out:
            break  # it finished before the kill landed
        kills += 1
        now = examine(path)
        assert_extends(seen, now)
        seen = now
    print(f"seed {seed}: {kills} kills")
    assert kills >= 3, f"seed {seed}: the runs finished too fast to be killed mid-commit"
    worker = _worker(path, runs, n)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert f"done {[sum(range(n))] * runs}" in out, (seed, out, err)
    final = examine(path)
    assert_extends(seen, final)
    for wid, events in final.items():
        types = [typ for _, typ, _ in events]
        assert types == [ev.WORKFLOW_STARTED] + [ev.STEP_COMPLETED] * n + [ev.WORKFLOW_COMPLETED], wid


# -- a torn WAL -------------------------------------------------------------------------------
def _wal_with_many_commits(tmp_path, make_engine):
    """A database whose WAL holds every commit of eight runs of 15 steps:
    a reader's snapshot, taken before they start, keeps the checkpoint from
    folding them into the main file. Returns (main file bytes, WAL bytes)."""
    src = tmp_path / "src.db"
    engine = make_engine(steps, echo, url=f"sqlite:///{src}")
    assert engine.start(echo, "base", id="base").result(10) == "base"
    keeper = sqlite3.connect(src)
    keeper.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the main file: the schema and "base"
    keeper.execute("BEGIN")
    keeper.execute("SELECT count(*) FROM events").fetchone()
    try:
        handles = [engine.start(steps, i, 15, id=f"w{i}") for i in range(8)]
        assert [h.result(20) for h in handles] == [sum(range(15))] * 8
        engine.shutdown()  # the keeper's connection stays: the WAL is not folded in
        main, wal = src.read_bytes(), (tmp_path / "src.db-wal").read_bytes()
    finally:
        keeper.rollback()
        keeper.close()
    return main, wal


def _copy(where, main, wal):
    where.mkdir()
    (where / "a.db").write_bytes(main)
    (where / "a.db-wal").write_bytes(wal)
    return where / "a.db"


def test_a_wal_torn_mid_frame_recovers_to_the_last_whole_commit(tmp_path, make_engine):
    """A power cut tears the WAL: it ends in the middle of a frame (copies of
    the database and its WAL, the WAL truncated at random offsets), or its
    last frame is garbled. Window: the commit being written when the power
    went. SQLite discards the torn commit: the file is sound, each history
    is a prefix of the untorn one (never a partial commit, never a gap), a
    longer WAL keeps at least as much, and an engine over a torn copy
    resumes the cut runs to their right results."""
    main, wal = _wal_with_many_commits(tmp_path, make_engine)
    page_size = int.from_bytes(wal[8:12], "big")
    frame = 24 + page_size
    frames = (len(wal) - 32) // frame
    assert frames > 50
    whole = examine(_copy(tmp_path / "whole", main, wal))
    base = examine(_copy(tmp_path / "base", main, b""))
    assert set(base) == {"base"}
    total = sum(map(len, whole.values()))

    rng = random.Random(8)
    cuts = sorted({32 + f * frame + rng.randrange(1, frame) for f in rng.sample(range(frames), 10)})
    kept = []
    for n, cut in enumerate(cuts):
        torn = examine(_copy(tmp_path / f"cut{n}", main, wal[:cut]))
        assert_extends(base, torn)
        for wid, events in torn.items():
            assert whole[wid][:len(events)] == events
        kept.append(sum(map(len, torn.values())))
    assert kept == sorted(kept)  # a longer WAL never keeps less
    assert sum(map(len, base.values())) < kept[-1] and kept[0] < total and kept[-1] <= total

    garbled = bytearray(wal)
    last = 32 + (frames - 1) * frame
    garbled[last + 24 + 100:last + 24 + 164] = os.urandom(64)
    torn = examine(_copy(tmp_path / "garbled", main, bytes(garbled)))
    for wid, events in torn.items():
        assert whole[wid][:len(events)] == events
    assert sum(map(len, torn.values())) < total  # the last commit is gone, whole

    middle = _copy(tmp_path / "resume", main, wal[:cuts[len(cuts) // 2]])
    before = examine(middle)
    assert any(events[-1][1] not in ev.TERMINAL_TYPES for events in before.values())
    engine = make_engine(steps, echo, url=f"sqlite:///{middle}")
    for wid in before:
        if wid != "base":
            assert engine.result(wid, timeout=20) == sum(range(15))
    engine.shutdown()
    after = examine(middle)
    assert_extends(before, after)
    for wid in set(after) - {"base"}:
        assert [typ for _, typ, _ in after[wid]].count(ev.STEP_COMPLETED) == 15


# -- a damaged main file ------------------------------------------------------------------------
def _finished_file(tmp_path, make_engine, name):
    path = tmp_path / name
    engine = make_engine(steps, url=f"sqlite:///{path}")
    for i in range(30):
        assert engine.start(steps, i, 3, id=f"w{i:02d}").result(10) == 3
    engine.shutdown()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the damage then hits the main file
    conn.close()
    return path


def _reads(engine, wids):
    """Every read of the engine over the file: what each one raised."""
    errors = []
    for read in [lambda: engine.list(limit=1000)] + [
            lambda wid=wid: engine.history(wid) for wid in wids] + [
            lambda wid=wid: engine.describe(wid) for wid in wids]:
        try:
            read()
        except Exception as exc:  # noqa: BLE001 - the test looks at what it is
            errors.append(exc)
    return errors


@pytest.mark.parametrize("damage", ["page_header", "record_bytes", "invalid_utf8"])
def test_a_damaged_file_is_reported_as_corrupt_with_what_to_do_and_is_not_modified(
        tmp_path, make_engine, damage):
    """Garbage lands in the main file: over a b-tree page's header (SQLite
    finds the page malformed), or inside one record (the page is sound, the
    JSON in it is not, or is not even UTF-8). Window: any read after the
    damage. Reads of the damaged part raise StoreCorrupt saying to restore
    from a backup (never a raw sqlite3 or json error), the other runs read
    fine, and the file is left exactly as it was."""
    path = _finished_file(tmp_path, make_engine, f"{damage}.db")
    data = bytearray(path.read_bytes())
    spot = data.find(b'"i":17,"k":1')
    assert spot > 0
    if damage == "page_header":
        page = spot - spot % 4096
        data[page:page + 16] = b"\x07" * 16  # not a b-tree page type
    elif damage == "record_bytes":
        data[spot:spot + 4] = b'}}"]'
    else:
        data[spot:spot + 4] = b"\xff\xfe\x80\x81"
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()

    engine = make_engine(steps, url=f"sqlite:///{path}")
    errors = _reads(engine, [f"w{i:02d}" for i in range(30)])
    engine.shutdown()
    assert errors, "the damage went unnoticed"
    for error in errors:
        assert isinstance(error, aion.StoreCorrupt), repr(error)
        assert "restore" in str(error) and "backup" in str(error) and str(path) in str(error)
    if damage != "page_header":
        assert len(errors) == 1  # the one damaged history; everything else reads fine
        assert "cannot be decoded" in str(errors[0])
    assert path.read_bytes() == damaged


def test_an_unfinished_run_with_a_damaged_history_is_left_alone_with_a_clear_error(
        tmp_path, make_engine, caplog):
    """Recovery meets a run whose recorded history cannot be read. The other
    runs go on; that run stays as it is (nothing is written over the
    damage), its waiter is told the store is corrupt, and the log says so
    without calling it a bug of the engine."""
    path = tmp_path / "unfinished.db"
    gate = NativeGate()

    def held():
        return gate.wait(30)

    @aion.workflow(name="faults.parked")
    def parked(ctx, i):
        ctx.step(note, i, 1)
        return ctx.step(held)

    first = make_engine(parked, url=f"sqlite:///{path}")
    for i in range(3):
        first.start(parked, i, id=f"p{i}")
    wait_until(lambda: all(len(first.history(f"p{i}")) >= 2 for i in range(3)))
    first.shutdown()
    gate.set()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    spot = data.find(b'"i":1,"k":1')
    data[spot:spot + 4] = b'}}"]'
    path.write_bytes(bytes(data))

    second = make_engine(parked, url=f"sqlite:///{path}")
    assert second.result("p0", timeout=10) is True
    assert second.result("p2", timeout=10) is True
    with pytest.raises(aion.StoreCorrupt, match="backup"):
        second.result("p1", timeout=2)
    assert "bug in aion_green" not in caplog.text


def test_a_file_that_is_not_a_database_is_refused_before_anything_is_written(tmp_path):
    """A header overwritten (the file's first page garbled): the engine's
    first use raises StoreCorrupt, and the file keeps every byte."""
    path = tmp_path / "header.db"
    engine = aion.Engine(f"sqlite:///{path}", workflows=[echo])
    assert engine.start(echo, 1, id="one").result(10) == 1
    engine.shutdown()
    data = bytearray(path.read_bytes())
    data[0:100] = os.urandom(100)
    path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    for other in tmp_path.glob("header.db-*"):
        other.unlink()
    engine = aion.Engine(f"sqlite:///{path}", workflows=[echo])
    try:
        with pytest.raises(aion.StoreCorrupt, match="restore it from a backup"):
            engine.start(echo, 2, id="two")
    finally:
        engine.shutdown()
    assert path.read_bytes() == damaged
