# mypy: disable-error-code="empty-body"
# (zope.interface declarations have a docstring for a body: see IEventStore.)
"""The store contract, and the embedded SQLite store.

A store keeps, per workflow id, a run row (type, arguments, status, result)
and the run's history: events numbered by ``seq`` from 1. Store methods are
blocking; the engine calls them only from its store writer thread (see
``_writer.py``), never from the hub thread, where a blocking C call would
freeze every workflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence, Union

from zope.interface import Attribute, Interface

from aion_green.core import events as ev
from aion_green.core.errors import StoreError


@dataclass(frozen=True)
class RunInfo:
    """What the store knows of one workflow id and its current run. ``args``
    are those the id was started with (a run begun by continue_as_new has
    its own in its ``WorkflowStarted``)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    args: list[Any]
    result: Any
    error: Optional[dict[str, Any]]
    head_seq: int
    created_at: float
    updated_at: float
    fence: int = 0  # the owner's fencing token, where the store leases runs
    # Filled by Engine.describe() in the engine that runs them: the step
    # attempts running now, each with its start time (a hung step shows).
    steps_running: tuple["StepRunning", ...] = ()
    # Why the engine asked cannot drive this running run (Engine.describe), else None.
    unrunnable: Optional[str] = None
    # For a run that continued as new (Engine.describe(id, run_id=...) of an
    # earlier run of the chain): the run it became.
    next_run_id: Optional[str] = None
    # The workflow id of the run whose ``ctx.start_child`` (or supervisor)
    # started this one; None for a top-level run.
    parent_id: Optional[str] = None
    # Its search attributes (``ctx.upsert_search_attributes``): name -> a
    # str, int, float or bool.
    search_attributes: dict[str, Any] = field(default_factory=dict)
    # Its execution deadline (wall clock; ``Engine.start(..., execution_timeout=)``,
    # core/bounds.py), else None; and, from Engine.describe(), whether it is paused.
    execution_deadline: Optional[float] = None
    paused: bool = False
    # The namespace of the run (core/namespaces.py). A store's rows name runs
    # by key; the engine's public operations answer with the id and this.
    namespace: str = "default"

    @property
    def finished(self) -> bool:
        return self.status != ev.RUNNING

    # The times as aware datetimes (UTC), for the caller; the fields above
    # keep them as seconds since the epoch, as the store holds them.
    @property
    def started(self) -> datetime:
        """When the current run began (``created_at``)."""
        return _utc(self.created_at)

    @property
    def updated(self) -> datetime:
        """When the run last changed; a finished run's end (``updated_at``)."""
        return _utc(self.updated_at)

    @property
    def ended(self) -> Optional[datetime]:
        """When a finished run ended; None while it runs."""
        return None if self.status == ev.RUNNING else _utc(self.updated_at)

    @property
    def deadline(self) -> Optional[datetime]:
        """Its execution deadline (``execution_deadline``), or None."""
        return None if self.execution_deadline is None else _utc(self.execution_deadline)


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class StepRunning(NamedTuple):
    """A step attempt running now: its ordinal, name, attempt (from 1) and
    the wall-clock time it began (seconds since the epoch)."""

    step: int
    name: str
    attempt: int
    since: float

    @property
    def started(self) -> datetime:
        """When the attempt began, an aware datetime (UTC)."""
        return _utc(self.since)


class EngineInfo(NamedTuple):
    """An engine at work on a store (``Engine.engines()``): its id, whether
    it is the engine asked, until when its word holds (PostgreSQL: its
    entry among the engines; None on SQLite, whose driver holds the file's
    lock), how many running runs it leases now (None on SQLite), and the
    workflow types it runs."""

    engine_id: str
    here: bool
    seen_until: Optional[float]
    leased_runs: Optional[int]
    workflow_types: tuple[str, ...]


class Append(NamedTuple):
    """One history append: ``events`` extend the history whose head is
    ``expected_seq``."""

    workflow_id: str
    expected_seq: int
    events: Sequence[ev.NewEvent]
    # The owner's fencing token (PostgreSQL leases): a stale one is refused.
    fence: Optional[int] = None


class NewRun(NamedTuple):
    """A run a driving engine has not seen yet: its mark (which orders the
    creations in a store), id and status. Light on purpose: the engine
    sees every run it creates come back here, and reads in full only the
    few that others created."""

    mark: int
    workflow_id: str
    status: str


# A lease parked while its run is out of memory (runtime/residency.py): a
# ``lease_until`` no clock reaches. It holds as long as its owner's entry
# among the engines does (renewed once per heartbeat, not once per run);
# once that entry has run out, the next engine that publishes its own
# frees the run (``lease_until`` 0) for any engine to claim.
PARKED_LEASE_SQL = "1e15"  # as the stores' partial indexes spell it (SQLite matches their text)
PARKED_LEASE = float(PARKED_LEASE_SQL)


