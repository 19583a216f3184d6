"""The history cursor: replay matches each engine call against the record.

Naming rule: every engine call of a workflow carries a *correlation key*
(a step: its ordinal and name). *Command* events (what the workflow did:
steps, timers it started, its end) are matched in order: an event of the
wrong type or key is a :class:`NonDeterminismError`. *Arrivals* (what came
from outside: a message, a timer's firing, a cancel request) may be recorded
between any two commands, so they are matched by key, never by position.
Past the end of the recorded commands a call goes live; live records join
the same history, so live and replay read it the same way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Iterable, Optional, Sequence, Union

from aion_green.core import events as ev
from aion_green.core.bounds import PAUSE_TYPES
from aion_green.core.errors import NonDeterminismError
from aion_green.core.history import ARRIVAL_TYPES, CANCEL_KEY, ArrivalKey, arrival_key

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext

_STEP_TYPES = ev.STEP_TYPES

_NO_KEYS: frozenset[int] = frozenset()
_NEVER = float("inf")

# A live run keeps the events it has consumed only until this many pile up:
# then they go (its WorkflowStarted stays), so a loop of a million steps
# holds a window of events, not its whole history (409 bytes and one object
# for the cyclic GC per step before).
_KEEP = 256
# The arrivals whose wait takes each once (drop_arrival).
_DROPPED_ONCE_TAKEN = ("timer", "message")


def _step_key(event: ev.Event) -> tuple[int, int]:
    """A step record's key in the index: (ordinal, attempt)."""
    data = event.data
    return int(data.get("step", 0)), int(data.get("attempt", 1))


def _index_step(records: dict[tuple[int, int], ev.Event], event: ev.Event) -> None:
    records.setdefault(_step_key(event), event)


