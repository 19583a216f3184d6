"""The history cursor: replay matches each engine call against the record.

Naming rule: every engine call of a workflow carries a *correlation key*
(for a step: its ordinal and name). The cursor hands out recorded events in
order; an event of the wrong type or key is a :class:`NonDeterminismError`.
Past the end of the history the call goes live.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from . import events as ev
from .errors import NonDeterminismError


class HistoryCursor:
    """Position of a replaying workflow in its recorded history.

    Used only by the run's own greenlet on the hub thread.
    """

    def __init__(self, workflow_id: str, history: Sequence[ev.Event]) -> None:
        if not history or history[0].type != ev.WORKFLOW_STARTED:
            raise NonDeterminismError(
                workflow_id, history[0].seq if history else None,
                "a history that opens with WorkflowStarted",
                history[0].describe() if history else "an empty history",
            )
        self.workflow_id = workflow_id
        self._events = list(history)
        # Invariant: _events[:_pos] are consumed; the last consumed event's
        # time is the workflow's current time (ctx.now()).
        self._pos = 1
        self.current_at: float = history[0].at
        self.head_seq: int = history[-1].seq

    @property
    def replaying(self) -> bool:
        return self._pos < len(self._events)

    def peek(self) -> Optional[ev.Event]:
        return self._events[self._pos] if self._pos < len(self._events) else None

    def take(self, types: frozenset[str], key: dict[str, Any],
             expected: Callable[[], str]) -> Optional[ev.Event]:
        """The next recorded event if it is of one of ``types`` with ``key``;
        None when the history is exhausted (the call goes live).
        ``expected()`` describes the call for the error message."""
        if self._pos >= len(self._events):
            return None
        event = self._events[self._pos]
        if event.type not in types or any(event.data.get(k) != v for k, v in key.items()):
            raise NonDeterminismError(self.workflow_id, event.seq, expected(), event.describe())
        self._pos += 1
        self.current_at = event.at
        return event

    def advance_live(self, head_seq: int, at: float) -> None:
        """Record that live events up to ``head_seq`` were appended at ``at``."""
        self.head_seq = head_seq
        self.current_at = at

    def check_end(self, ending: str) -> None:
        """The workflow ended; any recorded event not yet replayed means the
        code now does less than it did."""
        event = self.peek()
        if event is not None and event.type not in ev.TERMINAL_TYPES:
            raise NonDeterminismError(self.workflow_id, event.seq, ending, event.describe())