class CreateRun(NamedTuple):
    """Create a run and its ``WorkflowStarted`` event (seq 1)."""

    workflow_id: str
    workflow_type: str
    args_json: str
    run_id: str
    at: float
    # Leases (PostgreSQL): the creating engine owns the new run until then.
    owner: Optional[str] = None
    lease_until: float = 0.0
    # The workflow id of the parent run, for a child workflow.
    parent_id: Optional[str] = None
    # Its execution deadline (wall clock), recorded in its WorkflowStarted.
    execution_deadline: Optional[float] = None


class RunFilter(NamedTuple):
    """Filters of ``list_runs`` and ``count_runs`` beyond status and type,
    ANDed. ``started_after``/``started_before``: the current run's start
    time (seconds since the epoch), ``started_after <= t < started_before``;
    ``parent``: the workflow id of the parent run; ``attributes``: search
    attributes that must all match, name -> text form (a string as it is,
    another scalar as its JSON text: ``core.events.attribute_text``);
    ``namespace``: the runs of one namespace, by their keys' form
    (``core.namespaces``); ``id_prefix``: the runs whose key begins so."""

    parent: Optional[str] = None
    started_after: Optional[float] = None
    started_before: Optional[float] = None
    attributes: tuple[tuple[str, str], ...] = ()
    # Only the runs of this namespace (None: every namespace's).
    namespace: Optional[str] = None
    # Only the runs whose key begins with this (an id prefix, in key form).
    id_prefix: Optional[str] = None


class GlobalEvent(NamedTuple):
    """One event of the store-wide stream (``read_events``): its global
    ``position`` (the cursor), the workflow id and run id it belongs to, its
    per-run ``seq``, ``type``, time ``at`` and decoded ``data``; and the
    run's ``namespace`` (a store names runs by key: there the workflow id is
    the key, and the engine shows the id and the namespace)."""

    position: int
    workflow_id: str
    run_id: str
    seq: int
    type: str
    at: float
    data: dict[str, Any]
    namespace: str = "default"

    @property
    def time(self) -> datetime:
        """When it was recorded, an aware datetime (UTC), as ``Event.time``."""
        return _utc(self.at)


class EventPage(NamedTuple):
    """A page of the store-wide stream (``Engine.events``): its events, in
    position order, and ``next``, the cursor to ask for the next page with."""

    events: list[GlobalEvent]
    next: int


class EventFilter(NamedTuple):
    """Filters of ``read_events``, ANDed; an empty one matches every event.
    ``types``: event types (``core.events.EVENT_TYPES``); ``statuses``: run
    statuses (``core.events.STATUSES``) of the run each event belongs to, as
    that run is when the page is read (an earlier run of a chain has the
    status its last event gives: ``continued`` after a continue-as-new);
    ``namespace``: the runs of one namespace, by their keys' form (None:
    every namespace's)."""

    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    namespace: Optional[str] = None


# What ``write_batch`` returns for one op: an append's new head seq or the
# error that refused it; a create's ``(created, RunInfo)``.
BatchOutcome = Union[int, StoreError, tuple[bool, RunInfo]]

# An inbox row: ``(id, workflow_id, kind, data, at)``; ``data`` is the
# request's decoded JSON.
InboxRow = tuple[int, str, str, Any, float]


