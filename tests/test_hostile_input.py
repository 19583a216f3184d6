"""Hostile input at the engine's edges (issue 16): a record no store can
hold fails its own caller with a clear error, and nothing of any other run
is lost or run twice."""
import threading
import time

import pytest
from conftest import NativeGate, open_test_store

import aion_green as aion
from aion_green.core import events as ev
from aion_green.runtime.writer import StoreWriter
from aion_green.store import CreateRun

_counts: dict = {}
_counts_lock = threading.Lock()


def counted(key):
    with _counts_lock:
        _counts[key] = _counts.get(key, 0) + 1
    return key


@aion.workflow(name="hostile.steady")
def steady(ctx, n):
    for i in range(n):
        ctx.step(counted, f"{ctx.workflow_id}/{i}")
    return n


BAD_IDS = ["\ud800", "a\x00b", "x" * 1001, ""]


@pytest.mark.parametrize("bad", BAD_IDS, ids=["surrogate", "nul", "too-long", "empty"])
def test_an_id_no_store_can_hold_is_refused_before_anything_is_recorded(make_engine, bad):
    engine = make_engine(steady)
    with pytest.raises(aion.ConfigurationError, match="workflow id"):
        engine.start(steady, 1, id=bad)
    with pytest.raises(aion.ConfigurationError, match="workflow id"):
        engine.signal(bad, "go", 1)
    with pytest.raises(aion.ConfigurationError, match="workflow id"):
        engine.describe(bad)
    assert engine.list() == []


def test_a_message_name_with_nul_or_a_surrogate_is_refused(make_engine):
    engine = make_engine(steady)
    engine.start(steady, 0, id="ok").result(10)
    for bad in ("a\x00", "\udfff"):
        with pytest.raises(aion.ConfigurationError, match="message name"):
            engine.signal("ok", bad, 1)
        with pytest.raises(aion.ConfigurationError, match="idempotency key"):
            engine.signal("ok", "go", 1, idempotency_key=bad)


def test_bad_starts_among_busy_runs_lose_and_double_nothing(make_engine):
    """Failure window: a start whose id the store cannot hold joined the
    group commit of other runs' step records; the whole batch failed, and
    those runs ran their steps again (47 of 200 before the fix)."""
    _counts.clear()
    engine = make_engine(steady)
    handles = [engine.start(steady, 5, id=f"busy-{i}") for i in range(200)]
    refused = 0
    for _ in range(40):
        for bad in ("\ud800", "bad\x00id"):
            with pytest.raises(aion.ConfigurationError):
                engine.start(steady, 1, id=bad)
            refused += 1
        time.sleep(0.002)
    assert [h.result(60) for h in handles] == [5] * 200
    assert refused == 80
    doubled = {k: v for k, v in _counts.items() if v != 1}
    assert doubled == {}, f"steps that ran more than once: {doubled}"
    assert len(_counts) == 1000


def test_the_store_writer_fails_only_the_record_the_store_refuses(db_url):
    """Failure window: a record that slips past validation reaches a group
    commit; only its own caller may get the error, the batch's other
    records commit."""
    store = open_test_store(db_url)
    writer = StoreWriter(store)
    try:
        gate = NativeGate()
        writer.call(lambda: gate.wait(10))  # hold the writer so the next ops form one batch
        outcomes: dict = {}

        def done_for(key):
            def done(value, error):
                outcomes[key] = error if error is not None else value
            return done

        now = time.time()
        for i in range(20):
            writer.submit_create(CreateRun(f"good-{i}", "t", "[]", f"r-{i}", now), done_for(i))
        # What the store cannot hold: a lone surrogate (SQLite's driver
        # refuses it), or a NUL (PostgreSQL refuses it).
        writer.submit_create(CreateRun("bad\ud800\x00", "t", "[]", "r-bad", now), done_for("bad"))
        gate.set()
        writer.call(lambda: None).result(10)
        assert isinstance(outcomes.pop("bad"), aion.StoreError)
        assert sorted(outcomes) == list(range(20))
        assert all(created for created, _ in outcomes.values())
        # The good runs are there, and appends to them go on.
        future = writer.append("good-3", 1, [ev.NewEvent(ev.TIMER_CANCELLED, now, {"timer": "t"})])
        assert future.result(10) == 2
    finally:
        writer.close()
    reader = open_test_store(db_url)
    try:
        assert [r.workflow_id for r in reader.list_runs(limit=100)] == sorted(
            f"good-{i}" for i in range(20))
    finally:
        reader.close()


