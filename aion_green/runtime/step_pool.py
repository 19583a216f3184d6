"""The step pool: bounded real OS threads on which steps run (never the hub
thread)."""
from __future__ import annotations

import _queue
import itertools
import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from gevent import monkey

from aion_green.hub_thread import Future

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger("aion_green.steps")
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")



class StepPool:
    """Bounded pool of real OS threads for steps (never the hub thread).

    Thread contract: any thread may :meth:`submit`; tasks run on the pool's
    threads, which start on demand up to ``size``. Tasks must not raise (an
    escaped error is logged). :meth:`close` drops the tasks that have not
    started and waits (bounded) for the running ones: a step blocked in the
    outside world cannot be interrupted, and its thread ends when it returns.
    """

    def __init__(self, size: int, name: str = "aion-step") -> None:
        self.size = size
        self.name = name
        self._queue: Any = _queue.SimpleQueue()
        self._lock = _allocate_lock()
        # Invariant: _threads >= min(size + _extra, outstanding), where
        # outstanding = tasks submitted - tasks finished, and no thread
        # leaves while the pool is open: every queued task has a thread that
        # is not busy with another, even when running tasks wait for queued
        # ones (a fan-out). (The earlier count of idle threads was read while
        # a thread that had just taken a task still counted itself idle; a
        # fan-out whose steps wait for each other then lacked a thread for
        # its last step, on Python 3.13 in every run.) Both counts are C
        # counters, so the hot path takes no lock: _finished_n may lag
        # behind the truth, which only overstates what is outstanding.
        self._submitted = itertools.count(1)
        self._submitted_n = 0
        self._finished = itertools.count(1)
        self._finished_n = 0
        self._threads = 0  # changed under _lock only
        # Threads whose task timed out (detach): each raises the cap by one
        # until its task returns and it leaves, so hung steps do not shrink
        # the pool. Under _lock.
        self._extra = 0
        self._detached: set[int] = set()
        # The task each pool thread runs now (by thread ident; read by the
        # engine when an attempt begins): detach's proof that a thread
        # still runs the task that timed out.
        self._current: dict[int, Any] = {}
        # Invariant: once _closed is set no task starts: submit() refuses,
        # close() took what was queued, and a worker that finds a task put
        # in the race with close() drops it.
        self._closed = False
        # Set by the last worker to exit once the pool is closed.
        self._all_exited: Optional[Any] = None

    def submit(self, task: Callable[[], None]) -> None:
        if self._closed:
            # The epoch is ending: the run that asked is about to be killed,
            # and its step runs in the next epoch (an error raised here
            # would reach the workflow's code instead).
            return
        n = self._submitted_n = next(self._submitted)
        # (_threads read without the lock can only be low: it grows while
        # the pool is open, so a stale read errs towards _grow.)
        if n - self._finished_n > self._threads and self._threads < self.size + self._extra:
            self._grow(n)
        self._queue.put(task)

    def _grow(self, submitted: int) -> None:
        """Start threads until those ``submitted`` tasks, less the finished
        ones, each have one (up to the cap)."""
        with self._lock:
            while (not self._closed and submitted - self._finished_n > self._threads
                   and self._threads < self.size + self._extra):
                self._threads += 1
                _start_new_thread(self._worker, ())

    def close(self, timeout: Optional[float] = None) -> int:
        """Drop the tasks not yet started (their steps have not run: the next
        epoch runs them), then wait up to ``timeout`` seconds for the running
        ones to return. Returns how many tasks were dropped. Before this
        waited for nothing, so queued steps started after shutdown() had
        returned and ran again after a restart (issue 16: 2-3 times)."""
        with self._lock:
            self._closed = True
            threads = self._threads
            if threads and self._all_exited is None:
                self._all_exited = Future()
            exited = self._all_exited
        dropped = 0
        while True:
            try:
                task = self._queue.get_nowait()
            except _queue.Empty:
                break
            if task is not None:
                dropped += 1
        for _ in range(threads):
            self._queue.put(None)
        if exited is not None:
            exited.wait(timeout)
        return dropped

    def outstanding(self) -> int:
        """Tasks submitted and not yet returned (queued or running); may
        overstate by the few that are returning now."""
        return self._submitted_n - self._finished_n

    def queued(self) -> int:
        """Steps submitted and not yet taken by a thread (a snapshot)."""
        return int(self._queue.qsize())

    def running(self) -> int:
        """How many pool threads are alive (running a step or about to end)."""
        return self._threads

    def detach(self, ident: int, task: Any) -> None:
        """``task``, on thread ``ident``, timed out: let one more thread
        start in its place (the hung one leaves when its task returns), so
        a step that never returns does not shrink the pool. If the task
        returned meanwhile, the thread leaves after its next task: one
        thread replaced for nothing, the counts still right."""
        with self._lock:
            if (self._closed or task is None or self._current.get(ident) is not task
                    or ident in self._detached):
                return
            self._detached.add(ident)
            self._extra += 1
        self._grow(self._submitted_n)

    def _worker(self) -> None:
        queue, current, finished = self._queue, self._current, self._finished
        ident = _get_ident()
        while True:
            task = queue.get()
            if task is None or self._closed:
                break
            current[ident] = task
            try:
                task()
            except BaseException:  # pragma: no cover - tasks catch their own errors
                log.exception("a step task failed; this is a bug in aion_green")
            del current[ident]
            task = None  # (not held while this thread waits: it holds the run's recorder)
            self._finished_n = next(finished)
            if self._detached and ident in self._detached:
                self._leave(ident, detached=True)  # replaced while its task ran
                return
        self._leave(ident, detached=False)

    def _leave(self, ident: int, detached: bool) -> None:
        with self._lock:
            self._current.pop(ident, None)
            if detached:
                self._detached.discard(ident)
                self._extra -= 1
            self._threads -= 1
            last = bool(self._closed) and self._threads == 0
        if last and self._all_exited is not None:
            self._all_exited.set_result(None)
