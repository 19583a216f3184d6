"""The registry of engine-side child tasks (watchers, spawn recovery): arming,
self-removal, aborts, and the epoch close that kills and joins every task.

Hub-side state is observed through Futures set by the tasks themselves, never
through sleeps; a sleep inside a task only widens the window a test guards.
"""
import gc
import time

import gevent
import pytest
from conftest import NativeGate, wait_until
from gevent import monkey

from aion_green import watchers
from aion_green.core.errors import InternalError
from aion_green.hub_thread import Future, HubThread
from aion_green.watchers import ChildTaskRegistry

native_start = monkey.get_original("_thread", "start_new_thread")


@pytest.fixture
def hub():
    hub = HubThread(kill_timeout=1.0).start()
    yield hub
    hub.shutdown()


@pytest.fixture
def tasks(hub):
    tasks = ChildTaskRegistry(hub, kill_timeout=1.0)
    yield tasks
    tasks.shutdown()


def park_forever(started=None, ended=None, cleanup_wait=0.0):
    """A task that parks until killed; ``started``/``ended`` are Futures it
    sets when it first runs and when its ``finally`` completes."""

    def task():
        if started is not None:
            started.set_result(gevent.getcurrent())
        try:
            gevent.sleep(3600)
        finally:
            if cleanup_wait:
                gevent.sleep(cleanup_wait)  # cleanup that itself waits
            if ended is not None:
                ended.set_result(True)

    return task


def run_a_later_task():
    """On the hub: start a greenlet and wait until it has run. Greenlet
    starts run in the order they were scheduled, so any task whose start was
    scheduled before (and not cancelled) has run by then too."""
    gevent.spawn(lambda: None).join(5)


def on_hub(hub, fn, *args):
    """Run ``fn`` in a greenlet of the engine hub and return its result."""
    return hub.submit(fn, *args).result(5)


# -- arming ------------------------------------------------------------------------------

def test_arming_is_idempotent_per_key(tasks):
    assert tasks.arm_watch(7, "child-a", park_forever())
    assert not tasks.arm_watch(7, "child-a", park_forever())
    assert tasks.armed_watch_count() == 1
    # Another child of the same parent, or the same child of another parent,
    # is its own watcher.
    assert tasks.arm_watch(7, "child-b", park_forever())
    assert tasks.arm_watch(8, "child-a", park_forever())
    assert tasks.armed_watch_count() == 3

    assert tasks.arm_spawn_retry("child-a", park_forever())
    assert not tasks.arm_spawn_retry("child-a", park_forever())
    assert tasks.armed_spawn_retry_count() == 1
    assert tasks.armed_watch_count() == 3


def test_a_refused_arm_never_runs_its_task(hub, tasks):
    ran = Future()
    assert tasks.arm_watch(7, "c", park_forever())
    assert not tasks.arm_watch(7, "c", ran.set_result, True)
    # A later hub round trip has run everything queued before it.
    on_hub(hub, gevent.sleep, 0)
    assert not ran.done()


def test_arming_from_the_hub_thread_acts_at_once(hub, tasks):
    def arm_and_count():
        armed = tasks.arm_watch("p", "c", park_forever())
        again = tasks.arm_watch("p", "c", park_forever())
        return armed, again, tasks.armed_watch_count()

    assert on_hub(hub, arm_and_count) == (True, False, 1)


def test_arming_from_a_greenlet_of_another_hub(tasks):
    started = Future()
    caller = gevent.spawn(tasks.arm_watch, "p", "c", park_forever(started))
    caller.join(5)
    assert caller.value is True
    assert started.result(5) is not None


def test_a_finished_task_key_can_be_armed_again(tasks):
    first, second = Future(), Future()
    assert tasks.arm_watch(1, "c", first.set_result, "first")
    assert first.result(5) == "first"
    # The task set its Future in its last statement; by the time the next
    # arm reaches the hub it has ended, whether or not its entry is gone yet.
    assert tasks.arm_watch(1, "c", second.set_result, "second")
    assert second.result(5) == "second"

    assert tasks.arm_spawn_retry("c", first.set_result, "again")
    wait_until(lambda: tasks.armed_spawn_retry_count() == 0, what="the finished task's removal")
    assert tasks.arm_spawn_retry("c", park_forever())
    assert tasks.armed_spawn_retry_count() == 1