def test_append_batches_with_one_bad_run_keep_the_other_runs_order(db_url):
    """Isolation splits a failed batch; each run's records keep their order."""
    store = open_test_store(db_url)
    writer = StoreWriter(store)
    try:
        now = time.time()
        for i in range(4):
            writer.submit_create(CreateRun(f"w-{i}", "t", "[]", f"r-{i}", now), lambda v, e: None)
        writer.call(lambda: None).result(10)
        gate = NativeGate()
        writer.call(lambda: gate.wait(10))
        futures = []
        for seq in range(1, 4):
            for i in range(4):
                events = [ev.NewEvent(ev.TIMER_CANCELLED, now, {"timer": f"t{seq}"})]
                futures.append((i, seq, writer.append(f"w-{i}", seq, events)))
            writer.submit_create(CreateRun(f"bad-{seq}\ud800", "t", "[]", "r", now), lambda v, e: None)
        gate.set()
        for i, seq, future in futures:
            assert future.result(10) == seq + 1, (i, seq)
    finally:
        writer.close()


@aion.workflow(name="hostile.listener")
def listener(ctx, n):
    got = [ctx.receive("m") for _ in range(n)]
    ctx.receive("stop")
    return got


HOSTILE_PAYLOADS = ["a\x00b", "\ud800", "\U0001f600 ok", {"k\x00": ["\x00", "\udfff"]}]


def test_payloads_with_nul_and_surrogates_round_trip_from_any_sender(make_engine, db_url):
    """Failure window (PostgreSQL): a message whose payload held U+0000 was
    recorded, but reading it back through a JSON cast failed, so its sender
    got a StoreError (and a retry recorded it again), and every later
    message to the run failed the same way."""
    driver = make_engine(listener)
    handle = driver.start(listener, 2 * len(HOSTILE_PAYLOADS), id="listens")
    outsider = make_engine(url=db_url, passive=True)  # not the run's driver: posts for it
    seqs = []
    for i, payload in enumerate(HOSTILE_PAYLOADS):
        seqs.append(outsider.signal("listens", "m", payload, idempotency_key=f"k-{i}"))
        # A retry after a lost reply is recorded once.
        assert outsider.signal("listens", "m", payload, idempotency_key=f"k-{i}") == seqs[-1]
    for i, payload in enumerate(HOSTILE_PAYLOADS):
        driver.signal("listens", "m", payload, idempotency_key=f"d-{i}")
        assert driver.signal("listens", "m", payload, idempotency_key=f"d-{i}") > 0
    driver.signal("listens", "stop")
    assert handle.result(30) == HOSTILE_PAYLOADS * 2
    received = [e for e in driver.history("listens") if e.type == ev.MESSAGE_RECEIVED and e["name"] == "m"]
    assert [e["index"] for e in received] == list(range(2 * len(HOSTILE_PAYLOADS)))


# -- errors that fail to describe themselves ----------------------------------------------------
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ of this error raises")


def raises_unprintable(key):
    counted(key)
    raise Unprintable()


def raises_system_exit(key):
    counted(key)
    raise SystemExit(3)


@aion.workflow(name="hostile.unprintable")
def unprintable(ctx, which):
    step = raises_unprintable if which == "str" else raises_system_exit
    try:
        ctx.step(step, ctx.workflow_id, retry=aion.Retry(max_attempts=3, initial_interval=0.01))
    except aion.StepError as exc:
        return [exc.error_type, exc.message, exc.attempts]
    return "not reached"


@pytest.mark.parametrize("which", ["str", "exit"])
def test_a_step_error_that_cannot_be_described_is_recorded_and_retried_per_policy(make_engine, which):
    """Failure window: str() of a step's exception raised while its failure
    was recorded; result() raised StoreError at once, the run stayed
    running, and the step ran again every 5 s, past its retry limit."""
    _counts.clear()
    engine = make_engine(unprintable)
    error_type, message, attempts = engine.start(unprintable, which, id=f"bad-{which}").result(15)
    assert attempts == 3 and _counts == {f"bad-{which}": 3}
    if which == "str":
        assert error_type == "test_hostile_input.Unprintable"
        assert "str() of this Unprintable raised RuntimeError" in message
    else:
        assert (error_type, message) == ("SystemExit", "3")
    assert engine.describe(f"bad-{which}").status == "completed"


