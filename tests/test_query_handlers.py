"""Query handlers run off the hub's critical path, with a deadline (issue 21,
"fair under load"): a slow handler holds up neither the engine's other runs
nor, past the query's deadline, its own. The module runs in both gevent
modes: directly, and from the plain suite once more in a subprocess under
``gevent.monkey.patch_all()``."""
import functools
import time

import pytest
from conftest import PATCHED, ROOT, STORE, NativeGate, run_python, wait_until
from gevent import monkey

import aion_green as aion
from aion_green.core.clock import monotonic
from aion_green.runtime.queries import QUERY_THREADS

# A sleep that blocks its native thread in both gevent modes: on the hub
# thread it froze every run of the engine.
blocking_sleep = monkey.get_original("time", "sleep")

ticks: list[float] = []


def tick():
    ticks.append(monotonic())
    return len(ticks)


def echo(x):
    return x


@aion.workflow(name="tests.query_handlers.ticking")
def ticking(ctx, naps):
    for _ in range(naps):
        ctx.step(tick)
        ctx.sleep(0.02)
    return naps


@aion.workflow(name="tests.query_handlers.slow_to_answer")
def slow_to_answer(ctx):
    state = {"steps": 0}
    ctx.set_query("stalls", lambda seconds: blocking_sleep(seconds) or state["steps"])
    ctx.set_query("steps", lambda: state["steps"])
    while ctx.receive("more") is not None:
        state["steps"] = ctx.step(echo, state["steps"] + 1)
    return state["steps"]


def test_a_handler_that_blocks_its_thread_holds_up_no_other_run(make_engine):
    """The window: a handler blocks (an unpatched time.sleep, 2 s) while
    another run sleeps on timers and runs steps. On the hub thread this froze
    every run for the whole 2 s; on a query thread the other run keeps its
    pace, the caller gets the deadline error, and the same run answers its
    next query at once."""
    engine = make_engine(ticking, slow_to_answer)
    ticks.clear()
    slow = engine.start(slow_to_answer, id="slow")
    wait_until(lambda: _answers(engine, "slow", "steps") == 0, what="the query to exist")
    engine.start(ticking, 1000, id="ticking")
    wait_until(lambda: len(ticks) >= 3, what="the ticking run to start")

    began = monotonic()
    with pytest.raises(aion.Timeout) as raised:
        engine.query("slow", "stalls", 2.0, timeout=0.5)
    waited = monotonic() - began
    message = str(raised.value)
    assert "'stalls'" in message and "'slow'" in message and "0.5 s" in message
    assert "still running" in message and slow.run_id in message
    assert waited < 1.5, f"the caller waited {waited:.2f} s for a 0.5 s deadline"

    # The handler is still blocked: the same run answers another query now.
    assert engine.query("slow", "steps", timeout=5) == 0
    # ... and, the deadline past, it goes on with its own work.
    engine.signal("slow", "more", 1)
    wait_until(lambda: _answers(engine, "slow", "steps") == 1, timeout=5,
               what="the queried run to go on past the query's deadline")
    stalled_until = began + 2.0
    wait_until(lambda: monotonic() > stalled_until + 0.1, timeout=5)
    during = [t for t in ticks if began <= t <= stalled_until]
    # 20 ms naps: ~60 ticks in 2 s on an idle machine; frozen, there were none.
    assert len(during) >= 10, f"only {len(during)} ticks while the handler blocked"
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert max(gaps) < 1.0, f"the other run stood still {max(gaps):.2f} s"

    engine.signal("slow", "more", None)
    assert slow.result(10) == 1
    # (The ticking run is left to the engine's shutdown: cancelling it while
    # a step attempt is in flight can fail its result with EngineClosed, a
    # race of main's that this test is not about.)
    assert engine.describe("ticking").status == "running"


def _answers(engine, wid, name):
    try:
        return engine.query(wid, name, timeout=5)
    except aion.QueryFailed:  # asked before the workflow set its query
        return None