def test_rearm_replaces_a_dead_entry_whose_removal_is_still_pending(hub, tasks):
    """Window: a task has ended, but its entry is removed by a link callback
    that the hub runs later. An arm in between must replace the dead entry
    (not be refused), and the late removal must then keep the new task."""

    def scenario():
        ran = []
        assert tasks.arm_watch("p", "c", ran.append, "old")
        # The old task runs to its end in this yield; its removal is queued
        # behind our wake-up, so the window is open now.
        gevent.sleep(0)
        window_open = ran == ["old"] and tasks.armed_watch_count() == 1
        new_started = Future()
        replaced = tasks.arm_watch("p", "c", park_forever(new_started))
        new_started.wait(5)  # the old task's removal ran before this start
        return window_open, replaced, tasks.armed_watch_count(), tasks.arm_watch("p", "c", ran.append)

    window_open, replaced, count, third = on_hub(hub, scenario)
    assert window_open, "precondition: the dead entry was still registered"
    assert replaced
    assert count == 1
    assert not third  # the new task still owns the key


def test_arming_is_refused_once_shutdown_began(tasks):
    tasks.shutdown()
    ran = Future()
    assert not tasks.arm_watch(9, "c", ran.set_result, True)
    assert not tasks.arm_spawn_retry("c", ran.set_result, True)
    assert tasks.armed_watch_count() == 0
    assert tasks.armed_spawn_retry_count() == 0
    assert not ran.done()


def test_arming_is_refused_after_the_backstop(hub, tasks):
    tasks.backstop()
    assert not tasks.arm_watch(9, "c", park_forever())
    assert not on_hub(hub, tasks.arm_spawn_retry, "c", park_forever())


# -- self-removal ------------------------------------------------------------------------

def test_a_task_removes_its_own_entry(tasks):
    removed = Future()

    def watcher():
        tasks.remove_watch("p", "c")
        removed.set_result(tasks.armed_watch_count())
        gevent.sleep(3600)

    def retrier():
        tasks.remove_spawn_retry("c")
        removed_retry.set_result(tasks.armed_spawn_retry_count())
        gevent.sleep(3600)

    removed_retry = Future()
    assert tasks.arm_watch("p", "c", watcher)
    assert tasks.arm_spawn_retry("c", retrier)
    assert removed.result(5) == 0
    assert removed_retry.result(5) == 0


def test_removal_from_outside_the_task_leaves_a_live_entry(tasks):
    assert tasks.arm_watch("p", "c", park_forever())
    assert tasks.arm_spawn_retry("c", park_forever())
    tasks.remove_watch("p", "c")
    tasks.remove_spawn_retry("c")
    assert tasks.armed_watch_count() == 1
    assert tasks.armed_spawn_retry_count() == 1


def test_self_removal_does_not_remove_a_newer_task_under_the_same_key(hub, tasks):
    """Window: task A was aborted but is still in its ``finally`` (cleanup
    that waits) when task B is armed under the same key. A's self-removal at
    the end of that cleanup, and the registry's own removal when A dies,
    must leave B's entry in place."""
    a_started, a_dying, a_removed = Future(), Future(), Future()
    release_a = Future()

    def task_a():
        a_started.set_result(gevent.getcurrent())
        try:
            gevent.sleep(3600)
        finally:
            a_dying.set_result(True)
            release_a.wait(5)
            tasks.remove_watch("p", "c")
            a_removed.set_result(True)

    assert tasks.arm_watch("p", "c", task_a)
    glet_a = a_started.result(5)
    tasks.abort_watch("p", "c")
    assert a_dying.result(5)
    assert tasks.arm_watch("p", "c", park_forever())  # B: A's entry is gone

    release_a.set_result(True)
    assert a_removed.result(5)
    on_hub(hub, glet_a.join, 5)  # A is dead and its removal callback has run

    assert tasks.armed_watch_count() == 1
    assert not tasks.arm_watch("p", "c", park_forever())  # B still owns the key


def test_a_task_that_dropped_its_entry_early_is_still_joined_by_shutdown(tasks):
    """Window: a task removed its entry but runs on (and would write later).
    The stop must still kill and join it, though no table names it."""
    started, ended = Future(), Future()

    def task():
        tasks.remove_spawn_retry("c")
        started.set_result(True)
        try:
            gevent.sleep(3600)
        finally:
            gevent.sleep(0.05)
            ended.set_result(True)

    assert tasks.arm_spawn_retry("c", task)
    started.result(5)
    assert tasks.armed_spawn_retry_count() == 0
    tasks.shutdown()
    assert ended.done()


# -- aborts ------------------------------------------------------------------------------

