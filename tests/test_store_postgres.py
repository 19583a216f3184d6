"""The PostgreSQL store against a real server (127.0.0.1:5432 by default;
AION_TEST_POSTGRES to point elsewhere): the store conformance suite, and
migrations raced by engines starting at once."""
import threading

import pytest
from store_contract import StoreContract

import aion_green as aion


class TestPostgresStoreContract(StoreContract):
    @pytest.fixture
    def store(self, pg_url):
        from aion_green.stores.postgres.store import PostgresStore

        store = PostgresStore(pg_url)
        yield store
        store.close()


def test_stores_opened_at_the_same_moment_on_an_empty_schema_all_come_up(pg_url):
    from aion_green.stores.postgres.store import SCHEMA_VERSION, PostgresStore

    stores, errors = [], []
    gate = threading.Barrier(6)

    def open_one():
        gate.wait()
        try:
            stores.append(PostgresStore(pg_url))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 6
        assert stores[0]._query("SELECT version FROM aion_schema") == [(SCHEMA_VERSION,)]
    finally:
        for store in stores:
            store.close()


def test_an_engine_on_postgres_runs_steps_timers_messages_and_children(pg_url):
    @aion.workflow(name="pg.kid")
    def kid(ctx, x):
        return ctx.step(lambda v: v + 1, x)

    @aion.workflow(name="pg.parent")
    def parent(ctx):
        first = ctx.step(lambda: 10)
        ctx.sleep(0.05)
        note = ctx.receive("note", timeout=30)
        kids = ctx.parallel([ctx.start_child(kid, i) for i in range(3)])
        return [first, note, kids]

    with aion.Engine(pg_url, workflows=[parent, kid]) as engine:
        assert engine.driving
        handle = engine.start(parent, id="p")
        engine.signal("p", "note", "hi")
        assert handle.result(timeout=30) == [10, "hi", [1, 2, 3]]
        assert [r.workflow_id for r in engine.list()] == ["p", "p/child-1", "p/child-2", "p/child-3"]
        with aion.Engine(pg_url, workflows=[parent, kid]) as second:
            # Every engine drives, each the runs it owns.
            assert second.driving
            assert second.start(kid, 41, id="from-second").result(timeout=30) == 42
            assert engine.result("from-second", timeout=30) == 42


def _terminate_sessions_named(application_name):
    """End the sessions named ``application_name`` (as a server restart
    ends them): only the sessions of this test's engine, whose URL gives
    them a name no one else uses; other sessions of the shared server are
    not this test's to end (issue 16)."""
    import psycopg
    from conftest import PG_URL

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,)).fetchall())


def test_sessions_cut_under_load_reconnect_and_lose_nothing(pg_url, pg_bystander):
    """Every session of the engine is terminated while 40 workflows run their
    steps (what a server restart does to it): the engine reconnects, takes
    its driver lock again, and every workflow ends with each step recorded
    once. A session of the same server that the test did not open (the
    bystander) lives on."""
    import time as _time
    import uuid

    from aion_green.core import events as ev

    def slow_step(i):
        _time.sleep(0.01)
        return i

    @aion.workflow(name="pg.load")
    def load(ctx, n):
        return sum(ctx.step(slow_step, i) for i in range(n))

    name = f"aion_test_{uuid.uuid4().hex[:12]}"
    with aion.Engine(f"{pg_url}&application_name={name}", workflows=[load]) as engine:
        handles = [engine.start(load, 60, id=f"w{k}") for k in range(40)]
        _time.sleep(0.3)
        session = engine._epoch.store._conn
        assert len(engine.list(status="completed")) < 40, "the load ended before the cut"
        assert _terminate_sessions_named(name) >= 2  # the writer's and the reader's
        assert [h.result(timeout=60) for h in handles] == [sum(range(60))] * 40
        assert engine._epoch.store._conn is not session, "the writer did not reconnect"
        assert engine.driving
        for k in range(40):
            steps = [e.data["step"] for e in engine.history(f"w{k}") if e.type == ev.STEP_COMPLETED]
            assert steps == list(range(1, 61))