def test_a_run_stands_still_while_its_handler_reads_it(make_engine):
    """A handler reads the run as it stood when the query reached it: the
    run's greenlet, woken by its step's record, does not resume until the
    handler returned (a handler on another thread could otherwise see the
    state change between two reads)."""
    gate = NativeGate()

    @aion.workflow(name="tests.query_handlers.counting")
    def counting(ctx):
        state = {"n": 0}

        def twice():
            first = state["n"]
            blocking_sleep(0.3)
            return [first, state["n"]]

        ctx.set_query("twice", twice)
        ctx.set_query("n", lambda: state["n"])
        while state["n"] < 200:
            state["n"] = ctx.step(echo, state["n"] + 1)
            if state["n"] == 5:
                ctx.step(gate.wait, 10)
        return state["n"]

    engine = make_engine(counting)
    handle = engine.start(counting, id="counting")
    wait_until(lambda: _answers(engine, "counting", "n") == 5, what="five steps")
    gate.set()
    for _ in range(3):
        first, second = engine.query("counting", "twice", timeout=10)
        assert first == second
    assert handle.result(30) == 200


def test_when_every_query_thread_is_held_the_caller_is_told_why(make_engine):
    """Every query thread is held by a handler that does not return: a
    further query waits for a thread, its caller gets the deadline error
    naming the held handlers, and the engine's runs go on. Once the handlers
    return, queries are answered again, and the one that gave up never runs."""
    release = NativeGate()
    ran = []

    @aion.workflow(name="tests.query_handlers.held")
    def held(ctx):
        ctx.set_query("hang", lambda: release.wait(30))
        ctx.set_query("late", lambda: ran.append("late"))
        ctx.set_query("ping", lambda: "pong")
        ctx.receive("stop")
        return ctx.step(echo, "stopped")

    engine = make_engine(held)
    handle = engine.start(held, id="held")
    wait_until(lambda: _answers(engine, "held", "ping") == "pong", what="the query to exist")
    for _ in range(QUERY_THREADS):
        with pytest.raises(aion.Timeout, match="still running"):
            engine.query("held", "hang", timeout=0.2)
    with pytest.raises(aion.Timeout, match=f"never started, all {QUERY_THREADS} query threads"):
        engine.query("held", "late", timeout=0.3)
    engine.signal("held", "stop")
    assert handle.result(10) == "stopped"  # the run is not held up
    release.set()
    engine2 = engine  # queries of a finished run are refused, not hung
    with pytest.raises(aion.WorkflowNotRunning):
        engine2.query("held", "ping", timeout=5)
    time.sleep(0.2)
    assert ran == []


def test_system_exit_in_a_handler_fails_only_that_query(make_engine):
    @aion.workflow(name="tests.query_handlers.exiting")
    def exiting(ctx):
        ctx.set_query("exit", lambda: (_ for _ in ()).throw(SystemExit(3)))
        ctx.set_query("ping", lambda: "pong")
        ctx.receive("stop")
        return "ended"

    engine = make_engine(exiting)
    handle = engine.start(exiting, id="exiting")
    wait_until(lambda: _answers(engine, "exiting", "ping") == "pong", what="the query to exist")
    for _ in range(QUERY_THREADS + 1):  # every query thread survives it
        with pytest.raises(aion.QueryFailed, match="SystemExit"):
            engine.query("exiting", "exit", timeout=5)
    assert engine.query("exiting", "ping", timeout=5) == "pong"
    engine.signal("exiting", "stop")
    assert handle.result(10) == "ended"


@pytest.mark.skipif(PATCHED or STORE != "sqlite",
                    reason="this suite already runs under patch_all; the subprocess uses SQLite")
def test_query_handlers_under_patch_all_in_a_subprocess():
    proc = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not under_patch_all",
                       str(ROOT / "tests" / "test_query_handlers.py")],
                      patched=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "failed" not in proc.stdout


@aion.workflow(name="tests.query_handlers.waiting")
def waiting(ctx, value):
    ctx.set_query("me", lambda: [ctx.workflow_id, value])
    return ctx.receive("go", timeout=120)


def test_a_run_evicted_while_a_handler_reads_it_unwinds_at_once_and_wakes(make_engine):
    """Failure window: a run parked on a far wait is evicted at once (the
    default evict_after), brought back by a query, and evicted again while
    its handler's gate was up; it waited at the gate instead of unwinding,
    so the message that followed reached a run half gone, and it never woke
    (under patch_all: in this shape, every time)."""
    for i in range(6):
        engine = make_engine(waiting)
        handles = [engine.start(waiting, n, id=f"w{i}-{n}") for n in range(3)]
        wait_until(functools.partial(_answered, engine, f"w{i}-1", [f"w{i}-1", 1]),
                   what="the run to answer")
        engine.signal(f"w{i}-1", "go", i)
        assert handles[1].result(10) == i
        engine.shutdown()


def _answered(engine, wid, expected):
    return _answers(engine, wid, "me") == expected
