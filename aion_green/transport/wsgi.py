"""The engine's operations over HTTP/JSON, as a plain WSGI application.

Mount it in any WSGI server, or inside Flask with werkzeug's
``DispatcherMiddleware`` (see ``examples/flask_app.py``)::

    api = aion_green.transport.wsgi.WSGIApp(engine, token="s3cret")

Routes (ids are percent-encoded path segments; a workflow id may hold "/"):

=======  ===========================================  ==========================================
GET      /healthz                                     ``{"ok": true}``, never authenticated
POST     /v1/workflows                                start: ``{"workflow", "args", "id"}``; the
                                                      ``Idempotency-Key`` header may give the id
GET      /v1/workflows?status=&type=&limit=&after=    list, a page: ``{"runs", "next"}``
GET      /v1/workflows/ID                             describe
GET      /v1/workflows/ID/result?timeout=S            wait for the end (at most ``max_wait``)
GET      /v1/workflows/ID/history?after=&run_id=      the recorded events
GET      /v1/workflows/ID/events?after=&run_id=       the events as a stream (server-sent
                                                      events, resumable with ``Last-Event-ID``)
POST     /v1/workflows/ID/signals/NAME                ``{"payload", "idempotency_key"}``
POST     /v1/workflows/ID/queries/NAME                ``{"args", "timeout"}``
POST     /v1/workflows/ID/cancel                      ``{"reason"}``
POST     /v1/workflows/ID/terminate                   ``{"reason"}``: ends it now, no cleanup
=======  ===========================================  ==========================================

Every error is one JSON body, ``{"error": {"code", "message", ...}}``, with
the status of its code (:data:`aion_green.transport.codec.ERRORS`): bad
input is a 4xx that says what was wrong, before anything is recorded.

Thread contract: one app serves any number of concurrent requests, from
threads or greenlets (the engine's public methods are safe from both); a
request blocks its own thread or greenlet only.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, Callable, Iterable, Iterator, Optional
from urllib.parse import parse_qs, unquote

import gevent
from greenlet import getcurrent

from .. import events as ev
from ..errors import AionError, WorkflowArgumentsInvalid, WorkflowCancelled, WorkflowFailed
from .codec import ERRORS, code_of, event_to_json, run_to_json

log = logging.getLogger("aion_green.transport")

StartResponse = Callable[..., Any]
_JSON = [("Content-Type", "application/json; charset=utf-8")]
_ACTIONS = ("result", "history", "events", "cancel", "terminate")
_NAMED = ("signals", "queries")


class _Reply(Exception):
    """An error reply: a code of the taxonomy and what to tell the caller."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class WSGIApp:
    """The HTTP/JSON API of one :class:`~aion_green.Engine`.

    ``token``: when set, every route but ``/healthz`` wants
    ``Authorization: Bearer <token>``. ``max_body``: the largest request
    body accepted, in bytes. ``max_wait``: the longest a request waits (for
    a result, a query); a client waits longer by asking again.
    ``stream_poll``: the longest pause between two looks at a streamed run.
    """

    def __init__(self, engine: Any, token: Optional[str] = None, max_body: int = 1 << 20,
                 max_wait: float = 60.0, stream_poll: float = 0.5,
                 heartbeat: float = 15.0) -> None:
        self.engine = engine
        self.token = token
        self.max_body = max_body
        self.max_wait = max_wait
        self.stream_poll = stream_poll
        self.heartbeat = heartbeat

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            method = environ.get("REQUEST_METHOD", "GET").upper()
            segments = _segments(environ)
            if segments == ["healthz"]:
                return _reply(start_response, 200, {"ok": True})
            self._authenticate(environ)
            return self._route(method, segments, environ, start_response)
        except _Reply as reply:
            return _error(start_response, reply.code, reply.message, **reply.extra)
        except (WorkflowCancelled, WorkflowFailed) as failure:
            return _error(start_response, code_of(failure), str(failure),
                          workflow_id=failure.workflow_id, detail=failure.error)
        except (AionError, ValueError, TypeError) as exc:
            return _error(start_response, code_of(exc), str(exc), type=type(exc).__name__)
        except Exception:
            log.exception("HTTP API: an unexpected error; this is a bug in aion_green")
            return _error(start_response, "internal",
                          "an unexpected error occurred (logged by the server); nothing of "
                          "this request may have been recorded, or all of it: look before retrying")

    def _authenticate(self, environ: dict[str, Any]) -> None:
        if self.token is None:
            return
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self.token.encode()):
            raise _Reply("unauthenticated", "this API wants an 'Authorization: Bearer <token>' "
                         "header with the server's token" + ("" if header else "; none was sent"))

    def _route(self, method: str, segments: list[str], environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes]:
        if len(segments) < 2 or segments[:2] != ["v1", "workflows"]:
            raise _Reply("not_found", f"no route {'/' + '/'.join(segments)!r}; the API lives "
                         "under /v1/workflows (and /healthz)")
        rest = segments[2:]
        if not rest:
            if method == "POST":
                return _reply(start_response, 200, self._start(environ))
            if method == "GET":
                return _reply(start_response, 200, self._list(environ))
            raise _not_allowed(method, "GET, POST")
        # Matched from the right: behind a server that hands over only the
        # decoded path, an id's "/" splits it into several segments.
        action: Optional[str] = None
        name: Optional[str] = None
        if len(rest) >= 2 and rest[-1] in _ACTIONS:
            action, rest = rest[-1], rest[:-1]
        elif len(rest) >= 3 and rest[-2] in _NAMED:
            action, name, rest = rest[-2], rest[-1], rest[:-2]
        wid = "/".join(rest)
        if not wid:
            raise _Reply("invalid_argument", "the workflow id in the path is empty")
        expected = "POST" if action in ("cancel", "terminate", "signals", "queries") else "GET"
        if method != expected:
            raise _not_allowed(method, expected)
        if action is None:
            return _reply(start_response, 200, run_to_json(self.engine.describe(wid)))
        if action == "result":
            return _reply(start_response, 200, self._result(wid, environ))
        if action == "history":
            query = _query(environ, {"after", "run_id"})
            events = self.engine.history(wid, _int(query, "after", 0), query.get("run_id"))
            return _reply(start_response, 200, {"events": [event_to_json(e) for e in events]})
        if action == "events":
            return self._stream(wid, environ, start_response)
        if action == "cancel":
            body = _body(environ, self.max_body, {"reason"})
            self.engine.cancel(wid, _str(body, "reason", ""))
            return _reply(start_response, 200, {"workflow_id": wid, "cancel_requested": True})
        if action == "terminate":
            body = _body(environ, self.max_body, {"reason"})
            self.engine.terminate(wid, _str(body, "reason", ""))
            return _reply(start_response, 200, {"workflow_id": wid, "terminated": True})
        assert name is not None
        if action == "signals":
            body = _body(environ, self.max_body, {"payload", "idempotency_key"})
            key = _str(body, "idempotency_key", None) or environ.get("HTTP_IDEMPOTENCY_KEY") or None
            seq = self.engine.signal(wid, name, body.get("payload"), idempotency_key=key)
            return _reply(start_response, 200, {"workflow_id": wid, "seq": seq})
        body = _body(environ, self.max_body, {"args", "timeout"})
        args = _list(body, "args")
        timeout = min(_number(body, "timeout", 10.0), self.max_wait)
        answer = self.engine.query(wid, name, *args, timeout=timeout)
        return _reply(start_response, 200, {"workflow_id": wid, "answer": answer})

    # -- handlers --------------------------------------------------------------------------
    def _start(self, environ: dict[str, Any]) -> dict[str, Any]:
        body = _body(environ, self.max_body, {"workflow", "args", "id"})
        workflow = body.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            raise _Reply("invalid_argument", "'workflow' must be the registered name of a "
                         f"workflow (a non-empty string), got {workflow!r}")
        args = _list(body, "args")
        wid = _str(body, "id", None)
        key = environ.get("HTTP_IDEMPOTENCY_KEY") or None
        if wid is not None and key is not None and wid != key:
            raise _Reply("invalid_argument", f"the body's id {wid!r} and the Idempotency-Key "
                         f"header {key!r} differ; send one, or the same in both")
        try:
            handle = self.engine.start(workflow, *args, id=wid or key)
        except WorkflowArgumentsInvalid as exc:
            raise _Reply("invalid_argument", str(exc), field="args") from None
        return {"workflow_id": handle.workflow_id}

    def _list(self, environ: dict[str, Any]) -> dict[str, Any]:
        query = _query(environ, {"status", "type", "limit", "after"})
        limit = _int(query, "limit", 100)
        if not 1 <= limit <= 1000:
            raise _Reply("invalid_argument", f"limit={limit}: ask for 1 to 1000 runs per page")
        runs = self.engine.list(status=query.get("status"), workflow_type=query.get("type"),
                                limit=limit, after_id=query.get("after"))
        next_after = runs[-1].workflow_id if len(runs) == limit else None
        return {"runs": [run_to_json(r) for r in runs], "next": next_after}

    def _result(self, wid: str, environ: dict[str, Any]) -> dict[str, Any]:
        query = _query(environ, {"timeout"})
        timeout = min(_number(query, "timeout", self.max_wait), self.max_wait)
        result = self.engine.result(wid, timeout=timeout)
        return {"workflow_id": wid, "status": ev.COMPLETED, "result": result}

    def _stream(self, wid: str, environ: dict[str, Any],
                start_response: StartResponse) -> Iterable[bytes]:
        query = _query(environ, {"after", "run_id"})
        after = _int(query, "after", 0)
        last_id = environ.get("HTTP_LAST_EVENT_ID")
        if last_id:
            try:
                after = max(after, int(last_id))
            except ValueError:
                raise _Reply("invalid_argument", f"Last-Event-ID {last_id!r} is not an event "
                             "sequence number") from None
        run_id = query.get("run_id") or self.engine.describe(wid).run_id
        # Read once before answering: a bad id is a 404, not an empty stream.
        first = self.engine.history(wid, after, run_id)
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                  ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        return self._events(wid, run_id, after, first)

    def _events(self, wid: str, run_id: str, after: int, batch: list[ev.Event]) -> Iterator[bytes]:
        # The run id rides on the first frame, so a client resumes this run
        # (the workflow id may later name a run that continued as new).
        yield f"retry: 1000\nevent: run\ndata: {json.dumps({'run_id': run_id})}\n\n".encode()
        pause, idle = 0.02, 0.0
        while True:
            for event in batch:
                after = event.seq
                yield (f"id: {event.seq}\nevent: {event.type}\n"
                       f"data: {json.dumps(event_to_json(event))}\n\n").encode()
                if event.type in ev.TERMINAL_TYPES:
                    return
            if batch:
                pause, idle = 0.02, 0.0
            else:
                _pause(pause)
                idle += pause
                pause = min(pause * 2, self.stream_poll)
                if idle >= self.heartbeat:
                    idle = 0.0
                    yield b": keep-alive\n\n"
            batch = self.engine.history(wid, after, run_id)