def test_doorbells_wake_idle_engines_at_once(pg_url):
    """LISTEN/NOTIFY: idle engines (their polls slowed to their longest
    pause) claim a run created elsewhere within milliseconds, and a signal
    sent through the other engine reaches the run's owner."""
    import statistics
    import time as _time

    @aion.workflow(name="pg.bell")
    def bell(ctx):
        return ctx.receive("go")

    with aion.Engine(pg_url, workflows=[bell]) as owner, aion.Engine(pg_url, workflows=[bell]) as other:
        owner.list()
        other.list()
        store = owner._epoch.store  # the writer's (each session is one thread's)
        claims, signals = [], []
        for k in range(3):
            _time.sleep(2.5)  # idle: both claim loops poll at their longest pause, 0.5 s
            began = _time.monotonic()
            owner._epoch.writer.call(store.create_run, f"b{k}", "pg.bell", "[]", f"r{k}",
                                     _time.time()).result()
            from conftest import wait_until

            wait_until(lambda k=k: f"b{k}" in owner._epoch.runs or f"b{k}" in other._epoch.runs,
                       timeout=5, interval=0.002)
            claims.append(_time.monotonic() - began)
            _time.sleep(0.3)
            sender = other if f"b{k}" in owner._epoch.runs else owner
            began = _time.monotonic()
            sender.signal(f"b{k}", "go", k)  # through the inbox of the run's owner
            signals.append(_time.monotonic() - began)
            assert sender.result(f"b{k}", timeout=10) == k
        # Polling alone: ~0.15 s (the earlier of two 0.5 s polls); a bell: ms.
        assert statistics.median(claims) < 0.05, claims
        assert max(signals) < 1.0, signals


def test_the_server_restarted_under_load_loses_nothing(pg_bystander):
    """The PostgreSQL server itself is restarted while 40 workflows run their
    steps: the engine waits it out, reconnects, and every workflow ends with
    each step recorded once. The server restarted is a private one (its own
    data directory and port): the shared test server, and its bystander
    session, live on (issue 16)."""
    import time as _time

    from conftest import private_postgres_or_skip

    from aion_green.core import events as ev

    def step(i):
        _time.sleep(0.01)
        return i

    @aion.workflow(name="pg.restart")
    def restarted(ctx, n):
        return sum(ctx.step(step, i) for i in range(n))

    with private_postgres_or_skip() as server:
        with aion.Engine(server.url, workflows=[restarted]) as engine:
            handles = [engine.start(restarted, 60, id=f"w{k}") for k in range(40)]
            _time.sleep(0.3)
            assert len(engine.list(status="completed")) < 40, "the load ended before the restart"
            server.restart()
            assert [h.result(timeout=90) for h in handles] == [sum(range(60))] * 40
            for k in range(40):
                steps = [e.data["step"] for e in engine.history(f"w{k}") if e.type == ev.STEP_COMPLETED]
                assert steps == list(range(1, 61))


def test_a_process_that_only_starts_and_signals_hands_runs_to_a_worker(pg_url):
    """An engine with no workflows registered (a web front end, say) starts
    a run by name and signals it; an engine that knows the type claims and
    drives it; the starter gets the result."""
    def remote(ctx, x):
        return x + ctx.receive("add")

    # Named by hand, not decorated: decorated workflows are known to every
    # engine of the process, and the starter must not know this one.
    remote.__aion_workflow__ = "pg.remote"

    with aion.Engine(pg_url, workflows=[]) as starter:
        handle = starter.start("pg.remote", 1, id="r")
        assert "r" not in starter._epoch.runs
        with aion.Engine(pg_url, workflows=[remote]) as worker:
            from conftest import wait_until

            wait_until(lambda: "r" in worker._epoch.runs, what="the worker to claim the run")
            assert starter.signal("r", "add", 41) > 1  # through the owner's inbox
            assert handle.result(timeout=10) == 42
            assert worker.describe("r").status == "completed"


