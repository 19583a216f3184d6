"""Schedules: the cron parser, interval firing, each overlap policy, each
catch-up policy across a restart (freezegun), continue-as-new with a run
still tracked, idempotency, unschedule and bad input."""
from datetime import datetime, timedelta, timezone

import pytest
from conftest import open_test_store, wait_until
from freezegun import freeze_time

import aion_green as aion
from aion_green.core import events as ev
from aion_green.runtime import schedules
from aion_green.runtime.triggers import Cron, Interval

UTC = timezone.utc


def at(*args):
    return datetime(*args, tzinfo=UTC)


def fire_id(schedule_id, when):
    when = when.astimezone(UTC)
    micro = f".{when.microsecond:06d}" if when.microsecond else ""
    return f"{schedule_id}@{when.strftime('%Y-%m-%dT%H:%M:%S')}{micro}Z"


@aion.workflow(name="test_schedules.job")
def job(ctx, tag):
    return [tag, ctx.workflow_id]


@aion.workflow(name="test_schedules.held")
def held(ctx):
    return ctx.receive("go")


def runs_of(engine, fn):
    """{workflow id: status} of the runs of ``fn``."""
    return {r.workflow_id: r.status for r in engine.list(workflow_type=fn, limit=1000)}


def wait_next_fire(engine, schedule_id, when):
    """Until the schedule's current run waits for the fire time ``when``:
    it has handled every fire before it."""
    def waiting():
        return any(e.type == ev.TIMER_STARTED and e["fire_at"] == when.timestamp()
                   for e in engine.history(schedule_id))
    wait_until(waiting, what=f"schedule {schedule_id!r} to wait for {when.isoformat()}")


# -- the cron parser --------------------------------------------------------------------------
def fires(cron, after, n):
    out = []
    for _ in range(n):
        after = cron.next_after(after)
        out.append(after)
    return out


def test_cron_day_31_skips_the_short_months_and_leap_day_waits_for_a_leap_year():
    assert fires(Cron("0 0 31 * *"), at(2031, 1, 31), 4) == [
        at(2031, 3, 31), at(2031, 5, 31), at(2031, 7, 31), at(2031, 8, 31)]
    assert Cron("0 0 29 2 *").next_after(at(2029, 3, 1)) == at(2032, 2, 29)
    # The last minute of a year rolls into the next one.
    assert Cron("59 23 31 12 *").next_after(at(2031, 12, 31, 23, 59)) == at(2032, 12, 31, 23, 59)


def test_cron_steps_ranges_and_lists():
    assert fires(Cron("*/20 * * * *"), at(2031, 3, 1, 10, 5), 4) == [
        at(2031, 3, 1, 10, 20), at(2031, 3, 1, 10, 40), at(2031, 3, 1, 11, 0), at(2031, 3, 1, 11, 20)]
    assert fires(Cron("5-50/15 9 * * *"), at(2031, 3, 1, 9, 0), 5) == [
        at(2031, 3, 1, 9, 5), at(2031, 3, 1, 9, 20), at(2031, 3, 1, 9, 35), at(2031, 3, 1, 9, 50),
        at(2031, 3, 2, 9, 5)]
    assert fires(Cron("0 8,12/6 * * *"), at(2031, 3, 1), 4) == [
        at(2031, 3, 1, 8), at(2031, 3, 1, 12), at(2031, 3, 1, 18), at(2031, 3, 2, 8)]
    # Strictly after: a fire time is never given twice.
    assert Cron("0 * * * *").next_after(at(2031, 3, 1, 10)) == at(2031, 3, 1, 11)
    assert Cron("0 * * * *").next_after(at(2031, 3, 1, 9, 59, 59, 999999)) == at(2031, 3, 1, 10)


