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

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Union

from aion_green.core import clock as _clock
from aion_green.core import events as ev
from aion_green.core.errors import (
    AionError,
    ConfigurationError,
    Timeout,
    WorkflowFailed,
    WorkflowIdConflict,
    WorkflowNotFound,
)
from aion_green.core.registry import check_arguments, workflow, workflow_name
from aion_green.core.schedule import ScheduleInfo
from aion_green.runtime.triggers import Cron, Interval
from aion_green.workflows.children import ChildHandle

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine, WorkflowHandle
    from aion_green.store import RunInfo
    from aion_green.workflows.context import WorkflowContext

log = logging.getLogger("aion_green.schedules")

SCHEDULE_WORKFLOW = "aion.schedule"
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
    spec = info.args[0] if info.args and isinstance(info.args[0], dict) else {}
    status = {ev.RUNNING: "active", ev.CANCELLED: "deleted"}.get(info.status, info.status)
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
                        live.get("running"), live.get("pending"), info.run_id)


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
    args_value = ev.roundtrip(list(args), f"the arguments of scheduled workflow {wname}")
    return {"workflow": wname, "args": args_value, "cron": cron, "timezone": timezone, "every": seconds,
            "start_at": None if start_at is None else _iso(start_at),
            "overlap": overlap, "catch_up": catch_up}


def schedule(engine: "Engine", schedule_id: str, fn: Union[str, Callable[..., Any]],
             args: tuple[Any, ...], **options: Any) -> "WorkflowHandle":
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
        self.running: Optional[ChildHandle] = None
        self.budget = _WAKES_PER_RUN
        if state["running"] is not None:
            # Tracked by the previous run: adopt it (the same id, type and
            # arguments name the existing run; its end is watched here).
            self.running = self._child(state["running"])
            if self.pending is not None and self.overlap == "cancel_previous":
                self._cancel(self.running)  # asked again: recorded once in that run
        ctx.set_query("schedule", self._describe)

    def run(self) -> NoReturn:
        ctx = self.ctx
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

    def _start(self, fire: datetime) -> ChildHandle:
        self.budget -= 1
        return self._child(f"{self.ctx.workflow_id}@{_fire_id(fire)}")

    def _child(self, child_id: str) -> ChildHandle:
        return self.ctx.start_child(self.spec["workflow"], *self.spec["args"], id=child_id)

    def _cancel(self, child: ChildHandle) -> None:
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
            self.ctx.continue_as_new(self.spec, {
                "cursor": _iso(self.cursor), "anchor": self.anchor,
                "running": None if self.running is None else self.running.workflow_id,
                "pending": None if self.pending is None else _iso(self.pending)})

    def _describe(self) -> dict[str, Any]:
        return {"next": _iso(self.trigger.next_after(self.cursor)),
                "running": None if self.running is None else self.running.workflow_id,
                "pending": None if self.pending is None else _iso(self.pending)}


def _iso(at: datetime) -> str:
    return at.astimezone(_UTC).isoformat()


def _parse(text: Optional[str]) -> Optional[datetime]:
    return None if text is None else datetime.fromisoformat(text)


def _fire_id(fire: datetime) -> str:
    """A fire time in child ids: ``2031-03-01T02:00:00Z`` (microseconds only when there are some)."""
    at = fire.astimezone(_UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond:06d}" if at.microsecond else "") + "Z"
