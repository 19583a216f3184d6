"""The store writer: one native thread that owns the store connection.

Thread contract: any thread may submit; every store call runs on the writer
thread. Writes (appends, run creations) that arrive together, from many runs,
go into one transaction and one fsync (group commit); each submitter is told,
through its own ``done(value, error)`` callback run on the writer thread,
when its own write is durable.

Calls submitted with :meth:`StoreWriter.call_urgent` (lease renewals) pass
everything queued: they run before the next group commit or call, so they
wait for at most the one op in progress. Without it a renewal waited behind
the history reads of hundreds of runs just claimed and the group commits
between them, and came after the leases it was to extend had run out
(issue 21: four engines on 5,000 runs, 2 s leases, renewals late by 0.5 s
and runs taken over).

A step's record may be committed by the pool thread that ran the step
(:meth:`StoreWriter.begin_inline`, :meth:`StoreWriter.write_inline`) when
the writer is idle and the run has nothing in flight: one thread hand-off
less per sequential step (issue 21). Whoever commits holds ``_committing``;
the writer thread takes it for each batch, so the store is used by one
thread at a time and a run's records still reach it in order.
"""
from __future__ import annotations

import _queue
import bisect
import functools
import logging
import time
from typing import Any, Callable, Optional, Sequence

from gevent import monkey

from aion_green.core.errors import EngineClosed, StoreError, StoreLost, StoreUnavailable
from aion_green.core.events import NewEvent
from aion_green.hub_thread import Future
from aion_green.runtime.metrics import BATCH_SIZES, COMMIT_SECONDS, CommitFigures
from aion_green.store import Append, CreateRun, IEventStore

log = logging.getLogger("aion_green.store")

_tuple_new = tuple.__new__
_bisect = bisect.bisect_left
# core/clock.py's monotonic clock, without its Python frame (twice per commit).
_now = functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC)
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_sleep = monkey.get_original("time", "sleep")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")

Done = Callable[[Any, Optional[BaseException]], None]
_STOP = object()
_WAKE = object()  # an urgent call waits: wake the thread, nothing to run
_WRITES = frozenset({Append, CreateRun})  # the ops that go into a group commit


def future_done(future: Future) -> Done:
    def done(value: Any, error: Optional[BaseException]) -> None:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    return done