def test_two_engines_starting_at_once_on_an_empty_database_both_come_up(pg_url):
    @aion.workflow(name="pg.up")
    def up(ctx, n):
        return n

    engines = [aion.Engine(pg_url, workflows=[up]) for _ in range(2)]
    gate = threading.Barrier(2)
    results, errors = [], []

    def start(engine, n):
        gate.wait()
        try:
            results.append(engine.start(up, n, id=f"up-{n}").result(timeout=30))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e, n)) for n, e in enumerate(engines)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and sorted(results) == [0, 1]
    finally:
        for engine in engines:
            engine.shutdown()


def test_a_batch_the_server_refuses_midway_writes_nothing_and_the_next_is_written(pg_url):
    """write_batch sends its statements in libpq's pipeline mode, and its
    COMMIT with them: a statement the server refuses (here a trigger that
    refuses one run's events) or a value refused before it is sent (a NUL
    in text) rolls back every row of the batch, and the store's session
    takes the next batch as before."""
    import psycopg

    from aion_green.core import events as ev
    from aion_green.store import Append, CreateRun
    from aion_green.stores.postgres.store import PostgresStore

    store = PostgresStore(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                         "RAISE EXCEPTION 'poisoned run'; END $$ LANGUAGE plpgsql")
            conn.execute("CREATE TRIGGER poison BEFORE INSERT ON aion_events FOR EACH ROW "
                         "WHEN (NEW.workflow_id = 'poison' AND NEW.seq > 1) "
                         "EXECUTE FUNCTION refuse_poison()")
        made = store.write_batch([CreateRun(w, "t", "[]", f"run-{w}", 1.0) for w in ("ok", "poison")])
        assert [outcome[0] for outcome in made] == [True, True]

        def snapshot():
            return ([store.read(w) for w in ("ok", "poison", "new")],
                    [(r.workflow_id, r.status, r.head_seq) for r in store.list_runs()])

        before = snapshot()
        step = [ev.NewEvent(ev.STEP_COMPLETED, 2.0, {"step": 1, "result": 1})]
        end = [ev.NewEvent(ev.WORKFLOW_COMPLETED, 2.0, {"result": 1})]
        refused = [CreateRun("new", "t", "[]", "run-new", 2.0), Append("ok", 1, step),
                   Append("ok", 2, end), Append("poison", 1, step)]
        with pytest.raises(aion.StoreError, match="poisoned run"):
            store.write_batch(refused)
        assert snapshot() == before
        with pytest.raises(Exception):  # noqa: B017 - psycopg's DataError, or ours
            store.write_batch([CreateRun("nul", "t", '["a\x00b"]', "run-nul", 2.0),
                               Append("ok", 1, step)])
        assert snapshot() == before
        outcomes = store.write_batch(refused[:3])  # the same session, the poison left out
        assert outcomes[0][0] is True and outcomes[1:] == [2, 3]
        assert [e.type for e in store.read("ok")] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED,
                                                       ev.WORKFLOW_COMPLETED]
        assert store.get_run("ok").status == ev.COMPLETED
        assert [e.type for e in store.read("new")] == [ev.WORKFLOW_STARTED]
    finally:
        store.close()


NATIVE_WAITS = '''
import json, sys
from gevent import monkey
monkey.patch_all()
import gevent
import aion_green as aion
from aion_green.stores.postgres.store import PostgresStore

@aion.workflow(name="native.echo")
def echo(ctx, n):
    return ctx.step(lambda v: v, n)

ticks = []
def ticker():
    while True:
        ticks.append(1)
        gevent.sleep(0.005)

beat = gevent.spawn(ticker)
with aion.Engine(sys.argv[1], workflows=[echo]) as engine:
    results = [engine.start(echo, n, id=f"e-{n}").result(timeout=30) for n in range(50)]
    epoch = engine._epoch
    sessions = [type(w.store._conn).__name__ + ":" + str(getattr(w.store._conn, "native", None))
                for w in (epoch.writer, epoch.reader)]
    app_store = PostgresStore(sys.argv[1])  # opened by the app, on its hub's greenlet
    app_session = str(getattr(app_store._conn, "native", None))
    app_store.close()
beat.kill()
print(json.dumps({"results": results, "sessions": sessions, "app": app_session,
                  "ticks": len(ticks)}))
'''