def _pause(seconds: float) -> None:
    # A request served by a greenlet (gevent.pywsgi, as `aion-green worker
    # --http` does, without patch_all) must nap on its hub: time.sleep there
    # would stop every other request of the server. A plain thread's
    # time.sleep is right (and under patch_all it is gevent's anyway).
    if getcurrent().parent is not None:
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


# -- request parsing -------------------------------------------------------------------------
def _segments(environ: dict[str, Any]) -> list[str]:
    """The path's segments, percent-decoded one by one (so an encoded "/"
    stays inside its segment) when the server gives the raw path."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = raw.split("?", 1)[0]
        if "://" in path:  # an absolute URI in the request line
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        script = environ.get("SCRIPT_NAME", "")
        if script and path.startswith(script):
            path = path[len(script):]
        return [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
    path = environ.get("PATH_INFO", "") or "/"
    return path.strip("/").split("/") if path.strip("/") else []


def _query(environ: dict[str, Any], allowed: set[str]) -> dict[str, str]:
    parsed = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    unknown = sorted(set(parsed) - allowed)
    if unknown:
        raise _Reply("invalid_argument", f"unknown query parameter(s) {', '.join(unknown)}; "
                     f"this route takes {', '.join(sorted(allowed)) or 'none'}")
    return {k: v[-1] for k, v in parsed.items()}


def _body(environ: dict[str, Any], limit: int, allowed: set[str]) -> dict[str, Any]:
    length_text = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(length_text) if length_text else None
    except ValueError:
        raise _Reply("invalid_argument", f"Content-Length {length_text!r} is not a number") from None
    if length is not None and length > limit:
        raise _Reply("too_large", f"the body has {length} bytes; this server takes at most {limit}")
    stream = environ["wsgi.input"]
    raw = stream.read(length) if length is not None else stream.read(limit + 1)
    if len(raw) > limit:
        raise _Reply("too_large", f"the body has more than {limit} bytes; this server takes at most {limit}")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Reply("invalid_argument", f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _Reply("invalid_argument", f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _Reply("invalid_argument", f"unknown field(s) {', '.join(unknown)}; this route takes "
                     f"{', '.join(sorted(allowed))}")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _str(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, default)
    if value is not default and not isinstance(value, str):
        raise _Reply("invalid_argument", f"'{key}' must be a string, got {value!r}")
    return value


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise _Reply("invalid_argument", f"'{key}' must be a JSON array, got {value!r}")
    return value


def _number(source: dict[str, Any], key: str, default: float) -> float:
    value = source.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Reply("invalid_argument", f"'{key}' must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= number < float("inf"):
        raise _Reply("invalid_argument", f"'{key}' must be a number of seconds >= 0, got {value!r}")
    return number


def _int(source: dict[str, Any], key: str, default: int) -> int:
    value = source.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _Reply("invalid_argument", f"'{key}' must be a whole number, got {value!r}") from None
    if number < 0:
        raise _Reply("invalid_argument", f"'{key}' must not be negative, got {value!r}")
    return number


def _not_allowed(method: str, allowed: str) -> _Reply:
    return _Reply("method_not_allowed", f"{method} is not allowed here; use {allowed}",
                  allow=allowed)


# -- replies ----------------------------------------------------------------------------------
def _reply(start_response: StartResponse, status: int, body: Any,
           headers: Optional[list[tuple[str, str]]] = None) -> list[bytes]:
    data = json.dumps(body, allow_nan=False).encode()
    start_response(f"{status} {_REASONS.get(status, 'OK')}",
                   _JSON + [("Content-Length", str(len(data)))] + (headers or []))
    return [data]


def _error(start_response: StartResponse, code: str, message: str, **extra: Any) -> list[bytes]:
    status = ERRORS[code][0]
    headers = [("Allow", extra["allow"])] if "allow" in extra else []
    if code == "unauthenticated":
        headers.append(("WWW-Authenticate", 'Bearer realm="aion_green"'))
    return _reply(start_response, status, {"error": {"code": code, "message": message, **extra}},
                  headers)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
            422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}
