"""The store writer: one native thread that owns the store connection.

Thread contract: any thread may call the ``submit``-style methods, which
return a :class:`~aion_green.hub_thread.Future`; every store call runs on the
writer thread. Appends that arrive together (from many runs) go into one
transaction and one fsync (group commit), and each waiter is told when its
own append is durable.
"""
from __future__ import annotations

import _queue
import logging
from typing import Any, Callable, Optional, Sequence

from gevent import monkey

from .errors import EngineClosed, StoreError
from .events import NewEvent
from .hub_thread import Future
from .store import Append, IEventStore

log = logging.getLogger("aion_green.store")

_start_new_thread = monkey.get_original("_thread", "start_new_thread")

_STOP = object()


class _Op:
    __slots__ = ("future", "append", "call")

    def __init__(self, future: Future, append: Optional[Append], call: Optional[Callable[[], Any]]):
        self.future = future
        self.append = append
        self.call = call


class StoreWriter:
    """Runs every operation of one store on a dedicated native thread."""

    def __init__(self, store: IEventStore, name: str = "aion-store") -> None:
        self.store = store
        self.name = name
        # _queue.SimpleQueue is C and never monkeypatched: get() blocks this
        # native thread only.
        self._queue: Any = _queue.SimpleQueue()
        # Invariant: once _closed is set no op is accepted; ops accepted
        # before it are all executed before the thread ends.
        self._closed = False
        self._finished = Future()
        self.batches = 0
        self.appended = 0
        _start_new_thread(self._main, ())

    # any thread -------------------------------------------------------------------------
    def append(self, workflow_id: str, expected_seq: int, events: Sequence[NewEvent]) -> Future:
        future = Future()
        self._put(_Op(future, Append(workflow_id, expected_seq, tuple(events)), None))
        return future

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` (a store method) on the writer thread."""
        future = Future()
        self._put(_Op(future, None, lambda: fn(*args, **kwargs)))
        return future

    def _put(self, op: _Op) -> None:
        if self._closed:
            raise EngineClosed("the engine's store writer is closed; create a new Engine")
        self._queue.put(op)

    def close(self, timeout: Optional[float] = 30.0) -> None:
        """Execute everything already submitted, close the store, end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._finished.wait(timeout)

    # writer thread ------------------------------------------------------------------------
    def _main(self) -> None:
        queue = self._queue
        stopping = False
        try:
            while not stopping:
                batch = [queue.get()]
                while True:
                    try:
                        batch.append(queue.get_nowait())
                    except _queue.Empty:
                        break
                if batch[-1] is _STOP or _STOP in batch:
                    stopping = True
                    batch = [op for op in batch if op is not _STOP]
                self._run_batch(batch)
        finally:
            try:
                self.store.close()
            except Exception:  # pragma: no cover
                log.exception("closing the store failed")
            self._finished.set_result(None)

    def _run_batch(self, batch: list[_Op]) -> None:
        appends = [op for op in batch if op.append is not None]
        if appends:
            self.batches += 1
            try:
                outcomes = self.store.append_batch([op.append for op in appends])
            except StoreError as exc:
                for op in appends:
                    op.future.set_exception(exc)
            except Exception as exc:
                error = StoreError(f"the store failed to append ({exc!r})")
                for op in appends:
                    op.future.set_exception(error)
            else:
                self.appended += len(appends)
                for op, outcome in zip(appends, outcomes):
                    if isinstance(outcome, BaseException):
                        op.future.set_exception(outcome)
                    else:
                        op.future.set_result(outcome)
        for op in batch:
            if op.call is not None:
                try:
                    op.future.set_result(op.call())
                except BaseException as exc:
                    op.future.set_exception(exc)