def test_abort_watch_disarms_a_single_key(tasks):
    started, ended = Future(), Future()
    other_ended = Future()
    assert tasks.arm_watch(3, "child", park_forever(started, ended))
    assert tasks.arm_watch(3, "other", park_forever(ended=other_ended))
    started.result(5)

    tasks.abort_watch(3, "child")

    assert ended.result(5)  # the task was killed, not just forgotten
    assert tasks.armed_watch_count() == 1
    # The remaining key is the other child: arming it again is refused,
    # arming the aborted one is accepted.
    assert not tasks.arm_watch(3, "other", park_forever())
    assert tasks.arm_watch(3, "child", park_forever())
    assert not other_ended.done()


def test_abort_of_an_unknown_key_is_a_no_op(tasks):
    assert tasks.arm_watch(3, "child", park_forever())
    tasks.abort_watch(3, "nobody")
    tasks.abort_watch(4, "child")
    tasks.abort_watches_for_parent(5)
    assert tasks.armed_watch_count() == 1


def test_abort_before_the_first_run_means_the_task_never_runs(hub, tasks):
    """Window: the watcher is armed and aborted in the same hub turn, before
    its greenlet was ever switched to. It must never run at all."""
    ran = Future()

    def scenario():
        assert tasks.arm_watch("p", "c", ran.set_result, True)
        tasks.abort_watch("p", "c")
        run_a_later_task()
        return tasks.armed_watch_count()

    assert on_hub(hub, scenario) == 0
    assert not ran.done()


def test_abort_watches_for_parent_leaves_other_parents_armed(tasks):
    ended = [Future() for _ in range(3)]
    started = [Future() for _ in range(3)]
    assert tasks.arm_watch(31, "a", park_forever(started[0], ended[0]))
    assert tasks.arm_watch(31, "b", park_forever(started[1], ended[1]))
    assert tasks.arm_watch(32, "a", park_forever(started[2], ended[2]))
    assert tasks.arm_spawn_retry("a", park_forever())
    for future in started:
        future.result(5)

    tasks.abort_watches_for_parent(31)

    assert ended[0].result(5) and ended[1].result(5)
    assert tasks.armed_watch_count() == 1
    assert tasks.armed_spawn_retry_count() == 1
    assert not ended[2].done()
    assert tasks.arm_watch(31, "a", park_forever())  # parent 31 is free again


# -- parked watches ----------------------------------------------------------------------

def test_a_parked_watch_runs_nothing_until_its_child_is_woken(hub, tasks):
    """A parked watch is an armed key with no greenlet; waking its child
    runs fn(parent, *args) for each parent parked on it, once."""
    ran = []

    def scenario():
        assert tasks.park_watch("p1", "kid")
        assert tasks.park_watch("p2", "kid")
        assert tasks.park_watch("p1", "other")
        assert not tasks.park_watch("p1", "kid")  # the key is held
        assert not tasks.arm_watch("p1", "kid", ran.append)  # ... parked
        armed = tasks.armed_watch_count()
        greenlets = len(tasks._live)
        woke = tasks.wake_watches("kid", lambda parent, end: ran.append((parent, end)), "done")
        again = tasks.wake_watches("kid", ran.append, "twice")
        run_a_later_task()
        return armed, greenlets, woke, again, sorted(tasks.watched_children())

    armed, greenlets, woke, again, watched = on_hub(hub, scenario)
    assert (armed, greenlets, woke, again) == (3, 0, 2, 0)
    assert sorted(ran) == [("p1", "done"), ("p2", "done")]
    assert watched == ["other"]
    assert tasks.armed_watch_count() == 1


def test_a_live_watch_holds_its_key_against_parking(tasks):
    started = Future()
    assert tasks.arm_watch("p", "kid", park_forever(started))
    started.result(5)
    assert not tasks.park_watch("p", "kid")
    assert tasks.park_watch("p", "another")
    assert tasks.armed_watch_count() == 2


def test_an_aborted_parked_watch_is_never_woken(hub, tasks):
    ran = []

    def scenario():
        assert tasks.park_watch("p", "kid")
        assert tasks.park_watch("p", "kid2")
        assert tasks.park_watch("q", "kid")
        tasks.abort_watch("p", "kid")
        tasks.abort_watches_for_parent("q")
        woke = tasks.wake_watches("kid", ran.append)
        run_a_later_task()
        return woke, tasks.armed_watch_count(), tasks.parked_watch_children()

    assert on_hub(hub, scenario) == (0, 1, ["kid2"])
    assert ran == []
    assert tasks.park_watch("p", "kid")  # the key is free again