@aion.workflow(name="hostile.body_raises")
def body_raises(ctx, what):
    counted(f"body/{ctx.workflow_id}")
    ctx.step(counted, f"step/{ctx.workflow_id}")
    if what == "greenlet_exit":
        import greenlet
        raise greenlet.GreenletExit("from the workflow's own code")
    if what == "system_exit":
        raise SystemExit(2)
    raise Unprintable()


@pytest.mark.parametrize("what", ["greenlet_exit", "system_exit", "unprintable"])
def test_a_body_that_raises_a_control_flow_error_fails_once(make_engine, what):
    """Failure window: a workflow body raised GreenletExit itself; the
    engine took it for a kill, left the run running and replayed it again
    and again, forever. (And an error whose str() raises broke the record
    of the run's failure.)"""
    _counts.clear()
    engine = make_engine(body_raises)
    with pytest.raises(aion.WorkflowFailed) as failed:
        engine.start(body_raises, what, id=f"raises-{what}").result(10)
    history = engine.history(f"raises-{what}")
    assert [e.type for e in history][-1] == ev.WORKFLOW_FAILED
    assert sum(e.type == ev.WORKFLOW_FAILED for e in history) == 1
    assert _counts[f"step/raises-{what}"] == 1
    time.sleep(0.5)  # a replay loop would have run the body again by now
    assert _counts[f"body/raises-{what}"] == 1
    assert engine.describe(f"raises-{what}").status == "failed"
    assert {"greenlet_exit": "GreenletExit", "system_exit": "SystemExit",
            "unprintable": "Unprintable"}[what] in str(failed.value)


@aion.workflow(name="hostile.queried")
def queried(ctx):
    def explode(kind):
        raise {"exit": SystemExit(1), "interrupt": KeyboardInterrupt(),
               "unprintable": Unprintable()}[kind]

    ctx.set_query("explode", explode)
    ctx.set_query("ok", lambda: "fine")
    return ctx.receive("stop")


def test_a_query_handler_that_raises_system_exit_fails_the_query_not_the_engine(make_engine):
    """Failure window: a query handler runs on the hub thread; SystemExit or
    KeyboardInterrupt from it ended the hub thread, so every run of the
    engine stopped and its SQLite lock was never released."""
    engine = make_engine(queried)
    handle = engine.start(queried, id="queried")
    for kind in ("exit", "interrupt", "unprintable"):
        with pytest.raises(aion.QueryFailed, match="failed"):
            engine.query("queried", "explode", kind, timeout=5)
        assert engine.query("queried", "ok", timeout=5) == "fine"
    engine.signal("queried", "stop", "done")
    assert handle.result(10) == "done"
    assert engine.start(steady, 1, id="after").result(10) == 1


# -- shutdown and the step pool ------------------------------------------------------------------
def slow_counted(key):
    counted(key)
    time.sleep(0.2)
    return key


@aion.workflow(name="hostile.slow_steps")
def slow_steps(ctx, n):
    return [ctx.step(slow_counted, f"{ctx.workflow_id}/{i}") for i in range(n)]


def test_no_step_starts_after_shutdown_and_none_runs_twice_after_a_restart(make_engine):
    """Failure window: shutdown() returned while the step pool still held
    queued steps; they started afterwards, their records were refused by the
    closed writer, and the next engine ran them again (2-3 times)."""
    _counts.clear()
    first = make_engine(slow_steps, step_workers=2)
    for i in range(12):
        first.start(slow_steps, 2, id=f"slow-{i}")
    wait_until = time.monotonic() + 10
    while sum(_counts.values()) < 2 and time.monotonic() < wait_until:
        time.sleep(0.005)
    first.shutdown()
    after_shutdown = dict(_counts)
    time.sleep(0.6)  # queued steps would have started by now
    assert _counts == after_shutdown, "steps started after shutdown() returned"
    second = make_engine(slow_steps, step_workers=8)
    results = [second.result(f"slow-{i}", timeout=30) for i in range(12)]
    assert results == [[f"slow-{i}/0", f"slow-{i}/1"] for i in range(12)]
    doubled = {k: v for k, v in _counts.items() if v != 1}
    assert doubled == {}, f"steps that ran more than once: {doubled}"