class HistoryCursor:
    """Position of a workflow in its history; used only by the run's own
    greenlet and the hub callbacks that record into it (one thread)."""

    def __init__(self, workflow_id: str, history: Sequence[ev.Event]) -> None:
        if not history or history[0].type != ev.WORKFLOW_STARTED:
            raise NonDeterminismError(
                workflow_id, history[0].seq if history else None,
                "a history that opens with WorkflowStarted",
                history[0].describe() if history else "an empty history",
            )
        self.workflow_id = workflow_id
        # The events from some seq on, in seq order with no gap (those
        # before it, consumed, were dropped: _compact), and the run's
        # WorkflowStarted, always kept. Invariant: once loaded, _events is
        # never empty (it holds the head).
        self._events: list[ev.Event] = []
        self._started = history[0]
        self.arrivals: dict[ArrivalKey, ev.Event] = {}
        # Invariant: _events[:_pos] hold no unconsumed command; the time of
        # the last consumed event is the workflow's current time (ctx.now()).
        self._pos = 1
        self.current_at: float = history[0].at
        # Steps matched by key, not position (their records are passed over
        # by next_command): those of a fan-out (ctx.parallel, ctx.race), whose
        # records land in any order, and those whose wait was abandoned (a
        # cancel or a deadline was recorded first), whose late record is not
        # a command of this workflow's path.
        self.keyed_steps: AbstractSet[int] = _NO_KEYS  # a set from the first key_step()
        # Step records by (ordinal, attempt), for keyed lookups: built at the
        # first key_step (a run with no fan-out never needs it), then kept by
        # add_one. A record leaves it once used: replayed in order (consume)
        # or taken by its fan-out branch (take_step_record); the records of
        # a step no one waits for any more are not kept (skip_step). So it
        # holds what is still ahead, not every step the run ever made.
        self._step_records: Optional[dict[tuple[int, int], ev.Event]] = None
        # The keyed steps whose records no one will take (skip_step): ordinal
        # -> the first attempt no one waits for (None until the first).
        self._skipped: Optional[dict[int, int]] = None
        # Keyed steps that will be recorded no more (retire_step): ordinal ->
        # its last record, until next_command has passed over it; then the
        # ordinal leaves keyed_steps (a loop of fan-outs kept every ordinal
        # it ever keyed, ~80 bytes each).
        self._retiring: Optional[dict[int, ev.Event]] = None
        # Invariant: the type of the last WorkflowPaused/WorkflowUnpaused
        # added is WorkflowPaused (core/bounds.py). Read at the head, not at
        # the replay position: it holds back only what goes live.
        self.paused = False
        self.add(history)

    def key_step(self, ordinal: int) -> None:
        """Match the records of step ``ordinal`` by key from now on: a
        fan-out branch takes them with :meth:`take_step_record`."""
        self._key(ordinal)
        # The index of step records, from now on kept up by add_one: a
        # keyed step's records are passed over by next_command, and _compact
        # may drop them from _events once _pos is past them.
        self._index_steps()

    def skip_step(self, ordinal: int, attempt: int) -> None:
        """No one waits for step ``ordinal`` any more (its wait was
        abandoned, or its fan-out branch lost a race) from attempt
        ``attempt`` on (the earlier ones' records were used): its records,
        recorded or still to come, are passed over and not kept."""
        self._key(ordinal)
        skipped = self._skipped
        if skipped is None:
            skipped = self._skipped = {}
        skipped[ordinal] = attempt
        records = self._step_records
        if records:
            # A step given up on records once more at most (late, from the
            # attempt that ran): next_command lets the ordinal go once past
            # that record, or now if it is behind already.
            late = records.pop((ordinal, attempt), None)
            if late is not None:
                self.retire_step(ordinal, late)

    def _key(self, ordinal: int) -> None:
        keyed = self.keyed_steps
        if not isinstance(keyed, set):
            keyed = self.keyed_steps = set()
        keyed.add(ordinal)

    def retire_step(self, ordinal: int, last: ev.Event) -> None:
        """Keyed step ``ordinal`` will be recorded no more: ``last`` is its
        last record. Once next_command is past it, nothing is matched by
        the ordinal any more, and it goes."""
        events, pos = self._events, self._pos
        if pos >= len(events) or last.seq < events[pos].seq:
            self._unkey(ordinal)
        else:
            retiring = self._retiring
            if retiring is None:
                retiring = self._retiring = {}
            retiring[ordinal] = last

    def _unkey(self, ordinal: int) -> None:
        keyed, skipped = self.keyed_steps, self._skipped
        if isinstance(keyed, set):
            keyed.discard(ordinal)
        if skipped:
            skipped.pop(ordinal, None)

    @property
    def head_seq(self) -> int:
        return self._events[-1].seq

    @property
    def replaying(self) -> bool:
        return self.next_command() is not None

    def held(self) -> bool:
        """Paused, with no recorded command left to replay: what would come
        next goes live, and waits for the unpause (a replay of what was
        recorded before is never held)."""
        return self.paused and self.next_command() is None

    def add(self, events: Iterable[ev.Event]) -> None:
        """Events recorded (loaded, or appended live), in seq order."""
        for event in events:
            self.add_one(event)

    def add_one(self, event: ev.Event) -> None:
        self._events.append(event)
        if event.type in ARRIVAL_TYPES:
            key = arrival_key(event)
            if key is not None:
                self.arrivals.setdefault(key, event)
            elif event.type in PAUSE_TYPES:
                self.paused = event.type == ev.WORKFLOW_PAUSED
        elif self._step_records is not None and event.type in _STEP_TYPES:
            skipped = self._skipped
            if not skipped or event.data.get("step") not in skipped:
                _index_step(self._step_records, event)

    def take_step_record(self, ordinal: int, attempt: int) -> Optional[ev.Event]:
        """The first record of attempt ``attempt`` of step ``ordinal``, a
        keyed step's (None while it is not recorded); it leaves the index,
        so the caller asks for each attempt's record once."""
        return self._index_steps().pop((ordinal, attempt), None)

    def _index_steps(self) -> dict[tuple[int, int], ev.Event]:
        records = self._step_records
        if records is None:
            records = self._step_records = {}
            # Those still ahead: a record before _pos was consumed in order
            # (no key_step came before this one).
            skipped = self._skipped or {}
            for event in self._events[self._pos:]:
                if event.type in _STEP_TYPES and event.data.get("step") not in skipped:
                    _index_step(records, event)
        return records

    def event(self, seq: int) -> ev.Event:
        """The recorded event with ``seq`` (a history starts at seq 1): the
        WorkflowStarted, or one not yet dropped (_compact): the head and
        whatever is not consumed yet."""
        if seq == 1:
            return self._started
        index = seq - self._events[0].seq
        if index < 0:
            raise LookupError(f"workflow {self.workflow_id!r}: event {seq} was consumed and "
                              "dropped from memory; this is a bug in aion_green")
        return self._events[index]

    def next_command(self) -> Optional[ev.Event]:
        events, pos = self._events, self._pos
        end = len(events)
        while pos < end:
            event = events[pos]
            if event.type not in ARRIVAL_TYPES:
                if event.type not in _STEP_TYPES:
                    self._pos = pos
                    return event
                ordinal = event.data.get("step", 0)
                if ordinal not in self.keyed_steps:
                    self._pos = pos
                    return event
                retiring, skipped = self._retiring, self._skipped
                if retiring and retiring.get(ordinal) is event:
                    del retiring[ordinal]
                    self._unkey(ordinal)
                elif skipped and event.data.get("attempt", 1) >= skipped.get(ordinal, _NEVER):
                    self._unkey(ordinal)  # (the late record of a step given up on)
            pos += 1
        self._pos = pos
        return None

    def take(self, types: frozenset[str], key: dict[str, Any],
             expected: Callable[[], str], found: Optional[ev.Event] = None) -> Optional[ev.Event]:
        """The next recorded command if it is of one of ``types`` with
        ``key``; None when none is recorded yet (the call goes live).
        ``expected()`` describes the call for the error message; ``found``
        is the next command when the caller just looked it up."""
        event = found if found is not None else self.next_command()
        if event is None:
            return None
        data = event.data
        if event.type not in types:
            raise NonDeterminismError(self.workflow_id, event.seq, expected(), event.describe())
        for k, v in key.items():
            if data.get(k) != v:
                raise NonDeterminismError(self.workflow_id, event.seq, expected(), event.describe())
        self.consume(event)
        return event

    def consume(self, event: ev.Event) -> None:
        """``event``, the next command (checked by the caller), is replayed."""
        self._pos += 1
        self.current_at = event.at
        records = self._step_records
        if records is not None and event.type in _STEP_TYPES:
            key = _step_key(event)
            if records.get(key) is event:
                del records[key]
        if self._pos > _KEEP and len(self._events) - self._pos < _KEEP:
            self._compact()

    def _compact(self) -> None:
        """Drop the consumed events but the last (the head, while live): a
        command before ``_pos`` is replayed, an arrival before it is kept in
        ``arrivals``, and a keyed step's record in ``_step_records`` (built
        at the first key_step). Only once few are left to consume (live, or
        at the end of a replay), so the list's shift stays short."""
        drop = self._pos - 1
        del self._events[:drop]
        self._pos -= drop

    def consume_arrival(self, event: ev.Event) -> None:
        """An arrival was used by a wait: it sets the workflow's time."""
        self.current_at = max(self.current_at, event.at)

    def drop_arrival(self, event: ev.Event) -> None:
        """``event``, a timer's firing or a message, was used by the wait it
        was for: no later call looks for its key (each timer and each
        message index is waited for once), so it goes, as _compact lets
        consumed commands go. A child's end stays (its handle may be asked
        again), and so does a cancel request."""
        key = arrival_key(event)
        if key is not None and key[0] in _DROPPED_ONCE_TAKEN and self.arrivals.get(key) is event:
            del self.arrivals[key]

    def check_end(self, ending: str) -> None:
        """The workflow ended; a recorded command not yet replayed means the
        code now does less than it did."""
        event = self.next_command()
        if event is not None and event.type not in ev.TERMINAL_TYPES:
            raise NonDeterminismError(self.workflow_id, event.seq, ending, event.describe())


