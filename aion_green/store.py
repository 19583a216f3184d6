"""The store contract, and the embedded SQLite store.

A store keeps, per workflow id, a run row (type, arguments, status, result)
and the run's history: events numbered by ``seq`` from 1. Store methods are
blocking; the engine calls them only from its store writer thread (see
``_writer.py``), never from the hub thread, where a blocking C call would
freeze every workflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

from zope.interface import Attribute, Interface

from aion_green.core import events as ev


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

    @property
    def finished(self) -> bool:
        return self.status != ev.RUNNING


class StepRunning(NamedTuple):
    """A step attempt running now: its ordinal, name, attempt (from 1) and
    the wall-clock time it began (seconds since the epoch)."""

    step: int
    name: str
    attempt: int
    since: float


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


class IEventStore(Interface):
    """Durable histories of workflow runs.

    Invariant: a history only grows, by appends that name the head they
    extend; seqs are 1, 2, 3... with no gap and no duplicate.
    """

    durable = Attribute("True when a returned append survives a power cut (fsync per commit).")

    def create_run(workflow_id, workflow_type, args_json, run_id, at):  # noqa: N805
        """Create the run and its ``WorkflowStarted`` event (seq 1) atomically.

        Returns ``(created, RunInfo)``; when the id exists nothing is written
        and the existing run is returned with ``created`` false.
        """

    def write_batch(ops):  # noqa: N805
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

    def read(workflow_id, after_seq=0, limit=None, run_id=None):  # noqa: N805
        """Events of the current run's history with ``seq > after_seq``, in
        order; with ``run_id``, of that run (current or continued as new)."""

    def get_run(workflow_id):  # noqa: N805
        """The :class:`RunInfo` of a workflow id, or None."""

    def list_runs(status=None, workflow_type=None, limit=100, after_id=None):  # noqa: N805
        """Runs ordered by workflow id, filtered by status and type;
        ``after_id`` pages (pass the last id of the previous page)."""

    def due_timers(now, limit=1000):  # noqa: N805
        """Timers of unfinished runs with ``fire_at <= now``, earliest first:
        ``(workflow_id, timer_key, fire_at)``."""

    def fire_timer(workflow_id, timer_key, at):  # noqa: N805
        """Append ``TimerFired`` at the head of a run that no engine drives
        here, if the timer is still pending; returns the new head or None.
        Firing twice fires once."""

    def deliver_message(workflow_id, name, payload_json, at, dedup=None):  # noqa: N805
        """Append ``MessageReceived`` (with its per-name index) at the head
        of a run that no engine drives here; returns the new head. With a
        ``dedup`` id already delivered, nothing is written and the seq of
        that delivery is returned. Raises :class:`WorkflowNotFound` or
        :class:`WorkflowNotRunning` (then nothing is written)."""

    def request_cancel(workflow_id, reason, at):  # noqa: N805
        """Append ``CancelRequested`` at the head of a run that no engine
        drives here (once: a second request writes nothing); returns the
        head. Raises :class:`WorkflowNotFound` or :class:`WorkflowNotRunning`."""

    # Several processes over one store: one engine drives the runs, the
    # others post their requests to an inbox that it drains.
    def post_inbox(workflow_id, kind, data_json, at):  # noqa: N805
        """Queue a request (``kind`` "message" or "cancel") for a running
        run; returns its inbox id. Raises :class:`WorkflowNotFound` or
        :class:`WorkflowNotRunning` (then nothing is written)."""

    def read_inbox(after_id=0, limit=500):  # noqa: N805
        """Queued requests with ``id > after_id``, oldest first:
        ``(id, workflow_id, kind, data, at)``."""

    def delete_inbox(ids):  # noqa: N805
        """Forget handled requests."""

    def new_runs(after=0, limit=500):  # noqa: N805
        """Runs created after the mark ``after``, oldest first, as
        :class:`NewRun` rows (``get_run`` tells the rest of one)."""

    def last_run_mark():  # type: ignore[misc]  # noqa: N805
        """The mark of the newest run (0 for none)."""

    def find_event(workflow_id, event_type, dedup=None):  # noqa: N805
        """The seq of the first event of that type in the run's current
        history (with that ``dedup`` id, if given), or None."""

    # Fork and resume (``Engine.fork`` / ``Engine.resume``; the cut rule is
    # in ``_rewind.py``). Each is one transaction: on any refusal nothing
    # is written.
    def fork_run(source_id, from_seq, new_id, run_id, at, source_run_id=None):  # noqa: N805
        """Create run ``new_id`` (``run_id``, running, of the source's type
        and arguments) whose history is a new ``WorkflowStarted`` (with
        ``forked_from``) and the events 2..``from_seq`` of the source's
        current run (or of its run ``source_run_id``); the source is not
        changed. Returns the new :class:`RunInfo`. Raises
        :class:`WorkflowNotFound`, :class:`WorkflowIdConflict` (``new_id``
        exists) or :class:`ConfigurationError` (a cut out of range or
        refused)."""

    def restart_run(workflow_id, from_seq, run_id, at):  # noqa: N805
        """Resume a failed or cancelled run in place: archive its history
        (readable by its run id, as after a continuation) and begin run
        ``run_id`` of the same id: a new ``WorkflowStarted`` (with
        ``resumed_from``) and the old run's events 2..``from_seq`` (None:
        the default resume point). The run is new to ``new_runs`` and
        unowned where runs are leased. Returns its :class:`RunInfo`. Raises
        :class:`WorkflowNotFound` or :class:`ConfigurationError` (a run not
        failed or cancelled, a cut out of range)."""

    def close():  # type: ignore[misc]  # noqa: N805
        """Release the store's resources. Idempotent."""


__all__ = ["Append", "CreateRun", "IEventStore", "RunInfo", "SQLiteStore", "StepRunning",
           "open_store", "sqlite_path_from_url"]

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


def __getattr__(name: str) -> Any:
    module = _IMPLEMENTATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __package__), name)