def test_a_parked_watch_of_one_parent_and_one_child_holds_no_object_for_the_cyclic_gc(hub, tasks):
    """Parked watches are kept by child and by parent. A set under each
    was two objects per parent and child that every full collection walked
    (400,000 with 200,000 parents parked on children); one value is kept
    as it is, and a set only where a child has several parents or a parent
    several children, until it is down to one again."""
    ran = []

    def tracked():
        gc.collect()
        return sum(gc.is_tracked(value) for table in (tasks._parked, tasks._parked_of)
                   for value in table.values())

    def scenario():
        for i in range(100):
            assert tasks.park_watch((f"p{i}", "run"), f"kid{i}")
        alone = tracked()
        assert tasks.park_watch(("p0", "run"), "kid-b")  # p0: two children
        assert tasks.park_watch(("p1", "run"), "kid0")  # kid0: two parents
        assert not tasks.park_watch(("p1", "run"), "kid0")
        shared = tracked()
        tasks.abort_watch(("p0", "run"), "kid-b")
        woke = tasks.wake_watches("kid0", lambda parent: ran.append(parent))
        run_a_later_task()
        return (alone, shared, woke, tracked(), tasks.armed_watch_count(),
                sorted(tasks.parked_watch_children())[:3])

    alone, shared, woke, after, armed, children = on_hub(hub, scenario)
    assert (alone, shared) == (0, 3)  # kid0's parents, p0's and p1's children
    assert woke == 2 and sorted(ran) == [("p0", "run"), ("p1", "run")]
    assert after == 0 and armed == 99 and children == ["kid1", "kid10", "kid11"]
    assert on_hub(hub, lambda: tasks.park_watch(("p0", "run"), "kid-b"))  # free again


def test_parking_is_refused_once_shutdown_began_and_the_stop_forgets_parked_watches(hub):
    tasks = ChildTaskRegistry(hub, kill_timeout=1.0)
    assert tasks.park_watch("p", "kid")
    tasks.shutdown()
    assert tasks.armed_watch_count() == 0
    assert not tasks.park_watch("p", "kid2")
    assert on_hub(hub, tasks.wake_watches, "kid", print) == 0


# -- the epoch close ------------------------------------------------------------------------

def test_shutdown_kills_and_joins_every_task(tasks):
    """Window: a killed task still in a ``finally`` that waits, then records
    (as a watcher appending to a parent history would). Shutdown must not
    return before that record is made."""
    ended = []

    def task(name):
        try:
            ready[name].set_result(True)
            gevent.sleep(3600)
        finally:
            gevent.sleep(0.05)
            ended.append(name)

    ready = {f"w{i}": Future() for i in range(10)}
    ready.update({f"r{i}": Future() for i in range(10)})
    for i in range(10):
        assert tasks.arm_watch(i % 3, f"c{i}", task, f"w{i}")
        assert tasks.arm_spawn_retry(f"c{i}", task, f"r{i}")
    for future in ready.values():
        future.result(5)
    assert tasks.armed_watch_count() == 10
    assert tasks.armed_spawn_retry_count() == 10

    tasks.shutdown()

    assert sorted(ended) == sorted(ready)
    assert tasks.armed_watch_count() == 0
    assert tasks.armed_spawn_retry_count() == 0
    assert tasks.stragglers == []


def test_shutdown_joins_a_task_already_aborted_and_still_cleaning_up(tasks):
    """Window: abort_watch killed a task whose cleanup waits and then
    records; shutdown comes before that cleanup ends and must join it
    (without a second kill cutting the cleanup short)."""
    started, dying, ended = Future(), Future(), Future()

    def task():
        started.set_result(True)
        try:
            gevent.sleep(3600)
        finally:
            dying.set_result(True)
            gevent.sleep(0.1)
            ended.set_result(True)

    assert tasks.arm_watch("p", "c", task)
    started.result(5)
    tasks.abort_watch("p", "c")
    dying.result(5)
    tasks.shutdown()
    assert ended.done()


def test_a_task_that_swallows_greenlet_exit_does_not_hang_shutdown(hub, caplog):
    """Window: a task catches GreenletExit and parks again. Shutdown must
    give up after kill_timeout and name the task in the log."""
    tasks = ChildTaskRegistry(hub, kill_timeout=0.3)
    ready, release = Future(), Future()

    def stubborn():
        ready.set_result(True)
        while not release.done():
            try:
                release.wait()
            except gevent.GreenletExit:
                pass

    assert tasks.arm_watch("p", "c", stubborn, name="stubborn-watcher")
    ready.result(5)
    t0 = time.monotonic()
    tasks.shutdown()
    assert time.monotonic() - t0 < 2
    assert tasks.stragglers == ["stubborn-watcher"]
    assert "stubborn-watcher" in caplog.text
    release.set_result(True)  # let it end before the hub goes


