"""Engine-side child tasks: their registry and their end with the epoch.

Two kinds of greenlet run on the engine's hub on behalf of child workflows:

- a *watcher* per (parent run key, child workflow id), which records the
  child's end into the parent's history;
- a *spawn-recovery* task per child workflow id, which retries starting a
  child whose start was recorded by the parent.

A watch may also be *parked*: an entry under its key with no greenlet,
while the child runs (a greenlet per watch cost ~6 KB and 33 objects for
the cyclic GC for as long as the child ran, and a parent and child evicted
from memory kept it). The child's end wakes the parked watches of its id
(:meth:`ChildTaskRegistry.wake_watches`): each becomes a watcher greenlet
that records the end. Aborts, counts and the stop treat a parked watch as
an armed one.

Neither may outlive the epoch. A watcher that still ran after
:meth:`ChildTaskRegistry.shutdown` could append to a parent history that the
next engine over the same store also appends to. Killing a greenlet only
schedules a ``GreenletExit``: the task may still be in a ``finally`` that
waits (and then appends). So closing the epoch kills every task *and* joins
each killed one, and refuses any new task from the moment it begins.

The registry owns no thread. Its tasks are greenlets of the engine's
:class:`~aion_green.hub_thread.HubThread`, which is already a native thread
of the engine's own; a caller outside that thread may therefore block until
the hub has killed and joined the tasks. The hub thread itself must never
wait for that, so :meth:`ChildTaskRegistry.shutdown` refuses to run there.

Shut the registry down before the hub: the hub's own shutdown does not know
these greenlets, and would abandon them parked rather than kill and join
them.
"""
from __future__ import annotations

import logging
from collections.abc import Hashable
from functools import partial
from typing import Any, Callable, Generic, Optional, TypeVar

from gevent.greenlet import Greenlet
from greenlet import getcurrent

from aion_green.core.errors import InternalError
from aion_green.hub_thread import Future, HubThread, join_killed

log = logging.getLogger("aion_green.watchers")

# How long a caller off the hub thread waits between checks that the hub is
# still there to answer (only matters while the hub is closing).
_ANSWER_SLICE = 0.1
# What shutdown() allows on top of kill_timeout for the hub to start the stop
# and report back (the hub runs other greenlets as well).
_STOP_GRACE = 2.0

K = TypeVar("K", bound=Hashable)


class _Table(Generic[K]):
    """Task greenlets by key: a flat dict (spawn-recovery tasks)."""

    def __init__(self) -> None:
        self._tasks: dict[K, Greenlet] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, key: K) -> Optional[Greenlet]:
        return self._tasks.get(key)

    def put(self, key: K, glet: Greenlet) -> None:
        self._tasks[key] = glet

    def pop(self, key: K) -> Optional[Greenlet]:
        return self._tasks.pop(key, None)

    def pop_if(self, key: K, glet: Greenlet) -> None:
        """Drop ``key`` only while it still names ``glet``."""
        if self._tasks.get(key) is glet:
            del self._tasks[key]

    def clear(self) -> None:
        self._tasks.clear()


class _WatchTable(_Table[tuple[Hashable, str]]):
    """Watcher greenlets by (parent, child), indexed by parent so that the
    end of one parent touches only its own watchers."""

    def __init__(self) -> None:
        super().__init__()
        # Invariant: (parent, child) is in _tasks iff child is in
        # _by_parent[parent]; no parent maps to an empty set.
        self._by_parent: dict[Hashable, set[str]] = {}

    def put(self, key: tuple[Hashable, str], glet: Greenlet) -> None:
        super().put(key, glet)
        self._by_parent.setdefault(key[0], set()).add(key[1])

    def pop(self, key: tuple[Hashable, str]) -> Optional[Greenlet]:
        glet = super().pop(key)
        if glet is not None:
            self._unindex(key)
        return glet

    def pop_if(self, key: tuple[Hashable, str], glet: Greenlet) -> None:
        if self.get(key) is glet:
            self.pop(key)

    def pop_parent(self, parent: Hashable) -> list[Greenlet]:
        children = self._by_parent.pop(parent, None)
        if children is None:  # (most runs start no child)
            return []
        # Not `if glet`: a Greenlet is falsy once it has ended.
        popped = [self._tasks.pop((parent, child), None) for child in children]
        return [glet for glet in popped if glet is not None]

    def clear(self) -> None:
        super().clear()
        self._by_parent.clear()

    def _unindex(self, key: tuple[Hashable, str]) -> None:
        children = self._by_parent.get(key[0])
        if children is not None:
            children.discard(key[1])
            if not children:
                del self._by_parent[key[0]]