def test_a_step_still_running_after_the_grace_is_abandoned_and_named(make_engine, caplog):
    gate = NativeGate()

    def held():
        gate.wait(10)
        return "late"

    @aion.workflow(name="hostile.held")
    def held_run(ctx):
        return ctx.step(held)

    engine = make_engine(held_run, step_grace=0.2)
    engine.start(held_run, id="held")
    deadline = time.monotonic() + 10
    while not engine.describe("held").steps_running and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    engine.shutdown()
    assert time.monotonic() - began < 5
    gate.set()
    assert "step 1 (" in caplog.text and "'held'" in caplog.text and "abandoned" in caplog.text


# -- step timeouts --------------------------------------------------------------------------------
def hangs(key, release):
    counted(key)
    release.wait(30)
    return "returned late"


@aion.workflow(name="hostile.hanging")
def hanging(ctx, attempts):
    try:
        return ctx.step(hangs, ctx.workflow_id, _releases[ctx.workflow_id], timeout=0.3,
                        retry=aion.Retry(max_attempts=attempts, initial_interval=0.01))
    except aion.StepError as exc:
        return [exc.error_type, exc.attempts]


_releases: dict = {}


def test_a_hung_step_times_out_is_retried_and_shows_in_describe(make_engine):
    """A step that never returns held its pool thread and its run forever;
    with a timeout each attempt is recorded as failed (retryable), the run
    goes on, and describe() shows the step in flight and since when."""
    _counts.clear()
    release = _releases["hung"] = NativeGate()
    engine = make_engine(hanging, step_workers=2, step_grace=0)
    handle = engine.start(hanging, 3, id="hung")
    deadline = time.monotonic() + 10
    while not engine.describe("hung").steps_running and time.monotonic() < deadline:
        time.sleep(0.01)
    (running,) = engine.describe("hung").steps_running
    assert (running.step, running.attempt) == (1, 1) and "hangs" in running.name
    assert time.time() - 5 < running.since <= time.time()
    assert handle.result(15) == ["aion_green.errors.StepTimeout", 3]
    assert _counts["hung"] == 3
    failures = [e for e in engine.history("hung") if e.type == ev.STEP_FAILED]
    assert [(e["attempt"], e["retryable"]) for e in failures] == [(1, True), (2, True), (3, False)]
    assert "did not return within 0.3 s" in failures[0]["error"]["message"]
    # Three hung threads did not shrink the pool of two: other steps still run.
    assert engine.start(steady, 3, id="still-runs").result(10) == 3
    release.set()
    time.sleep(0.2)  # the late outcomes are dropped, not recorded
    assert [e.type for e in engine.history("hung")].count(ev.STEP_COMPLETED) == 0


# -- a passive engine's result() -------------------------------------------------------------------
@aion.workflow(name="hostile.waits_for_go")
def waits_for_go(ctx):
    return ctx.receive("go")


def test_a_passive_engines_result_returns_when_another_engine_ends_the_run(make_engine, db_url):
    """Failure window: a passive engine (a tool, the CLI) waited in result()
    for a run that the driving engine finished during the wait; nothing
    told it, and result() never returned."""
    driver = make_engine(waits_for_go)
    driver.start(waits_for_go, id="watched")
    looker = make_engine(url=db_url, passive=True)
    import gevent
    waiter = gevent.spawn(looker.result, "watched", 20)
    gevent.sleep(0.3)  # the looker is waiting now
    driver.signal("watched", "go", "went")
    waiter.join(10)
    assert waiter.dead and waiter.value == "went", waiter.exception


@aion.workflow(name="hostile.echo")
def echo_args(ctx, *args):
    return [ctx.step(counted_echo, a) for a in args]


def counted_echo(value):
    return value


def test_arguments_and_results_with_nul_and_surrogates_round_trip(make_engine):
    """Text inside values (arguments, step results, results) is stored as
    escaped JSON: U+0000 and unpaired surrogates round-trip on every store."""
    engine = make_engine(echo_args)
    args = ["a\x00b", "\ud800", {"\x00": "\udfff"}, "\U0001f600"]
    assert engine.start(echo_args, *args, id="echo-hostile").result(10) == args
    assert engine.describe("echo-hostile").args == args
    started = engine.history("echo-hostile")[0]
    assert started["args"] == args


@aion.workflow(name="hostile.parallel_hang")
def parallel_hang(ctx):
    release = _releases[ctx.workflow_id]
    try:
        return ctx.parallel([aion.Step(counted_echo, "quick", timeout=5),
                             aion.Step(hangs, ctx.workflow_id, release, timeout=0.2,
                                       retry=aion.Retry(max_attempts=2, initial_interval=0.01))])
    except aion.StepError as exc:
        return [exc.error_type, exc.attempts]


