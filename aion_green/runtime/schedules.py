"""Durable schedules: cron and interval triggers that start workflows.

A schedule is itself a workflow, of the reserved type ``"aion.schedule"``,
known to every engine, under the schedule's id. So it is durable as any
run is: its position, the run it tracks and the fire it holds back are in
its history (and, past a continue-as-new, in the arguments of its next
run), and a restart resumes it by replay. Its loop:

1. take the next fire time after the last one handled (see
   :mod:`aion_green.runtime.triggers`) and wait for it on a durable timer; while
   it tracks a running start, the wait also ends when that run ends;
2. on waking, ``ctx.now()`` is the recorded firing time: later than the
   fire time when no engine ran at the fire time. The fire times that came
   due since the last one handled are filtered by the **catch-up** policy,
   and each one kept is handed to the **overlap** policy;
3. each start is a child run of the schedule with the id
   ``"<schedule id>@<fire time, ISO 8601 UTC>"`` (``nightly@2031-03-01T02:00:00Z``),
   so a fire starts at most one run, across crashes and replays.

Catch-up (fire times that came due while the schedule could not fire):

- ``all``: every due fire time, oldest first;
- ``one``: only the latest due fire time, however late;
- ``skip``: only a fire time that is on time: the latest due one if the
  schedule woke at most :data:`ON_TIME` (60 s) after it; missed ones are
  dropped. In normal running every fire is on time, so the policies differ
  only after downtime (a stopped engine, a long restart).

Overlap (a fire kept while the run the schedule started last still runs):

- ``skip``: the fire is dropped;
- ``buffer_one``: the fire waits and starts as soon as that run ends; at
  most one waits: while one waits, later fires are dropped;
- ``cancel_previous``: the running one is asked to cancel; once it has
  ended, the newest fire kept meanwhile starts;
- ``allow_all``: the fire starts at once; the schedule tracks no run.

Catch-up fires go through the overlap policy too, so with ``catch_up="all"``
the missed fires all start only under ``overlap="allow_all"``; under
``skip`` the oldest starts and the rest are dropped (as in Temporal).

Control (``engine.pause_schedule``, ``resume_schedule``, ``trigger_schedule``,
``update_schedule``): each is a message ``"aion.schedule.control"`` recorded
in the schedule's history (``{"op": "pause", "note"}``, ``{"op": "resume"}``,
``{"op": "trigger"}``, ``{"op": "update", "spec"}``), which the schedule
takes at its next wait, before its next fire:

- ``pause``: it fires nothing until resumed (a run it tracks is still
  watched; a fire held back waits for the resume). A trigger still starts
  a run.
- ``resume``: the fires missed while it was paused are missed fires, as
  after downtime: the **catch-up** policy decides which start (``one``, the
  default: the latest; ``all``: each; ``skip``: none but one on time).
- ``trigger``: one fire now, ``"<schedule id>@<now>"``, through the
  **overlap** policy (skipped under ``skip`` while a run it tracks runs).
- ``update``: the new spec (cron or interval, arguments, policies) from
  now on: the next fire is the new trigger's first after the update, and
  an interval without ``start_at`` counts from the update.

Pause, resume and update then continue as new, so that the current run's
``WorkflowStarted`` holds the spec and the paused state that
``describe_schedule`` shows. The control code is versioned
(``ctx.patched("aion.schedule.control")``): a schedule run recorded by a
release without it replays as it ran, and takes control from its next run
(:func:`control` refuses it meanwhile, saying so).

A schedule's first fire is the first fire time after its creation, or at
or after ``start_at`` when that is later. An interval schedule fires at ``start_at +
k * every`` (k >= 0), or every ``every`` from its creation when
``start_at`` is not given. ``engine.unschedule(id)`` cancels the schedule;
runs it started go on. The schedule answers ``engine.query(id,
"schedule")`` with its next fire time, the run it tracks and the fire that
waits. The history stays bounded: the schedule continues as new every
:data:`_WAKES_PER_RUN` wakes or starts, adopting the run it tracks.

Thread contract: :func:`schedule` and :func:`unschedule` run in the
caller's thread (they use the public Engine API); the schedule workflow
runs on its greenlet (the engine's hub thread), like any workflow.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Union

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core import payloads
from aion_green.core.errors import (
    AionError,
    ConfigurationError,
    Timeout,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from aion_green.core.registry import check_arguments, workflow, workflow_name
from aion_green.core.schedule import ScheduleInfo
from aion_green.runtime.triggers import Cron, Interval
from aion_green.workflows.children import ChildHandle, watch_again

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine, WorkflowHandle
    from aion_green.store import RunInfo
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.schedules")

SCHEDULE_WORKFLOW = "aion.schedule"
# The message that carries pause, resume, trigger and update, and the patch
# (workflows/versioning.py) under which a schedule run takes it.
CONTROL = "aion.schedule.control"
CONTROL_PATCH = "aion.schedule.control"
OVERLAP = ("skip", "buffer_one", "cancel_previous", "allow_all")
CATCH_UP = ("all", "one", "skip")
# How late a fire may be and still count as on time for catch_up="skip".
ON_TIME = timedelta(seconds=60)
# Wakes plus starts after which a schedule continues as new (bounds its history).
_WAKES_PER_RUN = 100
# A fire time counts as due this close to the firing (float timestamps in
# the store round to the microsecond).
_EPSILON = timedelta(milliseconds=1)
_UTC = timezone.utc


def schedule_info(engine: "Engine", info: "RunInfo", wait: float = 2.0) -> ScheduleInfo:
    """The ScheduleInfo of a schedule's run ``info``; its live figures are
    asked for at most ``wait`` seconds (none when 0)."""
    spec, state = current_spec(engine, info)
    status = {ev.RUNNING: "active", ev.CANCELLED: "deleted"}.get(info.status, info.status)
    paused = bool(state.get("paused")) and info.status == ev.RUNNING
    if paused:
        status = "paused"
    live: dict[str, Any] = {}
    if info.status == ev.RUNNING and wait > 0:
        try:
            live = engine.query(info.workflow_id, "schedule", timeout=wait, namespace=info.namespace)
        except (AionError, TypeError):  # not driven here, or not answering now
            live = {}
    return ScheduleInfo(info.workflow_id, spec.get("workflow", ""), list(spec.get("args") or []),
                        spec.get("cron"), spec.get("every"), spec.get("timezone"),
                        spec.get("start_at"), spec.get("overlap", "skip"),
                        spec.get("catch_up", "one"), status, live.get("next"),
                        live.get("running"), live.get("pending"), info.run_id,
                        paused, str(state.get("note") or "") if paused else "")


def current_spec(engine: "Engine", info: "RunInfo") -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec and state a schedule's current run began with: its
    ``WorkflowStarted`` arguments (the run row keeps those of the first
    run; an update or a pause continued as new with new ones)."""
    args = info.args
    if info.run_id and info.head_seq:
        try:
            started = engine.history(info.workflow_id, limit=1, namespace=info.namespace)
        except WorkflowNotFound:
            started = []
        if started and started[0].data.get("run_id") == info.run_id:
            args = started[0].data.get("args") or args
    spec = args[0] if args and isinstance(args[0], dict) else {}
    state = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    return spec, state


