"""A client of the HTTP API with the :class:`~aion_green.Engine`'s method
names, so code moves between an in-process engine and a remote one by
changing one line::

    engine = aion.Engine("sqlite:///orders.db")                  # in process
    engine = aion_green.transport.client.Client("http://10.0.0.5:8000", token="s3cret")

``start`` takes a workflow's registered name (or a decorated function, whose
name is sent); arguments, payloads and results are JSON. Errors are the
engine's own classes (:class:`aion.WorkflowNotFound`,
:class:`aion.WorkflowFailed`, ...), rebuilt from the API's error codes.

Thread contract: one client may be used from any number of threads and
greenlets at once; each call opens its own connection (with
``gevent.monkey.patch_all()`` the sockets are gevent's and calls do not
block other greenlets).
"""
from __future__ import annotations

import builtins
import http.client
import json
import time
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generic,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    TypeVar,
    Union,
    overload,
)
from urllib.parse import quote, urlencode, urlsplit

from aion_green.core import errors
from aion_green.core.events import COMPLETED, TERMINAL_TYPES, Event, attribute_text
from aion_green.core.registry import workflow_name
from aion_green.core.schedule import CatchUp, Overlap, ScheduleInfo
from aion_green.store import EventPage, GlobalEvent, RunInfo
from aion_green.transport.codec import (
    ERRORS,
    event_from_json,
    format_time,
    global_event_from_json,
    run_from_json,
    schedule_from_json,
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers: the client loads no workflow code
    from typing_extensions import TypeVarTuple, Unpack  # see workflows/steps.py

    from aion_green.workflows.context import WorkflowContext

    _Ts = TypeVarTuple("_Ts")

_R = TypeVar("_R")
_FIRST_BACKOFF = 0.05
# A time filter: an aware datetime or seconds since the epoch.
Moment = Union[datetime, float, int]
# Event types or run statuses to filter by: one name, or several.
Names = Union[None, str, Iterable[str]]


class RemoteHandle(Generic[_R]):
    """A workflow reached through the API, by id (as ``WorkflowHandle``:
    ``run_id`` is the run ``start`` created or found; the methods follow the
    workflow to its last run; ``_R`` is what the workflow function returns,
    ``Any`` for a handle by id or by name)."""

    def __init__(self, client: "Client", workflow_id: str, run_id: Optional[str] = None,
                 namespace: Optional[str] = None) -> None:
        self.engine = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.namespace = namespace or client.namespace or "default"
        # The run's end when start(wait=) saw it: (result, None) or (None,
        # the error result() raises); None until then.
        self._ended: Optional[tuple[Any, Optional[errors.WorkflowFailed]]] = None

    def result(self, timeout: Optional[float] = None) -> _R:
        """``Client.result`` of this workflow (its result, through JSON); at
        once, with no request, when ``start(wait=)`` saw the run end."""
        if self._ended is not None:
            value, error = self._ended
            if error is not None:
                raise error
            ended: _R = value
            return ended
        result: _R = self.engine.result(self.workflow_id, timeout=timeout, namespace=self.namespace)
        return result

    def describe(self) -> RunInfo:
        return self.engine.describe(self.workflow_id, namespace=self.namespace)

    def history(self) -> list[Event]:
        return self.engine.history(self.workflow_id, namespace=self.namespace)

    def __repr__(self) -> str:
        return f"<RemoteHandle {self.workflow_id!r} via {self.engine.url}>"


class Client:
    """The engine's operations through its HTTP API at ``url``. ``namespace``:
    the namespace of every request that names none (the server's
    ``"default"`` if None); each operation also takes ``namespace=``."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 70.0,
                 wait_slice: float = 30.0, max_backoff: float = 5.0,
                 namespace: Optional[str] = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigurationError(f"Client({url!r}): give the API's base URL, "
                                            "like http://127.0.0.1:8000 (or with a path prefix)")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.token = token
        self.namespace = namespace
        self.timeout = timeout
        # A long wait (result) is asked for in slices of this many seconds.
        self.wait_slice = wait_slice
        # Reconnecting an event stream waits 0.05 s, then twice as long each
        # time, at most this many seconds.
        self.max_backoff = max_backoff

    # -- the engine's operations ---------------------------------------------------------------
    @overload
    def start(self, fn: Callable[[WorkflowContext, Unpack[_Ts]], _R], *args: Unpack[_Ts],
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None,
              wait: Optional[float] = None) -> RemoteHandle[_R]: ...
    @overload
    def start(self, fn: str, *args: Any,
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None,
              wait: Optional[float] = None) -> RemoteHandle[Any]: ...

    def start(self, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], _R]], *args: Unpack[_Ts],
              id: Optional[str] = None, namespace: Optional[str] = None,  # noqa: A002
              execution_timeout: Union[None, float, timedelta] = None,
              wait: Optional[float] = None) -> RemoteHandle[Any]:
        """``Engine.start`` through the API (``execution_timeout`` in seconds
        or a timedelta).

        ``wait``: seconds the server may wait, in the same request, for the
        run's end (the API's ``"wait"``; the server caps it at its
        ``max_wait``). A run that ends within them hands its outcome to the
        handle: ``handle.result()`` then answers at once, with the result or
        the error it ended with, and a short workflow costs one round trip,
        not two. A run still going is as without ``wait``."""
        body: dict[str, Any] = {"workflow": workflow_name(fn), "args": list(args)}
        if id is not None:
            body["id"] = id
        if execution_timeout is not None:
            body["execution_timeout"] = (execution_timeout.total_seconds()
                                         if isinstance(execution_timeout, timedelta)
                                         else execution_timeout)
        if wait is not None:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait > 0:
                raise errors.ConfigurationError(
                    f"start(wait=...) must be a number of seconds above 0, got {wait!r}; leave "
                    "it out to return once the run is started")
            body["wait"] = wait
        try:
            reply = self._call("POST", "/v1/workflows", body=body, namespace=namespace,
                               read_timeout=None if wait is None else wait + self.timeout)
        except errors.WorkflowFailed as exc:
            if wait is None:
                raise
            # Started, and ended with an error within the wait (cancelled
            # and timed out included): the handle raises it from result().
            failed: RemoteHandle[Any] = RemoteHandle(self, exc.workflow_id, None, namespace)
            failed._ended = (None, exc)
            return failed
        handle: RemoteHandle[Any] = RemoteHandle(self, reply["workflow_id"], reply.get("run_id"),
                                                 reply.get("namespace") or namespace)
        if reply.get("status") == COMPLETED:  # (only with a wait)
            handle._ended = (reply.get("result"), None)
        return handle

    @overload
    def schedule(self, schedule_id: str, fn: Callable[[WorkflowContext, Unpack[_Ts]], object],
                 *args: Unpack[_Ts], cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> RemoteHandle[Any]: ...
    @overload
    def schedule(self, schedule_id: str, fn: str, *args: Any, cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> RemoteHandle[Any]: ...

    def schedule(self, schedule_id: str, fn: Union[str, Callable[[WorkflowContext, Unpack[_Ts]], object]],
                 *args: Unpack[_Ts], cron: Optional[str] = None,
                 every: Union[None, timedelta, float] = None, start_at: Optional[datetime] = None,
                 timezone: Optional[str] = None, overlap: Overlap = "skip", catch_up: CatchUp = "one",
                 namespace: Optional[str] = None) -> RemoteHandle[Any]:
        """``Engine.schedule`` through the API (``every`` in seconds or a timedelta)."""
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        body: dict[str, Any] = {"schedule_id": schedule_id, "workflow": workflow_name(fn),
                                "args": list(args), "cron": cron, "every": seconds,
                                "start_at": None if start_at is None else start_at.isoformat(),
                                "timezone": timezone, "overlap": overlap, "catch_up": catch_up}
        reply = self._call("POST", "/v1/schedules", body=body, namespace=namespace)
        return RemoteHandle(self, reply["schedule_id"], reply.get("run_id"), namespace)

    def unschedule(self, schedule_id: str, timeout: Optional[float] = 30.0, *,
                   namespace: Optional[str] = None) -> None:
        query = {} if timeout is None else {"timeout": timeout}
        self._call("DELETE", "/v1/schedules/" + quote(schedule_id, safe=""), query,
                   read_timeout=(timeout or 0) + self.timeout, namespace=namespace)

    def schedules(self, *, include_deleted: bool = False, limit: int = 100,
                  after_id: Optional[str] = None,
                  namespace: Optional[str] = None) -> builtins.list[ScheduleInfo]:
        query: dict[str, Any] = {"limit": limit, "include_deleted": str(include_deleted).lower()}
        if after_id is not None:
            query["after"] = after_id
        reply = self._call("GET", "/v1/schedules", query, namespace=namespace)
        return [schedule_from_json(s) for s in reply["schedules"]]

    def describe_schedule(self, schedule_id: str, *,
                          namespace: Optional[str] = None) -> ScheduleInfo:
        return schedule_from_json(self._call("GET", "/v1/schedules/" + quote(schedule_id, safe=""),
                                             namespace=namespace))

    def pause_schedule(self, schedule_id: str, note: str = "", *,
                       namespace: Optional[str] = None) -> None:
        self._call("POST", _schedule_route(schedule_id, "pause"), body={"note": note},
                   namespace=namespace)

    def resume_schedule(self, schedule_id: str, *, namespace: Optional[str] = None) -> None:
        self._call("POST", _schedule_route(schedule_id, "resume"), body={}, namespace=namespace)

    def trigger_schedule(self, schedule_id: str, *, namespace: Optional[str] = None) -> None:
        self._call("POST", _schedule_route(schedule_id, "trigger"), body={}, namespace=namespace)

    def update_schedule(self, schedule_id: str, *, namespace: Optional[str] = None,
                        **changes: Any) -> None:
        """``Engine.update_schedule`` through the API: the same keywords
        (``cron``, ``every`` in seconds or a timedelta, ``args``,
        ``start_at`` an aware datetime, ``timezone``, ``overlap``,
        ``catch_up``); only those given change."""
        unknown = set(changes) - {"cron", "every", "args", "start_at", "timezone", "overlap",
                                  "catch_up"}
        if unknown:
            raise errors.ConfigurationError(
                f"update_schedule: unknown argument(s) {', '.join(sorted(unknown))}; give cron, "
                "every, args, start_at, timezone, overlap or catch_up")
        body = dict(changes)
        if isinstance(body.get("every"), timedelta):
            body["every"] = body["every"].total_seconds()
        if isinstance(body.get("start_at"), datetime):
            body["start_at"] = body["start_at"].isoformat()
        if "args" in body:
            body["args"] = list(body["args"])
        self._call("POST", _schedule_route(schedule_id, "update"), body=body, namespace=namespace)

    def purge(self, older_than: Union[timedelta, float], *, limit: Optional[int] = None,
              namespace: Optional[str] = None) -> int:
        """Delete the runs that ended more than ``older_than`` (a timedelta
        or seconds) ago, at most ``limit``, of every namespace (a client
        made with a namespace: of that one) or of ``namespace``; how many
        (``Engine.purge``)."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        body: dict[str, Any] = {"older_than": seconds}
        if limit is not None:
            body["limit"] = limit
        return int(self._call("POST", "/v1/purge", body=body, namespace=namespace)["purged"])

    def handle(self, workflow_id: str, *, namespace: Optional[str] = None) -> RemoteHandle[Any]:
        return RemoteHandle(self, workflow_id, None, namespace)

    def fork(self, workflow_id: str, from_seq: int, *, id: Optional[str] = None,  # noqa: A002
             run_id: Optional[str] = None, namespace: Optional[str] = None) -> RemoteHandle[Any]:
        """``Engine.fork`` through the API: a new workflow id that replays the
        run's events 2..``from_seq``, then runs on."""
        body: dict[str, Any] = {"from_seq": from_seq}
        if id is not None:
            body["id"] = id
        reply = self._call("POST", *_route(workflow_id, "fork"), body=_name_run(body, run_id),
                           namespace=namespace)
        return RemoteHandle(self, reply["workflow_id"], reply.get("run_id"), reply.get("namespace"))

    def resume(self, workflow_id: str, from_seq: Optional[int] = None, *,
               namespace: Optional[str] = None) -> RemoteHandle[Any]:
        """``Engine.resume`` through the API: a failed or cancelled run again
        in place (its old run archived)."""
        body = {} if from_seq is None else {"from_seq": from_seq}
        reply = self._call("POST", *_route(workflow_id, "resume"), body=body,
                           namespace=namespace)
        return RemoteHandle(self, reply["workflow_id"], reply.get("run_id"), reply.get("namespace"))

    def signal(self, workflow_id: str, name: str, payload: Any = None, *,
               idempotency_key: Optional[str] = None, run_id: Optional[str] = None,
               namespace: Optional[str] = None) -> int:
        body: dict[str, Any] = {"payload": payload}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        _name_run(body, run_id)
        return int(self._call("POST", *_route(workflow_id, "signals", name), body=body,
                              namespace=namespace)["seq"])

    def cancel(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
               namespace: Optional[str] = None) -> None:
        self._call("POST", *_route(workflow_id, "cancel"),
                   body=_name_run({"reason": reason}, run_id), namespace=namespace)

    def terminate(self, workflow_id: str, reason: str = "", *,
                  run_id: Optional[str] = None, namespace: Optional[str] = None) -> None:
        """End the run now, without cleanup (``Engine.terminate``)."""
        self._call("POST", *_route(workflow_id, "terminate"),
                   body=_name_run({"reason": reason}, run_id), namespace=namespace)

    def pause(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
              namespace: Optional[str] = None) -> int:
        """``Engine.pause``: no step, timer or message until unpaused; the seq recorded."""
        return int(self._call("POST", *_route(workflow_id, "pause"),
                              body=_name_run({"reason": reason}, run_id),
                              namespace=namespace)["seq"])

    def unpause(self, workflow_id: str, reason: str = "", *, run_id: Optional[str] = None,
                namespace: Optional[str] = None) -> int:
        """``Engine.unpause``: the run goes on; the seq recorded."""
        return int(self._call("POST", *_route(workflow_id, "unpause"),
                              body=_name_run({"reason": reason}, run_id),
                              namespace=namespace)["seq"])

    def query(self, workflow_id: str, name: str, *args: Any, timeout: float = 10.0,
              run_id: Optional[str] = None, namespace: Optional[str] = None) -> Any:
        return self._call("POST", *_route(workflow_id, "queries", name),
                          body=_name_run({"args": list(args), "timeout": timeout}, run_id),
                          read_timeout=timeout + self.timeout, namespace=namespace)["answer"]

    def result(self, workflow_id: str, timeout: Optional[float] = None,
               give_up_after: float = 60.0, *, run_id: Optional[str] = None,
               namespace: Optional[str] = None) -> Any:
        """Wait for the run's end, asking the server in slices. A server that
        is stopping (503) or gone is asked again, backing off, until the
        timeout, or for ``give_up_after`` seconds without an answer."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, heard = _FIRST_BACKOFF, time.monotonic()
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ask = self.wait_slice if left is None else min(left, self.wait_slice)
            try:
                path, query = _route(workflow_id, "result", timeout=ask)
                _name_run(query, run_id)
                reply = self._call("GET", path, query, read_timeout=ask + self.timeout,
                                   namespace=namespace)
                return reply["result"]
            except errors.Timeout:
                delay, heard = _FIRST_BACKOFF, time.monotonic()
                if left is not None and left <= ask:
                    raise errors.Timeout(
                        f"workflow {workflow_id!r} did not finish within {timeout} s; it goes on "
                        "running: call result() again to keep waiting") from None
            except (errors.StoreUnavailable, errors.EngineClosed):
                # A worker draining answers 503 (Retry-After) and the next one
                # may take a moment to listen (issue 16): a wait outlives both.
                out_of_time = left is not None and left <= delay
                if out_of_time or time.monotonic() - heard + delay > give_up_after:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def describe(self, workflow_id: str, *, run_id: Optional[str] = None,
                 namespace: Optional[str] = None) -> RunInfo:
        path, query = _route(workflow_id)
        return run_from_json(self._call("GET", path, _name_run(query, run_id),
                                        namespace=namespace))

    def list(self, status: Optional[str] = None,
             workflow_type: Union[None, str, Callable[..., Any]] = None,
             limit: int = 100, after_id: Optional[str] = None, *,
             started_after: Optional[Moment] = None, started_before: Optional[Moment] = None,
             parent: Optional[str] = None,
             attributes: Optional[Mapping[str, Any]] = None,
             namespace: Optional[str] = None,
             id_prefix: Optional[str] = None) -> builtins.list[RunInfo]:
        """A page of runs, as ``Engine.list`` (the same filters)."""
        query = _filter_query(status, workflow_type, started_after, started_before, parent,
                              attributes, id_prefix)
        query["limit"] = limit
        if after_id is not None:
            query["after"] = after_id
        return [run_from_json(r)
                for r in self._call("GET", "/v1/workflows", query, namespace=namespace)["runs"]]

    def count(self, status: Optional[str] = None,
              workflow_type: Union[None, str, Callable[..., Any]] = None, *,
              started_after: Optional[Moment] = None, started_before: Optional[Moment] = None,
              parent: Optional[str] = None, attributes: Optional[Mapping[str, Any]] = None,
              namespace: Optional[str] = None, id_prefix: Optional[str] = None) -> int:
        """How many runs ``list`` with these filters finds (``Engine.count``)."""
        query = _filter_query(status, workflow_type, started_after, started_before, parent,
                              attributes, id_prefix)
        return int(self._call("GET", "/v1/workflows/count", query, namespace=namespace)["count"])

    def count_by_status(self, workflow_type: Union[None, str, Callable[..., Any]] = None, *,
                        started_after: Optional[Moment] = None,
                        started_before: Optional[Moment] = None, parent: Optional[str] = None,
                        attributes: Optional[Mapping[str, Any]] = None,
                        namespace: Optional[str] = None,
                        id_prefix: Optional[str] = None) -> dict[str, int]:
        """Those counts per status (``Engine.count_by_status``)."""
        query = _filter_query(None, workflow_type, started_after, started_before, parent,
                              attributes, id_prefix)
        query["by"] = "status"
        counts = self._call("GET", "/v1/workflows/count", query, namespace=namespace)["counts"]
        return {str(status): int(n) for status, n in counts.items()}

    def history(self, workflow_id: str, after_seq: int = 0,
                run_id: Optional[str] = None, *,
                namespace: Optional[str] = None) -> builtins.list[Event]:
        """The events after ``after_seq``, all of them: read a page at a time
        (the server caps what one request holds)."""
        query: dict[str, Any] = {"after": after_seq}
        if run_id is not None:
            query["run_id"] = run_id
        events: builtins.list[Event] = []
        while True:
            page = self._call("GET", *_route(workflow_id, "history", **query),
                              namespace=namespace)
            events.extend(event_from_json(e) for e in page["events"])
            if page.get("next") is None:
                return events
            query["after"] = page["next"]

    def events(self, workflow_id: str, after_seq: Optional[int] = 0, reconnect: bool = True,
               give_up_after: float = 60.0, *,
               namespace: Optional[str] = None) -> Iterator[Event]:
        """The run's events after seq ``after_seq`` (0: from the first; None:
        those recorded from now on) as they are recorded, until its end; with
        ``reconnect``, a cut connection resumes after the last event seen
        (no gap, no duplicate). Reconnects back off (doubling, at most
        ``max_backoff`` seconds apart); after ``give_up_after`` seconds
        without an answer it raises :class:`aion.StoreUnavailable`."""
        run_id: Optional[str] = None
        delay, heard = _FIRST_BACKOFF, time.monotonic()
        while True:
            try:
                for kind, payload in self._stream(workflow_id, after_seq, run_id, namespace):
                    delay, heard = _FIRST_BACKOFF, time.monotonic()
                    if kind == "run":
                        run_id = payload["run_id"]
                        continue
                    if kind == "end":  # the run had ended: nothing follows
                        return
                    event = event_from_json(payload)
                    after_seq = event.seq
                    yield event
                    if event.type in TERMINAL_TYPES:
                        return
                return
            except (OSError, http.client.HTTPException, errors.StoreUnavailable,
                    errors.EngineClosed) as exc:
                if not reconnect:
                    raise
                # A dead port refuses at once: without a pause, 72,000
                # attempts in 3 s (issue 16). A worker draining answers 503.
                delay = self._back_off(delay, heard, give_up_after, exc,
                                       f"the event stream of workflow {workflow_id!r}",
                                       f"events(after_seq={after_seq})")

    def event_page(self, after: Optional[int] = None, *, types: Names = None,
                   statuses: Names = None, limit: int = 100,
                   namespace: Optional[str] = None) -> EventPage:
        """A page of every run's events in commit order, as
        :meth:`aion.Engine.events` gives it (``GET /v1/events/page``)."""
        query: dict[str, Any] = {"limit": limit, **_global_filters(types, statuses)}
        if after is not None:
            query["after"] = after
        page = self._call("GET", "/v1/events/page", query, namespace=namespace)
        return EventPage([global_event_from_json(e) for e in page["events"]], page["next"])

    def global_events(self, after: Optional[int] = None, *, types: Names = None,
                      statuses: Names = None, follow: bool = True,
                      give_up_after: float = 60.0,
                      namespace: Optional[str] = None) -> Iterator[GlobalEvent]:
        """Every run's events after the global cursor ``after`` (0: from the
        first; None: those recorded from now on), in commit order, filtered
        by event ``types`` and the current ``statuses`` of their runs. With
        ``follow``, a stream (``GET /v1/events``) that never ends by itself:
        a cut connection resumes at the last cursor the server sent (no gap,
        no duplicate), backing off; after ``give_up_after`` seconds without
        an answer it raises :class:`aion.StoreUnavailable`. Without, pages
        until the events recorded so far are read."""
        filters = self._in_namespace(_global_filters(types, statuses), namespace) or {}
        if not follow:
            cursor = self.event_page(after, types=types, statuses=statuses, limit=1000,
                                     namespace=namespace)
            while True:
                yield from cursor.events
                if not cursor.events:
                    return
                cursor = self.event_page(cursor.next, types=types, statuses=statuses, limit=1000,
                                         namespace=namespace)
        position = after
        delay, heard = _FIRST_BACKOFF, time.monotonic()
        while True:
            query = dict(filters) if position is None else {**filters, "after": position}
            try:
                for kind, frame_id, payload in self._global_stream(query):
                    delay, heard = _FIRST_BACKOFF, time.monotonic()
                    if frame_id >= 0:
                        position = frame_id
                    if kind != "cursor":
                        yield global_event_from_json(payload)
                raise http.client.IncompleteRead(b"", None)  # (a stream ends only by a cut)
            except (OSError, http.client.HTTPException, errors.StoreUnavailable,
                    errors.EngineClosed) as exc:
                delay = self._back_off(delay, heard, give_up_after, exc, "the event stream",
                                       f"global_events(after={position})")

    def _back_off(self, delay: float, heard: float, give_up_after: float, exc: BaseException,
                  stream: str, resume: str) -> float:
        """A stream's pause before it reconnects (the next one doubles, at
        most ``max_backoff``); :class:`StoreUnavailable` once the server has
        not answered for ``give_up_after`` seconds."""
        silent = time.monotonic() - heard
        if silent + delay > give_up_after:
            raise errors.StoreUnavailable(
                f"{stream} from the aion_green API at {self.url} got no answer for "
                f"{silent:.1f} s ({exc}); gave up after {give_up_after} s: is the server running? "
                f"Call {resume} again to resume") from None
        time.sleep(delay)
        return min(delay * 2, self.max_backoff)

    # -- operations ------------------------------------------------------------------------
    def health(self) -> bool:
        """Whether the server's process serves (``GET /health/live``): True,
        or :class:`aion.StoreUnavailable` when it does not answer."""
        status, _, body = self._plain("/health/live", "application/json")
        return status == 200 and json.loads(body or b"{}").get("ok") is True

    def ready(self) -> dict[str, Any]:
        """Whether the server's engine can take work (``GET /health/ready``):
        ``{"ok": True, "driving", "checks"}``, or ``{"ok": False, "checks",
        "message"}`` naming what is not ready (a draining server, a store
        that does not answer, a lost lease). :class:`aion.StoreUnavailable`
        when the server does not answer at all."""
        status, _, body = self._plain("/health/ready", "application/json")
        reply = json.loads(body or b"{}")
        if status == 200:
            return dict(reply)
        error = reply.get("error") if isinstance(reply, dict) else None
        if status != 503 or not isinstance(error, dict):
            raise _error_from(status, reply)
        return {"ok": False, "checks": error.get("checks", {}), "message": error.get("message")}

    def metrics(self, openmetrics: bool = False) -> str:
        """The server's metrics (``GET /metrics``) in Prometheus's text
        format (OpenMetrics with ``openmetrics``)."""
        accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
        status, _, body = self._plain("/metrics", accept)
        if status >= 400:
            raise _error_from(status, json.loads(body or b"{}"))
        return body.decode("utf-8")

    def _plain(self, path: str, accept: str) -> tuple[int, dict[str, str], bytes]:
        """One GET whose answer may not be JSON: ``(status, headers, body)``."""
        conn = self._connection(None)
        try:
            headers = self._headers(None)
            headers["Accept"] = accept
            conn.request("GET", self._prefix + path, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except OSError as exc:
            raise errors.StoreUnavailable(f"the aion_green API at {self.url} did not answer "
                                          f"({exc}); is the server running?") from None
        finally:
            conn.close()

    def shutdown(self) -> None:
        """Nothing to stop: the engine lives in the server."""

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- HTTP ------------------------------------------------------------------------------
    def _connection(self, read_timeout: Optional[float]) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=read_timeout or self.timeout)

    def _headers(self, body: Optional[bytes]) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _call(self, method: str, path: str, query: Optional[dict[str, Any]] = None,
              body: Any = None, read_timeout: Optional[float] = None,
              namespace: Optional[str] = None) -> Any:
        query = self._in_namespace(query, namespace)
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        target = self._prefix + path + ("?" + urlencode(query) if query else "")
        conn = self._connection(read_timeout)
        try:
            try:
                conn.request(method, target, body=data, headers=self._headers(data))
                response = conn.getresponse()
                raw = response.read()
            except OSError as exc:
                raise errors.StoreUnavailable(
                    f"the aion_green API at {self.url} did not answer ({exc}); is the server "
                    "running? The request may or may not have been carried out") from None
        finally:
            conn.close()
        try:
            reply = json.loads(raw.decode("utf-8")) if raw else {}
        except ValueError:
            raise errors.InternalError(f"the API at {self.url} answered {response.status} with "
                                       f"a body that is not JSON: {raw[:200]!r}") from None
        if response.status >= 400:
            raise _error_from(response.status, reply)
        return reply

    def _in_namespace(self, query: Optional[dict[str, Any]],
                      namespace: Optional[str]) -> Optional[dict[str, Any]]:
        """``query`` naming the request's namespace (every route takes
        ``?namespace=``), when the call or the client names one."""
        namespace = namespace or self.namespace
        if namespace is None:
            return query
        return {**(query or {}), "namespace": namespace}

    def _stream(self, workflow_id: str, after_seq: Optional[int],
                run_id: Optional[str], namespace: Optional[str] = None
                ) -> Iterator[tuple[str, Any]]:
        query: dict[str, Any] = {} if after_seq is None else {"after": after_seq}
        if run_id is not None:
            query["run_id"] = run_id
        path, query = _route(workflow_id, "events", **query)
        query = self._in_namespace(query, namespace) or query
        conn = self._connection(None)
        try:
            headers = self._headers(None)
            headers["Accept"] = "text/event-stream"
            conn.request("GET", self._prefix + path + "?" + urlencode(query),
                         headers=headers)
            response = conn.getresponse()
            for kind, _, payload in _frames(response):
                yield kind, payload
        finally:
            conn.close()

    def _global_stream(self, query: dict[str, Any]) -> Iterator[tuple[str, int, Any]]:
        conn = self._connection(None)
        try:
            headers = self._headers(None)
            headers["Accept"] = "text/event-stream"
            conn.request("GET", self._prefix + "/v1/events?" + urlencode(query), headers=headers)
            yield from _frames(conn.getresponse())
        finally:
            conn.close()


def _frames(response: http.client.HTTPResponse) -> Iterator[tuple[str, int, Any]]:
    """The server-sent events of a stream's answer: ``(event, id, data)``
    (id -1 when a frame names none); an error answer raises its error, a cut
    stream ``IncompleteRead``."""
    if response.status >= 400:
        raise _error_from(response.status, json.loads(response.read() or b"{}"))
    kind, frame_id = "message", -1
    data: list[str] = []
    while True:
        line = response.readline()
        if not line:
            raise http.client.IncompleteRead(b"", None)  # cut before the stream's end
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            if data:
                yield kind, frame_id, json.loads("\n".join(data))
            kind, frame_id, data = "message", -1, []
        elif text.startswith("event:"):
            kind = text[6:].strip()
        elif text.startswith("id:"):
            frame_id = int(text[3:].strip())
        elif text.startswith("data:"):
            data.append(text[5:].strip())


def _route(workflow_id: str, action: Optional[str] = None, name: Optional[str] = None,
           **query: Any) -> tuple[str, dict[str, Any]]:
    """The path and query of a run's route, with the id (and name) in the
    query string: every WSGI server hands the app that undecoded, so any id
    round-trips ("a/result" and "café" too, under wsgiref and gevent.pywsgi)."""
    query["workflow_id"] = workflow_id
    if name is not None:
        query["name"] = name
    return "/v1/workflows" + ("" if action is None else "/" + action), query


def _schedule_route(schedule_id: str, action: str) -> str:
    return "/v1/schedules/" + quote(schedule_id, safe="") + "/" + action


def _filter_query(status: Optional[str], workflow_type: Union[None, str, Callable[..., Any]],
                  started_after: Optional[Moment], started_before: Optional[Moment],
                  parent: Optional[str], attributes: Optional[Mapping[str, Any]],
                  id_prefix: Optional[str] = None) -> dict[str, Any]:
    """The query string of the list and count routes' filters. Attribute
    values go as their text form, which the server matches (as the engine
    does: ``aion_green.runtime.search``)."""
    query: dict[str, Any] = {}
    if status is not None:
        query["status"] = status
    if workflow_type is not None:
        query["type"] = workflow_name(workflow_type)
    if started_after is not None:
        query["started_after"] = format_time(started_after, "started_after")
    if started_before is not None:
        query["started_before"] = format_time(started_before, "started_before")
    if parent is not None:
        query["parent"] = parent
    if id_prefix is not None:
        query["id_prefix"] = id_prefix
    for name, value in (attributes or {}).items():
        if value is None or type(value) not in (str, int, float, bool):
            raise errors.ConfigurationError(
                f"attributes={{{name!r}: {value!r}}}: a filter matches a value (str, int, "
                "float, bool)")
        query[f"attr.{name}"] = attribute_text(value)
    return query


def _global_filters(types: Names, statuses: Names) -> dict[str, str]:
    """The query string of the store-wide stream's filters (comma-separated)."""
    query = {}
    for key, names in (("type", types), ("status", statuses)):
        if names is not None:
            query[key] = names if isinstance(names, str) else ",".join(names)
    return query