def test_cron_days_of_the_week_names_and_the_either_rule():
    # 2031-03-07 is a Friday.
    assert fires(Cron("0 9 * * MON-FRI"), at(2031, 3, 7, 10), 2) == [at(2031, 3, 10, 9), at(2031, 3, 11, 9)]
    assert Cron("0 0 * * 7").next_after(at(2031, 3, 7)) == at(2031, 3, 9)  # 7 is Sunday, like 0
    assert Cron("0 0 * * sun").next_after(at(2031, 3, 7)) == at(2031, 3, 9)
    assert Cron("0 0 1 jan-feb *").next_after(at(2031, 1, 1)) == at(2031, 2, 1)
    # Both day fields restricted: either matches (the 13th, and every Friday).
    assert fires(Cron("0 0 13 * FRI"), at(2031, 3, 7), 3) == [
        at(2031, 3, 13), at(2031, 3, 14), at(2031, 3, 21)]
    # One of them '*': both must match (Friday the 13th only).
    assert Cron("0 0 13 * */1").next_after(at(2031, 1, 1)) == at(2031, 1, 13)
    assert Cron("@daily").next_after(at(2031, 3, 7, 5)) == at(2031, 3, 8)
    assert Cron("@hourly").next_after(at(2031, 3, 7, 5, 1)) == at(2031, 3, 7, 6)


def test_cron_in_a_timezone_follows_daylight_saving():
    paris = Cron("0 9 * * *", "Europe/Paris")
    assert paris.next_after(at(2031, 1, 10)) == at(2031, 1, 10, 8)  # UTC+1 in winter
    assert paris.next_after(at(2031, 7, 10)) == at(2031, 7, 10, 7)  # UTC+2 in summer
    # 02:30 does not exist in New York on 2031-03-09: it fires at 03:30 EDT.
    assert Cron("30 2 * * *", "America/New_York").next_after(at(2031, 3, 9)) == at(2031, 3, 9, 7, 30)


