"""Retention: finished runs older than an age are purged from the store.

``Engine(retention=timedelta(days=30))`` purges, every
``min(retention / 10, 1 h)`` (but not more often than every
:data:`_LEAST_EVERY` s), the
runs that ended more than ``retention`` ago; ``engine.purge(older_than=...)``
does it once, on demand (the HTTP API's ``POST /v1/purge``, the CLI's
``aion-green purge --older-than 30d``). What goes and what stays is the
store's ``purge_finished`` (see :class:`~aion_green.store.IEventStore`):

- "older than" an age means *ended* before ``now - age``;
- never a running (or paused) run; a chain of continue-as-new goes whole,
  with its last run, since its earlier runs live under the same id;
- a child goes by its own end time, not with its parent; but not while its
  parent's current run waits to record that end (a parent replayed without
  its child would create the child anew);
- every namespace's runs, or those of one (``namespace=``);
- everything of a purged id goes: its histories, timers, inbox requests,
  search attributes and run row. Afterwards the id is unknown
  (``WorkflowNotFound``, HTTP 404 ``not_found``), and can be started again.

A purge is cut into transactions of at most :data:`BATCH` runs, each one op
of the engine's store writer: between two of them the writer commits the
appends queued meanwhile, so a purge of a million runs delays the group
commit by one batch at a time, never by the whole purge.

The periodic purge runs in the engine that drives the store: over SQLite
the driver alone (a client engine's purge waits until it is promoted); over
PostgreSQL every engine, which is safe: each transaction locks the runs it
deletes and skips those another engine's purge holds.

Thread contract: :func:`purge` runs on the caller's thread (any but the
hub's) and waits on the writer; :func:`purge_periodically` is a greenlet
on the engine's hub, which parks on the writer's futures (never the hub).
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import gevent

from aion_green.core import namespaces
from aion_green.core.clock import seconds_of
from aion_green.core.errors import AionError, ConfigurationError, EngineClosed

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.retention")

# Runs purged per transaction.
BATCH = 500
# The periodic purge runs every retention / 10: at least once an hour, at
# most once per _LEAST_EVERY seconds.
_MOST_EVERY = 3600.0
_LEAST_EVERY = 0.5

Age = Union[timedelta, float, int]


def age_seconds(value: Any, what: str, *, positive: bool = False) -> float:
    """An age (a timedelta or a number of seconds: 0 or more, or above 0
    when ``positive``) in seconds; :class:`ConfigurationError` naming
    ``what`` otherwise."""
    try:
        seconds = seconds_of(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{exc}; for example timedelta(days=30) or 2592000") from None
    if seconds < 0 or (positive and seconds == 0):
        raise ConfigurationError(
            f"{what}: an age of {value!r}; give {'more than 0' if positive else '0 or more'} "
            "seconds, or a timedelta such as timedelta(days=30)")
    return seconds


def retention_setting(value: Optional[Age]) -> Optional[float]:
    """``Engine(retention=...)`` checked: None (keep every run) or seconds > 0."""
    if value is None:
        return None
    return age_seconds(value, "Engine(retention=...)", positive=True)


def purge_every(retention: float) -> float:
    """How often the engine purges, for a retention of ``retention`` seconds."""
    return max(_LEAST_EVERY, min(retention / 10.0, _MOST_EVERY))


def purge(engine: "Engine", older_than: Any, limit: Optional[int],
          namespace: Optional[str] = None) -> int:
    """``engine.purge`` (see there): the caller's thread."""
    seconds = age_seconds(older_than, "purge(older_than=...)")
    if namespace is not None:
        namespaces.check_namespace(namespace, "purge(namespace=...)")
    if limit is not None and (type(limit) is not int or not 1 <= limit < 2 ** 63):
        raise ConfigurationError(f"purge(limit={limit!r}): a whole number from 1 up, or None "
                                 "for every run that qualifies")
    engine._ensure_started()
    epoch = engine._epoch
    before = time.time() - seconds
    purged = 0
    while limit is None or purged < limit:
        batch = BATCH if limit is None else min(BATCH, limit - purged)
        with _purging(epoch):
            wids = epoch.writer.call_or_refuse(epoch.store.purge_finished, before, batch, namespace)
            _forget(engine, epoch, wids)
        purged += len(wids)
        if len(wids) < batch:
            break
    return purged


def begin(engine: "Engine", epoch: "Epoch") -> None:
    """Hub thread, at the epoch's start: the periodic purge, if the engine
    has a retention."""
    if engine.retention is not None and not engine._passive:
        epoch.hub.spawn(purge_periodically, engine, epoch, name="aion-retention")


def purge_periodically(engine: "Engine", epoch: "Epoch") -> None:
    """The periodic purge (a greenlet on the hub; see the module docstring)."""
    assert engine.retention is not None
    every = purge_every(engine.retention)
    while True:
        gevent.sleep(every)
        if not epoch.sharing.driving:
            continue  # a client of the SQLite driver: the driver purges
        before = time.time() - engine.retention
        purged = 0
        try:
            while True:
                with _purging(epoch):
                    wids = epoch.writer.call(epoch.store.purge_finished, before, BATCH).result()
                    _forget(engine, epoch, wids)
                purged += len(wids)
                if len(wids) < BATCH:
                    break
        except EngineClosed:
            return
        except AionError as exc:  # the store is away for a while: next time
            log.warning("retention: the purge of runs that ended before %s stopped after %d "
                        "run(s): %s; it is tried again in %g s", _when(before), purged, exc, every)
        if purged:
            log.info("retention: purged %d run(s) that ended before %s", purged, _when(before))


@contextlib.contextmanager
def _purging(epoch: "Epoch") -> Iterator[None]:
    """Around a purge's commit and :func:`_forget`: from the commit on, the
    purged runs are gone from the store, and until ``_forget`` they are
    still in ``recently_finished``; ``result()`` skips that cache meanwhile
    (a caller that saw the purge in a list got the purged run's result)."""
    with epoch.routing_lock:
        epoch.purges_running += 1
    try:
        yield
    finally:
        with epoch.routing_lock:
            epoch.purges_running -= 1


def _forget(engine: "Engine", epoch: "Epoch", wids: list[str]) -> None:
    """Any thread: this engine forgets the purged runs it remembers, so
    that they are unknown here as in the store (``result()`` reads
    ``recently_finished`` from any thread; the hub owns it, hence both)."""
    if not wids:
        return
    engine.metrics.count_purged(len(wids))
    cache = epoch.recently_finished
    for wid in wids:
        cache.pop(wid, None)
        epoch.unrunnable.pop(wid, None)
        epoch.unreadable.pop(wid, None)
    try:
        epoch.hub.call_soon(_forget_on_hub, epoch, wids)
    except EngineClosed:
        pass


def _forget_on_hub(epoch: "Epoch", wids: list[str]) -> None:
    for wid in wids:
        epoch.recently_finished.pop(wid, None)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
