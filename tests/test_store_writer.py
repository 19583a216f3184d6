"""The store writer's urgent lane (runtime/writer.py): lease renewals pass
whatever waits in the writer's queue, on either store."""
import time
import uuid

import pytest
from conftest import NativeGate, open_test_store, wait_until

from aion_green.core.errors import EngineClosed
from aion_green.runtime.writer import StoreWriter
from aion_green.store import CreateRun


def _recording(order, key):
    def done(value, error):
        order.append(key if error is None else (key, error))
    return done


def test_an_urgent_call_passes_the_calls_and_writes_queued_before_it(db_url):
    """Failure window (issue 21): a lease renewal queued behind the history
    reads of hundreds of runs just claimed, and the group commits between
    them, came after the leases it was to extend had run out."""
    writer = StoreWriter(open_test_store(db_url))
    try:
        gate = NativeGate()
        held = writer.call(lambda: gate.wait(10))  # the op in progress
        order: list = []
        for k in range(3):
            writer.submit_call(lambda: None, _recording(order, f"call{k}"))
        writer.submit_create(CreateRun("w-urgent", "t.x", "[]", uuid.uuid4().hex, time.time()),
                             _recording(order, "create"))
        urgent = writer.call_urgent(lambda: order.append("urgent") or "renewed")
        gate.set()
        assert urgent.result(10) == "renewed"
        held.result(10)
        wait_until(lambda: len(order) == 5, what="the queued ops")
        assert order[0] == "urgent", order
        assert sorted(order[1:]) == ["call0", "call1", "call2", "create"]
    finally:
        writer.close()


def test_an_urgent_call_waits_for_nothing_but_the_op_in_progress_on_an_idle_writer(db_url):
    writer = StoreWriter(open_test_store(db_url))
    try:
        assert writer.call_urgent(lambda: 42).result(10) == 42
        # and the writer goes on taking ordinary ops afterwards
        assert writer.call(lambda: 7).result(10) == 7
    finally:
        writer.close()


def test_urgent_calls_accepted_before_close_run_and_later_ones_are_refused(db_url):
    writer = StoreWriter(open_test_store(db_url))
    gate = NativeGate()
    writer.call(lambda: gate.wait(10))
    accepted = writer.call_urgent(lambda: "ran")
    writer.close(timeout=0)  # asks the thread to stop; it is still held
    with pytest.raises(EngineClosed):
        writer.call_urgent(lambda: "late")
    gate.set()
    writer.close()
    assert accepted.result(10) == "ran"


def test_the_writer_keeps_no_answer_once_its_caller_has_let_go(db_url):
    """The writer's thread held its last batch (and so each future's
    answer) until the next op came: a history read of thousands of events
    stayed in memory for as long as the engine stood idle."""
    import gc
    import weakref

    class Answer:
        pass

    writer = StoreWriter(open_test_store(db_url))
    try:
        future = writer.call(Answer)
        answer = weakref.ref(future.result(10))
        del future
        # (Once the writer's thread is back in its wait, with nothing queued.)
        wait_until(lambda: gc.collect() >= 0 and answer() is None, 5,
                   what="the writer to let go of its last call's answer")
    finally:
        writer.close()
