"""The commands of ``aion-green`` but ``worker`` (see :mod:`aion_green.cli`
for their usage and exit codes), over a :class:`Target`.

A command over a store URL is a *passive* engine: it never drives, never
takes the driver lock, fires no timer and drains no inbox, so it cannot
compete with the worker that drives the runs (nor become their driver when
that worker stops). It creates runs, posts signals and cancels for the
driver, and reads. Waiting for an end (``result``, ``start --wait``, ``show
--follow``) reads the run's history and status in short polls, the same
over a store or the HTTP API, so progress is the events as they are
recorded.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from aion_green.cli.worker import is_http, sqlite_file
from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import (
    ConfigurationError,
    QueryFailed,
    Timeout,
    WorkflowCancelled,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowNotRegistered,
    WorkflowNotRunning,
    WorkflowTimedOut,
)
from aion_green.runtime.sharing import Driver, probe_driver
from aion_green.store import RunInfo
from aion_green.transport.codec import run_to_json, schedule_to_json

# How often a wait looks at the run: soon after a change, at most this apart.
_POLL_FIRST, _POLL_MAX = 0.05, 0.25


class Target:
    """What a command talks to: a passive engine over a store URL, or a
    :class:`~aion_green.transport.client.Client` of a worker's HTTP API.
    Both have the Engine's method names."""

    def __init__(self, url: Optional[str], token: Optional[str],
                 namespace: Optional[str] = None) -> None:
        self.url = url
        self.remote = is_http(url)
        self.db_path = sqlite_file(url)
        self.namespace = None if namespace is None else namespaces.check_namespace(
            namespace, "--namespace")
        self.api: Any
        if self.remote:
            from aion_green.transport.client import Client

            self.api = Client(str(url), token=token, namespace=self.namespace)
        else:
            from aion_green.runtime.engine import Engine

            engine = Engine(url, recover=False, passive=True)
            self.api = engine if self.namespace is None else _InNamespace(engine, self.namespace)

    @property
    def where(self) -> str:
        if self.remote:
            return f"the API at {self.url}"
        return self.db_path or str(self.url)

    def driver(self) -> Optional[Driver]:
        """Who drives the runs of a SQLite file; None where a client cannot
        tell (PostgreSQL, where engines share the runs; the HTTP API, whose
        engine drives or forwards)."""
        return None if self.db_path is None else probe_driver(self.db_path)

    def queue(self, workflow_id: str, kind: str, data: dict[str, Any]) -> None:
        """Post a request to the store's inbox for the worker that will
        drive it (none does now); the store checks that the run exists and
        runs, else nothing is posted."""
        engine = self.api
        engine._ensure_started()
        text = ev.encode(data, "the request")
        epoch = engine._epoch
        key = namespaces.qualify(self.namespace, workflow_id)
        epoch.writer.call_or_refuse(epoch.store.post_inbox, key, kind, text, time.time())

    def close(self) -> None:
        self.api.shutdown()


class _InNamespace:
    """An engine whose operations are all in one namespace (``--namespace``):
    each call that takes ``namespace=`` gets it; the rest pass through."""

    _NAMED = frozenset({
        "start", "signal", "cancel", "terminate", "query", "result", "describe", "list", "count",
        "count_by_status", "history", "fork", "resume", "schedule", "unschedule", "schedules",
        "describe_schedule", "handle", "steps_running", "pause_schedule", "resume_schedule",
        "trigger_schedule", "update_schedule", "purge", "events"})

    def __init__(self, engine: Any, namespace: str) -> None:
        self._engine = engine
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if name in self._NAMED:
            return functools.partial(value, namespace=self._namespace)
        return value