@pytest.mark.parametrize("expression, says", [
    ("61 * * * *", "minute field '61': 61 is out of range"),
    ("* * *", "has 3 field"),
    ("0 0 * * FOO", "day-of-week field 'FOO'"),
    ("5-1 * * * *", "runs backwards"),
    ("*/0 * * * *", "step '0'"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 1,,2 * *", "'' is not a number"),
])
def test_a_bad_cron_expression_says_which_field_and_what_it_takes(expression, says):
    with pytest.raises(aion.ConfigurationError, match=says):
        Cron(expression)


def test_interval_fires_on_its_grid_from_the_anchor():
    every = Interval(timedelta(minutes=10), at(2031, 3, 1, 12))
    assert every.next_after(at(2031, 3, 1, 11)) == at(2031, 3, 1, 12)
    assert every.next_after(at(2031, 3, 1, 12)) == at(2031, 3, 1, 12, 10)
    assert every.next_after(at(2031, 3, 1, 12, 25)) == at(2031, 3, 1, 12, 30)


# -- firing -------------------------------------------------------------------------------------
def test_an_interval_schedule_starts_a_run_per_period(aion_engine, aion_time):
    t0 = aion_time.now()
    handle = aion_engine.schedule("tick", job, "x", every=timedelta(minutes=10))
    assert handle.describe().workflow_type == aion.SCHEDULE_WORKFLOW
    wait_next_fire(aion_engine, "tick", t0 + timedelta(minutes=10))
    aion_time.advance(timedelta(minutes=9))
    assert runs_of(aion_engine, job) == {}
    for k in (1, 2, 3):
        aion_time.advance(timedelta(minutes=10 if k > 1 else 1))
        wait_next_fire(aion_engine, "tick", t0 + timedelta(minutes=10 * (k + 1)))
    expected = [fire_id("tick", t0 + timedelta(minutes=10 * k)) for k in (1, 2, 3)]
    assert sorted(runs_of(aion_engine, job)) == expected
    for wid in expected:
        assert aion_engine.result(wid, timeout=10) == ["x", wid]
    assert aion_engine.query("tick", "schedule")["next"] == (t0 + timedelta(minutes=40)).isoformat()


def test_an_interval_with_start_at_fires_first_at_start_at(aion_engine, aion_time):
    start = aion_time.now().replace(microsecond=0) + timedelta(minutes=5)
    aion_engine.schedule("hourly", job, "y", every=3600, start_at=start)
    aion_time.advance(timedelta(minutes=5))
    wait_next_fire(aion_engine, "hourly", start + timedelta(hours=1))
    assert list(runs_of(aion_engine, job)) == [fire_id("hourly", start)]
    aion_time.advance(timedelta(hours=1))
    wait_next_fire(aion_engine, "hourly", start + timedelta(hours=2))
    assert sorted(runs_of(aion_engine, job)) == [fire_id("hourly", start),
                                                 fire_id("hourly", start + timedelta(hours=1))]


# -- overlap ------------------------------------------------------------------------------------
class EveryMinute:
    """A schedule of ``held`` every minute, from 30 s after now."""

    def __init__(self, engine, clock, overlap, schedule_id="s"):
        self.engine, self.clock, self.schedule_id = engine, clock, schedule_id
        self.first = clock.now().replace(microsecond=0) + timedelta(seconds=30)
        engine.schedule(schedule_id, held, every=60, start_at=self.first, overlap=overlap)
        self.ids = [fire_id(schedule_id, self.at(k)) for k in range(4)]
        self.due = 0
        wait_next_fire(engine, schedule_id, self.at(0))

    def at(self, k):
        return self.first + timedelta(minutes=k)

    def advance(self):
        """A minute on: the next fire comes due; returns once the schedule
        has handled it (it waits for the fire after)."""
        self.clock.advance(60)
        self.due += 1
        wait_next_fire(self.engine, self.schedule_id, self.at(self.due))


def recorded_end(engine, schedule_id, child_id):
    return any(e.type in (ev.CHILD_COMPLETED, ev.CHILD_FAILED) and e["id"] == child_id
               for e in engine.history(schedule_id))


def test_overlap_skip_drops_a_fire_while_the_last_run_runs(aion_engine, aion_time):
    every = EveryMinute(aion_engine, aion_time, "skip")
    f1, f2, f3, _ = every.ids
    every.advance()
    every.advance()  # f2 is dropped
    assert runs_of(aion_engine, held) == {f1: "running"}
    aion_engine.signal(f1, "go", 1)
    wait_until(lambda: recorded_end(aion_engine, "s", f1), what="the schedule to see the end")
    every.advance()
    assert runs_of(aion_engine, held) == {f1: "completed", f3: "running"}


def test_overlap_buffer_one_starts_one_waiting_fire_when_the_run_ends(aion_engine, aion_time):
    every = EveryMinute(aion_engine, aion_time, "buffer_one")
    f1, f2, f3, _ = every.ids
    every.advance()
    every.advance()  # f2 waits
    every.advance()  # f3 is dropped: one waits already
    assert runs_of(aion_engine, held) == {f1: "running"}
    assert aion_engine.query("s", "schedule")["pending"] == every.at(1).isoformat()
    aion_engine.signal(f1, "go", 1)
    wait_until(lambda: f2 in runs_of(aion_engine, held), what="the buffered fire to start")
    assert runs_of(aion_engine, held) == {f1: "completed", f2: "running"}
    wait_until(lambda: aion_engine.query("s", "schedule")["running"] == f2, what="f2 tracked")
    assert aion_engine.query("s", "schedule")["pending"] is None


def test_overlap_cancel_previous_cancels_the_run_then_starts_the_fire(aion_engine, aion_time):
    every = EveryMinute(aion_engine, aion_time, "cancel_previous")
    f1, f2, _, _ = every.ids
    every.advance()
    every.advance()
    wait_until(lambda: f2 in runs_of(aion_engine, held), what="the new fire to start")
    assert runs_of(aion_engine, held) == {f1: "cancelled", f2: "running"}
    with pytest.raises(aion.WorkflowCancelled, match="cancel_previous"):
        aion_engine.result(f1, timeout=10)


def test_overlap_allow_all_starts_every_fire(aion_engine, aion_time):
    every = EveryMinute(aion_engine, aion_time, "allow_all")
    f1, f2, f3, _ = every.ids
    for _ in range(3):
        every.advance()
    assert runs_of(aion_engine, held) == {f1: "running", f2: "running", f3: "running"}


# -- catch-up across a restart -------------------------------------------------------------------
@pytest.mark.parametrize("catch_up, gap, started", [
    ("all", timedelta(hours=4, minutes=30), [13, 14, 15, 16, 17]),
    ("one", timedelta(hours=4, minutes=30), [13, 17]),
    ("skip", timedelta(hours=4, minutes=30), [13]),
    ("all", timedelta(hours=4), [13, 14, 15, 16, 17]),
    ("one", timedelta(hours=4), [13, 17]),
    ("skip", timedelta(hours=4), [13, 17]),  # 17:00 is on time: only the missed ones go
])
def test_catch_up_policy_across_a_restart(make_engine, catch_up, gap, started):
    """Engine 1 runs an hourly cron schedule from 12:00 and fires 13:00;
    it stops; the clock moves past several fire times while no engine
    runs; engine 2 over the same store wakes the schedule late and starts
    exactly the runs the policy asks for, then waits for the next hour."""
    with freeze_time("2031-03-01 12:00:00") as clock:
        first = make_engine(job)
        first.schedule("hourly", job, "x", cron="0 * * * *", catch_up=catch_up, overlap="allow_all")
        wait_next_fire(first, "hourly", at(2031, 3, 1, 13))
        clock.tick(timedelta(hours=1))
        first.poke()
        wait_next_fire(first, "hourly", at(2031, 3, 1, 14))
        assert list(runs_of(first, job)) == ["hourly@2031-03-01T13:00:00Z"]
        first.shutdown()
        clock.tick(gap)
        second = make_engine(job)
        second.poke()
        wait_next_fire(second, "hourly", at(2031, 3, 1, 18))
        expected = [f"hourly@2031-03-01T{h}:00:00Z" for h in started]
        assert sorted(runs_of(second, job)) == expected
        for wid in expected:
            assert second.result(wid, timeout=10) == ["x", wid]


def test_a_missed_fire_under_overlap_skip_is_dropped_while_its_run_still_runs(make_engine):
    """Catch-up fires go through the overlap policy: with catch_up='all'
    and the 13:00 run still running, the missed 14:00 and 15:00 are dropped."""
    with freeze_time("2031-03-01 12:00:00") as clock:
        first = make_engine(held)
        first.schedule("hourly", held, cron="0 * * * *", catch_up="all", overlap="skip")
        wait_next_fire(first, "hourly", at(2031, 3, 1, 13))
        clock.tick(timedelta(hours=1))
        first.poke()
        wait_next_fire(first, "hourly", at(2031, 3, 1, 14))
        first.shutdown()
        clock.tick(timedelta(hours=2))
        second = make_engine(held)
        second.poke()
        wait_next_fire(second, "hourly", at(2031, 3, 1, 16))
        assert runs_of(second, held) == {"hourly@2031-03-01T13:00:00Z": "running"}


# -- bounded history -----------------------------------------------------------------------------
def test_the_schedule_continues_as_new_and_adopts_the_run_it_tracks(aion_engine, aion_time, monkeypatch):
    monkeypatch.setattr(schedules, "_WAKES_PER_RUN", 3)
    every = EveryMinute(aion_engine, aion_time, "skip")
    f1, f2, f3, _ = every.ids
    every.advance()  # a wake and a start
    every.advance()  # a wake: f2 dropped, and the run continues as new
    history = aion_engine.history("s")
    assert history[0]["generation"] == 2
    assert [e["id"] for e in history if e.type == ev.CHILD_STARTED] == [f1]  # adopted
    aion_engine.signal(f1, "go", 1)
    wait_until(lambda: recorded_end(aion_engine, "s", f1), what="the new run to see the end")
    every.advance()
    assert runs_of(aion_engine, held) == {f1: "completed", f3: "running"}
    assert len(aion_engine.history("s")) < 12


def test_a_long_catch_up_goes_on_across_continue_as_new(make_engine, monkeypatch):
    """catch_up='all' with more missed fires than one run may hold: the
    run continues as new part-way and the next run starts the rest."""
    monkeypatch.setattr(schedules, "_WAKES_PER_RUN", 3)
    with freeze_time("2031-03-01 12:00:00") as clock:
        first = make_engine(job)
        first.schedule("hourly", job, "x", cron="0 * * * *", catch_up="all", overlap="allow_all")
        wait_next_fire(first, "hourly", at(2031, 3, 1, 13))
        first.shutdown()
        clock.tick(timedelta(hours=7, minutes=30))
        second = make_engine(job)
        second.poke()
        wait_next_fire(second, "hourly", at(2031, 3, 1, 20))
        assert sorted(runs_of(second, job)) == [f"hourly@2031-03-01T{h}:00:00Z" for h in range(13, 20)]
        assert second.history("hourly")[0]["generation"] >= 3


# -- the API ----------------------------------------------------------------------------------------
def test_schedule_is_idempotent_by_id_and_another_spec_is_refused(aion_engine):
    one = aion_engine.schedule("nightly", job, "x", cron="0 2 * * *")
    again = aion_engine.schedule("nightly", job, "x", cron="0 2 * * *")
    assert one.workflow_id == again.workflow_id == "nightly"
    assert [r.workflow_id for r in aion_engine.list(workflow_type=aion.SCHEDULE_WORKFLOW)] == ["nightly"]
    with pytest.raises(aion.WorkflowIdConflict, match="exists with another spec"):
        aion_engine.schedule("nightly", job, "x", cron="0 3 * * *")
    aion_engine.start(held, id="plain")
    with pytest.raises(aion.WorkflowIdConflict, match="not a schedule"):
        aion_engine.schedule("plain", job, "x", cron="0 3 * * *")


def test_unschedule_stops_the_fires_and_leaves_started_runs(aion_engine, aion_time):
    t0 = aion_time.now()
    aion_engine.schedule("s", held, every=60)
    aion_time.advance(60)
    wait_next_fire(aion_engine, "s", t0 + timedelta(minutes=2))
    [first] = runs_of(aion_engine, held)
    aion_engine.unschedule("s")
    assert aion_engine.describe("s").status == "cancelled"
    aion_time.advance(60)
    assert runs_of(aion_engine, held) == {first: "running"}
    aion_engine.unschedule("s")  # again: fine
    with pytest.raises(aion.WorkflowIdConflict, match="has ended .cancelled.; a schedule id is not reused"):
        aion_engine.schedule("s", held, every=60)
    with pytest.raises(aion.ConfigurationError, match="not a schedule"):
        aion_engine.unschedule(first)
    with pytest.raises(aion.WorkflowNotFound):
        aion_engine.unschedule("nope")


@pytest.mark.parametrize("kwargs, says", [
    ({"cron": "0 * * * *", "every": 60}, "exactly one trigger"),
    ({}, "exactly one trigger"),
    ({"cron": "0 25 * * *"}, "hour field '25'"),
    ({"every": 0}, "positive"),
    ({"every": "1h"}, "positive"),
    ({"every": 60, "overlap": "queue"}, "unknown overlap policy 'queue'; choose one of skip, buffer_one"),
    ({"every": 60, "catch_up": "some"}, "unknown catch_up policy 'some'; choose one of all, one, skip"),
    ({"every": 60, "start_at": datetime(2031, 1, 1)}, "timezone-aware"),
    ({"every": 60, "timezone": "Europe/Paris"}, "cron schedules only"),
    ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
])
def test_bad_schedule_arguments_are_refused_before_anything_is_recorded(aion_engine, kwargs, says):
    with pytest.raises(aion.ConfigurationError, match=says):
        aion_engine.schedule("bad", job, "x", **kwargs)
    assert aion_engine.list() == []


@aion.workflow(name="test_schedules.scoped")
def scoped(ctx):
    outcomes = []
    for _ in range(2):
        try:
            with ctx.timeout(timedelta(hours=1)):
                outcomes.append(ctx.receive("go"))
        except aion.Timeout:
            outcomes.append("timeout")
    return outcomes


def test_a_shutdown_inside_a_timeout_block_records_no_cancel_of_its_deadline(make_engine):
    """The failure window: shutdown kills a run parked inside ``ctx.timeout``;
    the block's ``finally`` used to record TimerCancelled in the closing
    epoch, then the next epoch fired that timer and its replay diverged at
    the next timer."""
    with freeze_time("2031-03-01 12:00:00") as clock:
        first = make_engine(scoped)
        first.start(scoped, id="w")
        wait_until(lambda: ev.TIMER_STARTED in [e.type for e in first.history("w")])
        first.shutdown()
        store = open_test_store(first.url)
        try:
            assert [e.type for e in store.read("w")] == [ev.WORKFLOW_STARTED, ev.TIMER_STARTED]
        finally:
            store.close()
        clock.tick(timedelta(hours=2))
        second = make_engine(scoped)
        second.poke()
        wait_until(lambda: [e.type for e in second.history("w")].count(ev.TIMER_STARTED) == 2,
                   what="the second block's deadline")
        second.signal("w", "go", 7)
        assert second.result("w", timeout=10) == ["timeout", 7]
