"""A queue, across processes, for the write transactions on one SQLite file.

SQLite lets one connection write at a time. A connection that finds the
write lock taken sleeps in its busy handler (1, 2, 5, 10 ... up to 100 ms
between tries) while the holder, if it writes again at once, takes the lock
back each time: with two processes committing as fast as they can, one of
them made 125-493 commits/s with waits of up to 3.8 s while the other made
4,000-5,300 (two gunicorn workers over one file: the client worker's starts
waited behind the driver's group commits). Around each write transaction
every store of aion_green takes an exclusive ``flock`` on ``FILE.writes``
first: a writer that finds it taken sleeps in the kernel and is woken when
it is let go, in the order they came (2,000-2,700 commits/s each, waits
under 0.2 s, in the same measurement).

It orders aion_green's own writers only; SQLite's lock still guards the
file (another program's writer, a lock file that cannot be created: the
busy handler as before). A wait is bounded by the store's busy timeout: a
holder that does not let go (a process stopped mid-commit) is then passed
over, and SQLite's busy handler decides.

Thread contract: used by the one thread that uses its store at a time.
"""
from __future__ import annotations

import fcntl
import os
from typing import Optional

from gevent import monkey

from aion_green.core import clock as _clock

_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_sleep = monkey.get_original("time", "sleep")
# How long a queue found taken is looked at, and how often, before a
# waiter thread waits for it.
_SPIN_FOR = 0.01
_SPIN_PAUSE = 0.0001


class WriteQueue:
    """The queue of the writers of the SQLite file at ``real_path``."""

    def __init__(self, real_path: Optional[str]) -> None:
        self._fd: Optional[int] = None
        if real_path is not None:
            try:
                self._fd = os.open(f"{real_path}.writes", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                pass  # (a directory it cannot write: SQLite's busy handler alone)
        # A waiter thread given up on (its wait outlived the timeout) until
        # it ends: the queue is not used meanwhile, since its lock, when it
        # comes, is this descriptor's, whoever asked.
        self._abandoned: Optional[object] = None
        self.waits = 0  # (writes that found the queue taken: for tests and benchmarks)

    def enter(self, timeout: float) -> bool:
        """Take this file's turn to write, waiting up to ``timeout`` seconds;
        True when taken (then :meth:`leave` after the transaction)."""
        fd = self._fd
        if fd is None or self._abandoned is not None:
            return False
        taken = _try(fd)
        if taken is not None:
            return taken
        self.waits += 1
        # Taken: another process commits. Look again every ~0.1 ms for a
        # while (a commit takes a few tenths of a millisecond: a thread
        # started to wait for it would cost as much as the commit). For a
        # while of the clock, not a number of looks: each look waits for the
        # GIL, and in a process whose threads compute that is up to the
        # switch interval (5 ms) each.
        until = _clock.monotonic() + _SPIN_FOR
        while _clock.monotonic() < until:
            _sleep(_SPIN_PAUSE)
            taken = _try(fd)
            if taken is not None:
                return taken
        # Still taken (a long commit, a checkpoint): wait in the kernel, on a
        # thread of its own so that the wait can end at the timeout (flock
        # has none).
        got, guard = _allocate_lock(), _allocate_lock()
        got.acquire()
        outcome: dict[str, bool] = {}

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                ok = True
            except OSError:
                ok = False
            with guard:
                if not outcome.get("abandoned"):
                    outcome["ok"] = ok
                    got.release()
                    return
                if ok:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._abandoned = None

        _start_new_thread(wait, ())
        if got.acquire(True, timeout):
            return outcome["ok"]
        with guard:
            if "ok" in outcome:  # (taken just now)
                return outcome["ok"]
            outcome["abandoned"] = True
            self._abandoned = outcome
        return False

    def leave(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._abandoned is None:
            os.close(fd)  # (else left open: its waiter thread still uses it)


def _try(fd: int) -> Optional[bool]:
    """One look at the queue: True when taken now, None when another holds
    it, False when the lock cannot be had at all (the queue is not used)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return None
    except OSError:
        return False
