"""Several processes over one SQLite file (gunicorn's workers, a web app
beside a worker script): exactly one engine *drives* the runs, the others
are its *clients*.

The driver is whichever engine holds an exclusive ``flock`` on
``<database>.driver``; the OS releases it when that process dies, and a
client takes it over within a second and resumes every unfinished run by
replay, as a restart would. Only the driver appends to histories, so the
single-writer rule of the model holds across processes.

A client engine starts runs (it creates them in the store; the driver
notices new runs within ~100 ms and drives them), posts its signals and
cancel requests to an inbox table that the driver drains into the runs'
histories (``signal`` returns once the message is recorded, as it does in
process), waits for results by reading the store, and reads histories,
runs and lists directly. Queries need the live run, so a client refuses
them with :class:`~aion_green.errors.QueryFailed` naming the reason.

Thread contract: :class:`DriverLock` is used by one engine, under its
start lock; the methods of :class:`Sharing` named ``drain``, ``_watch``,
``poll``, ``promote`` and ``confirm`` run as greenlets on the engine's hub;
``post`` runs on the caller's thread. The worker file (``<db>.worker``,
:func:`probe_driver`) is read and written by any process.
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import (
    AionError,
    EngineClosed,
    StoreLost,
    StoreUnavailable,
    WorkflowNotRunning,
)
from aion_green.hub_thread import Future
from aion_green.runtime.termination import terminated_event
from aion_green.stores.sqlite.file import canonical_path, is_file

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.sharing")

# Pauses of the driver's and the clients' store polls: short while there is
# work, growing to the longer one while there is none.
_BUSY_PAUSE = 0.01
_IDLE_PAUSE = 0.1
# The same, for the two polls a client's round trip waits on (the driver's
# look for new runs, a client's for the ends of its waiters' runs): each
# pass is one call of the reader, whatever the number of runs.
_QUICK_PAUSE = 0.005
# How often a client tries to become the driver.
_PROMOTE_EVERY = 1.0
# How often the driver looks over every unfinished run for one it missed.
_SWEEP_EVERY = 5.0


class DriverLock:
    """The exclusive, non-blocking ``flock`` that makes an engine the driver
    of a database file. ``:memory:`` databases need none."""

    def __init__(self, db_path: str) -> None:
        # Named after the real file, whichever name (a symlink) the engine
        # was given: one file, one lock (issue 16; see stores/sqlite/file.py).
        self.path = None if not is_file(db_path) else f"{canonical_path(db_path)}.driver"
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self.path is None or self._fd is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if not self._take(fcntl.LOCK_EX):
            return False
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return True

    def try_share(self) -> bool:
        """Leased engines of a file (``?leases=on``) hold the lock shared for
        their lives: an engine opened without leases cannot become the
        file's driver beside them (it stays their client), and a leased
        engine finds out here that such a driver holds it already."""
        return self.held or self._take(fcntl.LOCK_SH)

    def _take(self, how: int) -> bool:
        """The lock, ``how`` (exclusive or shared), without waiting."""
        assert self.path is not None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.set_inheritable(fd, False)
        self._fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (a probe: a shared
        lock taken and dropped at once, never while this engine holds it)."""
        if self.held or self.path is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # (drops the probe's shared lock, if it got one)
        return False

    def holder(self) -> str:
        """Who drives, for messages: the pid written in the lock file."""
        try:
            with open(str(self.path), encoding="ascii") as f:
                return f"process {f.read().strip() or '?'}"
        except OSError:
            return "another process"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def forget(self) -> None:
        """After a fork: the child does not hold the parent's lock."""
        self._fd = None


class PgDriverLock:
    """The driver lock of a PostgreSQL store: a session advisory lock on the
    connection of the store the engine's writer uses (see ``stores/postgres/store.py``).
    Before the writer thread runs, it is taken on the caller's thread; then
    through the writer, which alone uses that connection."""

    path = "postgres"

    def __init__(self, store: Any) -> None:
        self._store = store
        self.writer: Any = None

    @property
    def held(self) -> bool:
        return bool(self._store.driver_lock_held)

    def try_acquire(self) -> bool:
        if self.writer is None:
            return bool(self._store.try_lock_driver())
        return bool(self.writer.call(self._store.try_lock_driver).result())

    def holder(self) -> str:
        return "another engine over this database"

    def held_elsewhere(self) -> bool:
        return False  # runs are leased: an engine ends a run by appending at its head

    def release(self) -> None:
        """The writer closed the store's connection, which ended the session
        and its lock."""

    def forget(self) -> None:
        self.writer = None