def schedules(engine: "Engine", include_deleted: bool, limit: int,
              after_id: Optional[str], namespace: Optional[str] = None) -> list[ScheduleInfo]:
    """``engine.schedules`` (see there)."""
    status = None if include_deleted else ev.RUNNING
    runs = engine.list(status=status, workflow_type=SCHEDULE_WORKFLOW, limit=limit,
                       after_id=after_id, namespace=namespace)
    # One budget for the page: a page of schedules that do not answer (a
    # blocked hub, say) took 2 s each, 200 s for a page of 100.
    deadline = _clock.monotonic() + 2.0
    return [schedule_info(engine, info, max(0.0, deadline - _clock.monotonic())) for info in runs]


def describe_schedule(engine: "Engine", schedule_id: str,
                      namespace: Optional[str] = None) -> ScheduleInfo:
    """``engine.describe_schedule`` (see there)."""
    info = engine.describe(schedule_id, namespace=namespace)
    if info.workflow_type != SCHEDULE_WORKFLOW:
        raise WorkflowNotFound(f"no schedule with id {schedule_id!r}: it names a run of "
                               f"{info.workflow_type}")
    return schedule_info(engine, info)


# -- the public operations (caller's thread) ---------------------------------------------------
def make_spec(wname: str, args: tuple[Any, ...], *, cron: Optional[str], every: Any,
              start_at: Optional[datetime], timezone: Optional[str], overlap: str,
              catch_up: str) -> dict[str, Any]:
    """Check a schedule's arguments; its JSON spec (the schedule run's first argument)."""
    if (cron is None) == (every is None):
        raise ConfigurationError(
            "a schedule needs exactly one trigger: cron='0 * * * *' (a cron expression) or "
            f"every=timedelta(...) (an interval); got cron={cron!r}, every={every!r}")
    if overlap not in OVERLAP:
        raise ConfigurationError(f"unknown overlap policy {overlap!r}; choose one of {', '.join(OVERLAP)}")
    if catch_up not in CATCH_UP:
        raise ConfigurationError(f"unknown catch_up policy {catch_up!r}; choose one of "
                                 f"{', '.join(CATCH_UP)}")
    if start_at is not None and (not isinstance(start_at, datetime) or start_at.tzinfo is None):
        raise ConfigurationError(f"start_at={start_at!r}: pass a timezone-aware datetime "
                                 "(datetime(..., tzinfo=timezone.utc))")
    seconds: Optional[float] = None
    if cron is not None:
        Cron(cron, timezone)  # raises on a bad expression or zone
    else:
        if timezone is not None:
            raise ConfigurationError(f"timezone={timezone!r} applies to cron schedules only; an "
                                     "interval is counted in elapsed time (use start_at to anchor it)")
        if isinstance(every, timedelta):
            seconds = every.total_seconds()
        elif isinstance(every, (int, float)) and not isinstance(every, bool):
            seconds = float(every)
        if seconds is None or not seconds > 0:
            raise ConfigurationError(f"every={every!r}: give a positive timedelta or number of seconds")
    args_value = payloads.encode_args(args, f"the arguments of scheduled workflow {wname}")
    return {"workflow": wname, "args": args_value, "cron": cron, "timezone": timezone, "every": seconds,
            "start_at": None if start_at is None else _iso(start_at),
            "overlap": overlap, "catch_up": catch_up}