# -- arguments -----------------------------------------------------------------------------
def _json_value(text: str, what: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise ConfigurationError(
            f"{what} {text!r} is not a JSON value ({exc}); give each as JSON: 5, true, null, "
            "'\"text\"' (a string in double quotes, inside shell quotes), '{\"k\": 1}'; "
            "nothing was recorded") from None


def _json_values(texts: list[str], what: str) -> list[Any]:
    return [_json_value(t, f"{what} {i}") for i, t in enumerate(texts, 1)]


def _within(timeout: Optional[float], late: str, fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, given up after ``timeout`` seconds with
    :class:`Timeout` saying ``late`` (it may still complete later). The
    command line is a plain program, so the call runs in a native thread."""
    if timeout is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True, name="aion-cli-call")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Timeout(late)
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- output --------------------------------------------------------------------------------
def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _row(event: ev.Event) -> str:
    detail = json.dumps(event.data, separators=(",", ":"))
    return f"{event.seq:>5}  {_when(event.at):<23}  {event.type:<18}  {detail[:100]}"


_HEADER = f"{'seq':>5}  {'time (UTC)':<23}  {'type':<18}  detail"


def _outcome_json(info: RunInfo) -> dict[str, Any]:
    return {"workflow_id": info.workflow_id, "run_id": info.run_id, "status": info.status,
            "result": info.result, "error": info.error}


def _raise_outcome(info: RunInfo) -> None:
    if info.status == ev.COMPLETED:
        return
    error = info.error or {"type": info.status, "message": info.status}
    cls = {ev.CANCELLED: WorkflowCancelled, ev.TIMED_OUT: WorkflowTimedOut}.get(
        info.status, WorkflowFailed)
    raise cls(info.workflow_id, error)


# -- waiting for an end --------------------------------------------------------------------
def follow(api: Any, workflow_id: str, after: int, timeout: Optional[float],
           on_event: Callable[[ev.Event], None], on_new_run: Callable[[str], None]) -> RunInfo:
    """Report the run's events after seq ``after`` as they are recorded,
    until it ends; its final state. A run that continues as new is followed
    into its next run. Raises :class:`Timeout` after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    run_id = api.describe(workflow_id).run_id
    pause = _POLL_FIRST
    while True:
        batch = api.history(workflow_id, after, run_id)
        next_run = None
        for event in batch:
            on_event(event)
            after = event.seq
            if event.type == ev.WORKFLOW_CONTINUED_AS_NEW:
                next_run = event.data.get("run_id")
        info = api.describe(workflow_id)
        if next_run is None and info.run_id != run_id and not batch:
            next_run = info.run_id  # an old history without the next run's id
        if next_run is not None:
            # Run by run, through the chain: a quick one in the middle is shown too.
            run_id, after, pause = next_run, 0, _POLL_FIRST
            on_new_run(run_id)
            continue
        if info.finished:
            for event in api.history(workflow_id, after, run_id):
                on_event(event)
            return info
        if deadline is not None and time.monotonic() >= deadline:
            raise Timeout(f"workflow {workflow_id!r} did not finish within {timeout} s; it goes "
                          f"on running: `aion-green result {workflow_id}` waits again")
        pause = _POLL_FIRST if batch else min(pause * 1.5, _POLL_MAX)
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        time.sleep(pause)


def _finish(target: Target, workflow_id: str, after: int, timeout: Optional[float],
            out: Any) -> int:
    """Wait for the end with progress on stderr; print and exit by outcome."""
    info = follow(target.api, workflow_id, after, timeout,
                  lambda e: out.progress(_row(e)),
                  lambda run: out.progress(f"{workflow_id} continued as new: run {run}"))
    doc = _outcome_json(info)
    if info.status == ev.COMPLETED:
        out.emit(doc, json.dumps(info.result))
        return 0
    out.emit(doc)
    _raise_outcome(info)
    return 0  # pragma: no cover - raised above


# -- the commands ----------------------------------------------------------------------------
def start(target: Target, args: argparse.Namespace, out: Any) -> int:
    values = _json_values(args.args, "argument")
    wtype = args.workflow_type
    driver = target.driver()
    if driver is not None and driver.types is not None and wtype not in driver.types:
        raise WorkflowNotRegistered(
            f"workflow type {wtype!r} is not registered with {driver.name}, which drives "
            f"{target.where} (it knows: {', '.join(driver.types) or 'none'}); check the name, or "
            "run a worker that imports the module defining it. Nothing was recorded")
    bound = {} if args.execution_timeout is None else {"execution_timeout": args.execution_timeout}
    handle = target.api.start(wtype, *values, id=args.workflow_id, **bound)
    wid = handle.workflow_id
    queued = driver is not None and not driver.held
    if queued:
        out.progress(f"note: no worker drives {target.where} now; run {wid} begins when one that "
                     f"knows {wtype} starts (aion-green worker MODULE)")
    if not args.wait:
        out.emit({"workflow_id": wid, "run_id": handle.run_id, "queued": queued}, wid)
        return 0
    out.progress(f"started {wid} ({wtype}); waiting for its end")
    return _finish(target, wid, 0, args.timeout, out)


def signal(target: Target, args: argparse.Namespace, out: Any) -> int:
    wid, name = args.workflow_id, args.name
    payload = None if args.payload is None else _json_value(args.payload, "the payload")
    driver = target.driver()
    if driver is not None and not driver.held:
        _require_run(target, wid, args.run_id, f"message {name!r}")
        data: dict[str, Any] = {"name": name, "payload": payload}
        if args.key is not None:
            data["dedup"] = f"signal/{args.key}"
        target.queue(wid, "message", data)
        out.emit({"workflow_id": wid, "name": name, "seq": None, "queued": True},
                 f"message {name!r} for {wid} queued: no worker drives {target.where} now; it is "
                 "recorded when one starts")
        return 0
    seq = _within(args.timeout, _late(f"message {name!r} for {wid}", args.timeout),
                  target.api.signal, wid, name, payload, idempotency_key=args.key,
                  **_run_kw(args))
    out.emit({"workflow_id": wid, "name": name, "seq": seq, "queued": False},
             f"message {name!r} recorded in {wid} at seq {seq}")
    return 0


def _run_kw(args: argparse.Namespace) -> dict[str, Any]:
    run_id = getattr(args, "run_id", None)
    return {} if run_id is None else {"run_id": run_id}


def _require_run(target: Target, wid: str, run_id: Optional[str], what: str) -> None:
    """A request queued for the worker (or refused here) that names a run:
    the run must be the workflow's current one, as the engine checks."""
    if run_id is None:
        return
    current = target.api.describe(wid)
    if current.run_id != run_id:
        earlier = target.api.describe(wid, run_id=run_id)  # not found: exit 1
        raise WorkflowNotRunning(
            f"{what} for run {run_id!r} of workflow {wid!r}: that run "
            f"{'continued as new' if earlier.status == ev.CONTINUED else 'ended'}; the current "
            f"run is {current.run_id!r}. Nothing was recorded")


def _result_of_run(target: Target, wid: str, run_id: str, timeout: Optional[float],
                   out: Any) -> int:
    """``result ID --run RUN_ID``: that run's end alone."""
    info = target.api.describe(wid, run_id=run_id)
    if not info.finished:
        out.progress(f"waiting for run {run_id} of {wid} ({info.workflow_type}) to end")
    try:
        value = target.api.result(wid, timeout=timeout, run_id=run_id)
    except WorkflowContinuedAsNew as exc:
        out.emit({"workflow_id": wid, "run_id": run_id, "status": ev.CONTINUED,
                  "next_run_id": exc.next_run_id})
        raise
    except WorkflowFailed:
        out.emit(_outcome_json(target.api.describe(wid, run_id=run_id)))
        raise
    out.emit({"workflow_id": wid, "run_id": run_id, "status": ev.COMPLETED, "result": value,
              "error": None}, json.dumps(value))
    return 0


def _late(what: str, timeout: Optional[float]) -> str:
    return (f"{what} was sent but not recorded within {timeout} s (is the worker stopped?); "
            "it is recorded once a worker drives the store: look with `aion-green show`")


def cancel(target: Target, args: argparse.Namespace, out: Any) -> int:
    wid = args.workflow_id
    driver = target.driver()
    if driver is not None and not driver.held:
        _require_run(target, wid, args.run_id, "the cancel request")
        target.queue(wid, "cancel", {"reason": args.reason})
        out.emit({"workflow_id": wid, "cancel_requested": True, "queued": True},
                 f"cancel of {wid} queued: no worker drives {target.where} now; it is recorded "
                 "when one starts")
        return 0
    _within(args.timeout, _late(f"the cancel of {wid}", args.timeout), target.api.cancel, wid,
            args.reason, **_run_kw(args))
    out.emit({"workflow_id": wid, "cancel_requested": True, "queued": False},
             f"cancel of {wid} recorded; `aion-green result {wid}` waits for its end")
    return 0


def terminate(target: Target, args: argparse.Namespace, out: Any) -> int:
    wid = args.workflow_id
    # No queueing: with no worker alive the end is recorded here, at once
    # (a worker that starts later finds the run ended).
    _within(args.timeout, _late(f"the end of {wid}", args.timeout), target.api.terminate, wid,
            args.reason, **_run_kw(args))
    out.emit({"workflow_id": wid, "terminated": True},
             f"{wid} terminated: recorded as cancelled (Terminated); none of its code ran again")
    return 0


def pause(target: Target, args: argparse.Namespace, out: Any) -> int:
    """``pause`` and ``unpause`` (``args.command`` says which)."""
    wid, paused = args.workflow_id, args.command == "pause"
    driver = target.driver()
    if driver is not None and not driver.held:
        _require_run(target, wid, args.run_id, f"the {args.command}")
        target.queue(wid, args.command, {"reason": args.reason,
                                         "dedup": f"{args.command}/{uuid.uuid4().hex}"})
        out.emit({"workflow_id": wid, "paused": paused, "seq": None, "queued": True},
                 f"{args.command} of {wid} queued: no worker drives {target.where} now; it is "
                 "recorded when one starts")
        return 0
    call = target.api.pause if paused else target.api.unpause
    seq = _within(args.timeout, _late(f"the {args.command} of {wid}", args.timeout), call, wid,
                  args.reason, **_run_kw(args))
    out.emit({"workflow_id": wid, "paused": paused, "seq": seq, "queued": False},
             f"{wid} {'paused' if paused else 'unpaused'} (recorded at seq {seq})")
    return 0


def query(target: Target, args: argparse.Namespace, out: Any) -> int:
    wid, name = args.workflow_id, args.name
    values = _json_values(args.args, "argument")
    driver = target.driver()
    if driver is not None:
        _require_run(target, wid, args.run_id, f"query {name!r}")
        info = target.api.describe(wid)
        if info.finished:
            raise WorkflowNotRunning(f"workflow {wid!r} has {info.status}; a finished run answers "
                                     "no queries")
        where = f"--db {driver.http}" if driver.http else "--db http://HOST:PORT"
        how = (f"ask through its HTTP API: aion-green {where} query {wid} {name} ..."
               + ("" if driver.http else " (start the worker with --http HOST:PORT)"))
        if driver.held:
            raise QueryFailed(f"query {name!r} to workflow {wid!r}: the runs of {target.where} are "
                              f"driven by {driver.name}, and only the live run answers queries; {how}")
        raise QueryFailed(f"query {name!r} to workflow {wid!r}: no worker drives {target.where}, "
                          "so no run is live to answer; start `aion-green worker MODULE --http "
                          "HOST:PORT` and ask through it")
    answer = target.api.query(wid, name, *values, timeout=args.timeout, **_run_kw(args))
    out.emit({"workflow_id": wid, "name": name, "answer": answer}, json.dumps(answer))
    return 0


def result(target: Target, args: argparse.Namespace, out: Any) -> int:
    if args.run_id is not None:
        return _result_of_run(target, args.workflow_id, args.run_id, args.timeout, out)
    info = target.api.describe(args.workflow_id)
    if not info.finished:
        out.progress(f"waiting for {args.workflow_id} ({info.workflow_type}) to end")
    return _finish(target, args.workflow_id, info.head_seq, args.timeout, out)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter arguments of ``list`` and ``count`` for the engine or the client."""
    filters: dict[str, Any] = {"workflow_type": args.workflow_type,
                               "started_after": args.started_after,
                               "started_before": args.started_before, "parent": args.parent,
                               "id_prefix": args.id_prefix}
    if args.attributes:
        filters["attributes"] = dict(args.attributes)
    return filters


def listing(target: Target, args: argparse.Namespace, out: Any) -> int:
    runs = target.api.list(status=args.status, limit=args.limit, after_id=args.after,
                           **_filters(args))
    out.emit([run_to_json(run) for run in runs])
    out.line(f"{'workflow id':<36} {'type':<30} {'status':<10} {'events':>6}  updated")
    for run in runs:
        out.line(f"{run.workflow_id:<36} {run.workflow_type:<30} {run.status:<10} "
                 f"{run.head_seq:>6}  {_when(run.updated_at)}")
    if len(runs) == args.limit:
        out.progress(f"(the first {args.limit}; the next page: --after {runs[-1].workflow_id})")
    return 0


def count(target: Target, args: argparse.Namespace, out: Any) -> int:
    if not args.by_status:
        n = target.api.count(status=args.status, **_filters(args))
        out.emit({"count": n}, str(n))
        return 0
    if args.status is not None:
        raise ConfigurationError("count --by-status counts every status: leave out --status")
    counts = target.api.count_by_status(**_filters(args))
    out.emit({"counts": counts})
    for status, n in counts.items():
        out.line(f"{status:<10} {n:>8}")
    return 0


def show(target: Target, args: argparse.Namespace, out: Any) -> int:
    wid = args.workflow_id
    info = target.api.describe(wid)
    history = target.api.history(wid, 0, args.run_id)
    if args.run_id is not None and args.run_id != info.run_id:
        args.follow = False  # an earlier run has ended
    driver = target.driver()
    if (info.unrunnable is None and not info.finished and driver is not None
            and driver.types is not None and info.workflow_type not in driver.types):
        # The worker that drives the file published its types: this run
        # waits for one that knows its type (issue 16).
        info = dataclasses.replace(info, unrunnable=(
            f"workflow type {info.workflow_type!r} is not registered with {driver.name}, which "
            f"drives {target.where}; run a worker that knows it, or end the run with "
            f"`aion-green terminate {wid}`"))
    out.line(f"{info.workflow_id}  {info.workflow_type}{tuple(info.args)!r}  {info.status}"
             + ("  (paused)" if info.paused else ""))
    if info.execution_deadline is not None and not info.finished:
        out.line(f"execution deadline: {ev.Event(0, '', info.execution_deadline).time.isoformat()}")
    if info.unrunnable is not None:
        out.line(f"not running: {info.unrunnable}")
    if args.run_id is None or args.run_id == info.run_id:
        if info.status == ev.COMPLETED:
            out.line(f"result: {json.dumps(info.result)}")
        elif info.error:
            out.line(f"error: {info.error.get('type')}: {info.error.get('message')}")
    out.line(_HEADER)
    for event in history:
        out.line(_row(event))
    if args.follow and not info.finished:
        def new_run(run: str) -> None:
            history.clear()
            out.line(f"continued as new: run {run}")
            out.line(_HEADER)

        def new_event(event: ev.Event) -> None:
            history.append(event)
            out.line(_row(event))

        info = follow(target.api, wid, history[-1].seq if history else 0, args.timeout,
                      new_event, new_run)
        if info.status == ev.COMPLETED:
            out.line(f"result: {json.dumps(info.result)}")
    out.emit({"run": run_to_json(info), "history": [e.to_json() for e in history]})
    if args.follow:
        _raise_outcome(info)
    return 0


def fork(target: Target, args: argparse.Namespace, out: Any) -> int:
    handle = target.api.fork(args.workflow_id, args.from_seq, id=args.new_id, run_id=args.run_id)
    return _rewound(target, handle.workflow_id, f"forked from {args.workflow_id}", args, out)


def resume(target: Target, args: argparse.Namespace, out: Any) -> int:
    handle = target.api.resume(args.workflow_id, args.from_seq)
    return _rewound(target, handle.workflow_id, "resumed", args, out)


def _rewound(target: Target, wid: str, how: str, args: argparse.Namespace, out: Any) -> int:
    """The new run replays the copied events, then goes on live."""
    info = target.api.describe(wid)
    driver = target.driver()
    queued = driver is not None and not driver.held
    if queued:
        out.progress(f"note: no worker drives {target.where} now; {wid} goes on when one that "
                     f"knows {info.workflow_type} starts")
    if not args.wait:
        out.emit({"workflow_id": wid, "run_id": info.run_id, "replays_to": info.head_seq,
                  "queued": queued},
                 f"{wid} ({how}: replays events up to seq {info.head_seq}, then runs on)")
        return 0
    out.progress(f"{wid} {how}; replays events up to seq {info.head_seq}; waiting for its end")
    return _finish(target, wid, info.head_seq, args.timeout, out)


def schedule(target: Target, args: argparse.Namespace, out: Any) -> int:
    action = args.schedule_command
    if action == "create":
        start_at = None
        if args.start_at is not None:
            try:
                start_at = datetime.fromisoformat(args.start_at.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigurationError(f"--start-at {args.start_at!r}: give an ISO 8601 time "
                                         "with a zone, like 2031-03-01T02:00:00Z") from None
        handle = target.api.schedule(
            args.schedule_id, args.workflow_type, *_json_values(args.args, "argument"),
            cron=args.cron, every=args.every, start_at=start_at, timezone=args.timezone,
            overlap=args.overlap, catch_up=args.catch_up)
        out.emit({"schedule_id": args.schedule_id, "run_id": handle.run_id},
                 f"schedule {args.schedule_id} created")
        return 0
    if action == "list":
        found = target.api.schedules(include_deleted=args.include_deleted, limit=args.limit,
                                     after_id=args.after)
        out.emit([schedule_to_json(s) for s in found])
        out.line(f"{'schedule id':<30} {'workflow':<28} {'trigger':<18} {'status':<8} next fire")
        for s in found:
            when = s.cron if s.cron is not None else f"every {s.every:g} s"
            out.line(f"{s.schedule_id:<30} {s.workflow:<28} {when:<18} {s.status:<8} "
                     f"{s.next_fire or '-'}")
        if len(found) == args.limit:
            out.progress(f"(the first {args.limit}; the next page: --after {found[-1].schedule_id})")
        return 0
    if action == "show":
        info = target.api.describe_schedule(args.schedule_id)
        doc = schedule_to_json(info)
        out.emit(doc, "\n".join(f"{k}: {json.dumps(v)}" for k, v in doc.items()))
        return 0
    if action in _CONTROLS:
        return _control_schedule(target, action, args, out)
    target.api.describe_schedule(args.schedule_id)  # exit 1 when the id names no schedule
    target.api.unschedule(args.schedule_id, timeout=args.timeout)
    out.emit({"schedule_id": args.schedule_id, "deleted": True},
             f"schedule {args.schedule_id} deleted; the runs it started go on")
    return 0


_CONTROLS = ("pause", "resume", "trigger", "update")


def _control_schedule(target: Target, action: str, args: argparse.Namespace, out: Any) -> int:
    """``schedule pause|resume|trigger|update ID``: recorded in the schedule's
    history once this returns (the schedule takes it at its next wait)."""
    sid = args.schedule_id
    if action == "pause":
        target.api.pause_schedule(sid, note=args.note)
        out.emit({"schedule_id": sid, "paused": True}, f"schedule {sid} paused")
    elif action == "resume":
        target.api.resume_schedule(sid)
        out.emit({"schedule_id": sid, "paused": False}, f"schedule {sid} resumed")
    elif action == "trigger":
        target.api.trigger_schedule(sid)
        out.emit({"schedule_id": sid, "triggered": True}, f"schedule {sid} triggered")
    else:
        changes: dict[str, Any] = {key: getattr(args, key) for key in
                                   ("cron", "every", "timezone", "overlap", "catch_up")
                                   if getattr(args, key) is not None}
        if args.start_at is not None:
            changes["start_at"] = datetime.fromisoformat(args.start_at.replace("Z", "+00:00"))
        if args.args is not None:
            changes["args"] = _json_values(args.args, "argument")
        if not changes:
            raise ConfigurationError(
                f"schedule update {sid}: nothing to change; give --cron, --every, --args, "
                "--start-at, --timezone, --overlap or --catch-up")
        target.api.update_schedule(sid, **changes)
        out.emit({"schedule_id": sid, "updated": True}, f"schedule {sid} updated")
    return 0


def purge(target: Target, args: argparse.Namespace, out: Any) -> int:
    purged = target.api.purge(args.older_than, limit=args.limit)
    out.emit({"purged": purged, "older_than": args.older_than},
             f"purged {purged} run(s) that ended more than {args.older_than:g} s ago")
    return 0


HANDLERS: dict[str, Callable[[Target, argparse.Namespace, Any], int]] = {
    "start": start, "signal": signal, "cancel": cancel, "terminate": terminate, "query": query,
    "pause": pause, "unpause": pause,
    "result": result, "list": listing, "count": count, "show": show, "fork": fork,
    "resume": resume, "schedule": schedule, "purge": purge,
}
