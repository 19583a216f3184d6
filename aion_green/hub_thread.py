"""The private gevent hub that runs every workflow, in its own native thread.

Thread contract of :class:`HubThread`:

- any thread or greenlet may call :meth:`HubThread.call_soon`,
  :meth:`HubThread.spawn`, :meth:`HubThread.kill`, :meth:`HubThread.submit`
  and :meth:`HubThread.shutdown`;
- the commands they queue, and every greenlet spawned, run only on the hub
  thread;
- the one entry point that crosses over is the command deque plus the single
  ``loop.async_()`` watcher (``ref=True``) that drains it.

Waiting across threads goes through :class:`Future`, whose ``result()`` picks
a waiter that suits the caller: a native lock in a plain thread, an async
watcher on the caller's *own* hub in a greenlet (a native lock there would
freeze every other greenlet of, say, a gevent web worker), and a hub-local
event on the engine's hub thread.
"""
from __future__ import annotations

import collections
import gc
import logging
from typing import Any, Callable, Optional

import gevent
import gevent.event
from gevent import monkey
from gevent._hub_local import get_hub_if_exists
from gevent.greenlet import Greenlet
from gevent.hub import Waiter
from greenlet import GreenletExit
from greenlet import getcurrent as _getcurrent

from aion_green.core import clock as _clock
from aion_green.core.errors import EngineClosed, InternalError, Timeout

log = logging.getLogger("aion_green.hub")

# The hub thread must be a real thread even under patch_all(): patched
# threading.Thread, and get_original('threading', 'Thread'), give a greenlet.
_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")
try:  # CPython <= 3.12: a lock released when the thread's state is deleted.
    _set_sentinel: Optional[Callable[[], Any]] = monkey.get_original("_thread", "_set_sentinel")
except (AttributeError, ImportError):  # pragma: no cover - newer CPython
    _set_sentinel = None

# Hub threads by native thread ident, so a waiter knows it runs on one.
_HUB_THREADS: dict[int, "HubThread"] = {}


# -- waiters ----------------------------------------------------------------------

class EngineGreenlet(Greenlet):  # type: ignore[misc]  # gevent ships no type information
    """The engine's greenlets skip gevent's record of the spawning stack
    (always the hub's command drain here, so it tells nothing) and its
    cost: about a microsecond per spawn, one spawn per run. A subclass
    that keeps what it runs in slots starts with :meth:`HubThread.start_greenlet`."""

    spawning_stack_limit = 0