class Sharing:
    """Driver or client over one SQLite file: a part of the epoch (see the module docstring)."""

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts

    @property
    def driving(self) -> bool:
        """True when this engine drives runs: it holds the store's driver
        lock, or the store leases runs to every engine (PostgreSQL); False
        for a client of another process's engine."""
        if self.epoch.leased:
            return True
        return bool(self.epoch.driver_lock is not None and self.epoch.driver_lock.held)

    def nap(self, kind: str, pause: float) -> None:
        """Hub thread: wait ``pause`` seconds, or less if the doorbell of
        ``kind`` rings (PostgreSQL's LISTEN/NOTIFY; polling without it)."""
        bell = self.epoch.leases.bells.get(kind)
        if bell is None:
            gevent.sleep(pause)
            return
        bell.wait(pause)
        bell.clear()

    # -- hub thread: the driver --------------------------------------------------------------
    def begin_driving(self) -> None:
        hub = self.epoch.hub
        mark = self.epoch.reader.call(self.epoch.reader.store.last_run_mark).result()
        try:
            hub.spawn(self.epoch.timers.run, name="aion-timers")
            if self.engine.recover:
                hub.spawn(self.epoch.runner.recover, name="aion-recovery")
            hub.spawn(self.drain, name="aion-inbox")
            hub.spawn(self._watch, mark, name="aion-new-runs")
        except EngineClosed:
            # shutdown() began (on another thread) while the mark was read:
            # there is nothing to drive, and the greenlets already spawned
            # are killed with the others. Not an error to print (a restart
            # right after a start showed it; tests/test_state_machine.py).
            return

    def drain(self, owner: Optional[str] = None) -> None:
        """Record what clients posted to the inbox, through the runs' recorders.

        The inbox is read from its start each time (handled entries are
        deleted, so it stays short): an entry whose id was drawn before
        another's but committed after it is never passed over."""
        reader, writer = self.epoch.reader, self.epoch.writer
        handled: list[int] = []
        retry: list[int] = []
        deleted: list[int] = []
        # Routed, and not yet deleted for good. Invariant: a handled entry
        # leaves it only once its delete committed: a read before that sees
        # the entry, and routing it again would record it twice where the
        # run moved on to a new history (continue-as-new), which has no
        # record of its dedup key.
        pending: set[int] = set()
        pause = _BUSY_PAUSE
        while True:
            if deleted:
                ids, deleted[:] = list(deleted), []
                pending.difference_update(ids)
            if handled:
                ids, handled[:] = list(handled), []

                def after_delete(_result: Any, error: Optional[BaseException],
                                 ids: list[int] = ids) -> None:
                    # Any thread. A delete that failed is tried again.
                    (handled if error is not None else deleted).extend(ids)

                writer.submit_call(functools.partial(self.epoch.store.delete_inbox, ids), after_delete)
            if retry:
                pending.difference_update(retry)
                retry.clear()
            try:
                read = (reader.call(reader.store.read_inbox, 0, 500) if owner is None
                        else reader.call(reader.store.read_inbox, 0, 500, owner))
                rows = [row for row in read.result() if row[0] not in pending]
            except StoreLost as exc:  # for good: say so once (issue 16)
                log.error("inbox: no more requests are taken: %s", exc)
                return
            except AionError as exc:  # the store is away for a while: look again later
                log.warning("inbox: the store could not be read (%s); retrying", exc)
                gevent.sleep(_IDLE_PAUSE)
                continue
            for row_id, wid, kind, data, at in rows:
                pending.add(row_id)

                def done(_seq: Any, error: Optional[BaseException], row_id: int = row_id) -> None:
                    # Any thread. A passing failure is tried again; any other
                    # outcome (recorded, finished run, no such run) is final.
                    (retry if isinstance(error, (StoreUnavailable, EngineClosed)) else handled).append(row_id)

                if kind == "message":
                    self.epoch.routing.route_message(wid, data["name"], data.get("payload"), at,
                                        data.get("dedup") or f"inbox/{row_id}", done)
                elif kind == "cancel":
                    self.epoch.routing.route_cancel(wid, data.get("reason", ""),
                                       self._then_end_if_unrunnable(wid, data.get("reason", ""), done))
                elif kind == "terminate":
                    end = terminated_event(data.get("reason", ""), at)
                    self.epoch.hub.spawn(self.epoch.termination.end_here, wid, end, done,
                                    name=f"terminate:{wid}")
                elif kind in ("pause", "unpause"):
                    self.epoch.bounds.route(wid, kind == "pause", data, at, done)
                else:
                    log.error("inbox entry %d for %r has an unknown kind %r; dropped", row_id, wid, kind)
                    handled.append(row_id)
            pause = _BUSY_PAUSE if rows else min(pause * 2, _IDLE_PAUSE)
            self.nap("inbox", pause)

    def _then_end_if_unrunnable(self, wid: str, reason: str,
                                done: Callable[[Any, Optional[BaseException]], None]
                                ) -> Callable[[Any, Optional[BaseException]], None]:
        """``done`` of a drained cancel: once recorded, a run that no code
        here can run ends (runtime/termination.py), then ``done``."""
        def recorded(seq: Any, error: Optional[BaseException]) -> None:
            if error is None and wid in self.epoch.unrunnable:
                self.epoch.hub.call_soon(self.epoch.termination.end_if_unrunnable, wid, reason,
                                    lambda _s, _e: done(seq, None))
            else:
                done(seq, error)

        return recorded

    def _watch(self, mark: int) -> None:
        """Drive the runs that clients create. Marks come from a sequence, so
        on a server with concurrent writers a run may commit after a later
        mark was seen: a full pass over the unfinished runs every few
        seconds catches it."""
        reader = self.epoch.reader
        pause = _BUSY_PAUSE
        sweep_at = _clock.monotonic() + _SWEEP_EVERY
        while True:
            try:
                if self.engine.recover and _clock.monotonic() >= sweep_at:
                    began = _clock.monotonic()
                    self.epoch.runner.recover()
                    # A pass over a million parked runs takes seconds: keep
                    # its share of the engine's time to a few percent.
                    took = _clock.monotonic() - began
                    sweep_at = _clock.monotonic() + max(_SWEEP_EVERY, 20 * took)
                rows = reader.call(reader.store.new_runs, mark, 500).result()
            except StoreLost as exc:  # for good: say so once (issue 16)
                log.error("new runs: no more runs are taken: %s", exc)
                return
            except AionError as exc:  # the store is away for a while: look again later
                log.warning("new runs: the store could not be read (%s); retrying", exc)
                gevent.sleep(_IDLE_PAUSE)
                continue
            for row in rows:
                wid = row.workflow_id
                if (row.status == ev.RUNNING and wid not in self.epoch.runs
                        and wid not in self.epoch.recorders
                        and not self.epoch.residency.absent_here(wid)):
                    # Another process created it (this engine's own are known,
                    # in memory or evicted: runtime/residency.py).
                    try:
                        info = reader.call(reader.store.get_run, wid).result()
                    except AionError as exc:  # look at this row again later
                        log.warning("new run %r: the store could not be read (%s); retrying", wid, exc)
                        gevent.sleep(_IDLE_PAUSE)
                        break
                    if (info is not None and info.status == ev.RUNNING
                            and wid not in self.epoch.runs and wid not in self.epoch.recorders
                            and not self.epoch.residency.absent_here(wid)):
                        self.epoch.runner.spawn_run(wid, info)
                mark = row.mark
            pause = _QUICK_PAUSE if rows else min(pause * 2, _IDLE_PAUSE)
            gevent.sleep(pause)

    # -- hub thread: a client ----------------------------------------------------------------
    def promote(self) -> None:
        """Become the driver once the driver's process is gone."""
        while not self.epoch.driver_lock.try_acquire():
            gevent.sleep(_PROMOTE_EVERY)
        log.info("this engine now drives the runs of its store (the previous driver is gone)")
        self.begin_driving()

    def poll(self) -> None:
        """Tell result waiters of runs that the driver ends: read their
        status until they finish (a client hears no doorbell)."""
        pause = _BUSY_PAUSE
        while not self.driving or self.epoch.leased:
            waiting = [wid for wid in self.epoch.waiters if wid not in self.epoch.runs]
            if waiting:
                self.epoch.runner.check_finished_all(waiting)
                # (PostgreSQL rings a doorbell at each end: its poll is a
                # backstop, and each read of a run a round trip to the server.
                # SQLite, leased or not, has no doorbell and reads locally.)
                pause = _BUSY_PAUSE * 2 if self.epoch.leases.listening else _QUICK_PAUSE
            else:
                pause = min(pause * 2, _IDLE_PAUSE)
            self.nap("ends", pause)

    def confirm(self, wid: str, event_type: str, dedup: Optional[str], future: Future) -> None:
        """Wait until the driver recorded what was posted; its seq."""
        reader = self.epoch.reader
        pause = _BUSY_PAUSE
        while True:
            try:
                seq = reader.call(reader.store.find_event, wid, event_type, dedup).result()
                if seq is not None:
                    future.set_result(seq)
                    return
                info = reader.call(reader.store.get_run, wid).result()
            except Exception as exc:
                future.set_exception(exc)
                return
            if info is not None and info.finished:
                # It may have been recorded, and the run ended on it, between
                # the two reads: look once more.
                try:
                    seq = reader.call(reader.store.find_event, wid, event_type, dedup).result()
                except Exception as exc:
                    future.set_exception(exc)
                    return
                if seq is not None:
                    future.set_result(seq)
                    return
            if info is None or info.finished:
                status = "vanished" if info is None else info.status
                future.set_exception(WorkflowNotRunning(
                    f"workflow {wid!r} has {status} before the engine that drives it recorded "
                    "this request; nothing was recorded"))
                return
            gevent.sleep(pause)
            pause = min(pause * 2, _IDLE_PAUSE)

    # -- caller's thread: a client ------------------------------------------------------------
    def post(self, wid: str, kind: str, data: dict[str, Any], at: float, event_type: str,
              dedup: Optional[str]) -> int:
        """Post a request for the driver and wait until it is recorded."""
        row_id = self.epoch.writer.call_or_refuse(self.epoch.store.post_inbox, wid, kind,
                                             ev.encode(data, "the request"), at)
        future = Future()
        self.epoch.hub.spawn(self.confirm, wid, event_type,
                        dedup if dedup is not None or kind != "message" else f"inbox/{row_id}",
                        future, name=f"confirm:{wid}")
        return int(future.result())


