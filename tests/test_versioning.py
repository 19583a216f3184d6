"""ctx.patched: new code for new runs, the old branch for runs recorded by
the old code, decided by the record."""
from conftest import NativeGate, stop_with_runs_parked

import aion_green as aion
from aion_green.core import events as ev


def price(x):
    return x


def price_with_tax(x):
    return x * 1.2


def held(gate):
    gate.wait(10)
    return "held"


def types(history):
    return [e.type for e in history]


def test_runs_recorded_by_old_code_keep_the_old_branch(make_engine):
    gate = NativeGate()

    @aion.workflow(name="tests.versioned_order")
    def v1(ctx, amount):
        total = ctx.step(price, amount)
        ctx.step(held, gate)
        return total

    first = make_engine(v1)
    first.start(v1, 100, id="old")
    stop_with_runs_parked(first, ["old"], gate, events=2)  # price recorded, held in flight

    @aion.workflow(name="tests.versioned_order")
    def v2(ctx, amount):
        if ctx.patched("tax-2027"):
            assert ctx.patched("tax-2027")  # asked again: the same answer
            total = ctx.step(price_with_tax, amount)
        else:
            assert not ctx.patched("tax-2027")
            total = ctx.step(price, amount)
        ctx.step(held, gate)
        return total

    second = make_engine(v2)
    assert second.result("old", timeout=10) == 100           # replayed: the old branch
    assert second.start(v2, 100, id="new").result(timeout=10) == 120.0
    assert ev.PATCH_MARKER not in types(second.history("old"))
    assert types(second.history("new")).count(ev.PATCH_MARKER) == 1
    second.shutdown()  # one engine at a time drives a SQLite file
    parked_gate = NativeGate()

    @aion.workflow(name="tests.versioned_order")
    def v2_parked(ctx, amount):
        if ctx.patched("tax-2027"):
            ctx.step(held, parked_gate)
            return ctx.step(price_with_tax, amount)
        return ctx.step(price, amount)

    third = make_engine(v2_parked)
    third.start(v2_parked, 10, id="marked")
    stop_with_runs_parked(third, ["marked"], parked_gate, events=2)  # marker recorded, step held

    @aion.workflow(name="tests.versioned_order")
    def v3(ctx, amount):          # every old run is gone: only the new code is left
        ctx.deprecate_patch("tax-2027")
        ctx.step(held, parked_gate)
        return ctx.step(price_with_tax, amount)

    fourth = make_engine(v3)
    assert fourth.result("marked", timeout=10) == 12.0
    assert fourth.start(v3, 5, id="fresh").result(timeout=10) == 6.0
    assert ev.PATCH_MARKER not in types(fourth.history("fresh"))