class _LockWaiter:
    """A plain thread waits on a native lock."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()

    def notify(self) -> None:
        self._lock.release()

    def wait(self, timeout: Optional[float]) -> bool:
        return bool(self._lock.acquire(True, -1 if timeout is None else max(timeout, 0)))

    def close(self) -> None:
        pass


class _ForeignHubWaiter:
    """A greenlet of some other hub (the caller's app) waits on an async
    watcher of its own hub; ``notify`` is safe from any thread."""

    __slots__ = ("_event", "_watcher")

    def __init__(self, hub: Any) -> None:
        self._event = gevent.event.Event()
        # Started before it can be notified: ev_async_start clears a send that
        # came first, so starting late would lose the wake.
        self._watcher = hub.loop.async_()
        self._watcher.start(self._event.set)

    def notify(self) -> None:
        self._watcher.send()

    def wait(self, timeout: Optional[float]) -> bool:
        return bool(self._event.wait(timeout))

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()


class _HubLocalWaiter:
    """A greenlet on an engine hub thread waits on an event of that hub; the
    notifier rings through the hub's command deque (sends there merge)."""

    __slots__ = ("_event", "_hub_thread")

    def __init__(self, hub_thread: "HubThread") -> None:
        self._event = gevent.event.Event()
        self._hub_thread = hub_thread

    def notify(self) -> None:
        # Called under the Future's lock, which the hub thread takes too:
        # back-pressure here would hold the hub on that lock (_post: none).
        self._hub_thread._post(self._event.set)

    def wait(self, timeout: Optional[float]) -> bool:
        return bool(self._event.wait(timeout))

    def close(self) -> None:
        pass


def _make_waiter() -> Any:
    hub_thread = _HUB_THREADS.get(_get_ident())
    hub = get_hub_if_exists()
    if hub is not None and _getcurrent() is hub:
        raise InternalError(
            "a blocking wait was attempted inside a gevent hub callback; "
            "this is a bug in aion_green"
        )
    if hub_thread is not None:
        return _HubLocalWaiter(hub_thread)
    if hub is not None:
        return _ForeignHubWaiter(hub)
    return _LockWaiter()


class Future:
    """A one-shot outcome that any thread may set and any thread or greenlet
    may wait for."""

    __slots__ = ("_lock", "_done", "_value", "_error", "_waiters", "_callbacks")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        # Invariant: once _done is true, _value/_error never change and
        # _waiters is empty.
        self._done = False
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._waiters: list[Any] = []
        self._callbacks: list[Callable[["Future"], None]] = []

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> bool:
        return self._finish(value, None)

    def set_exception(self, error: BaseException) -> bool:
        return self._finish(None, error)

    def _finish(self, value: Any, error: Optional[BaseException]) -> bool:
        with self._lock:
            if self._done:
                return False
            self._value, self._error, self._done = value, error, True
            # Notify under the lock: a waiter that timed out removes itself
            # under the same lock before closing its watcher.
            for waiter in self._waiters:
                waiter.notify()
            self._waiters = []
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # pragma: no cover - a callback bug must not hide the result
                log.exception("a Future callback failed")
        return True

    def add_done_callback(self, callback: Callable[["Future"], None]) -> None:
        """Call ``callback(self)`` once done, on the thread that finishes it."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def wait(self, timeout: Optional[float] = None) -> bool:
        if self._done:
            return True
        waiter = _make_waiter()
        with self._lock:
            if self._done:
                waiter.close()
                return True
            self._waiters.append(waiter)
        try:
            waiter.wait(timeout)
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                waiter.close()
        return self._done

    def result(self, timeout: Optional[float] = None) -> Any:
        if not self.wait(timeout):
            raise Timeout(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> Optional[BaseException]:
        return self._error


def join_killed(victims: list[Greenlet], timeout: float, what: str) -> list[str]:
    """Join greenlets already sent ``GreenletExit``, at most ``timeout``;
    log and return the names of those that did not end (they swallowed it).
    Call on their hub's thread."""
    # The cyclic GC dominates the cost of unwinding many greenlets at once.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        gevent.joinall(victims, timeout=timeout)
    finally:
        if gc_was_enabled:
            gc.enable()
    names = [getattr(glet, "name", repr(glet)) for glet in victims if not glet.dead]
    if names:
        log.error("%s: %d greenlet(s) swallowed GreenletExit and did not end within %.1f s: %s",
                  what, len(names), timeout, ", ".join(names))
    return names


# -- the hub thread ------------------------------------------------------------------

def _resolve_hub_settings() -> None:
    """Resolve, in the caller's thread, the gevent settings that a new Hub
    imports lazily (its loop class, ``format_context``: ``pprint``).

    Why: under ``patch_all()`` importlib's module locks are gevent locks. If
    the hub thread creates its Hub while the caller's thread creates its own
    first Hub (a first ``time.sleep`` right after the engine starts), both
    import the same module; the loser's wait on the module lock needs a hub,
    which recurses into ``Hub.__init__`` and the same import: both threads
    hang for good (found by the crash campaign of issue 8, seed 2 patched)."""
    gevent.config.loop  # noqa: B018 - reading a setting imports and caches it
    gevent.config.format_context  # noqa: B018
    # The same for what a thread's first network call makes its hub import:
    # the resolver and thread-pool classes (issue 21's kill test: 32 step
    # threads opening their first connections at once crashed a patched
    # process; BENCHMARKS.md, "A hazard on our side").
    gevent.config.resolver  # noqa: B018
    gevent.config.threadpool  # noqa: B018


# Commands run per turn of the hub's loop; each is a few microseconds (a
# wake, a spawn), so a batch stays well under a millisecond.
_DRAIN_BATCH = 256

# Back-pressure (issue 21): past _QUEUE_LIMIT queued commands, a sender on
# another thread pauses until the hub has drained the queue to half of it.
# The bounded drain alone left a 10 ms ticker waiting up to 250 ms under an
# unthrottled flood: two flooding threads kept the GIL from the hub, and the
# cyclic GC walked the millions of command tuples they had queued
# (BENCHMARKS.md, "The hub under a flood"). A busy engine queues a few
# hundred at most (1,000 workflows started from 50 threads: ~430), so only
# a flood waits.
_QUEUE_LIMIT = 4096
# A sender waits at most this long for the hub to drain; a hub that drained
# nothing meanwhile is held (a command blocked it, a lock the sender holds,
# a workflow computing), so senders stop waiting for it until it completes
# another turn: back-pressure may slow a sender, never deadlock it.
_PAUSE_LIMIT = 0.05
_original_sleep = monkey.get_original("time", "sleep")


class HubThread:
    """A private gevent hub running in a dedicated native thread."""

    def __init__(self, name: str = "aion-hub", kill_timeout: float = 5.0) -> None:
        self.name = name
        self.kill_timeout = kill_timeout
        self._commands: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        # Set on the hub thread once its watcher exists; until then commands
        # wait in the deque and the thread drains them when it starts.
        self._async: Any = None
        self._hub: Any = None
        self._ident: Optional[int] = None
        self._stop_event: Any = None
        self._state_lock = _allocate_lock()
        # Invariant: _closing never goes back to False; once set, spawn() and
        # call_soon() refuse new work.
        self._closing = False
        self._started = False
        # Invariant: every live greenlet spawned here is in _greenlets (it
        # removes itself when it ends), so shutdown can kill and join them.
        self._greenlets: set[Greenlet] = set()
        self._forget = self._greenlets.discard  # one bound method, not one per spawn
        self._finished = Future()
        self._sentinel: Any = None
        self.stragglers: list[str] = []
        # Drain turns completed (hub thread writes), and the turn at which a
        # sender last gave up waiting for the hub (any sender writes): while
        # they are equal the hub is held and senders do not wait for it.
        self._turns = 0
        self._held_at = -1

    # any thread --------------------------------------------------------------------
    def start(self) -> "HubThread":
        with self._state_lock:
            if self._started:
                return self
            if self._closing:
                raise EngineClosed("this hub thread was shut down; start a new one")
            self._started = True
        _resolve_hub_settings()
        _start_new_thread(self._thread_main, ())
        return self

    @property
    def closing(self) -> bool:
        return self._closing

    def in_hub_thread(self) -> bool:
        return self._ident is not None and _get_ident() == self._ident

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the hub thread, in the hub's own callback
        context: it must not block (spawn a greenlet for blocking work).
        From another thread, when the hub's queue is long (a flood), the
        call pauses until the hub drained it (:meth:`_back_off`)."""
        commands = self._commands
        commands.append((fn, args))
        watcher = self._async
        if watcher is not None:
            watcher.send()
            if len(commands) > _QUEUE_LIMIT:
                self._back_off()

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """:meth:`call_soon` without back-pressure, for a sender that holds
        a lock the hub thread may take: it must never wait for the hub."""
        self._commands.append((fn, args))
        watcher = self._async
        if watcher is not None:
            watcher.send()

    def _back_off(self) -> None:
        """A sender on another thread waits (at most ``_PAUSE_LIMIT``) while
        the hub drains a long queue. Never on the hub thread itself, nor in
        a hub's callback context (neither may wait), nor once shutting down."""
        turns = self._turns
        if turns == self._held_at or self._closing or self.in_hub_thread():
            return
        hub = get_hub_if_exists()
        if hub is None:
            nap = _original_sleep
        elif _getcurrent() is hub:
            return
        else:
            # A greenlet of the caller's hub (a gevent web worker, say):
            # only it waits; its hub serves the others meanwhile.
            nap = gevent.sleep
        commands = self._commands
        low = _QUEUE_LIMIT // 2
        give_up = _clock.monotonic() + _PAUSE_LIMIT
        while len(commands) > low and not self._closing:
            if _clock.monotonic() > give_up:
                if self._turns == turns:
                    self._held_at = turns  # not one turn drained: the hub is held
                return
            nap(0.0005)

    def spawn(self, fn: Callable[..., Any], *args: Any, name: Optional[str] = None) -> None:
        """Run ``fn(*args)`` as a tracked greenlet on the hub thread."""
        if self._closing:
            raise EngineClosed("the engine is shutting down; no new work is accepted")
        if self.in_hub_thread():
            self._spawn_here(fn, args, name)
        else:
            self.call_soon(self._spawn_here, fn, args, name)

    def start_greenlet(self, glet: EngineGreenlet) -> None:
        """Hub thread: start ``glet`` as a tracked greenlet, as :meth:`spawn`
        does a function. Made on this thread, not started: gevent gives a
        greenlet the hub of the thread that makes it as its parent."""
        if self._closing:
            raise EngineClosed("the engine is shutting down; no new work is accepted")
        self._start_here(glet)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a tracked greenlet; its outcome in a Future."""
        future = Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
                if isinstance(exc, GreenletExit):
                    raise

        self.spawn(run)
        return future

    def native_waiter(self) -> tuple[Any, Callable[[Any, Optional[BaseException]], None]]:
        """For a greenlet of this hub: a gevent ``Waiter`` and the ``done``
        callback that any thread may call once to resume it with a value or
        an error. Cheaper than a Future: one deque entry, merged wakes."""
        waiter = Waiter(self._hub)
        call_soon = self.call_soon

        def done(value: Any, error: Optional[BaseException]) -> None:
            if error is None:
                call_soon(waiter.switch, value)
            else:
                call_soon(waiter.throw, error)

        return waiter, done

    def kill(self, glet: Greenlet) -> None:
        """Kill a greenlet of this hub. ``g.kill(block=False)`` from another
        thread silently does nothing, so the kill travels as a command."""
        if self.in_hub_thread():
            glet.kill(block=False)
        else:
            self.call_soon(glet.kill, GreenletExit, False)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Gate new work, kill and join every greenlet (at most
        ``kill_timeout``), destroy the hub in its own thread, join the thread.

        Safe from a plain thread, from a greenlet of a patched main thread,
        and twice. Not from the hub thread itself, which cannot join itself.
        """
        if self.in_hub_thread():
            raise InternalError(
                "HubThread.shutdown() was called on the hub thread itself; "
                "call it from outside (this is a bug in aion_green)"
            )
        with self._state_lock:
            self._closing = True
            started = self._started
        if not started:
            return
        self.call_soon(self._begin_stop)
        limit = None if timeout is None else timeout + self.kill_timeout
        self._finished.wait(limit)
        sentinel = self._sentinel
        if sentinel is not None:
            # The thread body has returned; what is left is CPython deleting
            # the thread state. That can wait on a pending call (greenlet's
            # cleanup of the dead thread's greenlets) that only runs when the
            # main thread executes bytecode, so poll in short slices rather
            # than block in one acquire.
            deadline = _clock.monotonic() + 5
            while not sentinel.acquire(True, 0.002):
                if _clock.monotonic() > deadline:
                    log.warning("hub thread %s did not exit within 5 s of its last step", self.name)
                    return
            sentinel.release()  # a second shutdown() finds it free

    def backstop(self) -> None:
        """``Drop``-style backstop for ``__del__``/``atexit``: gate and ask the
        hub thread to stop, never blocking."""
        with self._state_lock:
            self._closing = True
            started = self._started
        if started and not self._finished.done():
            self.call_soon(self._begin_stop)

    def greenlet_count(self) -> int:
        return len(self._greenlets)

    def queued(self) -> int:
        """Commands waiting for the hub (any thread; a snapshot)."""
        return len(self._commands)

    # hub thread only ------------------------------------------------------------------
    def _spawn_here(self, fn: Callable[..., Any], args: tuple[Any, ...], name: Optional[str]) -> None:
        glet = EngineGreenlet(fn, *args)
        if name:
            glet.name = name
        self._start_here(glet)

    def _start_here(self, glet: EngineGreenlet) -> None:
        if self._stop_event is not None and self._stop_event.is_set():
            log.warning("hub %s is stopping; dropped greenlet %r", self.name, glet)
            return
        self._greenlets.add(glet)
        glet.rawlink(self._forget)
        glet.start()

    def _drain(self) -> None:
        # Bounded: under a flood of commands from other threads an unbounded
        # drain kept a 10 ms timer waiting 52-137 ms (issue 16); the rest
        # waits one loop turn, after due timers and I/O.
        commands = self._commands
        self._turns += 1
        for _ in range(_DRAIN_BATCH):
            if not commands:
                return
            fn, args = commands.popleft()
            try:
                fn(*args)
            except GreenletExit:  # pragma: no cover - the hub itself is being ended
                raise
            except BaseException:  # noqa: B036 - a command must never end the hub thread
                log.exception("hub %s: command %r failed; this is a bug in aion_green", self.name, fn)
        if commands and self._async is not None:
            self._async.send()

    def _begin_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def _thread_main(self) -> None:
        if _set_sentinel is not None:
            self._sentinel = _set_sentinel()
        self._ident = _get_ident()
        _HUB_THREADS[self._ident] = self
        try:
            hub = gevent.get_hub()
            self._hub = hub
            self._stop_event = gevent.event.Event()
            watcher = hub.loop.async_(ref=True)
            watcher.start(self._drain)
            self._async = watcher
            self._drain()  # commands queued before the watcher existed
            self._stop_event.wait()
            self._stop_greenlets()
            watcher.stop()
            watcher.close()
            self._async = None
            self._destroy_hub(hub)
        except BaseException:  # pragma: no cover - must never die silently
            log.exception("hub thread %s crashed; this is a bug in aion_green", self.name)
        finally:
            _HUB_THREADS.pop(self._ident, None)
            # Drop every reference to the dead hub (the event is bound to it).
            self._hub = None
            self._stop_event = None
            self._finished.set_result(None)

    def _stop_greenlets(self) -> None:
        # Greenlets may spawn others while dying; sweep until none is left.
        for _ in range(3):
            victims = list(self._greenlets)
            if not victims:
                break
            for glet in victims:
                glet.kill(block=False)
            names = join_killed(victims, self.kill_timeout,
                                f"hub {self.name} (they are abandoned with the hub)")
            self.stragglers.extend(names)
            for glet in victims:
                self._greenlets.discard(glet)

    def _destroy_hub(self, hub: Any) -> None:
        hub.destroy(destroy_loop=True)
        # gevent#1601: after destroy the hub greenlet stays parked mid-throw
        # of LoopExit into its parent, pinning frames in a cycle the GC cannot
        # see; throwing GreenletExit into it lets it end.
        if not hub.dead:
            try:
                hub.throw(GreenletExit)
            except BaseException:
                pass
