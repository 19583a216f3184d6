"""Reads that runs woken together make together.

A run driven again (back from eviction, recovered, claimed) reads its
history before it replays. One store call per run was the store writer's
main work when timers came due by the thousand: each call is a hand-off to
the writer's thread, a future, a wake of the hub, and a statement of its
own. Here the runs' greenlets wait on the hub while a read is under way;
then one call on the writer's thread reads up to ``most`` of them at once.

Thread contract: :meth:`BatchedReads.read` from a greenlet of the engine's
hub; ``read_now`` runs on the store writer's thread.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import gevent
import gevent.event

from aion_green.runtime.writer import StoreWriter


class BatchedReads:
    """``read(wid)``: what ``read_now`` answers for ``wid``, read with the
    other runs that asked meanwhile; None where it answers nothing."""

    def __init__(self, hub: Any, writer: StoreWriter,
                 read_now: Callable[[list[str]], dict[str, list[Any]]], most: int,
                 name: str) -> None:
        self._hub = hub
        self._writer = writer
        self._read_now = read_now  # writer thread: {id: history} of the ids it holds
        self._most = most
        self._name = name
        # Runs waiting for a read, each with its waiters (a run woken twice
        # gets a copy each), and whether a greenlet is reading (hub only).
        self._waiting: dict[str, list[gevent.event.AsyncResult]] = {}
        self._reading = False

    def read(self, wid: str) -> Optional[list[Any]]:
        waiter = gevent.event.AsyncResult()
        self._waiting.setdefault(wid, []).append(waiter)
        if not self._reading:
            self._reading = True
            self._hub.spawn(self._read_waiting, name=self._name)
        result: Optional[list[Any]] = waiter.get()
        return result

    def _read_waiting(self) -> None:
        """A hub greenlet: read for the waiting runs, a group at a time,
        until none waits."""
        try:
            while self._waiting:
                ids = list(itertools.islice(self._waiting, self._most))
                self._read_group(ids, [self._waiting.pop(wid) for wid in ids])
        finally:
            self._reading = False

    def _read_group(self, ids: list[str], groups: list[list[gevent.event.AsyncResult]]) -> None:
        """Read for ``ids`` at once. A read that fails is tried again for
        each run alone, so only a run whose own read fails (its history
        damaged, say) is told, and the others go on."""
        try:
            found = self._writer.call(self._read_now, ids).result()
        except gevent.GreenletExit as exc:  # (the hub ends: none of them waits forever)
            _fail(groups, exc)
            raise
        except BaseException as exc:
            if len(ids) == 1:
                _fail(groups, exc)
            else:
                for wid, group in zip(ids, groups):
                    self._read_group([wid], [group])
            return
        for wid, group in zip(ids, groups):
            history = found.get(wid)
            for waiter in group:  # (a run woken twice gets a copy each)
                waiter.set(None if history is None else list(history))


def _fail(groups: list[list[gevent.event.AsyncResult]], exc: BaseException) -> None:
    for group in groups:
        for waiter in group:
            waiter.set_exception(exc)