def test_shutdown_twice_and_from_a_greenlet_of_another_hub(tasks):
    ended = Future()
    started = Future()
    assert tasks.arm_watch("p", "c", park_forever(started, ended, cleanup_wait=0.02))
    started.result(5)
    caller = gevent.spawn(tasks.shutdown)
    caller.join(10)
    assert caller.dead and caller.successful()
    assert ended.done()
    tasks.shutdown()
    gevent.spawn(tasks.shutdown).join(10)


def test_shutdown_from_a_plain_native_thread(tasks):
    ended, started = Future(), Future()
    assert tasks.arm_spawn_retry("c", park_forever(started, ended, cleanup_wait=0.02))
    started.result(5)
    done = NativeGate()
    outcome = []

    def caller():
        try:
            tasks.shutdown()
            outcome.append(ended.done())
        finally:
            done.set()

    native_start(caller, ())
    assert done.wait(10)
    assert outcome == [True]


def test_shutdown_on_the_hub_thread_is_refused(hub, tasks):
    with pytest.raises(InternalError, match="hub thread"):
        on_hub(hub, tasks.shutdown)
    assert tasks.arm_watch("p", "c", park_forever())  # nothing was gated


def test_backstop_never_blocks(hub, tasks):
    """Window: the backstop runs (from ``__del__``/``atexit``) while a task's
    cleanup is held open. It must return at once, yet have the task killed;
    a later shutdown still joins it."""
    started, dying, ended = Future(), Future(), Future()
    release = Future()

    def task():
        started.set_result(True)
        try:
            gevent.sleep(3600)
        finally:
            dying.set_result(True)
            release.wait(5)
            ended.set_result(True)

    assert tasks.arm_watch("p", "c", task)
    started.result(5)
    t0 = time.monotonic()
    tasks.backstop()
    on_hub(hub, tasks.backstop)  # from the hub thread as well
    assert time.monotonic() - t0 < 0.5
    assert not release.done()
    assert dying.result(5)  # the kill was delivered
    assert not ended.done()
    release.set_result(True)
    tasks.shutdown()
    assert ended.done()


def test_shutdown_of_an_idle_registry_is_quick(hub):
    tasks = ChildTaskRegistry(hub)
    t0 = time.monotonic()
    tasks.shutdown()
    tasks.shutdown()
    assert time.monotonic() - t0 < 1


def test_a_failing_task_is_logged_and_frees_its_key(tasks, caplog):
    def broken():
        raise ValueError("watcher bug")

    assert tasks.arm_watch("p", "c", broken, name="broken-watcher")
    wait_until(lambda: tasks.armed_watch_count() == 0, what="the failed task's removal")
    assert "broken-watcher" in caplog.text and "watcher bug" in caplog.text
    assert tasks.arm_watch("p", "c", park_forever())


def test_an_arm_whose_caller_was_already_refused_never_runs(hub, tasks):
    """Window: a caller off the hub thread saw the hub closing and answered
    itself "refused" just as the hub thread, not yet closing when it looked,
    armed the task. The armed task must be killed before it ever runs.
    (White-box: the race is forced by completing the answer first.)"""
    ran = Future()
    answered = Future()
    answered.set_result(None)  # the caller's own "refused" came first

    def land_late_arm():
        tasks._answer(answered, tasks._arm_here,
                      (tasks._watches, ("p", "c"), ran.set_result, (True,), "late"))
        run_a_later_task()
        return tasks.armed_watch_count()

    assert on_hub(hub, land_late_arm) == 0
    assert not ran.done()
    assert tasks.arm_watch("p", "c", park_forever())  # the key is free


def test_calls_after_the_hub_is_gone_return_within_their_limit(caplog, monkeypatch):
    """Misuse window: the hub was shut down before the registry, so nothing
    will ever answer a crossing. Arms are refused, aborts and shutdown return
    within their limits, and shutdown says what happened."""
    monkeypatch.setattr(watchers, "_STOP_GRACE", 0.1)
    hub = HubThread(kill_timeout=0.1).start()
    tasks = ChildTaskRegistry(hub)
    hub.shutdown()
    t0 = time.monotonic()
    assert not tasks.arm_watch("p", "c", park_forever())
    tasks.abort_watch("p", "c")
    tasks.abort_watches_for_parent("p")
    tasks.shutdown()
    assert time.monotonic() - t0 < 2
    assert "did not report the stop" in caplog.text