def schedule(engine: "Engine", schedule_id: str, fn: Union[str, Callable[..., Any]],
             args: tuple[Any, ...], **options: Any) -> "WorkflowHandle[Any]":
    """``engine.schedule`` (see there)."""
    if not isinstance(schedule_id, str) or not schedule_id:
        raise ConfigurationError(f"a schedule id must be a non-empty string, got {schedule_id!r}")
    namespace = options.pop("namespace", None)
    wname = engine._registry.add(fn) if callable(fn) else workflow_name(fn)
    spec = make_spec(wname, args, **options)
    if not callable(fn) and (engine._registry.has_own()
                             or (engine.driving and not engine._epoch.leased)):
        engine._registry.get(wname)  # fail early for a typo, as start() does
    target = fn if callable(fn) else engine._registry.find(wname)
    if target is not None:
        # Every fire would start a run that fails with a TypeError (issue 16).
        check_arguments(wname, target, args)
    try:
        handle = engine.start(SCHEDULE_WORKFLOW, spec, None, id=schedule_id, namespace=namespace)
    except WorkflowIdConflict:
        info = engine.describe(schedule_id, namespace=namespace)
        if info.workflow_type != SCHEDULE_WORKFLOW:
            raise WorkflowIdConflict(f"id {schedule_id!r} names a run of {info.workflow_type}, not a "
                                     "schedule; give the schedule another id") from None
        raise WorkflowIdConflict(
            f"schedule {schedule_id!r} exists with another spec: {info.args[0]!r}, not {spec!r}. "
            "Pass the same arguments to get it back, or unschedule it and schedule under a new id"
        ) from None
    info = handle.describe()
    if info.finished:
        raise WorkflowIdConflict(f"schedule {schedule_id!r} has ended ({info.status}); a schedule id "
                                 "is not reused: schedule under a new id")
    return handle


def unschedule(engine: "Engine", schedule_id: str, timeout: Optional[float],
               namespace: Optional[str] = None) -> None:
    """``engine.unschedule`` (see there)."""
    info = engine.describe(schedule_id, namespace=namespace)
    if info.workflow_type != SCHEDULE_WORKFLOW:
        raise ConfigurationError(f"{schedule_id!r} is a run of {info.workflow_type}, not a schedule; "
                                 "use engine.cancel() to cancel a workflow")
    if info.status == ev.CANCELLED:
        return  # deleted already: nothing to do
    engine.cancel(schedule_id, "unscheduled", namespace=namespace)
    try:
        engine.result(schedule_id, timeout=timeout, namespace=namespace)
    except WorkflowFailed:  # cancelled, as asked (or failed before): it fires no more
        pass
    except Timeout:
        raise Timeout(f"schedule {schedule_id!r} did not end within {timeout} s; its cancel is "
                      "recorded and it ends when an engine drives it (is one running?)") from None