def test_under_patch_all_the_store_threads_wait_in_c_and_the_app_hub_keeps_running(pg_url):
    """gevent patches select, so psycopg would wait through a gevent hub
    even on the store's own native threads (10-30 % of the CPU of an HTTP
    round trip): those sessions wait in C, with the GIL released. A store
    the app opens on its own greenlet keeps psycopg's cooperative wait, and
    the app's greenlets run on while the engine works."""
    import json

    from conftest import run_python

    proc = run_python(["-c", NATIVE_WAITS, pg_url], timeout=120)
    output = json.loads(proc.stdout.strip().splitlines()[-1])
    assert output["results"] == list(range(50))
    assert output["sessions"] == ["NativeWaitConnection:True"] * 2
    assert output["app"] == "False"
    assert output["ticks"] >= 10, "the app's greenlets stalled while the engine worked"


def _losing_answers(store, every):
    """Make ``store.write_batch`` lose the answer of every ``every``-th batch:
    the server commits it, then the session is cut before the writer hears
    (what a network cut or a server restart at that moment does)."""
    from aion_green.core.errors import StoreUnavailable

    real, count = store.write_batch, [0]

    def write_batch(ops):
        outcomes = real(ops)
        count[0] += 1
        if count[0] % every == 0:
            store._drop()
            cut = StoreUnavailable("the session was cut before the commit's answer came")
            cut.maybe_written = True  # (as the store says of a cut session)
            raise cut
        return outcomes

    store.write_batch = write_batch
    return count


def test_a_batch_retried_after_its_commit_answer_was_lost_is_recognised_not_refused(pg_url):
    """The server committed a batch, the session was cut before its answer:
    the writer sees a failed batch and sends it again. Its appends find the
    heads moved, and its starts find their ids taken, by their own records:
    each is answered as written (the same seqs, the run created), nothing is
    written twice. Another writer's records at those seqs are still a
    conflict, and another start's run is still not this start's."""
    from aion_green.core import events as ev
    from aion_green.core.errors import SequenceConflict
    from aion_green.store import Append, CreateRun
    from aion_green.stores.postgres.store import PostgresStore

    store = PostgresStore(pg_url)
    try:
        assert store.write_batch([CreateRun("a", "t", "[]", "run-a", 1.0)])[0][0] is True
        step = [ev.NewEvent(ev.STEP_COMPLETED, 2.5, {"step": 1, "result": 1})]
        timer = [ev.NewEvent(ev.TIMER_STARTED, 2.75, {"timer": "t1", "fire_at": 99.0}),
                 ev.NewEvent(ev.STEP_COMPLETED, 2.75, {"step": 2, "result": [1, "x"]})]
        batch = [Append("a", 1, step), CreateRun("b", "t", "[1]", "run-b", 2.0),
                 CreateRun("c", "t", "[2]", "run-c", 2.0), Append("a", 2, timer)]
        first = store.write_batch(batch)
        assert [o if isinstance(o, int) else o[0] for o in first] == [2, True, True, 4]

        def answers(outcomes):
            return [o if isinstance(o, int) else (o[0], o[1].run_id) for o in outcomes]

        for again in ([0, 1, 2, 3], [0], [3], [1], [2, 1]):  # (a retry, whole or regrouped)
            assert answers(store.write_batch([batch[i] for i in again])) == [
                answers(first)[i] for i in again]
        assert [(e.seq, e.type) for e in store.read("a")] == [
            (1, ev.WORKFLOW_STARTED), (2, ev.STEP_COMPLETED), (3, ev.TIMER_STARTED),
            (4, ev.STEP_COMPLETED)]
        assert store.due_timers(100.0) == [("a", "t1", 99.0)]
        assert [len(store.read(w)) for w in ("b", "c")] == [1, 1]
        # The retry's appends go on from where the first try left the run.
        assert store.write_batch([Append("a", 4, step)]) == [5]
        # Not its own records: a conflict, as before; not its own run: not created.
        other = [ev.NewEvent(ev.STEP_COMPLETED, 2.5, {"step": 1, "result": 2})]
        assert isinstance(store.write_batch([Append("a", 1, other)])[0], SequenceConflict)
        created, info = store.write_batch([CreateRun("b", "t", "[1]", "run-other", 3.0)])[0]
        assert created is False and info.run_id == "run-b"
        created, info = store.write_batch([CreateRun("b", "t", "[1]", "run-x", 3.0),
                                           CreateRun("d", "t", "[]", "run-d", 3.0)])[0]
        assert created is False and info.run_id == "run-b"
    finally:
        store.close()


