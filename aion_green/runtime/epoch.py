"""One engine's life in one process: its threads, its store connections,
its run table, and the parts that drive runs with them.

An :class:`Epoch` is made when an :class:`~aion_green.runtime.engine.Engine`
starts (lazily, on first use) and dropped when it shuts down. A process
forked from one that had started the engine (gunicorn ``--preload``) inherits
an epoch whose threads did not survive the fork: the engine then begins a
new epoch in the child (:meth:`Engine._ensure_started`), and the old one is
never touched again. So the whole state of a life is here, in one typed
object, and nothing of it outlives the epoch.

The parts each own one concept and reach the others through the epoch:

==============  =================================================================
``runner``      runs on the hub: spawning, replaying, ending them, their records
``routing``     creating runs, routing messages and cancel requests to them
``children``    child workflows, engine side (spawn recovery, watching ends)
``sharing``     several processes over one SQLite file: driver or client
``leases``      many engines over one PostgreSQL database: leases, claims
``queries``     ``engine.query`` answered by the live run
``residency``   a cap on the runs held in memory: eviction and admission
``termination`` ``engine.terminate`` and runs no engine here can run
``bounds``      execution deadlines; pause and unpause
==============  =================================================================

Thread contract: the fields are set once, on the caller's thread that starts
the engine, before the hub thread starts; afterwards each field says who may
touch it (most: the hub thread only).
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from gevent import monkey

from aion_green.core.errors import ConfigurationError
from aion_green.hub_thread import Future, HubThread
from aion_green.runtime.bounds import Bounds
from aion_green.runtime.children import Children
from aion_green.runtime.host import EngineHost
from aion_green.runtime.leases import Leases
from aion_green.runtime.queries import Queries
from aion_green.runtime.recorder import Recorder
from aion_green.runtime.residency import Residency
from aion_green.runtime.routing import Routing
from aion_green.runtime.runs import Runner
from aion_green.runtime.sharing import DriverLock, PgDriverLock, Sharing
from aion_green.runtime.step_pool import StepPool
from aion_green.runtime.termination import Termination
from aion_green.runtime.timers import TimerService
from aion_green.runtime.writer import StoreWriter
from aion_green.store import RunInfo
from aion_green.stores import open_store
from aion_green.watchers import ChildTaskRegistry

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.engine")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")


class RunTable:
    """The runs this epoch drives (hub thread only).

    Invariant: a workflow id is here while a greenlet of this epoch drives
    it, at most one per id: *starting* from its spawn until its history is
    read, then with its context. ``wid in table`` and ``len(table)`` count
    both; :meth:`get` answers only with a context."""

    __slots__ = ("_contexts", "_starting", "get")

    def __init__(self) -> None:
        self._contexts: dict[str, "WorkflowContext"] = {}
        self._starting: set[str] = set()
        # get(wid): the run's context, or None (not here, or still
        # starting). The dict's own method: every record delivered to a run
        # looks its context up, and a Python frame there costs ~1% of a step.
        self.get: Callable[[str], Optional["WorkflowContext"]] = self._contexts.get

    def __contains__(self, wid: object) -> bool:
        return wid in self._contexts or wid in self._starting

    def __len__(self) -> int:
        return len(self._contexts) + len(self._starting)

    def is_starting(self, wid: str) -> bool:
        return wid in self._starting

    def any_starting(self) -> bool:
        return bool(self._starting)

    def ids(self) -> list[str]:
        """The workflow ids of every run driven now, starting ones too (a copy)."""
        return [*self._contexts, *self._starting]

    def contexts(self) -> list["WorkflowContext"]:
        """The contexts of the runs driven now (a copy)."""
        return list(self._contexts.values())

    def claim(self, wid: str) -> None:
        """A greenlet is about to drive ``wid``: starting."""
        self._starting.add(wid)

    def attach(self, wid: str, ctx: "WorkflowContext") -> None:
        """Its history is read: the run has its context."""
        self._starting.discard(wid)
        self._contexts[wid] = ctx

    def release(self, wid: str) -> None:
        """The run's greenlet let go of it."""
        self._starting.discard(wid)
        self._contexts.pop(wid, None)

    def __repr__(self) -> str:
        return f"<RunTable {len(self._contexts)} driven, {len(self._starting)} starting>"