_UNSET: Any = object()


def control(engine: "Engine", schedule_id: str, op: str, namespace: Optional[str] = None,
            **data: Any) -> int:
    """Record control message ``op`` for schedule ``schedule_id``; its seq.
    Refused, nothing recorded, for an id that names no schedule
    (:class:`WorkflowNotFound`), a deleted one (:class:`WorkflowNotRunning`)
    or a schedule run that predates control (:class:`ConfigurationError`)."""
    info = _schedule_run(engine, schedule_id, namespace)
    if info.finished:
        raise WorkflowNotRunning(f"schedule {schedule_id!r} is deleted ({info.status}); "
                                 f"nothing to {op}: create a schedule under a new id")
    # A run with control records its marker before any command; one without
    # it has recorded a timer or a child first. (Arrivals, a message say, may
    # come before either.)
    history = engine.history(schedule_id, run_id=info.run_id, namespace=namespace)
    marked = any(e.type == ev.PATCH_MARKER and e.data.get("patch") == CONTROL_PATCH
                 for e in history)
    if not marked and any(e.type in (ev.TIMER_STARTED, ev.CHILD_STARTED) for e in history):
        raise ConfigurationError(
            f"schedule {schedule_id!r}: its current run was recorded by a release of aion_green "
            f"without schedule control, and cannot {op}; it gains control when it next continues "
            f"as new (after at most {_WAKES_PER_RUN} fires), or delete it and create it again. "
            "Nothing was recorded")
    # (No run id: a later run of the chain has control whichever run was checked.)
    for attempt in range(20):
        try:
            return engine.signal(schedule_id, CONTROL, {"op": op, **data}, namespace=namespace)
        except WorkflowNotRunning:
            # Sent while its run was continuing as new (nothing recorded):
            # to the next run, unless the schedule itself has ended.
            if attempt == 19 or engine.describe(schedule_id, namespace=namespace).finished:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")  # pragma: no cover


def _schedule_run(engine: "Engine", schedule_id: str,
                  namespace: Optional[str] = None) -> "RunInfo":
    if not isinstance(schedule_id, str) or not schedule_id:
        raise ConfigurationError(f"a schedule id must be a non-empty string, got {schedule_id!r}")
    info = engine.describe(schedule_id, namespace=namespace)
    if info.workflow_type != SCHEDULE_WORKFLOW:
        raise WorkflowNotFound(f"no schedule with id {schedule_id!r}: it names a run of "
                               f"{info.workflow_type}")
    return info


def update_spec(engine: "Engine", schedule_id: str, changes: dict[str, Any],
                namespace: Optional[str] = None) -> dict[str, Any]:
    """The spec of ``schedule_id`` with ``changes`` (the arguments given to
    ``update_schedule``; ``_UNSET`` for those not given), checked as
    ``schedule()`` checks a new one."""
    given = {k: v for k, v in changes.items() if v is not _UNSET}
    if not given:
        raise ConfigurationError(
            f"update_schedule({schedule_id!r}): nothing to change; give one or more of cron, "
            "every, args, start_at, timezone, overlap, catch_up")
    if "cron" in given and "every" in given and given["cron"] is not None and given["every"] is not None:
        raise ConfigurationError("a schedule needs exactly one trigger: give cron= or every=, "
                                 "not both")
    spec, _ = current_spec(engine, _schedule_run(engine, schedule_id, namespace))
    cron, every, timezone_ = spec.get("cron"), spec.get("every"), spec.get("timezone")
    if given.get("cron") is not None:  # the trigger changes kind: the other one goes
        every = None
    if given.get("every") is not None:
        cron, timezone_ = None, None
    cron = given.get("cron", cron)
    every = given.get("every", every)
    timezone_ = given.get("timezone", timezone_)
    start_at = given["start_at"] if "start_at" in given else _parse(spec.get("start_at"))
    args = tuple(given["args"]) if "args" in given else tuple(spec.get("args") or ())
    if "args" in given and not isinstance(given["args"], (list, tuple)):
        raise ConfigurationError(f"update_schedule(args={given['args']!r}): a list of the "
                                 "workflow's arguments")
    wname = spec.get("workflow", "")
    target = engine._registry.find(wname)
    if target is not None and "args" in given:
        check_arguments(wname, target, args)
    return make_spec(wname, args, cron=cron, every=every, start_at=start_at, timezone=timezone_,
                     overlap=given.get("overlap", spec.get("overlap", "skip")),
                     catch_up=given.get("catch_up", spec.get("catch_up", "one")))


