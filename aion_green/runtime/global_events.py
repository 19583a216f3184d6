"""The store-wide event stream, engine side (issue 18): ``Engine.events``
and ``Engine.event_head``, their arguments checked into the store's
:class:`~aion_green.store.EventFilter`.

A cursor is a global position (``stores/global_events.py``): positions are
given in commit order, so following ``next`` page after page sees every
event once, the archived events of a chain's earlier runs included. They
may have gaps (a purge removes old runs' events), never repeats. Filters:

- ``types``: event types (``core.events.EVENT_TYPES``: ``StepCompleted``,
  ``TimerFired``...);
- ``statuses``: the status of the run each event belongs to *when the page
  is read* (not when the event was recorded): a run's ``StepCompleted``
  read while it runs is ``running``, read after its end ``completed``. An
  earlier run of a chain has the status its last event gives
  (``continued`` after a continue-as-new);
- ``namespace``: the runs of one namespace (``"default"`` if None); the
  events come with their run's id (not its key) and namespace, and their
  data shows ids where the history holds keys (``namespaces.present``).

Thread contract: pure functions, any thread; reads go through the engine's
reader thread.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Union

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import ConfigurationError
from aion_green.store import EventFilter, EventPage, GlobalEvent

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine

# The most events one page holds.
MAX_PAGE = 1000

Names = Union[None, str, Iterable[str]]


def _names(value: Names, valid: Iterable[str], what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(value)
    known = set(valid)
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise ConfigurationError(f"{what}: unknown {name!r}; choose among "
                                     f"{', '.join(sorted(known))}")
    return tuple(sorted(set(names)))


def event_filter(types: Names, statuses: Names, namespace: Optional[str]) -> EventFilter:
    """The store's filter; a :class:`ConfigurationError` naming a bad one
    and listing the valid choices."""
    ns = namespaces.DEFAULT if namespace is None else namespaces.check_namespace(
        namespace, "events(namespace=...)")
    return EventFilter(_names(types, ev.EVENT_TYPES, "events(types=...)"),
                       _names(statuses, ev.STATUSES, "events(statuses=...)"), ns)


def check_cursor(after: object, head: int, what: str = "events(after=...)") -> int:
    """``after`` as a cursor of a stream whose head is ``head``: a whole
    number from 0 to ``head``."""
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= head:
        raise ConfigurationError(
            f"{what}: got {after!r}; a cursor is a global event position from 0 (the first "
            f"event) to the last recorded ({head}), or None for the events from now on")
    return after


def read_page(engine: "Engine", after: Optional[int], types: Names, statuses: Names,
              limit: int, namespace: Optional[str] = None) -> EventPage:
    """``Engine.events``."""
    filters = event_filter(types, statuses, namespace)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ConfigurationError(f"events(limit=...): got {limit!r}; ask for 1 to {MAX_PAGE} "
                                 "events per page and follow 'next' for the rest")
    head = event_head(engine)
    if after is None:  # from now on: nothing yet, and the cursor to follow
        return EventPage([], head)
    check_cursor(after, head)
    events, cursor = engine._call_store(engine._epoch.store.read_events, after, limit, filters)
    return EventPage([_public(e) for e in events], cursor)


def _public(event: GlobalEvent) -> GlobalEvent:
    """A store's event (its run named by key) as a caller names it."""
    shown = namespaces.present(ev.Event(event.seq, event.type, event.at, event.data))
    return event._replace(workflow_id=namespaces.local(event.workflow_id), data=shown.data,
                          namespace=namespaces.namespace_of(event.workflow_id))


def event_head(engine: "Engine") -> int:
    engine._ensure_started()
    return int(engine._call_store(engine._epoch.store.event_head))