class Epoch:
    """The shared state of one engine's life (see the module docstring)."""

    def __init__(self, engine: "Engine", pid: int) -> None:
        self.pid = pid
        # -- the store: a writer thread and a reader thread, each with its
        # own connection (WAL lets reads run while the writer commits).
        # Typed Any: mypy reads zope.interface methods as lacking self.
        self.store: Any = open_store(engine.url, engine.durable, engine.busy_timeout)
        # Leased stores (PostgreSQL, SQLite with ?leases=on) own runs by
        # lease; SQLite otherwise by driver lock.
        self.leased: bool = bool(getattr(self.store, "leases", False))
        pg = hasattr(self.store, "try_lock_driver")
        self.driver_lock: Union[DriverLock, PgDriverLock] = (
            PgDriverLock(self.store) if pg else DriverLock(self.store.path))
        if self.leased and isinstance(self.driver_lock, DriverLock) and not self.driver_lock.try_share():
            # A driver without leases drives every run of the file: leased
            # engines beside it would be second writers of its runs.
            holder = self.driver_lock.holder()
            self.store.close()
            raise ConfigurationError(
                f"{self.store.path} is driven by {holder}, opened without leases: every engine "
                "of one SQLite file must be opened the same way; stop it, or open this engine "
                "without ?leases=on")
        # Taken before the writer thread runs (PgDriverLock needs that).
        if not self.leased and not engine._passive and not self.driver_lock.try_acquire():
            log.info("engine over %s: %s drives its runs; this one is its client",
                     self.store.path, self.driver_lock.holder())
        self.writer = StoreWriter(self.store, commits=engine.metrics.commits)
        if isinstance(self.driver_lock, PgDriverLock):
            self.driver_lock.writer = self.writer
        self.reader = StoreWriter(open_store(engine.url, engine.durable, engine.busy_timeout),
                                  name="aion-store-reader")
        # -- threads: the step pool, and the hub every run lives on.
        self.steps = StepPool(engine.step_workers)
        self.hub = HubThread(name="aion-hub", kill_timeout=engine.kill_timeout)
        # -- the run table. Routing: which runs have a recorder here. Any
        # thread reads it under routing_lock, so a message either goes
        # through a live run's recorder or, queued before that run's
        # history is read, through the store.
        self.routing_lock = _allocate_lock()
        self.recorders: dict[str, Recorder] = {}
        self.runs = RunTable()
        # Result waiters by workflow id, completed when the run ends here or
        # is found finished in the store (hub thread only).
        self.waiters: dict[str, list[Future]] = {}
        # Runs that ended in this epoch, newest last: a result() right after
        # the end needs no store read. Bounded; older ones are read back.
        self.recently_finished: "collections.OrderedDict[str, RunInfo]" = collections.OrderedDict()
        # Purges under way (runtime/retention.py; changed under routing_lock):
        # while one is, a purged run may be gone from the store and still in
        # recently_finished, so result() asks the store, not the cache.
        self.purges_running = 0
        # Outcomes of appends to runs created by start() that arrived before
        # the run's greenlet built its context (hub thread only).
        self.early: dict[str, list[tuple[Any, ...]]] = {}
        # Step attempts running on the pool: StepInfo -> (wall-clock start,
        # pool thread ident, the pool's task). Invariant: whoever pops an
        # attempt records its outcome (the pool thread its result, the hub
        # its timeout), so an attempt is recorded once. Any thread; single
        # dict operations only.
        self.in_flight: dict[Any, tuple[float, int, Any]] = {}
        self.unrunnable: dict[str, str] = {}  # runs not driven here, and why
        self.unreadable: dict[str, BaseException] = {}  # their waiters are told
        # -- the parts.
        self.runner = Runner(engine, self)
        self.routing = Routing(engine, self)
        self.children = Children(engine, self)
        self.sharing = Sharing(engine, self)
        self.leases = Leases(engine, self)
        self.queries = Queries(engine, self)
        # (Leased: max_resident caps the runs claimed, evict_after evicts.)
        self.residency = Residency(engine, self, (
            engine.evict_after is not None if self.leased
            else engine.max_resident is not None or engine.evict_after is not None)
            and not engine._passive)
        self.termination = Termination(engine, self)
        self.bounds = Bounds(engine, self)
        # -- services on the hub.
        self.timers = TimerService(self)
        self.child_tasks = ChildTaskRegistry(self.hub)
        self.host = EngineHost(engine, self)  # what this epoch's runs see of it
