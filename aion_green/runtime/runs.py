"""Driving runs on the hub thread: spawning, replaying and ending them,
delivering their records, and telling result waiters (creating runs and
routing arrivals to them is :mod:`aion_green.runtime.routing`).

Thread contract: every method runs only on the engine's hub thread, but
``unregister`` (any thread) and ``_attempt`` (a step-pool thread).
:class:`Runner` is one part of an engine's :class:`~aion_green.runtime.epoch.Epoch`:
the life of a run inside an epoch.
"""
from __future__ import annotations

import bisect
import builtins
import dataclasses
import functools
import logging
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent
from gevent import GreenletExit, monkey

from aion_green.core import events as ev
from aion_green.core import logs, namespaces, payloads
from aion_green.core.bounds import deadline_of
from aion_green.core.errors import (
    Cancelled,
    EngineClosed,
    InternalError,
    NonDeterminismError,
    SerializationError,
    StepTimeout,
    StoreError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowTimedOut,
    error_message,
)
from aion_green.core.history import message_state, open_children, pending_timers
from aion_green.hub_thread import EngineGreenlet, Future
from aion_green.runtime import tracing
from aion_green.runtime.batched_reads import BatchedReads
from aion_green.runtime.metrics import STEP_SECONDS
from aion_green.runtime.recorder import Recorder
from aion_green.runtime.residency import RunEvicted
from aion_green.runtime.routing import _Reroute
from aion_green.runtime.termination import RunTerminated
from aion_green.store import RunInfo
from aion_green.workflows import declared
from aion_green.workflows.context import ContinueAsNew, RunAborted, RunLost, WorkflowContext
from aion_green.workflows.host import RunLog
from aion_green.workflows.steps import Retry, StepInfo, attempt_event, error_data, failed_event

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine
    from aion_green.runtime.epoch import Epoch

log = logging.getLogger("aion_green.engine")
_get_ident = monkey.get_original("_thread", "get_ident")
_bisect = bisect.bisect_left
STEP_COMPLETED = ev.STEP_COMPLETED
_STEP_TYPES = ev.STEP_TYPES
_FAST = STEP_SECONDS[0]
# The most runs driven again whose histories are read in one statement.
_READ_MOST = 200


def _ignore(*_: Any) -> None:
    pass


def outcome(workflow_id: str, info: RunInfo) -> Any:
    """What ``result()`` gives for a finished run: its result, or the error
    it ended with raised as :class:`WorkflowFailed` / :class:`WorkflowCancelled`."""
    if info.status == ev.COMPLETED:
        return payloads.decode(info.result)  # out of its codec's envelope, if in one
    error = info.error or {"type": info.status, "message": info.status}
    if info.status == ev.CANCELLED:
        raise WorkflowCancelled(workflow_id, error)
    if info.status == ev.TIMED_OUT:
        raise WorkflowTimedOut(workflow_id, error)
    raise WorkflowFailed(workflow_id, error)


def _record_step(recorder: RunLog, info: StepInfo, events: builtins.list[ev.NewEvent],
                 inline: bool = False) -> None:
    """Submit a step attempt's record. A run whose end was submitted while
    the step ran (a cancel took effect, the workflow returned without it)
    takes no more records: the outcome is dropped, as one returned after
    its timeout is. (It was taken for a store failure and stopped the run
    on its way out: its waiters got EngineClosed.)"""
    try:
        recorder.submit_events(events, inline=inline)
    except EngineClosed:
        if not recorder.closed:
            raise
        log.debug("workflow %r: step %d (%s) attempt %d ended after the run's end was "
                  "recorded; its outcome is dropped", info.workflow_id, info.step, info.name,
                  info.attempt)


def _closed_while_waiting() -> EngineClosed:
    return EngineClosed("the engine shut down while waiting for the result; "
                        "the run resumes when an engine starts over this store")