class ChildTaskRegistry:
    """Watchers and spawn-recovery tasks of one engine epoch, on its hub.

    Thread contract:

    - any thread or greenlet, including greenlets of other hubs (a patched
      main thread), may call :meth:`arm_watch`, :meth:`park_watch`, :meth:`arm_spawn_retry`,
      :meth:`remove_watch`, :meth:`remove_spawn_retry`, :meth:`abort_watch`,
      :meth:`abort_watches_for_parent`, :meth:`armed_watch_count`,
      :meth:`armed_spawn_retry_count` and :meth:`backstop`. On the hub
      thread they act at once and never block; elsewhere the action crosses
      over to the hub thread and the caller waits for its answer in a
      :class:`~aion_green.hub_thread.Future` (so not from inside a gevent hub
      callback of another hub);
    - :meth:`wake_watches`, :meth:`parked_watch_children` and
      :meth:`has_parked` are for the hub thread only (the engine's children
      part calls them as a child's end is known);
    - :meth:`shutdown` may be called from any thread or greenlet *except* the
      hub thread, where it raises :class:`~aion_green.errors.InternalError`;
    - the tables, the set of live tasks and the stop itself are touched only
      on the hub thread, so they need no lock; the counts read them from
      anywhere as a snapshot;
    - the one crossing is :meth:`HubThread.call_soon`, which runs the
      action in the hub's callback context (where nothing here blocks).

    Keys may be reused: each entry knows its own greenlet, so the late end
    of an old task never removes a newer task armed under the same key.
    """

    def __init__(self, hub: HubThread, kill_timeout: Optional[float] = None) -> None:
        self._hub = hub
        self.kill_timeout = hub.kill_timeout if kill_timeout is None else kill_timeout
        # Arm gate. Invariant: goes from False to True once (shutdown or
        # backstop, from any thread) and never back; once the hub thread has
        # seen it true, no task is armed.
        self._closing = False
        # Hub thread only below. ------------------------------------------------
        # Invariant: an entry names the greenlet armed under that key; it is
        # live, or dead with its removal (a rawlink) still to run.
        self._watches = _WatchTable()
        # Parked watches: child id -> parents, and parent -> child ids, each
        # one value as it is or several in a set (_add, _drop): a set per
        # entry was two objects per parent and child for the cyclic GC,
        # walked by each full collection (200,000 parents parked on children:
        # 400,000 sets).
        # Invariant: a key is parked, or names a greenlet in _watches, or
        # neither; never both.
        self._parked: dict[str, Any] = {}
        self._parked_of: dict[Hashable, Any] = {}
        self._parked_count = 0
        self._spawn_retries: _Table[str] = _Table()
        # Invariant: every task greenlet not yet dead is in _live, whether or
        # not it still has a table entry (aborted tasks can be finishing their
        # cleanup), so the stop can join it.
        self._live: set[Greenlet] = set()
        # Invariant: a subset of _live; the tasks already sent GreenletExit,
        # which are not killed again (that would cut their cleanup short).
        self._kill_sent: set[Greenlet] = set()
        # Invariant: False until the first stop begins; then the tables are
        # empty and stay empty.
        self._stop_begun = False
        # Completed (on the hub thread) once every task killed by the stop
        # has ended or the kill timeout has run out.
        self._stopped = Future()
        self.stragglers: list[str] = []

    # -- any thread -------------------------------------------------------------------
    def arm_watch(self, parent: Hashable, child_id: str, fn: Callable[..., Any], *args: Any,
                  name: Optional[str] = None) -> bool:
        """Run ``fn(*args)`` as the watcher of ``child_id`` for ``parent``.

        Returns False, and runs nothing, when a live watcher already holds
        that key or once shutdown has begun.
        """
        task_name = name or f"child-watch {parent}/{child_id}"
        return self._arm(self._watches, (parent, child_id), fn, args, task_name)

    def park_watch(self, parent: Hashable, child_id: str) -> bool:
        """Arm the watch of ``child_id`` for ``parent`` with no greenlet: it
        waits for :meth:`wake_watches`. Returns False, and parks nothing,
        when a watch (parked or live) already holds that key or once
        shutdown has begun."""
        if self._closing or self._hub.closing:
            return False
        return bool(self._on_hub(self._park_here, parent, child_id, refused=False))

    def arm_spawn_retry(self, child_id: str, fn: Callable[..., Any], *args: Any,
                        name: Optional[str] = None) -> bool:
        """Run ``fn(*args)`` as the spawn-recovery task of ``child_id``.

        Returns False, and runs nothing, when a live one already holds that
        child id or once shutdown has begun.
        """
        return self._arm(self._spawn_retries, child_id, fn, args, name or f"spawn-retry {child_id}")

    def remove_watch(self, parent: Hashable, child_id: str) -> None:
        """A watcher drops its own entry (the registry also does this when a
        task ends). An entry of another, live task is left alone."""
        self._remove(self._watches, (parent, child_id))

    def remove_spawn_retry(self, child_id: str) -> None:
        """A spawn-recovery task drops its own entry (the registry also does
        this when a task ends). An entry of another, live task is left alone."""
        self._remove(self._spawn_retries, child_id)

    def abort_watch(self, parent: Hashable, child_id: str) -> None:
        """Disarm the watcher of one key: drop the entry and kill the task.

        For a timed-out await of a child: the watcher must not record the
        child's end into the parent afterwards, or replay would resolve the
        await with an arrival the live run never saw.
        """
        if not self._closing:  # else the stop kills every task anyway
            self._on_hub(self._abort_here, (parent, child_id), refused=None)

    def abort_watches_for_parent(self, parent: Hashable) -> None:
        """Disarm every watcher of ``parent`` (its run ended here)."""
        if self._closing:
            return
        if self._hub.in_hub_thread():  # (a run's end: the common case, no crossing)
            self._abort_parent_here(parent)
        else:
            self._on_hub(self._abort_parent_here, parent, refused=None)

    def armed_watch_count(self) -> int:
        return len(self._watches) + self._parked_count

    def armed_spawn_retry_count(self) -> int:
        return len(self._spawn_retries)

    def watched_children(self) -> list[str]:
        """Hub thread: the child ids with a watch armed (a snapshot)."""
        return [child for _parent, child in self._watches._tasks] + list(self._parked)

    # -- hub thread only: parked watches ---------------------------------------------------
    def parked_watch_children(self) -> list[str]:
        """The child ids with a parked watch (a snapshot)."""
        return list(self._parked)

    def has_parked(self, child_id: str) -> bool:
        return child_id in self._parked

    def wake_watches(self, child_id: str, fn: Callable[..., Any], *args: Any) -> int:
        """The child ended: each parked watch of ``child_id`` becomes a
        watcher greenlet running ``fn(parent, *args)`` under its key. Returns
        how many."""
        parents = _each(self._parked.pop(child_id, _NONE))
        for parent in parents:
            self._unpark_index(parent, child_id)
            self._arm_here(self._watches, (parent, child_id), fn, (parent, *args),
                           f"child-watch {parent}/{child_id}")
        return len(parents)

    def shutdown(self) -> None:
        """Close the epoch: gate new arms, kill every task and join each one,
        for at most ``kill_timeout`` seconds.

        When it returns, no task of this registry runs any more, except those
        that swallowed ``GreenletExit``: they are logged by name (and listed
        in ``stragglers``). Safe from a plain thread, from a greenlet of
        another hub, and twice; not from the hub thread.
        """
        if self._hub.in_hub_thread():
            raise InternalError(
                "ChildTaskRegistry.shutdown() was called on the hub thread, which cannot wait "
                "for its own greenlets; call it from outside (this is a bug in aion_green)"
            )
        self._closing = True
        if not self._stopped.done():
            self._hub.call_soon(self._begin_stop)
        if not self._stopped.wait(self.kill_timeout + _STOP_GRACE):
            log.error(
                "child tasks of hub %s: the hub did not report the stop within %.1f s "
                "(was the hub shut down first?); its tasks are left to the hub",
                self._hub.name, self.kill_timeout + _STOP_GRACE,
            )

    def backstop(self) -> None:
        """For ``__del__``/``atexit``: gate new arms and ask the hub to kill
        every task, never blocking (a later :meth:`shutdown` still joins)."""
        self._closing = True
        if not self._stopped.done():
            self._hub.call_soon(self._begin_stop)

    # -- any thread: the crossing ------------------------------------------------------
    def _arm(self, table: _Table[Any], key: Any, fn: Callable[..., Any], args: tuple[Any, ...],
             name: str) -> bool:
        if self._closing or self._hub.closing:
            return False
        return self._on_hub(self._arm_here, table, key, fn, args, name, refused=None) is not None

    def _remove(self, table: _Table[Any], key: Any) -> None:
        if self._hub.in_hub_thread():
            self._remove_here(table, key, getcurrent())
        elif not self._closing:
            # Not the task itself: only a dead task's entry can go.
            self._on_hub(self._remove_here, table, key, None, refused=None)

    def _on_hub(self, fn: Callable[..., Any], *args: Any, refused: Any) -> Any:
        """``fn(*args)`` on the hub thread; its result. Off the hub thread,
        if the hub closes before answering, ``refused`` instead (and an arm
        that lands later is undone)."""
        if self._hub.in_hub_thread():
            return fn(*args)
        future = Future()
        self._hub.call_soon(self._answer, future, fn, args)
        while not future.wait(_ANSWER_SLICE):
            # A hub that is closing may stop draining its commands at any
            # point; first outcome wins, so the answer is never half true.
            if self._hub.closing and future.set_result(refused):
                break
        return future.result()

    # -- hub thread only ---------------------------------------------------------------
    def _answer(self, future: Future, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = fn(*args)
        except Exception as exc:
            future.set_exception(exc)
            return
        if not future.set_result(result) and isinstance(result, Greenlet):
            # The caller gave up and was told "refused": the task it did
            # not get must never run. It has not started (we are still in
            # the callback that created it), so the kill ends it now.
            self._kill_here(result)

    def _arm_here(self, table: _Table[Any], key: Any, fn: Callable[..., Any], args: tuple[Any, ...],
                  name: str) -> Optional[Greenlet]:
        if self._closing or self._stop_begun or self._hub.closing:
            return None
        current = table.get(key)
        if current is not None and not current.dead:
            return None
        if table is self._watches and key[0] in _each(self._parked.get(key[1], _NONE)):
            return None  # a parked watch holds the key
        # Vacant, or a task that has ended but whose removal has not run yet
        # (it is queued behind this call): the new task replaces it, and that
        # late removal finds another greenlet under the key and keeps it.
        glet = Greenlet(self._run_task, fn, args)
        glet.name = name
        table.put(key, glet)
        self._live.add(glet)
        glet.rawlink(partial(self._forget, table, key))
        glet.start()
        return glet

    def _run_task(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("child task %s failed", getattr(getcurrent(), "name", "?"))

    def _forget(self, table: _Table[Any], key: Any, glet: Greenlet) -> None:
        """The rawlink of each task: it has ended (or was killed before it
        ever ran). Runs in the hub's callback context."""
        self._live.discard(glet)
        self._kill_sent.discard(glet)
        table.pop_if(key, glet)

    def _remove_here(self, table: _Table[Any], key: Any, caller: Any) -> None:
        current = table.get(key)
        if current is not None and (current is caller or current.dead):
            table.pop_if(key, current)

    def _kill_here(self, glet: Greenlet) -> None:
        if glet.dead or glet in self._kill_sent:
            return
        self._kill_sent.add(glet)
        glet.kill(block=False)  # on the hub thread, so the kill is delivered

    def _abort_here(self, key: tuple[Hashable, str]) -> None:
        self._unpark(*key)
        glet = self._watches.pop(key)
        if glet is not None:
            self._kill_here(glet)

    def _abort_parent_here(self, parent: Hashable) -> None:
        for child_id in list(_each(self._parked_of.get(parent, _NONE))):
            self._unpark(parent, child_id)
        for glet in self._watches.pop_parent(parent):
            self._kill_here(glet)

    def _park_here(self, parent: Hashable, child_id: str) -> bool:
        if self._closing or self._stop_begun or self._hub.closing:
            return False
        current = self._watches.get((parent, child_id))
        if current is not None and not current.dead:
            return False
        if not _add(self._parked, child_id, parent):
            return False
        _add(self._parked_of, parent, child_id)
        self._parked_count += 1
        return True

    def _unpark(self, parent: Hashable, child_id: str) -> None:
        if _drop(self._parked, child_id, parent):
            self._unpark_index(parent, child_id)

    def _unpark_index(self, parent: Hashable, child_id: str) -> None:
        self._parked_count -= 1
        _drop(self._parked_of, parent, child_id)

    def _begin_stop(self) -> None:
        """Hub callback context, must not block: kill now, join in a greenlet."""
        if self._stop_begun:
            return
        self._stop_begun = True
        self._closing = True
        self._watches.clear()
        self._parked.clear()
        self._parked_of.clear()
        self._parked_count = 0
        self._spawn_retries.clear()
        victims = list(self._live)
        for glet in victims:
            self._kill_here(glet)
        joiner = Greenlet(self._join_victims, victims)
        joiner.name = "child-task-stop"
        joiner.start()

    def _join_victims(self, victims: list[Greenlet]) -> None:
        try:
            self.stragglers.extend(join_killed(
                victims, self.kill_timeout,
                f"child tasks of hub {self._hub.name} (they may still write after the epoch closed)"))
        finally:
            self._stopped.set_result(None)


# -- the parked tables' values: one item as it is, several in a set -------------------------------
_NONE: Any = object()  # no entry


def _each(value: Any) -> Any:
    """The items of a table value (none for _NONE)."""
    if value is _NONE:
        return ()
    return value if type(value) is set else (value,)


def _add(table: dict[Any, Any], key: Any, item: Any) -> bool:
    """Add ``item`` under ``key``; False if it was there."""
    value = table.get(key, _NONE)
    if value is _NONE:
        table[key] = item
    elif type(value) is set:
        if item in value:
            return False
        value.add(item)
    elif value == item:
        return False
    else:
        table[key] = {value, item}
    return True


def _drop(table: dict[Any, Any], key: Any, item: Any) -> bool:
    """Remove ``item`` from under ``key``; False if it was not there."""
    value = table.get(key, _NONE)
    if type(value) is set:
        if item not in value:
            return False
        value.discard(item)
        if len(value) == 1:
            table[key] = next(iter(value))
    elif value is _NONE or value != item:
        return False
    else:
        del table[key]
    return True
