"""The engines at work on a store (``Engine.engines()``) and the console's
engines page over them, on the suite's store: where runs are leased
(PostgreSQL in the pg tox environments, SQLite with ?leases=on) every
engine with the runs it leases, on SQLite the engine asked alone (issue 19)."""
import re

from conftest import LEASED, wait_until
from console_flows import order
from werkzeug.test import Client

from aion_green.store import EngineInfo
from aion_green.transport.wsgi import WSGIApp


def test_engines_names_the_engines_at_work_and_the_runs_each_leases(make_engine, db_url):
    first = make_engine(order)
    second = make_engine(order)
    first.start(order, 1, id="e-1")
    wait_until(lambda: first.describe("e-1").head_seq >= 4, what="e-1 to wait for its message")
    second.describe("e-1")  # started too
    found = first.engines()
    if LEASED:
        # An engine is listed once it has published itself, which its start
        # asks of its store writer without waiting for it.
        wait_until(lambda: second.engine_id in {e.engine_id for e in first.engines()},
                   what="the second engine to publish itself")
        found = first.engines()
        by_id = {e.engine_id: e for e in found}
        assert {first.engine_id, second.engine_id} <= set(by_id)
        assert [e.engine_id for e in found if e.here] == [first.engine_id]
        assert sum(by_id[e].leased_runs for e in (first.engine_id, second.engine_id)) == 1
        assert "console.order" in by_id[first.engine_id].workflow_types
        assert all(e.seen_until is not None for e in found)
    else:
        assert found == [EngineInfo(first.engine_id, True, None, None,
                                    tuple(first.workflow_types()))]
    first.signal("e-1", "go", 1)
    assert first.result("e-1", timeout=30)["got"] == 1


def test_the_engines_page_lists_them_and_this_engines_state(make_engine, db_url):
    engine = make_engine(order)
    engine.start(order, 2, id="e-2")
    wait_until(lambda: engine.describe("e-2").head_seq >= 4, what="e-2 to wait")
    page = Client(WSGIApp(engine)).get("/ui/engines")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "ready" in text and 'data-metric="aion_queue_depth"' in text
    listed = re.findall(r"<tr><td><code>([0-9a-f]+)</code></td>", text)
    if LEASED:
        assert engine.engine_id in listed and "this engine" in text
    else:
        assert listed == [] and "driver lock" in text
    engine.signal("e-2", "go", 2)
    engine.result("e-2", timeout=30)