class Runner:
    """Drives the runs of one epoch (see the module docstring)."""

    # (hub, partial(hub.call_soon, self.deliver)) of the current epoch.
    _deliver_soon: tuple[Any, Any] = (None, None)

    def __init__(self, engine: "Engine", epoch: "Epoch") -> None:
        self.engine = engine  # its settings, and the facade's own operations
        self.epoch = epoch  # the state of this engine's life, and the other parts
        # A thread's step figures by its ident (runtime/metrics.py): each
        # pool thread counts its own attempts, with no lock. The dict's own
        # get, as RunTable.get: once per attempt.
        self._figures_of = engine.metrics.steps.get
        # Runs driven again (recovered, back from eviction) read their
        # histories together: one statement for up to _READ_MOST of them.
        self._histories = BatchedReads(epoch.hub, epoch.writer, epoch.store.read_many,
                                       _READ_MOST, "aion-history-reads")

    # -- hub thread only ---------------------------------------------------------------------
    def on_hub_start(self) -> None:
        if self.epoch.hub.closing:
            return
        self.epoch.hub.spawn(self.engine.metrics.watch_hub, name="aion-hub-lag")
        if self.engine._passive:
            # It drives nothing, but its result() waiters must hear of ends
            # that other engines record (issue 16: they waited forever).
            self.epoch.hub.spawn(self.epoch.sharing.poll, name="aion-passive-poll")
            return
        if self.epoch.leased:
            self.epoch.hub.spawn(self.epoch.leases.begin_leasing, name="aion-leases")
        elif self.epoch.sharing.driving:
            self.epoch.hub.spawn(self.epoch.sharing.begin_driving, name="aion-drive")
        else:
            self.epoch.hub.spawn(self.epoch.sharing.promote, name="aion-promote")
            self.epoch.hub.spawn(self.epoch.sharing.poll, name="aion-client-poll")

    def run_step(self, log: RunLog, fn: Callable[..., Any], args: tuple[Any, ...],
                 info: StepInfo, policy: Retry, limit: Optional[float] = None) -> None:
        """One live attempt (``Host.run_step``): a pool thread runs it,
        builds its event and hands it to the run's log; the run's greenlet
        wakes once the record is durable (record before wake). ``limit``:
        the attempt's timeout in seconds."""
        epoch = self.epoch
        ctx = epoch.runs.get(info.workflow_id)
        if ctx is not None:
            # The run stays in memory until this attempt's record reaches it
            # (deliver counts it off: no hub command of its own per step).
            ctx._busy += 1
        # The run span's context, handed over explicitly (runtime/tracing.py).
        more = None if tracing.tracer is None or ctx is None else ctx._more
        parent = None if more is None else more.trace
        # A partial, not a closure: thousands of attempts may be in flight,
        # and each closure cell is one more object for the cyclic GC.
        if limit is None:
            epoch.steps.submit(functools.partial(self._attempt, log, fn, args, info, policy,
                                                 parent))
        else:
            epoch.steps.submit(functools.partial(self._attempt, log, fn, args, info, policy,
                                                 parent, limit))

    def _attempt(self, recorder: RunLog, fn: Callable[..., Any], args: tuple[Any, ...],
                 info: StepInfo, policy: Retry, parent: Any,
                 timeout: Optional[float] = None) -> None:
        """Pool thread: run one attempt of a step and record it (unless its
        timeout was recorded first: whoever takes it out of _in_flight
        records)."""
        hub = self.epoch.hub
        in_flight = self.epoch.in_flight
        ident = _get_ident()
        figures = self._figures_of(ident) or self.engine.metrics.here()
        figures.started += 1
        in_flight[info] = (time.time(), ident, self.epoch.steps._current.get(ident))
        if timeout is not None:
            hub.call_soon(self._arm_step_timeout, recorder, info, policy, timeout)
        try:
            if parent is None:
                event = attempt_event(fn, args, info, policy)
            else:
                event = tracing.attempt(fn, args, info, policy, parent)
            began = in_flight.pop(info, None)
            if began is not None:
                # Counted first (whoever sees the run move on sees the
                # count), inline: StepFigures.ended without its call.
                seconds = event.at - began[0]
                if seconds < 0.0:
                    seconds = 0.0  # the wall clock stepped back
                tally = figures.completed if event.type == STEP_COMPLETED else figures.failed
                # A step of a millisecond or less (the first bucket) needs no
                # search (~1 k instructions); a longer one costs far more itself.
                tally.counts[0 if seconds <= _FAST else _bisect(STEP_SECONDS, seconds)] += 1
                tally.sum += seconds
                _record_step(recorder, info, [event], inline=True)
            else:
                log.warning("workflow %r: step %d (%s) attempt %d returned after its timeout "
                            "was recorded; its outcome is dropped", info.workflow_id, info.step,
                            info.name, info.attempt)
        except BaseException as exc:
            in_flight.pop(info, None)
            hub.call_soon(self.deliver, info.workflow_id, [], None, exc)

    def _arm_step_timeout(self, recorder: RunLog, info: StepInfo, policy: Retry,
                          timeout: float) -> None:
        """Hub thread: fail the attempt ``info`` if it is still running in
        ``timeout`` seconds. (A loop timer, not durable time: an attempt
        does not outlive its epoch.)"""
        if info not in self.epoch.in_flight:
            return  # it returned already
        timer = self.epoch.hub._hub.loop.timer(timeout)
        timer.start(self._step_timed_out, recorder, info, policy, timeout, timer)

    def _step_timed_out(self, recorder: RunLog, info: StepInfo, policy: Retry, timeout: float,
                        timer: Any) -> None:
        timer.close()
        began = self.epoch.in_flight.pop(info, None)
        if began is None:
            return  # it returned in time
        self.epoch.steps.detach(began[1], began[2])  # the pool starts another thread for the waiting work
        self.engine.metrics.here().ended(ev.STEP_FAILED, timeout)
        error = StepTimeout(
            f"step {info.step} ({info.name}) of workflow {info.workflow_id!r}, attempt "
            f"{info.attempt}, did not return within {timeout:g} s; it is recorded as failed "
            "(whatever it returns later is dropped)")
        _record_step(recorder, info, [failed_event(info, policy, error_data(error),
                                                   policy.is_retryable(error))])

    def new_recorder(self, wid: str, fence: Optional[int] = None) -> Recorder:
        # on_recorded(wid, events, head, error) runs deliver(wid, events,
        # head, error) on the hub thread; a partial, so the writer runs no
        # Python frame of ours for it, and one per epoch, not one per run.
        hub = self.epoch.hub
        if self._deliver_soon[0] is not hub:
            self._deliver_soon = (hub, functools.partial(hub.call_soon, self.deliver))
        return Recorder(wid, self.epoch.writer, self._deliver_soon[1], fence)

    def deliver(self, wid: str, events: builtins.list[ev.NewEvent], head: Optional[int],
                 error: Optional[BaseException]) -> None:
        """Hub thread: the outcome of an append to a live run."""
        ctx = self.epoch.runs.get(wid)
        if ctx is None:
            if wid in self.epoch.recorders:
                # Starting here: a run created by start() records (a signal,
                # say) before its greenlet built its context. Keep the outcome
                # for the context, in order.
                self.epoch.early.setdefault(wid, []).append((events, head, error))
            return  # else the run ended (or its greenlet was killed) meanwhile
        if error is not None or head is None:
            ctx._on_failed(error or InternalError("an append completed without a head"))
            return
        if len(events) == 1:  # the hot path (a step's record): ctx._on_recorded, inlined
            (e,) = events
            etype = e.type
            ctx._cursor.add_one(ev.Event(head, etype, e.at, e.data))
            if etype in _STEP_TYPES:
                # An attempt's record (its outcome, or its timeout's): the
                # attempt no longer keeps the run in memory (run_step).
                if ctx._busy > 0:
                    ctx._busy -= 1
            elif etype == ev.WORKFLOW_UNPAUSED:
                self.epoch.bounds.released(ctx)
            if ctx._parked:
                ctx._parked = False
                ctx._bell.switch(None)
            return
        first = head - len(events) + 1
        ctx._on_recorded([ev.Event(first + i, e.type, e.at, e.data) for i, e in enumerate(events)])

    def recover(self) -> None:
        after: Optional[str] = None
        resumed = 0
        while True:
            page = self.epoch.reader.call(
                self.epoch.reader.store.list_runs, ev.RUNNING, None, 500, after
            ).result()
            for info in page:
                wid = info.workflow_id
                if (wid not in self.epoch.runs and wid not in self.epoch.unrunnable
                        and not self.epoch.residency.absent_here(wid)):
                    self.spawn_run(wid, info, recovering=True)
                    resumed += 1
            if len(page) < 500:
                break
            after = page[-1].workflow_id
            # Over a residency cap, read on only as the queue of runs
            # waiting for a place drains (it holds their state).
            while (self.engine.max_resident is not None and not self.epoch.hub.closing
                   and len(self.epoch.residency.admission) > self.engine.max_resident):
                gevent.sleep(0.05)
        if resumed:
            log.info("recovery: resuming %d unfinished run(s)", resumed,
                     extra={"aion_event": "recovery", "aion_resumed": resumed})

    def spawn_run(self, wid: str, info: RunInfo, recovering: bool = False,
                   recorder: Optional[Recorder] = None) -> None:
        """Drive a run here. ``recorder`` comes from start() for a run just
        created (registered and initialised there); otherwise one is
        registered now and initialised from the history read after it."""
        if wid in self.epoch.runs or self.epoch.hub is None or self.epoch.hub.closing:
            if recorder is not None and wid not in self.epoch.runs:
                self.epoch.early.pop(wid, None)
                self.unregister(wid, recorder)
            return
        if recorder is None and wid in self.epoch.recorders:
            # start() created this run, and its own spawn (with the recorder
            # it registered first) is on its way here: a recovery pass or a
            # second start() that found the run unfinished in the store must
            # leave it to that spawn. Driven from here too, it could end
            # before that spawn arrives, which then drove it again from seq 1
            # (a step ran twice, and result() waited forever; found by
            # tests/test_state_machine.py).
            return
        if self.epoch.residency.full():
            self.epoch.residency.queue_run(wid, info, recovering, recorder)
            return
        recovering = recovering or info.head_seq > 1 or recorder is None
        try:
            fn = self.engine._registry.get(info.workflow_type)
        except WorkflowNotRegistered as exc:
            message = f"cannot resume workflow {wid!r}: {exc}; the run is left as it is"
            self.epoch.unrunnable[wid] = message
            log.error(message, extra=logs.run_problem(
                wid, "run.unrunnable", aion_workflow_type=info.workflow_type))
            if recorder is not None:
                self.unregister(wid, recorder)
            self.epoch.residency.on_run_gone(wid)
            self.epoch.hub.spawn(self.epoch.termination.end_if_cancel_recorded, wid)
            return
        self.epoch.runs.claim(wid)
        residency = self.epoch.residency
        if residency.on and len(self.epoch.runs) > residency.resident_peak:
            residency.resident_peak = len(self.epoch.runs)
        self.epoch.unrunnable.pop(wid, None)
        # A resumed id (runtime/rewind.py): the end of its old run is not its result.
        self.epoch.recently_finished.pop(wid, None)
        if recorder is None:
            recorder = self.new_recorder(wid, info.fence or None)
            with self.epoch.routing_lock:
                self.epoch.recorders[wid] = recorder
        self.epoch.hub.start_greenlet(_RunGreenlet(self, wid, fn, info, recovering, recorder))

    def unregister(self, wid: str, recorder: Recorder) -> None:
        """Any thread: drop a recorder; messages it buffered are routed anew."""
        with self.epoch.routing_lock:
            if self.epoch.recorders.get(wid) is recorder:
                del self.epoch.recorders[wid]
        recorder.abandon(_Reroute())

    def register_waiter(self, wid: str, future: Future) -> None:
        # (Not while a purge is under way: runtime/retention.py _purging.)
        finished = None if self.epoch.purges_running else self.epoch.recently_finished.get(wid)
        if finished is not None:
            future.set_result(finished)
            return
        if self.epoch.hub.closing or wid in self.epoch.unreadable:
            future.set_exception(self.epoch.unreadable.get(wid)
                                 or _closed_while_waiting())
            return
        self.epoch.waiters.setdefault(wid, []).append(future)
        if wid not in self.epoch.runs:
            self.epoch.hub.spawn(self.check_finished, wid)

    def drop_waiter(self, wid: str, future: Future) -> None:
        """A result() wait timed out: forget its future."""
        futures = self.epoch.waiters.get(wid)
        if futures is not None:
            try:
                futures.remove(future)
            except ValueError:
                pass
            if not futures:
                del self.epoch.waiters[wid]

    def check_finished(self, wid: str) -> None:
        try:
            info = self.epoch.reader.call(self.epoch.reader.store.get_run, wid).result()
        except Exception as exc:
            self._fail_waiters(wid, exc)
            return
        self._tell_waiters(wid, info)

    def check_finished_all(self, wids: builtins.list[str]) -> None:
        """:meth:`check_finished` of many runs, read in one call of the
        reader (a client polling for the ends of its waiters' runs: one
        hand-off to the reader per pass, not one per run)."""
        store = self.epoch.reader.store
        try:
            infos = self.epoch.reader.call(lambda: [store.get_run(wid) for wid in wids]).result()
        except Exception:  # (each run on its own: which one failed says so)
            for wid in wids:
                self.check_finished(wid)
            return
        for wid, info in zip(wids, infos):
            self._tell_waiters(wid, info)

    def _tell_waiters(self, wid: str, info: Optional[RunInfo]) -> None:
        if info is None:
            self._fail_waiters(wid, WorkflowNotFound(
                f"no workflow with id {wid!r} in {self.engine._store_name()}"))
        elif info.finished:
            self.complete_waiters(wid, info)

    def complete_waiters(self, wid: str, info: RunInfo) -> None:
        cache = self.epoch.recently_finished
        cache[wid] = info
        if len(cache) > 10_000:
            cache.popitem(last=False)
        for future in self.epoch.waiters.pop(wid, ()):
            future.set_result(info)
        self.epoch.children.child_ended(wid, info)  # its parents' parked watches

    def _fail_waiters(self, wid: str, error: BaseException) -> None:
        for future in self.epoch.waiters.pop(wid, ()):
            future.set_exception(error)

    def _drive(self, wid: str, fn: Callable[..., Any], info: RunInfo, recovering: bool,
               recorder: Recorder) -> None:
        """The run's greenlet: replay, then live until the workflow ends."""
        evicted = False
        following: Optional[RunInfo] = None  # the next run of a continue_as_new
        # How this greenlet lets go of the run, for its log and span (core/logs.py).
        began: Optional[WorkflowContext] = None
        span, final, outcome = None, None, "interrupted"
        try:
            if self.epoch.leased and self.epoch.residency.lease_to_check(wid):
                # Back from eviction: its lease was parked meanwhile, and
                # another engine may have taken it (this engine's entry ran
                # out: a long pause). Then it is not driven here; what woke
                # it is routed to its new owner (unregister below).
                held = self.epoch.leases.read_if_held(wid)  # (read with others woken)
                if held is None:
                    raise RunLost(f"workflow {wid!r}: its lease was taken by another engine "
                                  "while it was out of memory here")
                history = held
            elif recovering or info.head_seq > 1:
                history = self._histories.read(wid) or []  # (read with others driven again)
            else:
                started: dict[str, Any] = {"workflow_type": info.workflow_type,
                                           "run_id": info.run_id, "args": info.args}
                if info.execution_deadline is not None:  # as the store wrote it (core/bounds.py)
                    started["execution_deadline"] = info.execution_deadline
                history = [ev.Event(1, ev.WORKFLOW_STARTED, info.created_at, started)]
            if history and history[-1].type in ev.TERMINAL_TYPES:
                final = self.epoch.writer.call(self.epoch.store.get_run, wid).result()
                self.complete_waiters(wid, final)
                return
            # No switch between these lines: the first outcome delivered for
            # this run finds its context in place.
            if recovering:
                recorder.init(history[-1].seq, *message_state(history))
            ctx = WorkflowContext(self.epoch.host, wid, info.run_id, info.workflow_type, history,
                                  recorder)
            self.epoch.runs.attach(wid, ctx)
            ctx._greenlet = gevent.getcurrent()
            declared.enter(ctx)  # @aion.step functions called here run as its steps
            if info.parent_id is not None:
                ctx._parent_id = namespaces.local(info.parent_id)
            for early in self.epoch.early.pop(wid, ()):
                self.deliver(wid, *early)
            for key, fire_at in pending_timers(history).items():
                ctx._timers[key] = fire_at
                self.epoch.timers.add(fire_at, wid, key)
            self.epoch.bounds.loaded(ctx)
            if recovering:
                # The sweep: every child this run started and whose end is
                # not recorded gets (again) created if missing, and watched.
                for child in open_children(history):
                    self.epoch.children.ensure_child((wid, info.run_id), child)
            # Recovery may pick up a run that start() just created: with
            # nothing but its WorkflowStarted, it is started, not resumed.
            began, replayed = ctx, len(history) if recovering and len(history) > 1 else 0
            del history  # the cursor holds the events; this frame lives as long as the run
            logs.run_began(ctx, replayed)
            if tracing.tracer is not None:
                span = tracing.start_run(ctx, replayed)
            final = self._execute(ctx, fn, info)
            outcome = "ended"
            if final is not None and final.status == ev.CONTINUED:
                # The store began the next run in the same commit; drive it
                # once this greenlet has let go of the id (below).
                following = dataclasses.replace(final, status=ev.RUNNING)
            elif final is not None:
                self.complete_waiters(wid, final)
        except GreenletExit:
            raise
        except RunEvicted:
            evicted, outcome = True, "evicted"
            # Under the fence its recorder holds now: a claim that took the
            # run back here (its lease ran out) raised it since it was driven.
            self.epoch.residency.on_evicted(info, recorder.fence)
        except RunTerminated:
            outcome = "terminated"  # the engine records its end (runtime/termination.py)
        except RunLost as exc:
            outcome = "dropped"
            log.warning("run %r dropped: %s", wid, exc,
                        extra=logs.run_problem(wid, "run.dropped", began, exc))
            if self.epoch.leased:
                self.engine.metrics.leases.lost += 1
                # Whoever writes it now (or a replay here) may take it at once,
                # without waiting for the lease to run out.
                # (No closure: its cells would live in this frame as long as the run.)
                self.epoch.writer.submit_call(
                    functools.partial(self.epoch.store.release_leases, self.engine.engine_id, [wid]),
                    _ignore)
            elif wid in self.epoch.waiters:
                # Ended by another process (runtime/termination.py): tell the waiters here.
                self.epoch.hub.spawn(self.check_finished, wid)
        except RunAborted as exc:
            outcome = "aborted"
            log.error("run %r stopped: the store refused a record (%s); it stays unfinished "
                      "and resumes when an engine starts over a healthy store", wid, exc.error,
                      extra=logs.run_problem(wid, "run.aborted", began, exc.error))
            self._fail_waiters(wid, exc.error)
        except StoreError as exc:
            # Its history could not be read (a damaged record, say): left as
            # it is, never written over, its waiters told; the others go on.
            outcome = "aborted"
            self.epoch.unrunnable[wid] = message = f"cannot drive workflow {wid!r}: {exc}"
            self.epoch.unreadable[wid] = exc
            log.error("%s; it is left as it is", message,
                      extra=logs.run_problem(wid, "run.aborted", began, exc))
            self._fail_waiters(wid, exc)
        except Exception as exc:
            outcome = "crashed"
            log.exception("run %r: the engine failed to drive it; this is a bug in aion_green", wid,
                          extra=logs.run_problem(wid, "run.crashed", began, exc))
        finally:
            declared.leave()
            if began is not None:
                logs.run_left(began, outcome, final)
                # The failure that unwound the run (an eviction, a
                # termination) holds its traceback, whose frames hold the
                # context that holds the failure: a cycle, so everything of
                # the run waited for the cyclic GC.
                began._failure = None
            if span is not None:
                tracing.end_run(span, outcome, final, self.epoch)
            self.epoch.runs.release(wid)
            self.epoch.early.pop(wid, None)
            self.unregister(wid, recorder)
            if not evicted:  # an evicted run's children are watched on
                self.epoch.child_tasks.abort_watches_for_parent((wid, info.run_id))
            self.epoch.residency.on_run_gone(wid)
            if following is not None:
                # In the same hub turn as the release: between the two, the
                # id was in no table while the store named the next run, and
                # a query that came then was refused ("not running in this
                # engine"; the next run was spawned by a later call_soon).
                self.spawn_run(wid, following)

    def _execute(self, ctx: WorkflowContext, fn: Callable[..., Any], info: RunInfo) -> Optional[RunInfo]:
        wid = ctx._key
        # From the run's own WorkflowStarted: a run that continued as new
        # got its own arguments (the store's RunInfo keeps the first run's).
        args = ctx._cursor.event(1).data.get("args", info.args)
        if args:  # as its parameters declare them (core/payloads.py)
            # A tuple: this frame keeps it as long as the run, and the cyclic
            # GC stops tracking a tuple of plain values (never a list).
            args = tuple(payloads.decode_args(args, payloads.parameter_hints(fn, skip=1)))
        data: dict[str, Any]
        try:
            try:
                # Positionally for up to two arguments: fn(ctx, *args) builds
                # a tuple holding ctx that would live as long as the run.
                if not args:
                    result = fn(ctx)
                elif len(args) == 1:
                    result = fn(ctx, args[0])
                elif len(args) == 2:
                    result = fn(ctx, args[0], args[1])
                else:
                    result = fn(ctx, *args)
            except ContinueAsNew:
                ctx._finish_check("the workflow to continue as new")
                raise
            except GreenletExit as exc:
                if self.epoch.hub.closing:
                    raise  # the epoch ends: this run resumes in the next one
                # Only shutdown kills a run's greenlet, so this is the body's
                # own: as a kill it left the run running, and each replay
                # raised it again, forever (issue 16).
                ctx._finish_check("the workflow to raise GreenletExit")
                raise _BodyRaisedGreenletExit(exc) from None
            except (RunLost, RunAborted, RunEvicted, Cancelled):
                raise
            except NonDeterminismError:
                raise
            except Exception as exc:
                ctx._finish_check(f"the workflow to raise {type(exc).__name__}")
                raise
            ctx._finish_check("the workflow to return")
            result, result_text = payloads.encode(result, f"the result of workflow {wid!r}")
            event_type, data, status = ev.WORKFLOW_COMPLETED, {"result": result}, ev.COMPLETED
        except (GreenletExit, RunLost, RunAborted, RunEvicted):
            raise
        except ContinueAsNew as cont:
            event_type, status, result = ev.WORKFLOW_CONTINUED_AS_NEW, ev.CONTINUED, None
            data = {"args": cont.args_value, "run_id": uuid.uuid4().hex,
                    "generation": ctx.generation + 1}
            if ctx._search_attributes:  # the chain keeps them (workflows/search.py)
                data["search_attributes"] = ctx._search_attributes
            deadline = deadline_of(ctx._cursor.event(1).data)
            if deadline is not None:  # and its execution deadline (core/bounds.py)
                data["execution_deadline"] = deadline
        except Cancelled as cancelled:
            event_type, status, result = ev.WORKFLOW_CANCELLED, ev.CANCELLED, None
            data = {"error": {"type": "Cancelled", "message": cancelled.reason or "cancelled",
                              "reason": cancelled.reason}}
        except BaseException as raised:
            if isinstance(raised, _BodyRaisedGreenletExit):
                raised = raised.original
            failure: BaseException = ctx._divergence or raised
            error = error_data(failure)
            if isinstance(failure, NonDeterminismError):
                error.update(kind="nondeterminism", seq=failure.seq,
                             expected=failure.expected, found=failure.found)
            elif isinstance(failure, SerializationError):
                error["kind"] = "serialization"
            if not isinstance(failure, NonDeterminismError):
                error["traceback"] = _traceback_text(failure)
            event_type, data, status, result = ev.WORKFLOW_FAILED, {"error": error}, ev.FAILED, None
        end = ctx._record(ev.completed(time.time(), result, result_text)
                          if status == ev.COMPLETED else ev.NewEvent(event_type, time.time(), data),
                          final=True)
        if status == ev.CONTINUED:
            # Not this run's end: the next run, as the store began it
            # (marked "continued" for _drive, which starts driving it).
            return RunInfo(wid, data["run_id"], info.workflow_type, status, data["args"],
                           None, None, 1, end.at, end.at)
        return RunInfo(wid, info.run_id, info.workflow_type, status, info.args,
                       result, data.get("error"), end.seq, info.created_at, end.at)