# -- the schedule workflow (hub thread) ---------------------------------------------------------
@workflow(name=SCHEDULE_WORKFLOW)
def _run_schedule(ctx: "WorkflowContext", spec: dict[str, Any],
                  state: Optional[dict[str, Any]] = None) -> NoReturn:
    """The schedule's run: ``spec`` from :func:`make_spec`; ``state`` None
    for the first run, then what the previous run handed on."""
    _ScheduleRun(ctx, spec, state).run()


class _ScheduleRun:
    # Invariant: every fire time at or before ``cursor`` has been handled
    # (started, held in ``pending``, or dropped by a policy).
    # Invariant: ``running`` is the run started last, while its end is not
    # recorded here (never set under allow_all); ``pending`` is set only
    # while ``running`` is.

    def __init__(self, ctx: "WorkflowContext", spec: dict[str, Any],
                 state: Optional[dict[str, Any]]) -> None:
        self.ctx = ctx
        self.spec = spec
        self.overlap: str = spec["overlap"]
        if state is None:
            created = ctx.now()
            start_at = _parse(spec["start_at"])
            cursor = created  # the first fire is after the creation ...
            if start_at is not None and start_at >= created:
                cursor = start_at - timedelta(microseconds=1)  # ... or at start_at
            anchor = None
            if spec["every"] is not None:
                anchor = start_at or created + timedelta(seconds=spec["every"])
            state = {"cursor": _iso(cursor),
                     "anchor": None if anchor is None else _iso(anchor), "running": None, "pending": None}
        self.trigger: Union[Cron, Interval] = (
            Cron(spec["cron"], spec["timezone"]) if spec["cron"] is not None
            else Interval(timedelta(seconds=spec["every"]), _parse(state["anchor"])))  # type: ignore[arg-type]
        self.anchor: Optional[str] = state["anchor"]
        self.cursor: datetime = _parse(state["cursor"])  # type: ignore[assignment]
        self.pending: Optional[datetime] = _parse(state["pending"])
        self.running: Optional[ChildHandle[Any]] = None
        self.budget = _WAKES_PER_RUN
        self.paused: bool = bool(state.get("paused"))
        self.note: str = str(state.get("note") or "")
        # Answered from here on, while the marker below is recorded.
        ctx.set_query("schedule", self._describe)
        # Before anything is recorded: a run recorded by a release without
        # control replays (and goes on) without it.
        self.control = ctx.patched(CONTROL_PATCH)
        # Control messages the previous run did not take: one recorded
        # while that run was continuing as new landed in its history after
        # its last look (messages do not carry over a continuation). Read
        # back by a step, so a replay takes the recorded answer.
        self.carried: list[Any] = []
        if self.control and state.get("from_run") is not None:
            self.carried = ctx.step(_untaken_controls(ctx), ctx._key, state["from_run"],
                                    int(state.get("taken") or 0), name="aion.schedule.carry")
        if state["running"] is not None:
            # Tracked by the previous run: adopt it (the same id, type and
            # arguments name the existing run; its end is watched here).
            self.running = self._child(state["running"])
            if self.pending is not None and self.overlap == "cancel_previous":
                self._cancel(self.running)  # asked again: recorded once in that run

    def run(self) -> NoReturn:
        ctx = self.ctx
        if self.carried:
            for payload in self.carried:
                self._apply(payload, settle=False)
            self.budget = 0
            self._maybe_continue()
        while self.control:
            self._turn()
        while True:
            due = self.trigger.next_after(self.cursor)
            if self.running is not None:
                if self._ended_before(due):
                    self.running = None
                    if self.pending is not None:
                        fire, self.pending = self.pending, None
                        self.running = self._start(fire)
                    self._maybe_continue()
                    continue
            else:
                ctx.sleep_until(due)
            self._fire(ctx.now())

    # -- with control (a run that recorded the CONTROL_PATCH marker) ---------------------------
    def _turn(self) -> None:
        """One wait and what it brings: the fire time, the end of the run it
        tracks, or a control message (none of them while paused but the
        last two)."""
        due = None if self.paused else self.trigger.next_after(self.cursor)
        kind, payload = self._wait_any(due)
        if kind == "due":
            self._fire(self.ctx.now())
        elif kind == "ended":
            self.running = None
            if self.pending is not None and not self.paused:
                fire, self.pending = self.pending, None
                self.running = self._start(fire)
            self._maybe_continue()
        else:
            self._apply(payload)

    def _wait_any(self, due: Optional[datetime]) -> tuple[str, Any]:
        """Wait for whichever is recorded first: the fire time ``due`` (if
        any), the tracked run's end (if any), the next control message."""
        ctx = self.ctx
        arrivals = ctx._cursor.arrivals
        index = ctx._received.get(CONTROL, 0)
        message_key = ("message", CONTROL, index)
        running = self.running
        end_key = None if running is None else ("child", running._key)
        if running is not None:
            watch_again(ctx, running._key)

        def first() -> Optional[ev.Event]:
            found = [e for e in (arrivals.get(message_key),
                                 None if end_key is None else arrivals.get(end_key))
                     if e is not None]
            return min(found, key=lambda e: e.seq) if found else None

        def abandon() -> None:
            if running is not None:
                ctx._host.abort_watch(ctx._parent_key, running._key)

        try:
            with contextlib.nullcontext() if due is None else ctx.timeout(due):
                winner = ctx._race(first, abandon)
                ctx._cursor.consume_arrival(winner)
        except Timeout:
            return "due", None
        if winner.type == ev.MESSAGE_RECEIVED:
            ctx._received[CONTROL] = index + 1
            abandon()
            return "control", winner.data.get("payload")
        return "ended", None

    def _apply(self, payload: Any, settle: bool = True) -> None:
        """A control message (see the module docstring); ``settle``: then
        continue as new (pause, resume, update) so that the next run's
        start holds the new spec and state."""
        op = payload.get("op") if isinstance(payload, dict) else None
        ctx = self.ctx
        if op == "trigger":
            self._decide(ctx.now())
            self._maybe_continue()
            return
        if op == "pause":
            self.paused, self.note = True, str(payload.get("note") or "")
        elif op == "resume":
            self.paused, self.note = False, ""
            if self.pending is not None and self.running is None:
                fire, self.pending = self.pending, None
                self.running = self._start(fire)
        elif op == "update" and isinstance(payload.get("spec"), dict):
            spec = payload["spec"]
            self.spec, self.overlap = spec, spec["overlap"]
            self.cursor = ctx.now()  # the next fires are the new trigger's, from now
            self.anchor = None
            if spec["every"] is not None:
                start_at = _parse(spec["start_at"])
                self.anchor = _iso(start_at or ctx.now() + timedelta(seconds=spec["every"]))
                if start_at is not None and start_at >= ctx.now():
                    self.cursor = start_at - timedelta(microseconds=1)
            self.trigger = (Cron(spec["cron"], spec["timezone"]) if spec["cron"] is not None
                            else Interval(timedelta(seconds=spec["every"]),
                                          _parse(self.anchor)))  # type: ignore[arg-type]
            if self.overlap != "buffer_one" and self.overlap != "cancel_previous":
                self.pending = None
        else:
            log.warning("schedule %r: control message %r not understood; ignored",
                        ctx.workflow_id, payload)
            return
        if settle:
            self.budget = 0  # continue as new: the next run begins with this spec and state
            self._maybe_continue()

    # -- without control (runs recorded before it) ----------------------------------------------
    def _ended_before(self, due: datetime) -> bool:
        """Wait for the tracked run's end or the fire time, whichever is recorded first."""
        assert self.running is not None
        try:
            with self.ctx.timeout(due):
                self.running.result()
        except Timeout:
            return False
        except WorkflowFailed:  # failed or cancelled: ended all the same
            pass
        return True

    def _fire(self, now: datetime) -> None:
        """Woken at ``now``: hand the fire times due since the cursor to the policies."""
        catch_up = self.spec["catch_up"]
        latest: Optional[datetime] = None
        fire = self.trigger.next_after(self.cursor)
        while fire <= now + _EPSILON:
            if catch_up == "all":
                self.cursor = fire
                self._decide(fire)
                self._maybe_continue()
            latest = fire
            fire = self.trigger.next_after(fire)
        self.budget -= 1
        if latest is not None and catch_up != "all":
            self.cursor = latest
            if catch_up == "one" or now - latest <= ON_TIME:
                self._decide(latest)
            else:
                log.info("schedule %r: the fire at %s came %s late; catch_up='skip' drops it",
                         self.ctx.workflow_id, _iso(latest), now - latest)
        self._maybe_continue()

    def _decide(self, fire: datetime) -> None:
        """Apply the overlap policy to one fire kept by the catch-up policy."""
        if self.overlap == "allow_all":
            self._start(fire)
        elif self.running is None:
            self.running = self._start(fire)
        elif self.overlap == "buffer_one" and self.pending is None:
            self.pending = fire
        elif self.overlap == "cancel_previous":
            if self.pending is None:
                self._cancel(self.running)
            self.pending = fire  # the newest fire kept replaces an older one
        else:
            log.info("schedule %r: the fire at %s is dropped (overlap=%r; %r runs)",
                     self.ctx.workflow_id, _iso(fire), self.overlap, self.running.workflow_id)

    def _start(self, fire: datetime) -> ChildHandle[Any]:
        self.budget -= 1
        return self._child(f"{self.ctx.workflow_id}@{_fire_id(fire)}")

    def _child(self, child_id: str) -> ChildHandle[Any]:
        return self.ctx.start_child(self.spec["workflow"], *self.spec["args"], id=child_id)

    def _cancel(self, child: ChildHandle[Any]) -> None:
        """Ask the tracked run to cancel. Not recorded here (a side effect,
        asked anew on replay; the child records the request once), as a
        supervisor ends its children."""
        ctx, child_id = self.ctx, child._key

        def done(_seq: Any, error: Optional[BaseException]) -> None:
            if error is not None:
                log.debug("schedule %r: %r not cancelled: %s", ctx.workflow_id, child_id, error)

        ctx._host.route_cancel(child_id, f"schedule {ctx.workflow_id!r}: overlap='cancel_previous'",
                                  done)

    def _maybe_continue(self) -> None:
        if self.budget <= 0:
            ctx = self.ctx
            if self.control and ("message", CONTROL, ctx._received.get(CONTROL, 0)) in \
                    ctx._cursor.arrivals:
                return  # a control message waits: take it first (it would not carry over)
            state: dict[str, Any] = {
                "cursor": _iso(self.cursor), "anchor": self.anchor,
                "running": None if self.running is None else self.running.workflow_id,
                "pending": None if self.pending is None else _iso(self.pending)}
            if self.control:
                state.update(paused=self.paused, note=self.note, from_run=ctx.run_id,
                             taken=ctx._received.get(CONTROL, 0))
            ctx.continue_as_new(self.spec, state)

    def _describe(self) -> dict[str, Any]:
        return {"next": None if self.paused else _iso(self.trigger.next_after(self.cursor)),
                "paused": self.paused,
                "running": None if self.running is None else self.running.workflow_id,
                "pending": None if self.pending is None else _iso(self.pending)}


def _untaken_controls(ctx: "WorkflowContext") -> Callable[[str, str, int], list[Any]]:
    """The step that reads, from the store, the control messages of run
    ``run_id`` past the first ``taken`` (the ones it did not take)."""
    host = ctx._host  # (read when the step runs: a replay takes its recorded result)

    def untaken_controls(workflow_id: str, run_id: str, taken: int) -> list[Any]:
        reader = host._epoch.reader  # type: ignore[attr-defined]  # an EngineHost (runtime/host.py)
        events = reader.call(reader.store.read, workflow_id, 0, None, run_id).result()
        return [e.data.get("payload") for e in events
                if e.type == ev.MESSAGE_RECEIVED and e.data.get("name") == CONTROL
                and e.data.get("index", 0) >= taken]

    return untaken_controls


def _iso(at: datetime) -> str:
    return at.astimezone(_UTC).isoformat()


def _parse(text: Optional[str]) -> Optional[datetime]:
    return None if text is None else datetime.fromisoformat(text)


def _fire_id(fire: datetime) -> str:
    """A fire time in child ids: ``2031-03-01T02:00:00Z`` (microseconds only when there are some)."""
    at = fire.astimezone(_UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond:06d}" if at.microsecond else "") + "Z"
