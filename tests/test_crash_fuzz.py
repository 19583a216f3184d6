"""Crash fuzzing (issue 8), bounded for CI: the mix of ``crash_mix.py``
(steps, retries, timers, messages, children, continue_as_new, a supervision
tree) runs in worker processes that are SIGKILLed at points drawn from a
seed, again and again, until one finishes it; then the invariants of
``crash_campaign.py`` are checked against an uncrashed control run. The
workers run in the suite's gevent mode. ``bench/crash.py`` runs the same
campaign for as long as you like.

A failure names the seed; reproduce it with
``python bench/crash.py --seed SEED --trials 1 [--patched]``.
"""
import json
import os
import shutil
import sqlite3

import crash_campaign as cc
import pytest
from conftest import PATCHED, ROOT, run_python

SEEDS = (1, 2, 3)
MAX_KILLS = 8


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    """One uncrashed run of the mix (it passes every check itself)."""
    return cc.run_control(tmp_path_factory.mktemp("control"), 1, PATCHED)


@pytest.mark.parametrize("seed", SEEDS)
def test_sigkill_at_random_points_loses_nothing(tmp_path, control, seed):
    """Failure windows: wherever a seeded kill lands, by time (while the
    engine recovers, in a step, between a record and its wake, during a
    signal, a child's creation, a continue_as_new) or by commit (just
    before or just after the Nth group commit). Each new worker resumes
    what the killed one left: in the end every run's result equals the
    control run's, no recorded step ran again, no history has a gap, no
    message was recorded twice, nothing is stuck."""
    camp = cc.run_campaign(tmp_path, seed, control, max_kills=MAX_KILLS, patched=PATCHED)
    epochs = "\n".join(f"  epoch {e.number}: kill {e.kill}, exit {e.returncode}, {e.seconds:.3f} s"
                       for e in camp.epochs)
    mode = " --patched" if PATCHED else ""
    assert not camp.findings, (
        f"crash campaign seed {seed} ({camp.kills} kills) broke invariants; reproduce with "
        f"`python bench/crash.py --seed {seed} --trials 1 --max-kills {MAX_KILLS}{mode}`\n"
        + epochs + "\n" + "\n".join(camp.findings))
    assert camp.kills >= 1, f"seed {seed}: no kill landed before the mix finished\n{epochs}"


def test_checks_catch_a_broken_store(tmp_path, control):
    """The checks are not vacuous: on a copy of a finished store, a step
    run again after its record, a seq gap, a message recorded twice and a
    run left running are each reported."""
    src = tmp_path / "src"
    camp = cc.run_campaign(src, 99, control, max_kills=0, patched=PATCHED)
    assert not camp.findings and camp.kills == 0
    db, effects = tmp_path / "broken.db", tmp_path / "broken.effects"
    shutil.copy(src / "seed-99.db", db)
    shutil.copy(src / "seed-99.effects", effects)
    last = effects.read_text().splitlines()[-1].split(" ")
    with effects.open("a") as f:  # the last recorded step runs again in a later epoch
        f.write(f"{last[0]} 2 {last[2]} 2.1\n")
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM events WHERE workflow_id = 'chain-0' AND seq = 3")
        data = json.loads(conn.execute("SELECT data FROM events WHERE workflow_id = 'inbox-0' "
                                       "AND type = 'MessageReceived' LIMIT 1").fetchone()[0])
        head = conn.execute("SELECT max(seq) FROM events WHERE workflow_id = 'inbox-0'").fetchone()[0]
        conn.execute("INSERT INTO events(workflow_id, seq, type, at, data) VALUES "
                     "('inbox-0', ?, 'MessageReceived', 0, ?)", (head + 1, json.dumps(data)))
        conn.execute("UPDATE runs SET status = 'running' WHERE workflow_id = 'sleeper-0'")
    conn.close()
    epochs = [cc.Epoch(1, "none", 0, 0.0)]
    findings, _ = cc.check(db, effects, epochs, camp.results, control, 1)
    text = "\n".join(findings)
    assert f"{last[0]}" in text and "ran again after the execution recorded" in text, text
    assert "chain-0: seqs are not" in text, text
    assert f"inbox-0: message {data['dedup']} recorded 2 times" in text, text
    assert "sleeper-0: still running at the end (stuck)" in text, text


SLOW_PPRINT = '''
import importlib.machinery, importlib.util, os, sys
from gevent import monkey
monkey.get_original("time", "sleep")(0.5)  # hold the import of pprint open
spec = importlib.machinery.PathFinder.find_spec("pprint", [os.path.dirname(os.__file__)])
real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(real)
globals().update({k: v for k, v in vars(real).items() if not k.startswith("__")})
'''

FIRST_HUB_RACE = '''
from gevent import monkey
monkey.patch_all()
import sys, time
import aion_green as aion
assert "pprint" not in sys.modules, "pprint is imported already: the race cannot happen here"
engine = aion.Engine(sys.argv[1]).__enter__()  # the hub thread builds its Hub now
time.sleep(0.1)  # and this thread its first Hub, at the same time
engine.shutdown()
print("ok")
'''


def test_engine_start_beside_a_first_hub_does_not_deadlock(tmp_path):
    """Failure window (found by the campaign, seed 2 patched: a worker hung
    for good, right after its engine started): under patch_all, the engine's
    hub thread creates its gevent Hub while the main thread, which had no
    hub yet, creates its own (its first time.sleep). Both import what a Hub
    resolves lazily (``pprint`` for gevent's ``format_context``); the
    loser's wait on importlib's module lock, a gevent lock, needs a hub and
    recursed into the same import. Here that import is made slow, so the
    two always meet: the engine must resolve those settings before its hub
    thread starts."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pprint.py").write_text(SLOW_PPRINT)
    proc = run_python(["-c", FIRST_HUB_RACE, f"sqlite:///{tmp_path / 'a.db'}"], timeout=30,
                      check=False, env_extra={"PYTHONPATH": f"{shadow}{os.pathsep}{ROOT}"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