class _RunGreenlet(EngineGreenlet):
    """A run's greenlet. What it drives waits in slots, read once as it
    starts; the greenlet has no ``__dict__`` (its context and name are
    slots too) and keeps no argument tuple: gevent's way, a function with
    its arguments, kept both as long as the run (the tuple in the calling
    frame), and a ``__dict__`` for ``_run``, ``name`` and the context: two
    objects per resident run more for the cyclic GC to walk (issue 21)."""

    __slots__ = ("_aion_context", "name", "_runner", "_wid", "_fn", "_info", "_recovering",
                 "_recorder")

    def __init__(self, runner: Runner, wid: str, fn: Callable[..., Any], info: RunInfo,
                 recovering: bool, recorder: Recorder) -> None:
        super().__init__()
        self.name = f"run:{wid}"
        self._aion_context = None
        self._runner, self._wid, self._fn, self._info = runner, wid, fn, info
        self._recovering, self._recorder = recovering, recorder

    @staticmethod
    def _run() -> None:
        # Static: gevent calls self._run(), and a bound method would live in
        # its frame as long as the run.
        me = gevent.getcurrent()
        runner, fn, info, recorder = me._runner, me._fn, me._info, me._recorder
        me._runner = me._fn = me._info = me._recorder = None
        Runner._drive(runner, me._wid, fn, info, me._recovering, recorder)


class _BodyRaisedGreenletExit(Exception):
    """A workflow body raised GreenletExit itself (not a kill): carried to
    the run's failure past the handlers that let a real kill through."""

    def __init__(self, original: BaseException) -> None:
        super().__init__("GreenletExit")
        self.original = original


def _traceback_text(failure: BaseException) -> str:
    """The last frames of a failure's traceback for its WorkflowFailed
    record; its message line from :func:`error_message`, as the user's
    ``__str__`` may raise."""
    try:
        lines = traceback.format_exception(failure)
    except BaseException:  # noqa: B036 - any raise from user code while formatting
        frames = traceback.format_tb(failure.__traceback__)
        lines = ["Traceback (most recent call last):\n", *frames,
                 f"{type(failure).__name__}: {error_message(failure)}\n"]
    return "".join(lines[-8:])
