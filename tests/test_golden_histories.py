"""Histories recorded by earlier releases (tests/histories/, recorded by
tests/histories/record.py from tests/golden_flows.py) replay with today's
code: each is copied, but its end, into a fresh store, and an engine drives
it. The replay must take the recorded path to the recorded result, and run
nothing again (no step, child or send beyond those recorded). A change that
breaks the replay of runs recorded by an earlier release fails here."""
import json
from pathlib import Path

import golden_flows as g
import pytest
from conftest import open_test_store

import aion_green as aion
from aion_green.core import events as ev
from aion_green.store import Append

HISTORIES = sorted(Path(__file__).with_name("histories").glob("*.json"))
# What replaying must not do again: each such event of the new history must
# be one of the recorded ones.
_ACTS = frozenset({ev.STEP_COMPLETED, ev.STEP_FAILED, ev.CHILD_STARTED, ev.MESSAGE_SENT,
                   ev.PATCH_MARKER})


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_histories_of_every_flow_are_kept_for_two_releases_at_least():
    releases = {path.name.split("--")[0] for path in HISTORIES}
    assert len(releases) >= 2, releases
    for release in releases:
        flows = {_load(p)["workflow_type"] for p in HISTORIES if p.name.startswith(release + "--")}
        assert flows >= {f.__aion_workflow__ for f in g.FLOWS}, (release, flows)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_a_recorded_history_replays_to_its_result_running_nothing_again(make_engine, db_url, path):
    run = _load(path)
    events = [ev.Event(e["seq"], e["type"], e["at"], e["data"]) for e in run["events"]]
    started, end = events[0], events[-1]
    assert end.type in ev.TERMINAL_TYPES
    wid = run["workflow_id"]
    store = open_test_store(db_url)
    try:
        store.create_run(wid, run["workflow_type"], json.dumps(started.data["args"]),
                         started.data["run_id"], started.at)
        if len(events) > 2:
            store.write_batch([Append(wid, 1, [ev.NewEvent(e.type, e.at, e.data)
                                               for e in events[1:-1]])])
    finally:
        store.close()
    engine = make_engine(*g.FLOWS)
    if end.type == ev.WORKFLOW_COMPLETED:
        assert engine.result(wid, timeout=30) == run["result"]
    else:
        with pytest.raises(aion.WorkflowFailed):
            engine.result(wid, timeout=30)
    replayed = engine.history(wid)
    assert replayed[-1].type == end.type
    recorded_acts = [(e.type, e.data) for e in events if e.type in _ACTS]
    acts = [(e.type, e.data) for e in replayed if e.type in _ACTS]
    assert acts == recorded_acts, "the replay ran something again"
    assert [e.type for e in replayed[:len(events) - 1]] == [e.type for e in events[:-1]]