def _name_run(fields: dict[str, Any], run_id: Optional[str]) -> dict[str, Any]:
    """``fields`` with ``run_id`` when a request names a run."""
    if run_id is not None:
        fields["run_id"] = run_id
    return fields


# The codes of a run's failed end, and the error result() raises for each.
_FAILED: dict[str, type[errors.WorkflowFailed]] = {
    "workflow_failed": errors.WorkflowFailed, "cancelled": errors.WorkflowCancelled,
    "timed_out": errors.WorkflowTimedOut}


def _error_from(status: int, reply: Any) -> errors.AionError:
    error = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(error, dict):
        return errors.InternalError(f"the API answered HTTP {status} without an error body")
    code, message = error.get("code", "internal"), error.get("message", "")
    if code == "continued_as_new":
        return errors.WorkflowContinuedAsNew(error.get("workflow_id", ""), error.get("run_id", ""),
                                             error.get("next_run_id"))
    if code in _FAILED:
        return _FAILED[code](error.get("workflow_id", ""), error.get("detail") or {})
    cls_ = ERRORS.get(code, (status, errors.AionError))[1]
    named = getattr(errors, str(error.get("type")), None)
    if (isinstance(named, type) and issubclass(named, errors.AionError)
            and not issubclass(named, errors.WorkflowFailed)):
        cls_ = named  # the engine's own class (WorkflowNotRegistered, SerializationError, ...)
    return cls_(message)
