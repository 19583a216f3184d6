"""The pytest plugin, used as a user would: a small test project run by
pytester in a process of its own."""
import textwrap

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = textwrap.dedent('''
    from datetime import timedelta

    import aion_green as aion


    def charge(amount):
        return {"charged": amount}


    @aion.workflow(name="user.billing")
    def billing(ctx, amount):
        ctx.sleep(timedelta(days=30))           # a month, durably
        receipt = ctx.step(charge, amount)
        ctx.sleep(timedelta(days=30))
        return [receipt, ctx.now().isoformat()]


    def test_two_months_in_milliseconds(aion_engine, aion_time):
        started = aion_time.now()
        handle = aion_engine.start(billing, 7, id="b")
        aion_time.advance(timedelta(days=29))
        assert aion_engine.describe("b").status == "running"
        aion_time.advance(timedelta(days=1))    # the first month is over
        aion_time.advance(timedelta(days=30))
        receipt, finished = handle.result(timeout=5)
        assert receipt == {"charged": 7}
        assert finished >= (started + timedelta(days=60)).isoformat()[:10]
''')


MONOTONIC_TESTS = textwrap.dedent('''
    import time
    from datetime import timedelta

    import pytest
    from time import monotonic as imported_monotonic


    def test_the_monotonic_clocks_keep_running(aion_time):
        wall, mono, perf, by_name = (time.time(), time.monotonic(), time.perf_counter(),
                                     imported_monotonic())
        time.sleep(0.05)
        assert time.time() == wall                      # the wall clock is frozen
        assert time.monotonic() - mono >= 0.04          # these run
        assert time.perf_counter() - perf >= 0.04
        assert imported_monotonic() - by_name >= 0.04   # imported by name too
        aion_time.advance(timedelta(hours=1))
        assert time.time() - wall >= 3600
        assert time.monotonic() - mono < 600


    @pytest.mark.aion_time(freeze_monotonic=True)
    def test_asked_they_freeze_with_the_wall_clock(aion_time):
        mono = time.monotonic()
        time.sleep(0.05)
        assert time.monotonic() == mono
        aion_time.advance(timedelta(hours=1))
        assert time.monotonic() - mono >= 3600


    def test_after_the_fixture_every_clock_is_real_again():
        wall = time.time()
        time.sleep(0.02)
        assert time.time() > wall
''')


def test_aion_time_leaves_the_monotonic_clocks_running_unless_asked(pytester):
    pytester.makepyfile(test_clocks=MONOTONIC_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_the_plugin_gives_a_users_suite_an_engine_and_time_travel(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


REPLAY = textwrap.dedent('''
    import sys
    import aion_green as aion
    from aion_green.testing import ReplayMismatch, check_replay

    def a(x):
        return x

    def b(x):
        return x

    if sys.argv[1] == "record":
        @aion.workflow(name="shop.order")
        def order(ctx, n):
            first = ctx.step(a, n)
            return ctx.step(b, first) + ctx.receive("done", timeout=3600)

        with aion.Engine(sys.argv[2], workflows=[order]) as engine:
            engine.start(order, 1, id="finished")
            engine.signal("finished", "done", 1)
            engine.result("finished", timeout=10)
            engine.start(order, 2, id="waiting")
            while len(engine.history("waiting")) < 4:
                pass
        print("recorded")
    else:
        @aion.workflow(name="shop.order")
        def order(ctx, n):
            if sys.argv[1] == "changed":          # a deploy swapped the steps
                first = ctx.step(b, n)
                return ctx.step(a, first) + ctx.receive("done", timeout=3600)
            first = ctx.step(a, n)                # compatible: same calls, new code after
            total = ctx.step(b, first) + ctx.receive("done", timeout=3600)
            return total

        try:
            print("checked", check_replay(sys.argv[2]))
        except ReplayMismatch as exc:
            print("MISMATCH", exc)
''')


@pytest.mark.parametrize("code", ["same", "changed"])
def test_the_replay_checker_catches_an_incompatible_change(pytester, tmp_path, code):
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    assert "recorded" in pytester.run(*_python(), str(script), "record", url).stdout.str()
    before = _histories(tmp_path / "prod.db")
    out = pytester.run(*_python(), str(script), code, url).stdout.str()
    if code == "same":
        assert "checked 2" in out
    else:
        assert "MISMATCH 2 of 2 stored histories do not replay" in out
        assert "finished: workflow 'finished' diverged from its history at seq" in out
        assert "waiting: workflow 'waiting' diverged" in out
        assert "the code now does step 1 (b), the history recorded StepCompleted(step=1, name='a')" in out
    # The check ran nothing and wrote nothing: the histories are as they were
    # ("waiting" still waits, its step 2 not run again).
    assert _histories(tmp_path / "prod.db") == before


def _histories(path):
    import aion_green as aion

    store = aion.SQLiteStore(str(path))
    try:
        return {run.workflow_id: (run.status, store.read(run.workflow_id))
                for run in store.list_runs(None, None, 100, None)}
    finally:
        store.close()


def _python():
    import sys

    return [sys.executable]