# What a race waits for: a callable that gives its event once recorded, or
# the key of a recorded arrival.
Own = Union[Callable[[], Optional[ev.Event]], ArrivalKey]


def reached(cursor: HistoryCursor, seq: int) -> Optional[bool]:
    """True once the history holds ``seq`` (a ``ready()`` for ``_wait``)."""
    return cursor.head_seq >= seq or None


class FirstRecorded:
    """The ``ready()`` of a race (``WorkflowContext._race``, whose context
    is ``ctx``): the first recorded of ``own`` (``own()``; or, given an
    arrival's key, that arrival: a timer's firing, a child's end), a cancel
    request and the deadlines of the enclosing timeout blocks. An object,
    not a closure: a parked run keeps one, and each closure cell would be
    one more object for the cyclic GC (and a key, not an object that looks
    it up: a tuple of strings, which the cyclic GC does not track)."""

    __slots__ = ("ctx", "own", "go_live", "mine")

    def __init__(self, ctx: "WorkflowContext", own: "Own",
                 go_live: Optional[Callable[[], None]]) -> None:
        self.ctx, self.own, self.go_live = ctx, own, go_live
        self.mine: Optional[ev.Event] = None

    def __call__(self) -> Optional[ev.Event]:
        ctx = self.ctx
        if ctx._cursor.held():
            # Paused: what this wait is for waits too (a message is kept,
            # recorded, for the unpause); nothing goes live.
            self.mine = None
            return None
        own, arrivals = self.own, ctx._cursor.arrivals
        best = self.mine = arrivals.get(own) if type(own) is tuple else own()  # type: ignore[operator]
        if ctx._cancel_pending:
            request = arrivals.get(CANCEL_KEY)
            if request is not None and (best is None or request.seq < best.seq):
                best = request
        for key in ctx._scopes:
            fired = arrivals.get(("timer", key))
            if fired is not None and (best is None or fired.seq < best.seq):
                best = fired
        if best is None and self.go_live is not None:
            self.go_live()
        return best
