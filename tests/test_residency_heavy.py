"""Residency at scale: 200,000 runs parked on timers in one process under a
cap of 10,000 resident runs. Its own process (peak RSS is per process);
marked ``heavy``: one tox environment runs it (py313-newest-plain), the others
skip the run-time cost (neither patching nor the Python or gevent release
changes much of what is measured here)."""
import contextlib
import json
import sqlite3

import pytest
from conftest import SQLITE_ONLY, run_python

pytestmark = [pytest.mark.heavy, SQLITE_ONLY]

N, CAP = 200_000, 10_000

CHILD = r"""
import json, sys, time
from datetime import datetime, timezone

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append, CreateRun, SQLiteStore

@aion.workflow(name="tests.heavy_parked")
def parked(ctx, n, until):
    ctx.sleep_until(datetime.fromtimestamp(until, tz=timezone.utc))
    return n

def peak_kib():
    # VmHWM, this process's own high-water mark: Linux carries ru_maxrss
    # across fork and exec, so getrusage would report pytest's peak.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

path, n_runs, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# The runs an earlier process left parked: each started and recorded a
# timer, due in a day (spread over a minute).
store = SQLiteStore(path)
now = time.time()
day = 86_400.0
for lo in range(0, n_runs, 5000):
    ids = range(lo, min(n_runs, lo + 5000))
    due = {n: now + day + 60 * n / n_runs for n in ids}
    store.write_batch([CreateRun(f"p{n:06d}", "tests.heavy_parked", json.dumps([n, due[n]]),
                                 f"r{n}", now) for n in ids])
    store.write_batch([Append(f"p{n:06d}", 1, [ev.NewEvent(
        ev.TIMER_STARTED, now, {"timer": "t1", "fire_at": due[n]})]) for n in ids])
store.close()
baseline = peak_kib()
engine = aion.Engine("sqlite:///" + path, workflows=[parked], max_resident=cap)
engine.list(limit=1)
# Recovery replays each run to its wait; beyond the cap they leave memory.
began = time.time()
while len(engine._epoch.residency._evicted) < n_runs - cap and time.time() - began < 600:
    time.sleep(0.2)
parked_out = len(engine._epoch.residency._evicted)
parked_kib = peak_kib()
recovered_in = time.time() - began
# A day passes: the wall clock every part of the engine reads moves on.
real_time = time.time
time.time = lambda: real_time() + day
engine.poke()
while engine.list(status="running", limit=1):
    time.sleep(0.2)
peak = peak_kib()
print(json.dumps({"peak_kib": peak, "parked_kib": parked_kib, "baseline_kib": baseline,
                  "parked_out": parked_out, "recovered_in": recovered_in,
                  "drained_in": real_time() - began - recovered_in,
                  "evictions": engine.evictions, "resident_peak": engine.resident_peak}))
engine.shutdown()
"""


def test_two_hundred_thousand_parked_runs_under_a_cap_of_ten_thousand(tmp_path):
    path = tmp_path / "heavy.db"
    proc = run_python(["-c", CHILD, str(path), str(N), str(CAP)], timeout=900)
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(figures)  # shown with -s, and on failure
    assert figures["resident_peak"] <= CAP
    # All parked at once: every run beyond the cap out of memory.
    assert figures["parked_out"] >= N - CAP
    assert figures["evictions"] >= N - CAP
    # Bounded: about what the cap's resident runs cost, not N of them
    # (uncapped, a parked run costs ~15 KiB: 200k would take ~3 GiB).
    grew_mib = (figures["peak_kib"] - figures["baseline_kib"]) / 1024
    assert grew_mib < 500, figures
    # (closing: a connection's own "with" ends a transaction, not the
    # connection, which Python 3.13 reports, ResourceWarning, wherever the
    # GC finds it: in the next test module.)
    with contextlib.closing(sqlite3.connect(path)) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status"))
        assert statuses == {"completed": N}
        assert db.execute("SELECT sum(CAST(result AS INTEGER)) FROM runs").fetchone()[0] == \
            N * (N - 1) // 2
        fired = db.execute("SELECT count(*), count(DISTINCT workflow_id) FROM events "
                           "WHERE type='TimerFired'").fetchone()
        assert fired == (N, N)  # each timer fired once, however often its run was replayed
