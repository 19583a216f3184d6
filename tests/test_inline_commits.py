"""A step's record committed by the pool thread that ran it (issue 21):
on SQLite, when the store writer is idle and the run has nothing else in
flight, the pool thread commits the record itself instead of handing it to
the writer thread (one thread wake less per sequential step). What a user
relies on is unchanged: every record durable before the run goes on, each
run's records in order whatever else is recorded for it meanwhile, and an
outage waited out with nothing run twice."""
import threading

from conftest import STORE, wait_until

import aion_green as aion
from aion_green.core import events as ev
from aion_green.core.errors import StoreUnavailable

CALLS: dict = {}


def bump(key, i):
    CALLS[key] = CALLS.get(key, 0) + 1
    return i


@aion.workflow(name="inline.steps")
def steps(ctx, key, n):
    return sum(ctx.step(bump, key, i) for i in range(n))


@aion.workflow(name="inline.steps_and_mail")
def steps_and_mail(ctx, key, n, letters):
    total = sum(ctx.step(bump, key, i) for i in range(n))
    got = [ctx.receive("letter", timeout=60) for _ in range(letters)]
    return total, got


def _history(engine, wid):
    return engine.history(wid)


def test_sequential_steps_are_committed_by_their_pool_threads_on_sqlite(make_engine):
    engine = make_engine(steps)
    assert engine.start(steps, "seq", 60, id="seq").result(timeout=60) == sum(range(60))
    inline = engine._epoch.writer.inline_commits
    if STORE != "postgres":  # (leased or not)
        assert inline >= 50, inline  # (the first may meet the writer busy)
    else:
        assert inline == 0  # a PostgreSQL commit is a round trip: the writer keeps them all
    history = _history(engine, "seq")
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert [e.data["result"] for e in history if e.type == ev.STEP_COMPLETED] == list(range(60))
    assert CALLS["seq"] == 60


def test_messages_recorded_meanwhile_keep_each_run_s_records_in_order(make_engine):
    """Two threads signal the runs while their steps record: a step's
    record must not pass a message queued before it (it would conflict with
    it and fail the run), nor a message pass a record committing."""
    engine = make_engine(steps_and_mail)
    # (One run: with two or more, the writer is seldom idle, and their
    # records go through it.)
    runs, n, letters = 1, 150, 60
    handles = [engine.start(steps_and_mail, f"mail{r}", n, letters, id=f"mail{r}")
               for r in range(runs)]

    def post(parity):
        for k in range(letters):
            for r in range(runs):
                if (k + r) % 2 == parity:
                    engine.signal(f"mail{r}", "letter", k)

    posters = [threading.Thread(target=post, args=(p,)) for p in (0, 1)]
    for t in posters:
        t.start()
    for t in posters:
        t.join(60)
    for r, handle in enumerate(handles):
        total, got = handle.result(timeout=60)
        assert total == sum(range(n))
        assert sorted(got) == list(range(letters)), got
        history = _history(engine, f"mail{r}")
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        assert sum(1 for e in history if e.type == ev.STEP_COMPLETED) == n
        assert CALLS[f"mail{r}"] == n
    if STORE != "postgres":
        assert engine._epoch.writer.inline_commits > 0


def test_an_outage_met_by_a_pool_thread_s_commit_is_waited_out_and_nothing_runs_twice(make_engine):
    """The pool thread meets the outage (a locked or full store): it waits it
    out as the writer thread would, with the run parked, and the run's
    later records follow once the store takes writes again."""
    engine = make_engine(steps)
    assert engine.start(steps, "warm", 2, id="warm").result(timeout=30) == 1
    writer = engine._epoch.writer
    real = writer.store.write_batch
    failures = {"left": 3}

    def flaky(ops):
        if failures["left"] and any(getattr(op, "workflow_id", "") == "outage" for op in ops) \
                and any(getattr(op, "events", None) for op in ops):
            failures["left"] -= 1
            raise StoreUnavailable("the disk is full (a test's outage)")
        return real(ops)

    before = writer.inline_commits
    writer.store.write_batch = flaky
    try:
        handle = engine.start(steps, "outage", 5, id="outage")
        assert handle.result(timeout=30) == sum(range(5))
    finally:
        writer.store.write_batch = real
    assert failures["left"] == 0
    if STORE != "postgres":  # (met by a pool thread committing its step's record)
        assert writer.inline_commits > before
    assert CALLS["outage"] == 5
    history = _history(engine, "outage")
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    wait_until(lambda: writer.unavailable is None, what="the outage to be over")


class _IdleWriter:
    """A store writer that is always idle: it would let any record be
    committed inline; what the recorder hands it, and how, is noted."""

    def __init__(self):
        self.calls = []
        self.queued = []

    def begin_inline(self):
        return True

    def submit_append(self, wid, expected, events, done, fence=None):
        self.calls.append(("queued", expected, events[0].type))
        self.queued.append((expected, events, done))

    def write_inline(self, wid, expected, events, done, fence=None):
        self.calls.append(("inline", expected, events[0].type))
        done(expected + len(events), None)


def test_a_step_s_record_is_never_committed_inline_past_a_record_still_in_flight():
    """Unit: the record of a step waits its turn (it is queued behind) while
    an earlier record of its run is not yet durable, however idle the writer
    looks: the writer may hold that earlier record already taken off its
    queue, not yet committed."""
    from aion_green.runtime.recorder import Recorder

    writer, told = _IdleWriter(), []
    recorder = Recorder("w", writer, lambda wid, events, head, error: told.append((head, error)))
    recorder.init(1, {}, set())
    step = [ev.NewEvent(ev.STEP_COMPLETED, 1.0, {"step": 1})]
    assert recorder.submit_events(step, inline=True) == 2  # nothing in flight: inline
    assert recorder.submit_events([ev.NewEvent(ev.TIMER_STARTED, 2.0, {"timer": "t", "fire_at": 9.0})]) == 3
    assert recorder.submit_events([ev.NewEvent(ev.STEP_COMPLETED, 3.0, {"step": 2})], inline=True) == 4
    assert writer.calls == [("inline", 1, ev.STEP_COMPLETED), ("queued", 2, ev.TIMER_STARTED),
                            ("queued", 3, ev.STEP_COMPLETED)]
    for expected, events, done in writer.queued:  # the writer commits both
        done(expected + len(events), None)
    assert recorder.submit_events([ev.NewEvent(ev.STEP_COMPLETED, 4.0, {"step": 3})], inline=True) == 5
    assert writer.calls[-1] == ("inline", 4, ev.STEP_COMPLETED)
    assert told == [(2, None), (3, None), (4, None), (5, None)]
    # The hub's own commands are never committed inline (a commit blocks).
    assert recorder.submit_events([ev.NewEvent(ev.STEP_COMPLETED, 5.0, {"step": 4})]) == 6
    assert writer.calls[-1] == ("queued", 5, ev.STEP_COMPLETED)
