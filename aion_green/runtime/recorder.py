"""The recorder: the one door through which events enter a live run's history.

Every append to a run that lives in this engine goes through its recorder:
the run's own commands (from its greenlet), step results (from step pool
threads), and, in later issues, timer firings, messages and cancel requests.
The recorder gives each append the ``expected_seq`` it extends, in the order
the appends are submitted, and hands them to the store writer, which applies
them in that same order (its queue is FIFO). Appends can therefore be in
flight together without conflicting, and a ``SequenceConflict`` still means
what it always means: a writer outside this engine.

Thread contract: :meth:`Recorder.submit` and :meth:`Recorder.init` may be
called from any thread; the state they share is guarded by one native lock,
held only for a few Python statements (never across a blocking call or a
greenlet switch).
"""
from __future__ import annotations

import functools
from typing import AbstractSet, Any, Callable, Optional, Union

from gevent import monkey

from aion_green.core.errors import EngineClosed
from aion_green.core.events import MESSAGE_RECEIVED, NewEvent

_allocate_lock = monkey.get_original("_thread", "allocate_lock")

_NOTHING: frozenset[str] = frozenset()


def _given(events: list[NewEvent], recorder: "Recorder") -> list[NewEvent]:
    return events

# build(recorder) -> the events to append; called under the lock, so a
# per-name message index can be taken from recorder.counts (and a repeated
# delivery recognised in recorder.seen). An empty list appends nothing.
Build = Callable[["Recorder"], list[NewEvent]]
# on_done(events, head, error), called on the store writer thread.
OnDone = Callable[[list[NewEvent], Optional[int], Optional[BaseException]], None]
# The run's own: on_recorded(workflow_id, events, head, error), the same for
# every run of an engine (one callable, not one per run: a resident run
# holds its recorder, and a partial per run was two more objects for the
# cyclic GC).
OnRecorded = Callable[[str, list[NewEvent], Optional[int], Optional[BaseException]], None]


class Recorder:
    """Orders the appends of one live run."""

    def __init__(self, workflow_id: str, writer: Any, on_recorded: OnRecorded,
                 fence: Optional[int] = None) -> None:
        self.workflow_id = workflow_id
        # The owner's fencing token, carried by every append (leased stores).
        self.fence = fence
        self._writer = writer
        self._on_recorded = on_recorded
        self._lock = _allocate_lock()
        # Invariant: _next is None until init(); then it is the seq of the
        # last event submitted (recorded or in flight), and appends reach
        # the writer in seq order.
        self._next: Optional[int] = None
        # The seq of the last event known durable (set as each append's
        # outcome comes): when it is _next, nothing of this run is in
        # flight, and a step's record may be committed by its pool thread
        # (StoreWriter.begin_inline) without passing one queued before it.
        self._durable: Optional[int] = None
        # Messages per name recorded or in flight, and dedup ids seen.
        self.counts: dict[str, int] = {}
        self.seen: AbstractSet[str] = _NOTHING  # a set from the first note_seen()
        # The seq of each message recorded (or in flight) with a dedup id,
        # so a repeated delivery answers with the first one's seq.
        self.dedup_seqs: dict[str, int] = {}
        # Appends submitted before init(); a tuple (no object) once it ran.
        self._buffer: Union[list[tuple[Build, Optional[OnDone]]], tuple[()]] = []
        # Invariant: once closed, submit() refuses (the run's terminal event
        # was submitted: nothing may follow it).
        self.closed = False

    def init(self, head: int, message_counts: dict[str, int], seen: set[str],
             dedup_seqs: Optional[dict[str, int]] = None) -> None:
        """The history is loaded: its head, per-name message counts, dedup
        ids (and the seqs of deduplicated messages). Appends submitted
        before this (buffered) go out now."""
        with self._lock:
            self._next = self._durable = head
            self.counts = dict(message_counts)
            self.seen = set(seen) if seen else _NOTHING
            self.dedup_seqs = dict(dedup_seqs or {})
            buffered, self._buffer = self._buffer, ()
            for build, extra in buffered:
                self._submit_locked(build, extra)

    def abandon(self, error: BaseException) -> None:
        """Give up before init: refuse further appends and tell every
        buffered one ``error`` (the engine then routes them anew)."""
        with self._lock:
            self.closed = True
            buffered, self._buffer = self._buffer, ()
        for _build, extra in buffered:
            if extra is not None:
                extra([], None, error)

    def submit(self, build: Build, extra: Optional[OnDone] = None, final: bool = False) -> Optional[int]:
        """Queue an append; return the seq its last event will have (None
        while the recorder waits for init). ``extra`` is told of the outcome
        too. ``final`` closes the recorder (a terminal event)."""
        with self._lock:
            if self.closed:
                raise EngineClosed(f"workflow {self.workflow_id!r} has ended; nothing more is recorded")
            if final:
                self.closed = True
            if self._next is None:
                assert isinstance(self._buffer, list)
                self._buffer.append((build, extra))
                return None
            return self._submit_locked(build, extra)

    def note_seen(self, key: str) -> None:
        """Remember a dedup id (under the lock: from a ``build``)."""
        seen = self.seen
        if not isinstance(seen, set):
            seen = self.seen = set()
        seen.add(key)

    def submit_events(self, events: list[NewEvent], final: bool = False,
                      inline: bool = False) -> Optional[int]:
        """:meth:`submit` of events built beforehand (a step's record, a
        workflow's command). ``inline``: the caller is a pool thread that
        may commit the record itself (never the hub thread: a commit
        blocks)."""
        if not final:
            # The hot path (a step's record, from a pool thread): what
            # _submit_locked does for one event given as it is, not a
            # message, without its build and callback frames.
            writer = self._writer
            with self._lock:
                expected = self._next
                if (expected is not None and not self.closed and len(events) == 1
                        and events[0].type != MESSAGE_RECEIVED):
                    self._next = expected + 1
                    done = functools.partial(self._recorded, events)
                    if not (inline and self._durable == expected and writer.begin_inline()):
                        writer.submit_append(self.workflow_id, expected, events, done, self.fence)
                        return expected + 1
                else:
                    expected = None
            if expected is not None:
                # Outside the run's lock (its later records queue behind
                # this one: the writer waits for the commit to end).
                writer.write_inline(self.workflow_id, expected, events, done, self.fence)
                return expected + 1
        return self.submit(functools.partial(_given, events), final=final)

    def _recorded(self, events: list[NewEvent], head: Optional[int],
                  error: Optional[BaseException]) -> None:
        """An append's outcome (the writer thread, or a pool thread that
        committed it): note what is durable, then tell the engine."""
        if error is None and head is not None:
            self._durable = head
        self._on_recorded(self.workflow_id, events, head, error)

    def _submit_locked(self, build: Build, extra: Optional[OnDone]) -> int:
        events = build(self)
        expected = self._next
        assert expected is not None
        if not events:
            if extra is not None:
                extra(events, expected, None)
            return expected
        on_done = self._recorded
        if extra is None:
            done: Callable[[Any, Optional[BaseException]], None] = functools.partial(on_done, events)
        else:
            def done(head: Any, error: Optional[BaseException]) -> None:
                on_done(events, head, error)
                extra(events, head, error)

        self._writer.submit_append(self.workflow_id, expected, events, done, self.fence)
        for i, event in enumerate(events):
            dedup = event.data.get("dedup") if event.type == MESSAGE_RECEIVED else None
            if dedup is not None:
                self.dedup_seqs.setdefault(dedup, expected + i + 1)
        self._next = expected + len(events)
        return self._next
