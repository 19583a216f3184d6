"""The store conformance suite: every IEventStore implementation must pass it.

Use it by subclassing :class:`StoreContract` and providing a ``store``
fixture that yields a fresh, empty store.
"""
import json

import pytest
from zope.interface.verify import verifyObject

from aion_green.core import events as ev
from aion_green.core.errors import (
    ConfigurationError,
    SequenceConflict,
    StoreError,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.store import Append, CreateRun, EventFilter, IEventStore


def step_event(step, result, at=1000.0):
    return ev.NewEvent(ev.STEP_COMPLETED, at, {"step": step, "name": "s", "attempt": 1, "result": result})


class StoreContract:
    def create(self, store, wid="w-1", wtype="mod.wf", args=(1, "a")):
        return store.create_run(wid, wtype, json.dumps(list(args)), f"run-{wid}", 1000.0)

    def test_store_provides_the_interface(self, store):
        assert verifyObject(IEventStore, store)

    def test_create_run_writes_workflow_started_at_seq_1(self, store):
        created, info = self.create(store)
        assert created
        assert (info.workflow_id, info.workflow_type, info.status, info.head_seq) == (
            "w-1", "mod.wf", ev.RUNNING, 1)
        assert info.args == [1, "a"]
        (event,) = store.read("w-1")
        assert (event.seq, event.type) == (1, ev.WORKFLOW_STARTED)
        assert event.data == {"workflow_type": "mod.wf", "run_id": "run-w-1", "args": [1, "a"]}

    def test_create_run_of_an_existing_id_writes_nothing(self, store):
        self.create(store)
        created, info = store.create_run("w-1", "other.wf", "[2]", "run-x", 2000.0)
        assert not created
        assert (info.workflow_type, info.args, info.run_id) == ("mod.wf", [1, "a"], "run-w-1")
        assert len(store.read("w-1")) == 1

    def test_append_extends_the_head_and_returns_it(self, store):
        self.create(store)
        (head,) = store.write_batch([Append("w-1", 1, [step_event(1, {"x": [1, 2]})])])
        assert head == 2
        (head,) = store.write_batch([Append("w-1", 2, [step_event(2, None), step_event(3, "s")])])
        assert head == 4
        events = store.read("w-1")
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[1].data["result"] == {"x": [1, 2]}
        assert store.get_run("w-1").head_seq == 4

    def test_append_with_a_stale_head_is_a_sequence_conflict_and_writes_nothing(self, store):
        self.create(store)
        store.write_batch([Append("w-1", 1, [step_event(1, 1)])])
        (outcome,) = store.write_batch([Append("w-1", 1, [step_event(1, 99)])])
        assert isinstance(outcome, SequenceConflict)
        assert (outcome.expected_seq, outcome.actual_seq) == (1, 2)
        assert [e.data.get("result") for e in store.read("w-1")[1:]] == [1]

    def test_a_conflict_does_not_stop_the_rest_of_the_batch(self, store):
        self.create(store, "a")
        self.create(store, "b")
        outcomes = store.write_batch([
            Append("a", 1, [step_event(1, "a1")]),
            Append("b", 7, [step_event(1, "bad")]),
            Append("b", 1, [step_event(1, "b1")]),
            Append("a", 2, [step_event(2, "a2")]),
        ])
        assert outcomes[0] == 2 and outcomes[2] == 2 and outcomes[3] == 3
        assert isinstance(outcomes[1], SequenceConflict)
        assert [e.data["result"] for e in store.read("a")[1:]] == ["a1", "a2"]
        assert [e.data["result"] for e in store.read("b")[1:]] == ["b1"]

    def test_append_to_a_missing_run_is_refused(self, store):
        (outcome,) = store.write_batch([Append("nope", 1, [step_event(1, 1)])])
        assert isinstance(outcome, StoreError)
        assert store.read("nope") == []

    def test_creates_and_appends_share_one_batch_in_order(self, store):
        outcomes = store.write_batch([
            CreateRun("c", "mod.wf", "[]", "run-c", 1.0),
            Append("c", 1, [step_event(1, 5)]),
        ])
        assert outcomes[0][0] is True and outcomes[1] == 2
        assert [e.type for e in store.read("c")] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED]

    def test_a_large_batch_of_starts_records_and_ends_is_written_as_in_order(self, store):
        """One group commit of hundreds of starts (new ids, an id that
        exists, an id started twice in the batch), appends to runs the batch
        created, timers started and ended, and ends: each outcome and row as
        if the ops ran one by one (a store may write a kind of row in one
        statement: PostgreSQL writes a batch's starts so, issue 21)."""
        self.create(store, "old", args=(0,))
        ops = [CreateRun(f"n{i}", "mod.wf", json.dumps([i]), f"run-n{i}", 10.0 + i)
               for i in range(300)]
        ops += [CreateRun("old", "mod.other", "[9]", "run-x", 20.0),
                CreateRun("twice", "mod.wf", "[1]", "run-t1", 21.0),
                CreateRun("twice", "mod.wf", "[2]", "run-t2", 22.0)]
        ops += [Append(f"n{i}", 1, [
            step_event(1, i),
            ev.NewEvent(ev.TIMER_STARTED, 30.0, {"timer": "a", "fire_at": 100.0 + i}),
            ev.NewEvent(ev.TIMER_STARTED, 30.0, {"timer": "b", "fire_at": 200.0 + i})])
            for i in range(300)]
        ops += [Append(f"n{i}", 4, [ev.NewEvent(ev.TIMER_CANCELLED, 31.0, {"timer": "b"})])
                for i in range(0, 300, 2)]
        ops += [Append(f"n{i}", 5, [ev.NewEvent(ev.WORKFLOW_COMPLETED, 40.0, {"result": i})])
                for i in range(0, 300, 4)]
        outcomes = store.write_batch(ops)
        assert all(o[0] is True and o[1].head_seq == 1 and o[1].args == [i]
                   for i, o in enumerate(outcomes[:300]))
        existing, first, second = outcomes[300:303]
        assert existing[0] is False and existing[1].args == [0]
        assert first[0] is True and first[1].run_id == "run-t1"
        assert second[0] is False and second[1].run_id == "run-t1" and second[1].args == [1]
        assert outcomes[303:603] == [4] * 300
        assert outcomes[603:753] == [5] * 150
        assert outcomes[753:] == [6] * 75
        assert [e.data["args"] for e in store.read("twice")] == [[1]]
        assert store.read("n7")[1].data["result"] == 7
        assert [e.type for e in store.read("n4")] == [
            ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.TIMER_STARTED, ev.TIMER_STARTED,
            ev.TIMER_CANCELLED, ev.WORKFLOW_COMPLETED]
        assert store.get_run("n8").status == ev.COMPLETED and store.get_run("n8").result == 8
        assert store.get_run("n2").status == ev.RUNNING
        due = store.due_timers(1000.0, limit=10_000)
        # n4k ended (no timers left); n4k+2 kept a; the odd ones kept a and b.
        expected = ([(f"n{i}", "a", 100.0 + i) for i in range(300) if i % 4]
                    + [(f"n{i}", "b", 200.0 + i) for i in range(1, 300, 2)])
        assert sorted(due) == sorted(expected)
        # The stream has the batch's events in the order of its ops.
        events, _ = store.read_events(0, 10_000)
        assert [(e.workflow_id, e.seq) for e in events] == (
            [("old", 1)] + [(f"n{i}", 1) for i in range(300)] + [("twice", 1)]
            + [(f"n{i}", seq) for i in range(300) for seq in (2, 3, 4)]
            + [(f"n{i}", 5) for i in range(0, 300, 2)] + [(f"n{i}", 6) for i in range(0, 300, 4)])
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))

    def test_terminal_event_sets_status_and_result(self, store):
        self.create(store, "ok")
        self.create(store, "bad")
        store.write_batch([
            Append("ok", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, 5.0, {"result": {"n": 1}})]),
            Append("bad", 1, [ev.NewEvent(ev.WORKFLOW_FAILED, 6.0,
                                          {"error": {"type": "E", "message": "m"}})]),
        ])
        ok, bad = store.get_run("ok"), store.get_run("bad")
        assert (ok.status, ok.result, ok.finished) == (ev.COMPLETED, {"n": 1}, True)
        assert (bad.status, bad.error) == (ev.FAILED, {"type": "E", "message": "m"})

    def test_a_message_recorded_before_a_continue_as_new_is_still_found(self, store):
        """A client waits to see its message recorded; the run may have
        taken it and continued as new before the client looks."""
        self.create(store)
        assert store.deliver_message("w-1", "m", '"x"', 2.0, dedup="inbox/7") == 2
        store.write_batch([Append("w-1", 2, [ev.NewEvent(
            ev.WORKFLOW_CONTINUED_AS_NEW, 3.0, {"args": [], "run_id": "run-2", "generation": 2})])])
        assert store.find_event("w-1", ev.MESSAGE_RECEIVED, "inbox/7") == 2  # in the old run
        assert store.deliver_message("w-1", "m", '"y"', 4.0, dedup="inbox/8") == 2
        assert store.find_event("w-1", ev.MESSAGE_RECEIVED, "inbox/8") == 2  # in the new one
        assert store.find_event("w-1", ev.MESSAGE_RECEIVED, "inbox/9") is None

    def test_continued_as_new_archives_the_run_and_begins_the_next(self, store):
        self.create(store)
        timer = ev.NewEvent(ev.TIMER_STARTED, 1001.0, {"timer": "t1", "fire_at": 5000.0})
        continued = ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, 1002.0,
                                {"args": [7], "run_id": "run-2", "generation": 2})
        (head,) = store.write_batch([Append("w-1", 1, [step_event(1, "x"), timer, continued])])
        assert head == 4
        (started,) = store.read("w-1")
        assert (started.seq, started.type, started.at) == (1, ev.WORKFLOW_STARTED, 1002.0)
        assert started.data == {"workflow_type": "mod.wf", "run_id": "run-2", "args": [7],
                                "continued_from": "run-w-1", "generation": 2}
        info = store.get_run("w-1")
        assert (info.run_id, info.status, info.head_seq, info.args) == ("run-2", ev.RUNNING, 1, [1, "a"])
        old = store.read("w-1", run_id="run-w-1")
        assert [e.type for e in old] == [ev.WORKFLOW_STARTED, ev.STEP_COMPLETED, ev.TIMER_STARTED,
                                         ev.WORKFLOW_CONTINUED_AS_NEW]
        assert store.read("w-1", run_id="run-2") == store.read("w-1")
        assert store.read("w-1", run_id="no-such-run") == []
        assert store.due_timers(10_000.0) == []  # the old run's timer went with it
        (head,) = store.write_batch([Append("w-1", 1, [step_event(1, "y")])])
        assert head == 2 and store.read("w-1", after_seq=1)[0].data["result"] == "y"

    def test_range_reads(self, store):
        self.create(store)
        store.write_batch([Append("w-1", 1, [step_event(i, i) for i in range(1, 6)])])
        assert [e.seq for e in store.read("w-1", after_seq=3)] == [4, 5, 6]
        assert [e.seq for e in store.read("w-1", after_seq=1, limit=2)] == [2, 3]
        assert store.read("w-1", after_seq=6) == []

    def test_read_many_gives_each_current_run_its_own_history_as_read_gives_it(self, store):
        """What runs driven again together read: one call, each run's
        current history in order, an id without a run left out; a run that
        continued as new gives its new run's history only; more ids than
        one statement may bind (SQLite reads them in chunks)."""
        for k in range(4):
            self.create(store, f"m{k}", args=(k,))
            if k:
                store.write_batch([Append(f"m{k}", 1, [step_event(i, f"{k}.{i}") for i in range(k)])])
        continued = ev.NewEvent(ev.WORKFLOW_CONTINUED_AS_NEW, 1002.0,
                                {"args": [9], "run_id": "run-next", "generation": 2})
        store.write_batch([Append("m3", 4, [continued]), Append("m2", 3, [step_event(9, "late")])])
        ids = ["m0", "m1", "m2", "m3", "nope", *(f"x{k}" for k in range(1200))]
        found = store.read_many(ids)
        assert sorted(found) == ["m0", "m1", "m2", "m3"]
        for wid in ("m0", "m1", "m2", "m3"):
            assert found[wid] == store.read(wid)
        assert [e.seq for e in found["m2"]] == [1, 2, 3, 4]
        assert found["m2"][-1].data["result"] == "late"
        assert [(e.type, e.data["args"]) for e in found["m3"]] == [(ev.WORKFLOW_STARTED, [9])]
        assert store.read_many([]) == {}

    def test_every_event_kind_round_trips(self, store):
        self.create(store)
        kinds = [
            ev.NewEvent(ev.STEP_COMPLETED, 1.5, {"step": 1, "name": "n", "attempt": 1,
                                                  "result": {"a": [1, 2.5, None, True, "é"]}}),
            ev.NewEvent(ev.STEP_FAILED, 2.5, {"step": 2, "name": "n", "attempt": 1, "retryable": True,
                                               "error": {"type": "ValueError", "message": "x"}}),
            ev.NewEvent(ev.WORKFLOW_FAILED, 3.5, {"error": {"type": "E", "message": "m"}}),
        ]
        store.write_batch([Append("w-1", 1, kinds)])
        for new, got in zip(kinds, store.read("w-1")[1:]):
            assert (got.type, got.at, got.data) == (new.type, new.at, new.data)
            assert ev.Event.from_json(json.loads(json.dumps(got.to_json()))) == got

    def test_list_runs_filters_and_pages(self, store):
        for i in range(5):
            self.create(store, f"w{i}", "mod.even" if i % 2 == 0 else "mod.odd")
        store.write_batch([Append("w0", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, 2.0, {"result": 0})])])
        assert [r.workflow_id for r in store.list_runs()] == ["w0", "w1", "w2", "w3", "w4"]
        assert [r.workflow_id for r in store.list_runs(status=ev.RUNNING)] == ["w1", "w2", "w3", "w4"]
        assert [r.workflow_id for r in store.list_runs(workflow_type="mod.even")] == ["w0", "w2", "w4"]
        assert [r.workflow_id for r in store.list_runs(ev.RUNNING, "mod.even")] == ["w2", "w4"]
        page1 = store.list_runs(limit=2)
        page2 = store.list_runs(limit=2, after_id=page1[-1].workflow_id)
        assert [r.workflow_id for r in page1 + page2] == ["w0", "w1", "w2", "w3"]

    def test_timers_are_kept_by_the_appends_and_fire_once(self, store):
        self.create(store)
        store.write_batch([Append("w-1", 1, [
            ev.NewEvent(ev.TIMER_STARTED, 1.0, {"timer": "t1", "fire_at": 50.0}),
            ev.NewEvent(ev.TIMER_STARTED, 1.0, {"timer": "t2", "fire_at": 80.0}),
            ev.NewEvent(ev.TIMER_CANCELLED, 1.0, {"timer": "t2"})])])
        assert store.due_timers(40.0) == []
        assert store.due_timers(100.0) == [("w-1", "t1", 50.0)]
        assert store.fire_timer("w-1", "t1", 60.0) == 5
        assert store.fire_timer("w-1", "t1", 61.0) is None  # twice fires once
        assert store.due_timers(100.0) == []
        assert store.read("w-1")[-1].data == {"timer": "t1"}

    def test_messages_and_cancel_requests_through_the_store(self, store):
        self.create(store)
        assert store.deliver_message("w-1", "m", '{"a": 1}', 2.0) == 2
        assert store.deliver_message("w-1", "m", '"b"', 2.0, dedup="d1") == 3
        assert store.deliver_message("w-1", "m", '"b"', 2.0, dedup="d1") == 3  # once
        assert store.deliver_message("w-1", "other", "null", 2.0) == 4
        assert [(e.data["name"], e.data["index"]) for e in store.read("w-1")[1:]] == [
            ("m", 0), ("m", 1), ("other", 0)]
        assert store.find_event("w-1", ev.MESSAGE_RECEIVED, "d1") == 3
        assert store.find_event("w-1", ev.MESSAGE_RECEIVED, "nope") is None
        assert store.find_event("w-1", ev.CANCEL_REQUESTED) is None
        assert store.request_cancel("w-1", "why", 3.0) == 5
        assert store.request_cancel("w-1", "again", 3.0) == 5
        store.write_batch([Append("w-1", 5, [ev.NewEvent(ev.WORKFLOW_CANCELLED, 4.0, {})])])
        with pytest.raises(WorkflowNotRunning):
            store.deliver_message("w-1", "m", "1", 5.0)
        with pytest.raises(WorkflowNotFound):
            store.request_cancel("missing", "", 5.0)

    def test_the_inbox_and_new_runs_serve_a_driving_engine(self, store):
        mark = store.last_run_mark()
        self.create(store, "a")
        self.create(store, "b")
        new = store.new_runs(mark)
        assert [(run.workflow_id, run.status) for run in new] == [("a", ev.RUNNING), ("b", ev.RUNNING)]
        assert new[0].mark < new[1].mark
        assert store.new_runs(new[-1].mark) == [] and store.last_run_mark() == new[-1].mark
        first = store.post_inbox("a", "message", '{"name": "n", "payload": 1}', 9.0)
        second = store.post_inbox("b", "cancel", '{"reason": "r"}', 9.5)
        assert [(i, w, k, d) for i, w, k, d, _ in store.read_inbox(0)] == [
            (first, "a", "message", {"name": "n", "payload": 1}), (second, "b", "cancel", {"reason": "r"})]
        store.delete_inbox([first])
        assert [row[0] for row in store.read_inbox(0)] == [second]
        store.write_batch([Append("a", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, 2.0, {"result": 0})])])
        with pytest.raises(WorkflowNotRunning):
            store.post_inbox("a", "message", "{}", 10.0)
        with pytest.raises(WorkflowNotFound):
            store.post_inbox("zz", "message", "{}", 10.0)

    # -- fork and resume ---------------------------------------------------------------------
    def failed_run(self, store, wid="w-1"):
        """A run that failed at its second step: started, step 1, timer t1
        started, step 2 failed twice, WorkflowFailed (seq 6)."""
        self.create(store, wid)
        failed = [ev.NewEvent(ev.STEP_FAILED, 1002.0 + n, {"step": 2, "name": "s", "attempt": n,
                                                            "retryable": n == 1, "error": {}})
                  for n in (1, 2)]
        store.write_batch([Append(wid, 1, [
            step_event(1, "one", 1001.0),
            ev.NewEvent(ev.TIMER_STARTED, 1001.5, {"timer": "t1", "fire_at": 5000.0}),
            *failed,
            ev.NewEvent(ev.WORKFLOW_FAILED, 1005.0, {"error": {"type": "E", "message": "m"}})])])
        return store.read(wid)

    def test_fork_run_copies_a_prefix_into_a_new_run_and_leaves_the_source(self, store):
        source = self.failed_run(store)
        mark = store.last_run_mark()
        info = store.fork_run("w-1", 3, "w-1/fork", "run-f", 3000.0)
        assert (info.workflow_id, info.run_id, info.status, info.head_seq, info.args,
                info.workflow_type) == ("w-1/fork", "run-f", ev.RUNNING, 3, [1, "a"], "mod.wf")
        assert store.get_run("w-1/fork") == info
        started, *copied = store.read("w-1/fork")
        assert (started.seq, started.type, started.at) == (1, ev.WORKFLOW_STARTED, source[0].at)
        assert started.data == {
            "workflow_type": "mod.wf", "run_id": "run-f", "args": [1, "a"],
            "forked_from": {"workflow_id": "w-1", "run_id": "run-w-1", "seq": 3, "at": 3000.0},
            "random_seed": "w-1\x00run-w-1"}
        assert copied == source[1:3]
        assert store.due_timers(10_000.0) == [("w-1/fork", "t1", 5000.0)]  # pending again
        assert [run.workflow_id for run in store.new_runs(mark)] == ["w-1/fork"]
        assert store.read("w-1") == source and store.get_run("w-1").status == ev.FAILED
        # The fork of a fork goes on from the first source's random generator.
        store.fork_run("w-1/fork", 1, "w-3", "run-3", 3001.0)
        assert store.read("w-3")[0].data["random_seed"] == "w-1\x00run-w-1"

    def test_fork_run_refusals_write_nothing(self, store):
        self.failed_run(store)
        self.create(store, "taken")
        self.create(store, "parent")
        store.write_batch([Append("parent", 1, [
            ev.NewEvent(ev.CHILD_STARTED, 1.0, {"child": 1, "id": "parent/child-1",
                                                "workflow_type": "mod.kid", "args": []}),
            step_event(1, "x")])])
        before = [(i.workflow_id, i.head_seq) for i in store.list_runs()]
        refusals = [
            (("w-1", 0, "n"), ConfigurationError, "from 1 to 5"),
            (("w-1", 6, "n"), ConfigurationError, "seq 6 is its end"),
            (("w-1", "2", "n"), ConfigurationError, "out of range"),
            (("nope", 1, "n"), WorkflowNotFound, "'nope'"),
            (("w-1", 2, "taken"), WorkflowIdConflict, "'taken'"),
            (("parent", 2, "n"), ConfigurationError, "child 'parent/child-1'"),
        ]
        for args, error, match in refusals:
            with pytest.raises(error, match=match):
                store.fork_run(*args, "run-n", 2000.0)
        with pytest.raises(WorkflowNotFound, match="with a run 'no-run'"):
            store.fork_run("w-1", 1, "n", "run-n", 2000.0, "no-run")
        assert [(i.workflow_id, i.head_seq) for i in store.list_runs()] == before
        assert store.get_run("n") is None and store.read("n") == []
        assert store.due_timers(10_000.0) == []

    def test_restart_run_archives_the_run_and_begins_the_next_of_the_same_id(self, store):
        source = self.failed_run(store)
        mark = store.last_run_mark()
        info = store.restart_run("w-1", None, "run-2", 4000.0)
        # The default drops the end and every record of the step that failed.
        assert (info.run_id, info.status, info.head_seq, info.result, info.error) == (
            "run-2", ev.RUNNING, 3, None, None)
        assert store.get_run("w-1") == info
        started, *copied = store.read("w-1")
        assert started.data["resumed_from"] == {"run_id": "run-w-1", "seq": 3, "at": 4000.0}
        assert started.data["run_id"] == "run-2" and copied == source[1:3]
        assert store.read("w-1", run_id="run-w-1") == source
        # New to a driving engine, as a created run is; its timer pending.
        assert [run.workflow_id for run in store.new_runs(mark)] == ["w-1"]
        assert store.due_timers(10_000.0) == [("w-1", "t1", 5000.0)]
        (head,) = store.write_batch([Append("w-1", 3, [step_event(2, "two")])])
        assert head == 4
        # A fork of the archived run, by its run id.
        assert store.fork_run("w-1", 5, "w-9", "run-9", 4001.0, "run-w-1").head_seq == 5

    def test_restart_run_of_a_cancelled_run_resumes_before_the_request(self, store):
        self.create(store)
        store.write_batch([Append("w-1", 1, [
            step_event(1, "one"), ev.NewEvent(ev.CANCEL_REQUESTED, 2.0, {"reason": "r"}),
            step_event(2, "cleanup"), ev.NewEvent(ev.WORKFLOW_CANCELLED, 3.0, {"error": {}})])])
        info = store.restart_run("w-1", None, "run-2", 4000.0)
        assert info.head_seq == 2 and [e.type for e in store.read("w-1")] == [
            ev.WORKFLOW_STARTED, ev.STEP_COMPLETED]

    def test_restart_run_refusals_write_nothing(self, store):
        self.create(store, "live")
        self.create(store, "done")
        store.write_batch([Append("done", 1, [ev.NewEvent(ev.WORKFLOW_COMPLETED, 2.0, {"result": 1})])])
        self.failed_run(store)
        before = {wid: (store.get_run(wid), store.read(wid)) for wid in ("live", "done", "w-1")}
        refusals = [
            (("live", None), ConfigurationError, "still running.*fork"),
            (("done", None), ConfigurationError, "has completed.*fork"),
            (("w-1", 6), ConfigurationError, "from 1 to 5"),
            (("w-1", 0), ConfigurationError, "out of range"),
            (("nope", None), WorkflowNotFound, "'nope'"),
        ]
        for args, error, match in refusals:
            with pytest.raises(error, match=match):
                store.restart_run(*args, "run-x", 2000.0)
        assert {wid: (store.get_run(wid), store.read(wid)) for wid in before} == before
        assert store.read("w-1", run_id="run-x") == []

    def test_get_run_of_unknown_id_is_none(self, store):
        assert store.get_run("missing") is None

    def test_close_is_idempotent(self, store):
        store.close()
        store.close()

    # -- the store-wide event stream (issue 18: GET /v1/events) --------------------------------
    def test_every_event_has_a_global_position_archived_ones_included(self, store):
        """Appends, the store's own appends (a message, a timer's firing),
        and a continue-as-new, which archives a run: each event once, in the
        order committed, the archived ones under their own run id."""
        assert store.event_head() == 0 and store.read_events(0, 100) == ([], 0)
        self.create(store, "a")
        self.create(store, "b")
        store.write_batch([Append("a", 1, [step_event(1, "x"), ev.NewEvent(
            ev.TIMER_STARTED, 1001.0, {"timer": "t", "fire_at": 5.0})])])
        store.deliver_message("b", "m", '"hi"', 1002.0)
        store.fire_timer("a", "t", 1003.0)
        store.write_batch([Append("a", 4, [ev.NewEvent(
            ev.WORKFLOW_CONTINUED_AS_NEW, 1004.0, {"args": [], "run_id": "run-2", "generation": 2})])])
        events, cursor = store.read_events(0, 100)
        assert [(e.workflow_id, e.run_id, e.seq, e.type) for e in events] == [
            ("a", "run-a", 1, ev.WORKFLOW_STARTED), ("b", "run-b", 1, ev.WORKFLOW_STARTED),
            ("a", "run-a", 2, ev.STEP_COMPLETED), ("a", "run-a", 3, ev.TIMER_STARTED),
            ("b", "run-b", 2, ev.MESSAGE_RECEIVED), ("a", "run-a", 4, ev.TIMER_FIRED),
            ("a", "run-a", 5, ev.WORKFLOW_CONTINUED_AS_NEW), ("a", "run-2", 1, ev.WORKFLOW_STARTED)]
        positions = [e.position for e in events]
        assert positions == sorted(set(positions)) and cursor == positions[-1] == store.event_head()
        assert events[4].data == {"name": "m", "index": 0, "payload": "hi"} and events[4].at == 1002.0
        assert store.read_events(cursor, 100) == ([], cursor)

    def test_global_pages_follow_the_cursor_and_filters_move_it_on(self, store):
        self.create(store, "a")
        self.create(store, "b")
        store.write_batch([Append("a", 1, [step_event(1, "x"), ev.NewEvent(
            ev.WORKFLOW_COMPLETED, 1001.0, {"result": 1})])])
        store.write_batch([Append("a", 2, [ev.NewEvent(  # refused: nothing written, no position
            ev.WORKFLOW_COMPLETED, 1001.0, {"result": 1})]), Append("b", 1, [step_event(1, "y")])])
        seen, cursor = [], 0
        while True:
            page, cursor = store.read_events(cursor, 2)
            seen += page
            if len(page) < 2:
                break
        assert [(e.workflow_id, e.seq) for e in seen] == [("a", 1), ("b", 1), ("a", 2), ("a", 3),
                                                         ("b", 2)]
        head = store.event_head()
        assert cursor == head
        steps, after = store.read_events(0, 100, EventFilter(types=(ev.STEP_COMPLETED,)))
        assert [(e.workflow_id, e.data["result"]) for e in steps] == [("a", "x"), ("b", "y")]
        assert after == head
        done, _ = store.read_events(0, 100, EventFilter(statuses=(ev.COMPLETED,)))
        assert {e.workflow_id for e in done} == {"a"} and len(done) == 3
        both, _ = store.read_events(0, 100, EventFilter((ev.STEP_COMPLETED,), (ev.RUNNING,)))
        assert [e.workflow_id for e in both] == ["b"]
        assert store.read_events(0, 100, EventFilter(types=(ev.TIMER_FIRED,))) == ([], head)

    def test_an_earlier_run_of_a_chain_has_the_status_its_last_event_gives(self, store):
        self.create(store, "a")
        store.write_batch([Append("a", 1, [ev.NewEvent(
            ev.WORKFLOW_CONTINUED_AS_NEW, 1001.0, {"args": [], "run_id": "run-2", "generation": 2})])])
        continued, _ = store.read_events(0, 100, EventFilter(statuses=(ev.CONTINUED,)))
        assert [(e.run_id, e.seq) for e in continued] == [("run-a", 1), ("run-a", 2)]
        running, _ = store.read_events(0, 100, EventFilter(statuses=(ev.RUNNING,)))
        assert [(e.run_id, e.seq) for e in running] == [("run-2", 1)]

    def test_forks_and_resumes_get_new_positions_and_the_old_run_keeps_its_own(self, store):
        self.create(store, "a")
        store.write_batch([Append("a", 1, [step_event(1, "x"), ev.NewEvent(
            ev.WORKFLOW_FAILED, 1001.0, {"error": {"type": "E", "message": "m"}})])])
        before, head = store.read_events(0, 100)
        store.fork_run("a", 2, "f", "run-f", 1002.0)
        store.restart_run("a", 2, "run-a2", 1003.0)
        after, _ = store.read_events(head, 100)
        assert sorted((e.workflow_id, e.run_id, e.seq) for e in after) == [
            ("a", "run-a2", 1), ("a", "run-a2", 2), ("f", "run-f", 1), ("f", "run-f", 2)]
        again, _ = store.read_events(0, head)
        assert [(e.position, e.run_id, e.seq) for e in again] == [
            (e.position, e.run_id, e.seq) for e in before]