class StoreWriter:
    """Runs every operation of one store on a dedicated native thread."""

    def __init__(self, store: IEventStore, name: str = "aion-store",
                 commits: Optional[CommitFigures] = None) -> None:
        # Typed Any: mypy reads zope.interface methods as lacking self.
        self.store: Any = store
        self.name = name
        # Each group commit's size and duration (runtime/metrics.py); only
        # this writer's thread writes them.
        self.commits = commits
        # _queue.SimpleQueue is C and never monkeypatched: get() blocks this
        # native thread only, and put() never blocks.
        self._queue: Any = _queue.SimpleQueue()
        # Urgent calls, run before whatever waits in _queue (see the module
        # docstring); each also puts _WAKE in _queue for an idle thread.
        self._urgent: Any = _queue.SimpleQueue()
        # Invariant: once _closed is set no op is accepted; every op accepted
        # before the writer saw _STOP runs before the thread ends.
        self._closed = False
        # Invariant: set (before the last sweep of the queue) once the thread
        # stops taking ops; an op put after it is failed, never stranded.
        self._stopped = False
        # Ops that are not writes, taken off the queue while appends waited
        # out an unavailable store (_take_queued): the next batch runs them
        # first, in their order. Touched by the writer thread only.
        self._backlog: list[Any] = []
        # The store's error while appends wait it out (a full disk), else
        # None: callers waiting for an arrival's record read it to answer at
        # once instead of waiting with no limit (routing._await_recorded,
        # issue 16). Written by the writer thread only.
        self.unavailable: Optional[StoreUnavailable] = None
        # Held by whoever uses the store: the writer thread for each batch
        # and call, or a pool thread committing a step's record itself.
        self._committing = _allocate_lock()
        # Held by a thread about to fork (hold_for_fork) until the fork is
        # done: whoever would take _committing passes it first, so the fork
        # waits for one operation at most (a busy writer took _committing
        # back at once, and the forking thread waited its 5 s, fork after fork).
        self._fork_gate = _allocate_lock()
        # Whether pool threads may commit (the store says; SQLite's commit
        # is local, so a hand-off costs more than it saves elsewhere).
        self.inline = bool(getattr(store, "inline_commits", False))
        self.inline_commits = 0
        self._finished = Future()
        self.batches = 0
        self.writes = 0
        _start_new_thread(self._main, ())

    # any thread -------------------------------------------------------------------------
    def submit_append(self, workflow_id: str, expected_seq: int,
                      events: Sequence[NewEvent], done: Done, fence: Optional[int] = None) -> None:
        # The caller's sequence as it is (it is not changed once submitted).
        # (_put inlined, and the Append built without its Python __new__:
        # once per step.)
        if self._closed:
            raise EngineClosed("the engine's store writer is closed; create a new Engine")
        self._queue.put((_tuple_new(Append, (workflow_id, expected_seq, events, fence)), done))
        if self._stopped:
            self._fail_leftovers()

    def begin_inline(self) -> bool:
        """A pool thread with a step's record, called under its run's
        recorder lock: True when it may commit the record itself (then it
        must call :meth:`write_inline`), because the writer is idle, with
        nothing queued, and the store takes commits from any thread. Taken
        under the recorder lock, ``_committing`` keeps the run's later
        records (queued meanwhile) behind this one."""
        if (not self.inline or self._closed or self.unavailable is not None
                or not self._queue.empty() or self._fork_gate.locked()
                or not self._committing.acquire(False)):
            return False
        if self._closed or not self._queue.empty():  # (closed, or queued, meanwhile)
            self._committing.release()
            return False
        return True

    def write_inline(self, workflow_id: str, expected_seq: int, events: Sequence[NewEvent],
                     done: Done, fence: Optional[int] = None) -> None:
        """After :meth:`begin_inline` said yes: commit the record on this
        thread, as the writer thread would have (the same outage waits,
        splitting and errors), tell ``done``, and let the writer go on."""
        try:
            self.inline_commits += 1
            self._write([(_tuple_new(Append, (workflow_id, expected_seq, events, fence)), done)])
        finally:
            self._committing.release()
            if self._backlog:
                self._queue.put(_WAKE)  # (set aside while it waited out an outage)

    def submit_create(self, op: CreateRun, done: Done) -> None:
        self._put((op, done))

    def submit_call(self, fn: Callable[[], Any], done: Done) -> None:
        self._put((fn, done))

    def append(self, workflow_id: str, expected_seq: int, events: Sequence[NewEvent]) -> Future:
        future = Future()
        self.submit_append(workflow_id, expected_seq, events, future_done(future))
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` (a store method) on the writer thread."""
        future = Future()
        self.submit_call(lambda: fn(*args), future_done(future))
        return future

    def call_urgent(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the writer thread before anything already
        queued (after the op in progress). Only for calls that depend on no
        queued op having run first: a lease renewal, not a read of a
        history whose appends may still be queued."""
        if self._closed:
            raise EngineClosed("the engine's store writer is closed; create a new Engine")
        future = Future()
        self._urgent.put((lambda: fn(*args), future_done(future)))
        self._queue.put(_WAKE)
        if self._stopped:
            self._fail_leftovers()
        return future

    def call_or_refuse(self, fn: Callable[..., Any], *args: Any) -> Any:
        """For a caller waiting on its thread (not the writer's): the value of
        ``fn(*args)`` run on the writer thread; but while appends wait out an
        unavailable store (a full disk) ahead of it, the store's error at
        once, and the call never runs (issue 16: a caller was left waiting
        with no limit behind them)."""
        future = Future()
        lock = _allocate_lock()
        # Invariant: under lock, exactly one of "ran" (the writer took it)
        # and "dropped" (the caller gave up) is ever set.
        state: dict[str, bool] = {}

        def op() -> Any:
            with lock:
                if state.get("dropped"):
                    return None  # no one waits for it
                state["ran"] = True
            return fn(*args)

        self.submit_call(op, future_done(future))
        while not future.wait(0.05):
            unavailable = self.unavailable
            if unavailable is not None:
                with lock:
                    if not state.get("ran"):
                        state["dropped"] = True
                        raise unavailable
        return future.result()

    def hold_for_fork(self, timeout: float) -> bool:
        """Before a fork, on the forking thread: wait (up to ``timeout``)
        until no operation is inside the store, and keep it so; True when
        held (then :meth:`release_after_fork`, in parent and child). A fork
        in the middle of a SQLite call copies SQLite's global mutexes held,
        and the child's first SQLite call waits for them forever."""
        self._fork_gate.acquire()
        if self._committing.acquire(True, timeout):
            return True
        self._fork_gate.release()
        return False

    def release_after_fork(self) -> None:
        self._committing.release()
        self._fork_gate.release()

    def queued(self) -> int:
        """Ops waiting for this writer's thread (a snapshot)."""
        return int(self._queue.qsize()) + len(self._backlog) + int(self._urgent.qsize())

    def _put(self, item: tuple[Any, Done]) -> None:
        if self._closed:
            raise EngineClosed("the engine's store writer is closed; create a new Engine")
        self._queue.put(item)
        if self._stopped:
            # The thread may have made its last sweep before this put: sweep
            # too, so no op is stranded with its submitter waiting forever.
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        closed = EngineClosed("the engine's store writer is closed; create a new Engine")
        for queue in (self._urgent, self._queue):
            while True:
                try:
                    item = queue.get_nowait()
                except _queue.Empty:
                    break
                if item is not _STOP and item is not _WAKE:
                    item[1](None, closed)

    def close(self, timeout: Optional[float] = 30.0) -> None:
        """Run everything already submitted, close the store, end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._finished.wait(timeout)

    # writer thread ------------------------------------------------------------------------
    def _main(self) -> None:
        queue = self._queue
        committing = self._committing
        stopping = False
        try:
            own_thread = getattr(self.store, "on_own_thread", None)
            if own_thread is not None:  # (PostgreSQL: its waits need not be gevent's)
                own_thread()
            gate = self._fork_gate
            while not stopping:
                first = None if self._backlog else queue.get()
                gate.acquire()  # (a fork waiting for _committing goes first)
                gate.release()
                with committing:
                    batch, self._backlog = self._backlog, []
                    if first is not None:
                        batch.append(first)
                    while True:
                        try:
                            batch.append(queue.get_nowait())
                        except _queue.Empty:
                            break
                    if _STOP in batch:  # (a C-level scan: ops never compare equal to it)
                        stopping = True
                        batch = [item for item in batch if item is not _STOP]
                    if _WAKE in batch:
                        batch = [item for item in batch if item is not _WAKE]
                    self._run_urgent()
                    if batch:
                        self._run_batch(batch)
                # Not kept while the queue is empty: the last batch's futures
                # hold what they answered (a history read of thousands of
                # events stayed in memory until the next call).
                del first, batch
            with committing:
                self._run_urgent()
        except BaseException:  # pragma: no cover
            log.exception("store writer crashed; this is a bug in aion_green")
        finally:
            self._stopped = True
            self._fail_leftovers()
            with committing:  # (a pool thread's commit in progress ends first)
                try:
                    self.store.close()
                except Exception:  # pragma: no cover
                    log.exception("closing the store failed")
            self._finished.set_result(None)

    def _write(self, writes: list[tuple[Any, Done]]) -> None:
        delay = 0.02
        retried = False
        while True:
            self.batches += 1
            try:
                began = _now()
                outcomes = self.store.write_batch([op for op, _ in writes])
                self.unavailable = None
            except StoreUnavailable as exc:
                if exc.maybe_written and not retried and not self._closed:
                    # A session cut with the answer on its way: the server
                    # may have committed the batch. Sent again at once (the
                    # store reconnects), its starts too, whose callers would
                    # otherwise be told of a failure that may have been a
                    # success; the store recognises what it already holds.
                    retried = True
                    continue
                # A locked or full database is waited out for appends: the
                # runs behind them are parked, not failed, and the records
                # that follow theirs (already in this queue) keep their
                # order. A start (CreateRun) has a caller to tell at once.
                for op, done in writes:
                    if isinstance(op, CreateRun):
                        done(None, exc)
                writes = [(op, done) for op, done in writes if isinstance(op, Append)]
                if not writes:
                    return
                if self._closed:
                    for _, done in writes:
                        done(None, exc)
                    return
                self.unavailable = exc
                if delay >= 0.5:
                    log.warning("store unavailable (%s); %d append(s) wait for it", exc, len(writes))
                _sleep(delay)
                delay = min(delay * 2, 1.0)
                self._run_urgent()  # a renewal learns of the outage now, not once it ends
                self._take_queued(writes)
                continue
            except Exception as exc:
                self.unavailable = None
                if len(writes) > 1 and not isinstance(exc, StoreLost):
                    # One record the store cannot hold (a value that slipped
                    # past validation) must fail its own caller only: the
                    # others' steps would run again (issue 16 measured 47 of
                    # 200 runs). Halves keep each run's records in order.
                    # (A lost file fails every record: no use splitting.)
                    half = len(writes) // 2
                    self._write(writes[:half])
                    self._write(writes[half:])
                    return
                log.warning("the store refused a write: %r", exc)
                error = exc if isinstance(exc, StoreError) else StoreError(
                    f"the store could not write this record ({type(exc).__name__}); nothing "
                    "of it was recorded. This is a bug in aion_green if the input was "
                    "accepted: please report it")
                for _, done in writes:
                    done(None, error)
                return
            self.writes += len(writes)
            commits = self.commits
            if commits is not None:  # (inline, no call: once per commit)
                took = _now() - began
                size = len(writes)
                commits.sizes.counts[_bisect(BATCH_SIZES, size)] += 1
                commits.sizes.sum += size
                commits.seconds.counts[_bisect(COMMIT_SECONDS, took)] += 1
                commits.seconds.sum += took
            for (_, done), outcome in zip(writes, outcomes):
                if type(outcome) is int or not isinstance(outcome, BaseException):
                    done(outcome, None)
                else:
                    done(None, outcome)
            return

    def _take_queued(self, writes: list[tuple[Any, Done]]) -> None:
        """While appends wait out an unavailable store, take what was queued
        behind them. Writes join the next try, so a start is answered (by
        that try: created, or the store's error) instead of waiting, with no
        time limit, behind appends that wait for a full disk to be freed.
        Anything else keeps its place in the backlog, for after the appends:
        a call may depend on an append before it being durable (an inbox
        entry is deleted once its record committed)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except _queue.Empty:
                return
            if item is _WAKE:
                continue  # (its urgent call runs at the next try)
            if item is not _STOP and isinstance(item[0], (Append, CreateRun)):
                writes.append(item)
            else:
                self._backlog.append(item)

    def _run_urgent(self) -> None:
        urgent = self._urgent
        while True:
            try:
                op, done = urgent.get_nowait()
            except _queue.Empty:
                return
            _call(op, done)

    def _run_batch(self, batch: list[tuple[Any, Done]]) -> None:
        writes = [item for item in batch if type(item[0]) in _WRITES]
        if writes:
            self._write(writes)
        if len(writes) == len(batch):
            return
        urgent = self._urgent
        for op, done in batch:
            if type(op) not in _WRITES:
                if not urgent.empty():
                    self._run_urgent()
                _call(op, done)


def _call(op: Callable[[], Any], done: Done) -> None:
    """Run a queued call on the writer thread and tell ``done`` its outcome."""
    try:
        value = op()
    except Exception as exc:
        done(None, exc)
    else:
        done(value, None)