# The methods below are zope.interface declarations: documentation, checked
# against an implementation by ``verifyObject``; they take no ``self`` and
# have a docstring for a body. mypy knows no zope.interface: it reads such a
# body as one that returns nothing (``empty-body``, off for this module at
# its top) and a method without arguments as one that forgot ``self``
# (``misc``, ignored on those two lines).
class IEventStore(Interface):  # type: ignore[misc]  # zope.interface is untyped: Interface is Any
    """Durable histories of workflow runs.

    Invariant: a history only grows, by appends that name the head they
    extend; seqs are 1, 2, 3... with no gap and no duplicate.
    """

    durable = Attribute("True when a returned append survives a power cut (fsync per commit).")

    def create_run(workflow_id: str, workflow_type: str, args_json: str, run_id: str,  # noqa: N805
                   at: float) -> tuple[bool, RunInfo]:
        """Create the run and its ``WorkflowStarted`` event (seq 1) atomically.

        Returns ``(created, RunInfo)``; when the id exists nothing is written
        and the existing run is returned with ``created`` false.
        """

    def write_batch(ops: Sequence[Union[Append, CreateRun]]) -> list[BatchOutcome]:  # noqa: N805
        """Apply many :class:`Append` and :class:`CreateRun`, in order, in one
        transaction and one durable commit (group commit).

        Returns one outcome per op, in order: for an append the new head seq,
        or the :class:`SequenceConflict` (or :class:`StoreError`) that refused
        it (a refused append writes nothing; the others still commit); for a
        create, ``(created, RunInfo)`` as :meth:`create_run` returns. A
        terminal event sets the run's status, result or error in the same
        transaction; ``WorkflowContinuedAsNew`` (data: ``run_id``, ``args``,
        ``generation``) instead moves the run's history to the archive and
        begins the next run of the same workflow id, whose ``WorkflowStarted``
        (seq 1) names the run it ``continued_from``. Raises :class:`StoreError` when the transaction as a
        whole fails; then nothing of the batch is written.
        """

    def read(workflow_id: str, after_seq: int = 0, limit: Optional[int] = None,  # noqa: N805
             run_id: Optional[str] = None) -> list[ev.Event]:
        """Events of the current run's history with ``seq > after_seq``, in
        order; with ``run_id``, of that run (current or continued as new)."""

    def read_many(workflow_ids: Sequence[str]) -> dict[str, list[ev.Event]]:  # noqa: N805
        """``{id: history}``: the current runs' histories of ``workflow_ids``,
        each in order, read at once (runs driven again together); an id
        without a run is left out."""

    def last_of_types(workflow_id: str, types: Sequence[str]) -> Optional[str]:  # noqa: N805
        """The type of the last event of the current run's history whose type
        is one of ``types``, or None: read without decoding the history
        (whether a run is paused, for ``describe``)."""

    def get_run(workflow_id: str) -> Optional[RunInfo]:  # noqa: N805
        """The :class:`RunInfo` of a workflow id, or None."""

    def list_runs(status: Optional[str] = None, workflow_type: Optional[str] = None,  # noqa: N805
                  limit: int = 100, after_id: Optional[str] = None, *,
                  filters: Optional[RunFilter] = None) -> list[RunInfo]:
        """Runs ordered by workflow id, filtered by status and type and
        ``filters`` (all ANDed); ``after_id`` pages (pass the last id of the
        previous page). Each names its parent and its search attributes."""

    def count_runs(status: Optional[str] = None, workflow_type: Optional[str] = None,  # noqa: N805
                   *, filters: Optional[RunFilter] = None) -> int:
        """How many runs ``list_runs`` with these filters would list, all pages."""

    def count_runs_by_status(workflow_type: Optional[str] = None, *,  # noqa: N805
                             filters: Optional[RunFilter] = None) -> dict[str, int]:
        """Those counts per status: every status, 0 for none."""

    def due_timers(now: float, limit: int = 1000) -> list[tuple[str, str, float]]:  # noqa: N805
        """Timers of unfinished runs with ``fire_at <= now``, earliest first:
        ``(workflow_id, timer_key, fire_at)``."""

    def fire_timer(workflow_id: str, timer_key: str, at: float) -> Optional[int]:  # noqa: N805
        """Append ``TimerFired`` at the head of a run that no engine drives
        here, if the timer is still pending; returns the new head or None.
        Firing twice fires once."""

    def deliver_message(workflow_id: str, name: str, payload_json: str, at: float,  # noqa: N805
                        dedup: Optional[str] = None) -> int:
        """Append ``MessageReceived`` (with its per-name index) at the head
        of a run that no engine drives here; returns the new head. With a
        ``dedup`` id already delivered, nothing is written and the seq of
        that delivery is returned. Raises :class:`WorkflowNotFound` or
        :class:`WorkflowNotRunning` (then nothing is written)."""

    def request_cancel(workflow_id: str, reason: str, at: float) -> int:  # noqa: N805
        """Append ``CancelRequested`` at the head of a run that no engine
        drives here (once: a second request writes nothing); returns the
        head. Raises :class:`WorkflowNotFound` or :class:`WorkflowNotRunning`."""

    # Several processes over one store: one engine drives the runs, the
    # others post their requests to an inbox that it drains.
    def post_inbox(workflow_id: str, kind: str, data_json: str, at: float) -> int:  # noqa: N805
        """Queue a request (``kind`` "message" or "cancel") for a running
        run; returns its inbox id. Raises :class:`WorkflowNotFound` or
        :class:`WorkflowNotRunning` (then nothing is written)."""

    def read_inbox(after_id: int = 0, limit: int = 500) -> list[InboxRow]:  # noqa: N805
        """Queued requests with ``id > after_id``, oldest first:
        ``(id, workflow_id, kind, data, at)``."""

    def delete_inbox(ids: Sequence[int]) -> None:  # noqa: N805
        """Forget handled requests."""

    def new_runs(after: int = 0, limit: int = 500) -> list[NewRun]:  # noqa: N805
        """Runs created after the mark ``after``, oldest first, as
        :class:`NewRun` rows (``get_run`` tells the rest of one)."""

    def last_run_mark() -> int:  # type: ignore[misc]  # noqa: N805
        """The mark of the newest run (0 for none)."""

    def purge_finished(before: float, limit: int = 500,  # noqa: N805
                       namespace: Optional[str] = None) -> list[str]:
        """Delete, in one transaction, at most ``limit`` runs that ended
        (completed, failed, cancelled: never a running one, and a chain of
        continue-as-new only with its last run) before ``before`` (seconds
        since the epoch), with everything the store holds of their workflow
        ids: history, earlier runs' histories, timers, inbox requests,
        search attributes, the run row. A child goes by its own end, but
        not while its parent's current run waits for that end. Safe to run
        in several engines at once. With ``namespace``, only the runs of
        that namespace. Returns the keys purged, oldest end first; an id
        purged is unknown afterwards, and may be started again."""

    def find_event(workflow_id: str, event_type: str,  # noqa: N805
                   dedup: Optional[str] = None) -> Optional[int]:
        """The seq of the first event of that type in the run's current
        history (with that ``dedup`` id, if given), or None."""

    # Fork and resume (``Engine.fork`` / ``Engine.resume``; the cut rule is
    # in ``_rewind.py``). Each is one transaction: on any refusal nothing
    # is written.
    def fork_run(source_id: str, from_seq: int, new_id: str, run_id: str, at: float,  # noqa: N805
                 source_run_id: Optional[str] = None) -> RunInfo:
        """Create run ``new_id`` (``run_id``, running, of the source's type
        and arguments) whose history is a new ``WorkflowStarted`` (with
        ``forked_from``) and the events 2..``from_seq`` of the source's
        current run (or of its run ``source_run_id``); the source is not
        changed. Returns the new :class:`RunInfo`. Raises
        :class:`WorkflowNotFound`, :class:`WorkflowIdConflict` (``new_id``
        exists) or :class:`ConfigurationError` (a cut out of range or
        refused)."""

    def restart_run(workflow_id: str, from_seq: Optional[int], run_id: str,  # noqa: N805
                    at: float) -> RunInfo:
        """Resume a failed or cancelled run in place: archive its history
        (readable by its run id, as after a continuation) and begin run
        ``run_id`` of the same id: a new ``WorkflowStarted`` (with
        ``resumed_from``) and the old run's events 2..``from_seq`` (None:
        the default resume point). The run is new to ``new_runs`` and
        unowned where runs are leased. Returns its :class:`RunInfo`. Raises
        :class:`WorkflowNotFound` or :class:`ConfigurationError` (a run not
        failed or cancelled, a cut out of range)."""

    # The store-wide event stream (issue 18: GET /v1/events). Every event,
    # of every run, archived ones included, has a global position.
    # Invariant: positions are given in commit order (a transaction takes
    # its positions under one counter, held until it commits), so a reader
    # that has seen position N never later finds a new event below N;
    # positions may have gaps (a purged run's events), never duplicates.
    def event_head() -> int:  # type: ignore[misc]  # noqa: N805
        """The position of the last committed event (0 before any)."""

    def read_events(after: int, limit: int,  # noqa: N805
                    filters: EventFilter = EventFilter()) -> tuple[list[GlobalEvent], int]:
        """Events with a position above ``after`` that ``filters`` match, in
        position order, at most ``limit``; and the cursor to read on from:
        the last position returned when the page is full, else the head as
        the read found it (so a filter that matches nothing still moves
        the cursor on)."""

    def close() -> None:  # type: ignore[misc]  # noqa: N805
        """Release the store's resources. Idempotent."""


__all__ = ["Append", "CreateRun", "EventFilter", "EventPage", "GlobalEvent", "IEventStore", "RunFilter",
           "RunInfo", "SQLiteStore", "StepRunning", "open_store", "sqlite_path_from_url"]

# The SQLite store lives in its own module and is part of this contract's
# public face (``aion_green.store.SQLiteStore``), loaded on first use: the
# contract imports no implementation, so a process that only reads records
# (the HTTP client) loads no sqlite3 (issue 17).
_IMPLEMENTATIONS = {"SQLiteStore": ".stores.sqlite.store",
                    "sqlite_path_from_url": ".stores.sqlite.schema", "open_store": ".stores"}

if TYPE_CHECKING:  # pragma: no cover - what the type checkers see
    from aion_green.stores import open_store
    from aion_green.stores.sqlite.schema import sqlite_path_from_url
    from aion_green.stores.sqlite.store import SQLiteStore


def __getattr__(name: str) -> object:
    module = _IMPLEMENTATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __package__), name)