@dataclass
class Driver:
    """Who drives the runs of a SQLite file, as far as a client can tell."""

    held: bool  # some process holds the driver lock
    pid: Optional[int]
    types: Optional[list[str]]  # the workflow types of an aion-green worker; None: unknown
    http: Optional[str]  # the worker's HTTP API, if it serves one
    name: str  # for messages: "process 1234"
    # Their parameters (registry.parameters_of), so a client can check the
    # arguments of a start; absent for a type the worker did not describe.
    parameters: Optional[dict[str, Any]] = None


def worker_file(db_path: str) -> str:
    return f"{db_path}.worker"


def probe_driver(db_path: str) -> Driver:
    """Look at the driver lock of ``db_path`` without taking it for longer
    than a probe. (A worker that starts during the probe's instant finds the
    lock taken, becomes a client, and takes over within a second.)"""
    import fcntl

    lock = DriverLock(db_path)
    assert lock.path is not None
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return Driver(False, None, None, None, "no process")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            held = True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
    finally:
        os.close(fd)
    if not held:
        return Driver(False, None, None, None, "no process")
    name = lock.holder()
    try:
        pid: Optional[int] = int(name.split()[-1])
    except ValueError:
        pid = None
    try:
        with open(worker_file(db_path), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or pid is None or info.get("pid") != pid:
        return Driver(True, pid, None, None, name)
    parameters = info.get("parameters")
    return Driver(True, pid, list(info.get("types") or []), info.get("http"),
                  f"the aion-green worker, {name}",
                  parameters if isinstance(parameters, dict) else None)


def write_worker_file(db_path: str, info: dict[str, Any]) -> None:
    path = worker_file(db_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def remove_worker_file(db_path: str) -> None:
    path = worker_file(db_path)
    try:
        with open(path, encoding="utf-8") as f:
            mine = json.load(f).get("pid") == os.getpid()
        if mine:
            os.remove(path)
    except (OSError, ValueError, AttributeError):
        pass
