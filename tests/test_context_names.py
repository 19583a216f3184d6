"""A run's context keeps its attributes inline in any process (issue 21).

CPython (3.11+) keeps an instance's attributes inline only while every name
it sets is among its class's shared keys: at most 29 names, and (3.11-
3.13) none added once a few instances exist. An instance that sets another
name gets a dict of its own: 1.6 KB and one more object for the cyclic GC
per resident run. So the count is taken in a fresh process whose runs use
every feature (children, a supervisor, sends, timeout blocks, cancels,
queries, terminations, eviction, ``ctx.random``, tracing, versioning,
search attributes, continue-as-new, fan-out, a replay check), and then a
run that used them all, started after dozens of others, is looked at while
it is parked. (Before: 37 names, and that run's context had a dict.)
"""
import json
import sys

from conftest import run_python

CHILD = r"""
import gc, json, os, sys, time
import aion_green as aion
from aion_green import tracing
from aion_green.testing import check_replay
from aion_green.workflows.context import WorkflowContext

names = set()
_set = object.__setattr__


def _note(self, name, value):
    names.add(name)
    _set(self, name, value)


WorkflowContext.__setattr__ = _note  # counts every name a context of this process sets
if tracing.available():
    tracing.enable()


def double(n):
    return 2 * n


@aion.workflow(name="names.kid")
def kid(ctx, n):
    return ctx.step(double, n)


@aion.workflow(name="names.mailbox")
def mailbox(ctx):
    return ctx.receive("m")


@aion.workflow(name="names.sleeper")
def sleeper(ctx):
    ctx.set_query("where", lambda: "parked")
    try:
        return ctx.receive("never")
    except aion.Cancelled:
        return "cancelled"


@aion.workflow(name="names.busy")
def busy(ctx, round_):
    out = [ctx.random() < 1, str(ctx.uuid4())[14], ctx.patched("p1")]
    ctx.upsert_search_attributes({"customer": "c1"})
    ctx.set_query("round", lambda: round_)
    with ctx.timeout(30):
        out.append(ctx.step(double, 1))
    try:
        with ctx.timeout(0.05):
            ctx.receive("late")
    except aion.Timeout:
        out.append("timed out")
    ctx.sleep(0.01)
    out.append(ctx.start_child(kid, 2).result())
    if round_ == 1:
        ctx.send("names-mailbox", "m", round_)
    out.append(ctx.supervise([aion.ChildSpec(kid, 3, restart="transient")]))
    out.append(ctx.parallel([aion.Step(double, 4), ctx.start_child(kid, 5)]))
    out.append(ctx.race([aion.Step(double, 6)]))
    if round_ == 1:
        ctx.continue_as_new(2)
    if round_ == 3:
        ctx.set_query("phase", lambda: "receiving")
        out.append(ctx.receive("m"))  # parked here, having used all of the above
    return out


url = "sqlite:///" + os.path.join(sys.argv[1], "names.db")
engine = aion.Engine(url, workflows=[kid, mailbox, sleeper, busy], evict_after=0.2)
engine.start(mailbox, id="names-mailbox")
busy_result = engine.start(busy, 1, id="names-busy").result(60)
assert engine.result("names-mailbox", timeout=30) == 1
for wid in ("names-cancel", "names-terminate", "names-evict"):
    engine.start(sleeper, id=wid)
deadline = time.monotonic() + 30
while engine.evictions == 0:  # names-evict parks past evict_after
    assert time.monotonic() < deadline, "no run was evicted"
    time.sleep(0.05)
assert engine.query("names-cancel", "where") == "parked"
engine.cancel("names-cancel")
assert engine.result("names-cancel", timeout=30) == "cancelled"
engine.terminate("names-terminate")
engine.shutdown()
checked = check_replay(url)

# A run parked in memory that used every feature, after all of the above.
engine = aion.Engine(url, workflows=[kid, mailbox, sleeper, busy], evict_after=None)
engine.start(busy, 3, id="names-parked")
deadline = time.monotonic() + 30
while True:
    try:
        phase = engine.query("names-parked", "phase", timeout=30)
    except aion.QueryFailed:  # not there yet
        phase = None
    ctx = engine._epoch.runs.get("names-parked")
    if phase == "receiving" and ctx is not None and ctx._parked:
        break
    assert time.monotonic() < deadline, "the run did not park"
    time.sleep(0.02)
own_dict = any(type(ref) is dict and "_key" in ref for ref in gc.get_referents(ctx))
engine.signal("names-parked", "m", 0)
assert engine.result("names-parked", timeout=30)[-1] == 0
engine.shutdown()
print(json.dumps({"names": sorted(names), "own_dict": own_dict, "busy": busy_result,
                  "checked": checked, "traced": tracing.is_enabled()}))
"""


def test_a_context_keeps_its_attributes_inline_after_runs_that_used_every_feature(tmp_path):
    proc = run_python(["-c", CHILD, str(tmp_path)], timeout=180)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    # The runs did what the features do (so their names were set).
    assert found["busy"] == [True, "4", True, 2, "timed out", 4, [6], [8, 10], [0, 12]]
    assert found["checked"] >= 10
    names = found["names"]
    assert {"_parent_id", "_failure", "_more", "_scopes", "_cancel_pending",
            "_query_gates", "_greenlet"} <= set(names), names
    assert len(names) <= 29, f"{len(names)} names set on contexts: {names}"
    if sys.version_info >= (3, 11):  # (before 3.11 every instance has a dict)
        assert not found["own_dict"], "a parked run's context has a dict of its own"