def test_a_writer_whose_commit_answers_are_lost_loses_no_run(pg_url):
    """Every fifth group commit's answer is lost after the server committed
    it: the engine's writer tries each again, and every run ends with each
    step recorded once (the retried appends used to be taken for another
    writer's: the runs were dropped)."""
    from aion_green.core import events as ev

    @aion.workflow(name="pg.lost_answers")
    def counted(ctx, n):
        return sum(ctx.step(lambda i=i: i) for i in range(n))

    with aion.Engine(pg_url, workflows=[counted]) as engine:
        engine.start(counted, 1, id="warm").result(timeout=30)
        lost = _losing_answers(engine._epoch.store, 5)
        before = lost[0]
        handles = [engine.start(counted, 20, id=f"w{k}") for k in range(20)]
        assert [h.result(timeout=60) for h in handles] == [sum(range(20))] * 20
        assert lost[0] - before >= 25  # (answers were lost: a fifth of these commits)
        # None was dropped (to be claimed again once its lease was let go).
        assert engine.metrics.leases.lost == 0
        for k in range(20):
            steps = [e.data["step"] for e in engine.history(f"w{k}") if e.type == ev.STEP_COMPLETED]
            assert steps == list(range(1, 21))


def test_a_read_on_a_session_cut_meanwhile_is_answered_by_the_next(pg_url):
    """The server ended the store's session between two reads (a restart, a
    proxy's idle cut): the next read is sent again on a new session and
    answered, where it used to raise StoreUnavailable (a caller's
    ``result()`` did so under CI's session cuts)."""
    import psycopg

    from aion_green.store import CreateRun
    from aion_green.stores.postgres.store import PostgresStore

    store = PostgresStore(pg_url)
    try:
        store.write_batch([CreateRun("r", "t", "[]", "run-r", 1.0)])
        pid = store._query("SELECT pg_backend_pid()")[0][0]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        assert store.get_run("r").run_id == "run-r"
        assert store._query("SELECT pg_backend_pid()")[0][0] != pid
    finally:
        store.close()


def test_a_batch_on_a_session_cut_meanwhile_is_unavailable_and_the_next_written(pg_url):
    """The server ended the writer's session between two batches: the next
    batch fails as StoreUnavailable, "maybe written" (the writer sends it
    again on a new session), whatever error psycopg's cut pipeline gave; it
    used to come back as a plain StoreError when the cut showed up as a
    result that never came ("the last operation didn't produce records"),
    and the run stopped (CI, issue 21)."""
    import psycopg

    from aion_green.core import events as ev
    from aion_green.core.errors import StoreUnavailable
    from aion_green.store import Append, CreateRun
    from aion_green.stores.postgres.store import PostgresStore

    store = PostgresStore(pg_url)
    try:
        store.write_batch([CreateRun("r", "t", "[]", "run-r", 1.0)])
        head = 1
        for round_ in range(10):
            pid = store._query("SELECT pg_backend_pid()")[0][0]
            with psycopg.connect(pg_url, autocommit=True) as conn:
                assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            step = [ev.NewEvent(ev.STEP_COMPLETED, 2.0, {"step": round_ + 1, "result": round_})]
            try:
                outcome = store.write_batch([Append("r", head, step)])
            except StoreUnavailable as exc:
                assert exc.maybe_written
                outcome = store.write_batch([Append("r", head, step)])  # (as the writer does)
            assert outcome == [head + 1]
            head += 1
        assert [e.data["step"] for e in store.read("r") if e.type == ev.STEP_COMPLETED] == list(
            range(1, 11))
        # The cut as CI met it: the session breaks while the pipeline waits,
        # and psycopg answers a fetch with the BEGIN's result.
        conn = store._connect()
        conn.pgconn.finish()
        with pytest.raises(StoreUnavailable) as raised:
            with store._translated(conn):
                raise psycopg.ProgrammingError(
                    "the last operation didn't produce records (command status: BEGIN)")
        assert raised.value.maybe_written and store._conn is None
        assert store.write_batch([Append("r", head, step)]) == [head + 1]
        # On a live session the same error is the store's to report, as it was.
        from aion_green.core.errors import StoreError
        with pytest.raises(StoreError) as raised:
            with store._translated(store._connect()):
                raise psycopg.ProgrammingError("a statement of ours is wrong")
        assert not isinstance(raised.value, StoreUnavailable)
    finally:
        store.close()