def test_a_hung_step_in_a_fan_out_times_out_like_any_other(make_engine):
    _counts.clear()
    release = _releases["fan-hung"] = NativeGate()
    engine = make_engine(parallel_hang, step_grace=0)
    try:
        assert engine.start(parallel_hang, id="fan-hung").result(15) == [
            "aion_green.errors.StepTimeout", 2]
        assert _counts["fan-hung"] == 2
    finally:
        release.set()
    with pytest.raises(ValueError, match="timeout"):
        aion.Step(counted_echo, 1, timeout=0)


# -- durations that are not numbers ------------------------------------------------------------
@aion.workflow(name="hostile.durations")
def durations(ctx, kind, text):
    value = float(text)  # computed in the body: arguments cannot hold NaN (not JSON)
    if kind == "sleep":
        ctx.sleep(value)
    elif kind == "receive":
        ctx.receive("never", timeout=value)
    elif kind == "scope":
        with ctx.timeout(value):
            ctx.sleep(0.01)
    else:
        ctx.step(counted_echo, 1, timeout=value)
    return "not reached"


@pytest.mark.parametrize("kind", ["sleep", "receive", "scope", "step"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_duration_that_is_not_a_finite_number_fails_the_run_at_the_call(make_engine, kind, text):
    """Failure window: ctx.sleep(float('nan')) recorded a TimerStarted whose
    deadline the store refused (NOT NULL): the run stopped, and stopped
    again at every restart; an infinite one was recorded as non-JSON."""
    engine = make_engine(durations)
    wid = f"dur-{kind}-{text}"
    with pytest.raises(aion.WorkflowFailed, match="finite"):
        engine.start(durations, kind, text, id=wid).result(10)
    types = [e.type for e in engine.history(wid)]
    assert types == [ev.WORKFLOW_STARTED, ev.WORKFLOW_FAILED]


def test_a_retry_policy_with_non_finite_numbers_is_refused():
    for bad in ({"initial_interval": float("nan")}, {"max_interval": float("inf")},
                {"backoff": float("nan")}, {"jitter": float("inf")}):
        with pytest.raises(ValueError, match="finite"):
            aion.Retry(**bad)


# -- result() waits that time out ----------------------------------------------------------------
def test_result_with_a_timeout_tells_an_unknown_id_and_leaves_no_waiter_behind(make_engine, db_url):
    """Failure windows: result('unknown', timeout=0) raised Timeout ('it goes
    on running') for an id that never existed (over HTTP a 504, not a 404);
    and every timed-out wait left its waiter in the engine until the run
    ended, so a client polling a run that waits for days grew the engine
    by one waiter per poll."""
    engine = make_engine(waits_for_go)
    with pytest.raises(aion.WorkflowNotFound):
        engine.result("never-was", timeout=0)
    with pytest.raises(aion.ConfigurationError, match="timeout"):
        engine.result("never-was", timeout=-1)
    engine.start(waits_for_go, id="polled")
    for _ in range(50):
        with pytest.raises(aion.Timeout):
            engine.result("polled", timeout=0.01)
    deadline = time.monotonic() + 5
    while engine._epoch.waiters and time.monotonic() < deadline:  # (white-box: the engine's waiter table)
        time.sleep(0.01)
    assert engine._epoch.waiters == {}
    engine.signal("polled", "go", 7)
    assert engine.result("polled", timeout=10) == 7
    # A finished run asked with no time to wait, from an engine that did not
    # see it end, answers from the store.
    other = make_engine(url=db_url, passive=True)
    assert other.result("polled", timeout=0) == 7


def test_counts_and_cursors_no_store_can_hold_are_refused_clearly(make_engine):
    """An int past 64 bits reached SQLite as an OverflowError (not ours)."""
    engine = make_engine(steady)
    engine.start(steady, 0, id="counted").result(10)
    for call in (lambda: engine.list(limit=10 ** 20), lambda: engine.list(limit=0),
                 lambda: engine.list(limit=True), lambda: engine.history("counted", after_seq=10 ** 30),
                 lambda: engine.history("counted", after_seq=-1),
                 lambda: engine.history("counted", limit=10 ** 19),
                 lambda: engine.list(after_id="\ud800")):
        with pytest.raises(aion.ConfigurationError):
            call()
    assert [e.type for e in engine.history("counted", after_seq=1, limit=1)] == [ev.WORKFLOW_COMPLETED]