def test_a_continuation_whose_commit_answer_was_lost_is_recognised(pg_url):
    """The answer of a batch that continued a run as new is lost after the
    server committed it: the run's history was archived and its row holds
    the new run. The writer's retry finds the head moved back to 1; the
    store recognises the new run's id as the one the continuation names,
    answers the append as written, and the chain goes on: every run of it
    once, the last one's result as without the cuts."""
    from aion_green.core import events as ev

    @aion.workflow(name="pg.lost_rollovers")
    def chain(ctx, left, total):
        total += ctx.step(lambda: left)
        if left == 0:
            return total
        ctx.continue_as_new(left - 1, total)

    with aion.Engine(pg_url, workflows=[chain]) as engine:
        engine.start(chain, 0, 0, id="warm").result(timeout=30)
        lost = _losing_answers(engine._epoch.store, 2)
        before = lost[0]
        assert engine.start(chain, 12, 0, id="c").result(timeout=60) == sum(range(13))
        assert lost[0] - before >= 12  # (half of the commits lost their answer)
        # None was dropped (to be claimed again once its lease was let go).
        assert engine.metrics.leases.lost == 0
        history = engine.history("c")
        assert history[0].type == ev.WORKFLOW_STARTED
        assert [e.type for e in history].count(ev.STEP_COMPLETED) == 1
        assert engine._epoch.store._query(
            "SELECT count(DISTINCT run_id) FROM aion_archived_events WHERE workflow_id=%s",
            ("c",))[0][0] == 12


def test_a_retried_continuation_is_answered_as_written_and_another_is_still_a_conflict(pg_url):
    """Store level: a batch that continued run ``a`` as new (run id ``r2``)
    sent again is answered with the same seq, and archives and begins
    nothing twice; a continuation naming another run id at that stale seq
    is a conflict, as is a plain append there."""
    from aion_green.core import events as ev
    from aion_green.core.errors import SequenceConflict
    from aion_green.store import Append, CreateRun
    from aion_green.stores.postgres.store import PostgresStore

    def continuation(run_id):
        return [ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, 3.0,
                            {"args": [1], "run_id": run_id, "generation": 2})]

    store = PostgresStore(pg_url)
    try:
        store.write_batch([CreateRun("a", "t", "[0]", "r1", 1.0)])
        step = [ev.NewEvent(ev.STEP_COMPLETED, 2.0, {"step": 1, "result": 0})]
        assert store.write_batch([Append("a", 1, step)]) == [2]
        batch = [Append("a", 2, continuation("r2"))]
        assert store.write_batch(batch) == [3]
        assert store.write_batch(batch) == [3]  # (the retry: recognised)
        run = store.get_run("a")
        assert (run.run_id, run.status, run.head_seq) == ("r2", ev.RUNNING, 1)
        assert [e.type for e in store.read("a")] == [ev.WORKFLOW_STARTED]
        assert store._query("SELECT run_id, count(*) FROM aion_archived_events "
                            "WHERE workflow_id='a' GROUP BY run_id") == [("r1", 3)]
        for stale in (Append("a", 2, continuation("r3")), Append("a", 2, step)):
            assert isinstance(store.write_batch([stale])[0], SequenceConflict)
        assert store.get_run("a").run_id == "r2"
    finally:
        store.close()
