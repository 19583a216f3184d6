"""The engine's operations over HTTP/JSON, as a plain WSGI application.

Mount it in any WSGI server, or inside Flask with werkzeug's
``DispatcherMiddleware`` (see ``examples/flask_app.py``)::

    api = aion_green.transport.wsgi.WSGIApp(engine, token="s3cret")

Routes (ids are percent-encoded UTF-8 path segments; a workflow id may hold "/"):

=======  ===========================================  ==========================================
GET      /ui/...                                      the web console (``console/app.py``): HTML
                                                      pages, signed in by a session cookie; its
                                                      actions call this API under ``/ui/api``
GET      /healthz                                     ``{"ok": true}``, never authenticated
GET      /v1/openapi.json                             this table as OpenAPI 3.1 (never
                                                      authenticated; docs/http-api.md)
GET      /health/live                                 ``{"ok": true}`` while the process serves
                                                      (even draining); never authenticated
GET      /health/ready                                200 ``{"ok", "driving", "checks"}`` when the
                                                      engine can take work, else 503
                                                      ``unavailable`` naming what is not ready;
                                                      never authenticated
GET      /metrics                                     Prometheus text (OpenMetrics if the Accept
                                                      header asks); wants the token when one is
                                                      set; 503 without ``prometheus_client``
POST     /v1/workflows                                start: ``{"workflow", "args", "id",
                                                      "execution_timeout"}`` (seconds; past them
                                                      the run ends ``timed_out``); the
                                                      ``Idempotency-Key`` header may give the id;
                                                      answers ``{"workflow_id", "run_id"}``; with
                                                      ``"wait": S`` it waits up to S s (at most
                                                      ``max_wait``) for the run's end: ``"status"``
                                                      ``completed`` and ``"result"``, or
                                                      ``running``; a failed end as /result answers
GET      /v1/workflows?status=&type=&limit=&after=    list, a page: ``{"runs", "next"}``; also
         &started_after=&started_before=&parent=      filtered by the run's start (ISO-8601; no
         &id_prefix=&attr.NAME=VALUE                  offset: UTC), the parent's workflow id, the
                                                      id's beginning and search attributes
                                                      (several: all must match)
GET      /v1/workflows/count?<the list's filters>     ``{"count": N}``; with ``&by=status``:
                                                      ``{"counts": {"running": N, ...}}`` (every
                                                      status)
GET      /v1/workflows/ID?run_id=                     describe (an earlier run of a chain:
                                                      status ``continued``, ``next_run_id``)
GET      /v1/workflows/ID/result?timeout=S&run_id=    wait for the end (at most ``max_wait``);
                                                      an earlier run: 409 ``continued_as_new``
GET      /v1/workflows/ID/history?after=&run_id=      the recorded events, a page (``&limit=``):
                                                      ``{"events", "next"}``
GET      /v1/workflows/ID/events?after=&run_id=       the events as a stream (server-sent
                                                      events): no cursor, those recorded from
                                                      now on; ``after=0`` from the first;
                                                      ``Last-Event-ID`` resumes; a cursor past
                                                      the run's last event is a 400; an
                                                      ``end`` frame after the run's end
POST     /v1/workflows/ID/signals/NAME                ``{"payload", "idempotency_key", "run_id"}``
POST     /v1/workflows/ID/queries/NAME                ``{"args", "timeout", "run_id"}``
POST     /v1/workflows/ID/cancel                      ``{"reason", "run_id"}``
POST     /v1/workflows/ID/terminate                   ``{"reason", "run_id"}``: ends it now, no
                                                      cleanup
POST     /v1/workflows/ID/pause                       ``{"reason", "run_id"}``: no step, timer or
                                                      message until unpaused (``{"workflow_id",
                                                      "paused", "seq"}``); describe: ``paused``
POST     /v1/workflows/ID/unpause                     ``{"reason", "run_id"}``: it goes on; due
                                                      timers fire, kept messages are delivered
POST     /v1/workflows/ID/fork                        ``{"from_seq", "id", "run_id"}``: a new id
                                                      that replays events 2..from_seq, then runs
                                                      on: ``{"workflow_id", "run_id", ...}``
POST     /v1/workflows/ID/resume                      ``{"from_seq"}``: a failed or cancelled run
                                                      again in place (not ``unpause``)
GET      /v1/events?after=&type=&status=              every run's events (of the namespace) as one
                                                      stream (server-sent events), in commit
                                                      order: each frame's ``id`` is the event's
                                                      global position; no cursor, those
                                                      recorded from now on;
                                                      ``after=0`` from the first; ``Last-Event-
                                                      ID`` resumes; a cursor below 0 or past the
                                                      head is a 400; ``type``/``status``: comma-
                                                      separated event types, run statuses (the
                                                      run's now)
GET      /v1/events/page?after=&type=&status=&limit=  the same, a page: ``{"events", "next"}``
POST     /v1/purge                                    retention on demand: ``{"older_than": S,
                                                      "limit"}`` deletes the runs that ended
                                                      more than S seconds ago (never a running
                                                      one) of every namespace (a token granting
                                                      all) or of ``namespace``: ``{"purged": N,
                                                      "older_than": S, "namespace"}``
GET      /v1/schedules?limit=&after=&include_deleted= the schedules, a page: ``{"schedules",
                                                      "next"}``
POST     /v1/schedules                                create: ``{"schedule_id", "workflow",
                                                      "args", "cron" | "every", "start_at",
                                                      "timezone", "overlap", "catch_up"}``
GET      /v1/schedules/ID                             one schedule, its next fire time
DELETE   /v1/schedules/ID?timeout=S                   unschedule: it fires no more
POST     /v1/schedules/ID/pause                       ``{"note"}``: it fires nothing until resumed
POST     /v1/schedules/ID/resume                      fires missed meanwhile: its ``catch_up``
POST     /v1/schedules/ID/trigger                     one fire now, under its ``overlap`` policy
POST     /v1/schedules/ID/update                      ``{"cron" | "every", "args", "start_at",
                                                      "timezone", "overlap", "catch_up"}``: only
                                                      the fields given change
=======  ===========================================  ==========================================

Listing and search: a summary names its ``parent_id`` (None for a top-level
run) and its ``search_attributes``. ``attr.NAME=VALUE`` matches an
attribute whose text form is VALUE: a string attribute as it is, a number or
boolean as its JSON text (``attr.total=42`` matches 42, not 42.0;
``attr.vip=true`` matches true). ``started_after <= start < started_before``,
the current run's start. A bad date, an unknown parameter or a bad attribute
name is a 400 ``invalid_argument`` whose ``field`` names it. (A workflow whose
id is ``count`` is described with ``/v1/workflows?workflow_id=count``.)

Namespaces: every route of runs and schedules takes ``?namespace=NS`` (a
POST also ``"namespace"`` in its body); without one it is ``default``. Ids
are unique per namespace, and a run of another namespace answers exactly as
an id never seen (404). A token is ``SECRET`` (every namespace) or
``SECRET:ns1,ns2`` (those only): a request for a namespace outside its grant
is a 403 ``namespace_denied`` before anything is done, recorded or listed.

Run identity: a workflow id names a chain of runs (``continue_as_new``
begins the next one under the same id); without ``run_id`` a request is for
the current run (``result`` waits for the chain's end). A signal, query,
cancel or terminate naming a run that is not the current one is refused
before anything is recorded: 409 ``not_running``; an unknown run is 404.

Every route of one run also takes its id in the query string instead,
``/v1/workflows[/ACTION]?workflow_id=ID`` (signals and queries with
``&name=NAME``): what the client sends, since a server that gives the app
only the decoded path (wsgiref) cannot tell an id's encoded "/" from the
route's.

The health routes are for probes (a load balancer, Kubernetes), which
usually send no token, and they reveal nothing but "ready or not" and which
check failed (never a path, a URL or an error's message). ``/health/ready``
is ready when the engine is not shut down, its store answers a read through
the engine's reader thread within ``ready_timeout`` seconds, and, over
PostgreSQL, this engine's lease is current (``Engine.readiness``); a
draining server is not ready. ``/metrics`` names workflow types and the
engine's load, so it wants the token like the API.

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
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union
from urllib.parse import parse_qs, unquote_to_bytes

import gevent
from greenlet import getcurrent

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.bounds import execution_timeout_seconds
from aion_green.core.errors import (
    AionError,
    ConfigurationError,
    EngineClosed,
    StoreUnavailable,
    Timeout,
    WorkflowArgumentsInvalid,
    WorkflowCancelled,
    WorkflowContinuedAsNew,
    WorkflowFailed,
)
from aion_green.transport.codec import (
    ERRORS,
    code_of,
    event_to_json,
    global_event_to_json,
    parse_time,
    public_error,
    run_to_json,
    schedule_to_json,
)
from aion_green.transport.console.app import Console, Denied

log = logging.getLogger("aion_green.transport")

StartResponse = Callable[..., Any]
_JSON = [("Content-Type", "application/json; charset=utf-8")]
_ACTIONS = ("result", "history", "events", "cancel", "terminate", "pause", "unpause", "fork",
            "resume")
_POSTS = ("cancel", "terminate", "pause", "unpause", "fork", "resume", "signals", "queries")
# The environ key of the namespaces the request's token grants (None: all).
_GRANTS = "aion_green.grants"
_NAMED = ("signals", "queries")
# POST /v1/schedules/ID/ACTION, and the fields an update may change.
_SCHEDULE_ACTIONS = ("pause", "resume", "trigger", "update")
_SCHEDULE_SPEC = ("cron", "every", "args", "start_at", "timezone", "overlap", "catch_up")


class _Reply(Exception):
    """An error reply: a code of the taxonomy and what to tell the caller."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class WSGIApp:
    """The HTTP/JSON API of one :class:`~aion_green.Engine`.

    ``token``: when set, every route but ``/healthz``, ``/health/live``,
    ``/health/ready`` and ``/v1/openapi.json`` wants
    ``Authorization: Bearer <token>``. A token is ``SECRET`` (every
    namespace) or ``SECRET:ns1,ns2`` (those namespaces only); give several
    as a list, or in one string separated by spaces (as
    ``AION_GREEN_TOKEN`` does). A secret holds no ":" and no space. ``max_body``: the largest request
    body accepted, in bytes. ``max_wait``: the longest a request waits (for
    a result, a query); a client waits longer by asking again.
    ``stream_poll``: the longest pause between two looks at a streamed run.
    ``max_depth``: the deepest nesting of arrays and objects a JSON body may
    have; ``max_digits``: the most digits of a whole number in one (deeper
    or longer is refused with a 400 naming the limit, before the parser's
    recursion or int conversion fails as a 500: issue 16). ``page``: the
    most events one ``/history`` request answers (and its default
    ``limit``), and the most an event stream reads from the store at once.
    ``ready_timeout``: the longest ``/health/ready`` waits for the store's
    answer before it says not ready.
    """

    def __init__(self, engine: Any, token: Union[None, str, Sequence[str]] = None,
                 max_body: int = 1 << 20,
                 max_wait: float = 60.0, stream_poll: float = 0.5,
                 heartbeat: float = 15.0, max_depth: int = 64, max_digits: int = 64,
                 page: int = 1000, ready_timeout: float = 1.0) -> None:
        self.engine = engine
        self.ready_timeout = ready_timeout
        self.token = token
        # (secret, the namespaces it grants, None for all); None: no token asked.
        self._tokens = parse_tokens(token)
        self.max_body = max_body
        self.max_depth = max_depth
        self.max_digits = max_digits
        self.page = page
        # Set once by drain(), read by every request: a plain bool is enough.
        self.draining = False
        self.max_wait = max_wait
        self.stream_poll = stream_poll
        self.heartbeat = heartbeat
        # The web console at /ui/ (console/app.py), with these tokens.
        self.console = Console(self)

    def drain(self) -> None:
        """The server is stopping: answer every request from now on with 503
        and ``Retry-After``, and end the event streams (their clients resume
        with ``Last-Event-ID`` elsewhere). Requests waiting on the engine
        answer 503 once it shuts down (EngineClosed)."""
        self.draining = True

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            method = environ.get("REQUEST_METHOD", "GET").upper()
            segments = _segments(environ)
            if segments == ["health", "live"] or segments == ["health", "ready"]:
                return self._health(method, segments[1], start_response)
            if self.draining:
                raise _Reply("unavailable", "this server is shutting down; nothing of this request "
                             "was done: send it again (to another server, or here once restarted)")
            if segments == ["healthz"]:
                if method not in ("GET", "HEAD"):
                    raise _not_allowed(method, "GET")
                return _reply(start_response, 200, {"ok": True})
            if segments == ["v1", "openapi.json"]:
                if method != "GET":
                    raise _not_allowed(method, "GET")
                return _reply(start_response, 200, _openapi())
            if segments[:1] == ["ui"]:
                if segments[1:2] != ["api"]:
                    return self.console(environ, start_response, segments[1:])
                # The console's own calls: its session cookie and CSRF token
                # instead of a bearer header (console/sessions.py).
                try:
                    environ[_GRANTS] = self.console.api_grants(environ, method)
                except Denied as denied:
                    raise _Reply("unauthenticated", str(denied)) from None
                segments = segments[2:]
            else:
                self._authenticate(environ)
            if segments == ["metrics"]:
                return self._metrics(method, environ, start_response)
            return self._route(method, segments, environ, start_response)
        except _Reply as reply:
            return _error(start_response, reply.code, self._public(reply.message), **reply.extra)
        except WorkflowContinuedAsNew as continued:
            return _error(start_response, code_of(continued), str(continued),
                          workflow_id=continued.workflow_id, run_id=continued.run_id,
                          next_run_id=continued.next_run_id)
        except (WorkflowCancelled, WorkflowFailed) as failure:
            return _error(start_response, code_of(failure), str(failure),
                          workflow_id=failure.workflow_id, detail=public_error(failure.error))
        except (AionError, ValueError, TypeError) as exc:
            return _error(start_response, code_of(exc), self._public(str(exc)),
                          type=type(exc).__name__)
        except Exception:
            log.exception("HTTP API: an unexpected error; this is a bug in aion_green")
            return _error(start_response, "internal",
                          "an unexpected error occurred (logged by the server); nothing of "
                          "this request may have been recorded, or all of it: look before retrying")

    def _public(self, message: str) -> str:
        """``message`` without the store's name: the engine's messages name
        its database file or URL, useful to its own process, a server path
        (or a secret) to a remote client (issue 16)."""
        names = {self._store_name, str(getattr(self.engine, "url", "") or "")} - {"", "None"}
        for name in sorted(names, key=len, reverse=True):
            message = message.replace(name, "this server's store")
        return message

    @property
    def _store_name(self) -> str:
        try:
            return str(self.engine._store_name())
        except Exception:  # not an Engine (a test double, a Client): nothing of ours to hide
            return ""

    def _authenticate(self, environ: dict[str, Any]) -> None:
        """Check the bearer token, and keep the namespaces it grants in the
        request's environ (for :meth:`_namespace`)."""
        if self._tokens is None:
            return
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        presented = given.strip().encode()
        grants: Union[None, frozenset[str], bool] = False
        for secret, granted in self._tokens:  # every one compared: the time tells nothing
            if hmac.compare_digest(presented, secret) and grants is False:
                grants = granted
        if scheme.lower() != "bearer" or grants is False:
            raise _Reply("unauthenticated", "this API wants an 'Authorization: Bearer <token>' "
                         "header with the server's token" + ("" if header else "; none was sent"))
        environ[_GRANTS] = grants

    def _namespace(self, environ: dict[str, Any], params: dict[str, str],
                   body: Optional[dict[str, Any]] = None) -> str:
        """The namespace a request names (``?namespace=``, or ``namespace``
        in its body; ``"default"`` if neither), once its token's grant
        allows it: else a 403 ``namespace_denied``, before anything is done."""
        given: Any = params.get("namespace")
        if body is not None and "namespace" in body:
            if given is not None and body["namespace"] != given:
                raise _Reply("invalid_argument", f"the body's namespace {body['namespace']!r} and "
                             f"the query's {given!r} differ; send one, or the same in both",
                             field="namespace")
            given = body["namespace"]
        ns = (namespaces.DEFAULT if given is None
              else _field(namespaces.check_namespace, "namespace", given, "'namespace'"))
        grants = environ.get(_GRANTS)
        if grants is not None and ns not in grants:
            raise _Reply("namespace_denied", f"this token is not granted namespace {ns!r}; "
                         "nothing was done. Ask with a token that grants it", field="namespace")
        return ns

    def _route(self, method: str, segments: list[str], environ: dict[str, Any],
               start_response: StartResponse) -> Iterable[bytes]:
        if segments[:2] == ["v1", "events"] and len(segments) <= 3:
            return self._global_events(method, segments[2:], _params(environ), environ,
                                       start_response)
        if segments[:2] == ["v1", "schedules"]:
            return self._schedules(method, segments[2:], _params(environ), environ,
                                   start_response)
        if segments == ["v1", "purge"]:
            return _reply(start_response, 200, self._purge(method, environ, _params(environ)))
        if len(segments) < 2 or segments[:2] != ["v1", "workflows"]:
            raise _Reply("not_found", f"no route {'/' + '/'.join(segments)!r}; the API lives "
                         "under /v1/workflows, /v1/schedules and /v1/events (and /v1/purge, "
                         "/healthz, /health/live, /health/ready, /metrics)")
        params = _params(environ)
        rest = segments[2:]
        action: Optional[str] = None
        name: Optional[str] = None
        by_query = "workflow_id" in params
        if by_query:
            # The id (and a signal's or query's name) in the query string: a
            # server that hands over only the decoded path (wsgiref,
            # gevent.pywsgi) cannot tell an id's "%2F" from a "/" of the route
            # (issue 16: the id "a/result" was read as the result of "a"); a
            # query string reaches every app undecoded.
            wid = params["workflow_id"]
            if len(rest) > 1 or (rest and rest[0] not in _ACTIONS + _NAMED):
                raise _Reply("not_found", f"no route {'/' + '/'.join(segments)!r} with "
                             "workflow_id in the query; use /v1/workflows[/ACTION]?workflow_id=ID "
                             f"(ACTION: {', '.join(_ACTIONS + _NAMED)})")
            action = rest[0] if rest else None
            if action in _NAMED:
                name = params.get("name")
                if not name:
                    raise _Reply("invalid_argument", f"'name' (query) must name the {action[:-1]}: "
                                 f"/v1/workflows/{action}?workflow_id=ID&name=NAME")
        elif not rest:
            if method == "POST":
                return _reply(start_response, 200, self._start(environ, params))
            if method == "GET":
                return _reply(start_response, 200,
                              self._list(params, self._namespace(environ, params)))
            raise _not_allowed(method, "GET, POST")
        elif rest == ["count"]:
            if method != "GET":
                raise _not_allowed(method, "GET")
            return _reply(start_response, 200,
                          self._count(params, self._namespace(environ, params)))
        else:
            # Matched from the right: behind a server that hands over only the
            # decoded path, an id's "/" splits it into several segments.
            if len(rest) >= 2 and rest[-1] in _ACTIONS:
                action, rest = rest[-1], rest[:-1]
            elif len(rest) >= 3 and rest[-2] in _NAMED:
                action, name, rest = rest[-2], rest[-1], rest[:-2]
            wid = "/".join(rest)
        if not wid:
            raise _Reply("invalid_argument", "the workflow id is empty")
        expected = "POST" if action in _POSTS else "GET"
        if method != expected:
            raise _not_allowed(method, expected)
        named = {"workflow_id", "name"} if by_query else set()
        if method == "GET":
            ns = self._namespace(environ, params)
        if action is None:
            query = _query(params, named | {"run_id"})
            return _reply(start_response, 200, run_to_json(
                self.engine.describe(wid, run_id=_run_id(query.get("run_id")), namespace=ns)))
        if action == "result":
            return _reply(start_response, 200,
                          self._result(wid, _query(params, named | {"timeout", "run_id"}), ns))
        if action == "history":
            return _reply(start_response, 200, self._history(
                wid, _query(params, named | {"after", "run_id", "limit"}), ns))
        if action == "events":
            return self._stream(wid, _query(params, named | {"after", "run_id"}), environ,
                                start_response, ns)
        _query(params, named)
        if action == "cancel":
            body = self._body(environ, {"reason", "run_id"})
            ns = self._namespace(environ, params, body)
            self.engine.cancel(wid, _str(body, "reason", ""), **_run_kw(body), namespace=ns)
            return _reply(start_response, 200, {"workflow_id": wid, "cancel_requested": True})
        if action == "terminate":
            body = self._body(environ, {"reason", "run_id"})
            ns = self._namespace(environ, params, body)
            self.engine.terminate(wid, _str(body, "reason", ""), **_run_kw(body), namespace=ns)
            return _reply(start_response, 200, {"workflow_id": wid, "terminated": True})
        if action in ("pause", "unpause"):
            body = self._body(environ, {"reason", "run_id"})
            ns = self._namespace(environ, params, body)
            call = self.engine.pause if action == "pause" else self.engine.unpause
            seq = call(wid, _str(body, "reason", ""), **_run_kw(body), namespace=ns)
            return _reply(start_response, 200, {"workflow_id": wid, "paused": action == "pause",
                                                "seq": seq})
        if action in ("fork", "resume"):
            return _reply(start_response, 200, self._rewind(action, wid, environ, params))
        assert name is not None
        if action == "signals":
            body = self._body(environ, {"payload", "idempotency_key", "run_id"})
            ns = self._namespace(environ, params, body)
            key = _str(body, "idempotency_key", None) or _header(environ, "HTTP_IDEMPOTENCY_KEY")
            seq = self.engine.signal(wid, name, body.get("payload"), idempotency_key=key,
                                     **_run_kw(body), namespace=ns)
            return _reply(start_response, 200, {"workflow_id": wid, "seq": seq})
        body = self._body(environ, {"args", "timeout", "run_id"})
        ns = self._namespace(environ, params, body)
        args = _list(body, "args")
        timeout = min(_number(body, "timeout", 10.0), self.max_wait)
        answer = self.engine.query(wid, name, *args, timeout=timeout, **_run_kw(body),
                                   namespace=ns)
        return _reply(start_response, 200, {"workflow_id": wid, "answer": answer})

    # -- operations ------------------------------------------------------------------------
    def _health(self, method: str, which: str, start_response: StartResponse) -> Iterable[bytes]:
        if method not in ("GET", "HEAD"):  # (as /healthz)
            raise _not_allowed(method, "GET")
        if which == "live":
            return _reply(start_response, 200, {"ok": True})
        if self.draining:
            checks = {"server": "draining: it is shutting down"}
            raise _Reply("unavailable", "not ready: server: draining: it is shutting down",
                         checks=checks)
        check = getattr(self.engine, "readiness", None)
        if check is None:  # not an Engine (a test double): serving is all it can say
            return _reply(start_response, 200, {"ok": True, "checks": {}})
        state = check(timeout=self.ready_timeout)
        checks = {name: self._public(text) for name, text in state.checks.items()}
        if not state.ready:
            raise _Reply("unavailable", self._public(f"not ready: {state.problems()}"),
                         checks=checks)
        return _reply(start_response, 200, {"ok": True, "driving": state.driving, "checks": checks})

    def _metrics(self, method: str, environ: dict[str, Any],
                 start_response: StartResponse) -> Iterable[bytes]:
        if method != "GET":
            raise _not_allowed(method, "GET")
        metrics = getattr(self.engine, "metrics", None)
        if metrics is None:
            raise _Reply("unavailable", "this server's engine keeps no metrics")
        try:
            content_type, body = metrics.exposition(_header(environ, "HTTP_ACCEPT"))
        except ConfigurationError as exc:  # no prometheus_client: asking again will not help
            return _error(start_response, "unavailable", str(exc), retry=False)
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # -- handlers --------------------------------------------------------------------------
    def _body(self, environ: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
        return _body(environ, self.max_body, allowed | {"namespace"}, self.max_depth,
                     self.max_digits)

    def _start(self, environ: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        _query(params, set())
        body = self._body(environ, {"workflow", "args", "id", "execution_timeout", "wait"})
        workflow = body.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            raise _Reply("invalid_argument", "'workflow' must be the registered name of a "
                         f"workflow (a non-empty string), got {workflow!r}")
        _text(workflow, "'workflow'")
        args = _list(body, "args")
        wid = _str(body, "id", None)
        key = _header(environ, "HTTP_IDEMPOTENCY_KEY")
        if wid is not None and key is not None and wid != key:
            raise _Reply("invalid_argument", f"the body's id {wid!r} and the Idempotency-Key "
                         f"header {key!r} differ; send one, or the same in both")
        bound: dict[str, float] = {}
        if body.get("execution_timeout") is not None:
            bound["execution_timeout"] = _field(execution_timeout_seconds, "execution_timeout",
                                                body["execution_timeout"], "'execution_timeout'")
        wait = None
        if body.get("wait") is not None:
            wait = _number(body, "wait", 0.0)
            if not 0 < wait:
                raise _Reply("invalid_argument", f"'wait' must be a number of seconds above 0 "
                             f"(at most {self.max_wait:g}), got {body['wait']!r}; leave it out "
                             "to answer once the run is started", field="wait")
        ns = self._namespace(environ, params, body)
        try:
            handle = self.engine.start(workflow, *args, id=wid or key, namespace=ns, **bound)
        except WorkflowArgumentsInvalid as exc:
            raise _Reply("invalid_argument", str(exc), field="args") from None
        started = {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "namespace": ns}
        if wait is None:
            return started
        # Start and wait in one request (issue 21): the run is durable before
        # the wait begins; its end answers as GET .../result would (a failed
        # end is the same error), and a run still going says so.
        try:
            # (The workflow's result: its chain's last run, as /result.)
            result = self.engine.result(handle.workflow_id, timeout=min(wait, self.max_wait),
                                        namespace=ns)
        except Timeout:
            return {**started, "status": ev.RUNNING}
        return {**started, "status": ev.COMPLETED, "result": result}

    def _rewind(self, action: str, wid: str, environ: dict[str, Any],
                params: dict[str, str]) -> dict[str, Any]:
        """``fork`` (a new id that reuses the run's outcomes up to
        ``from_seq``) and ``resume`` (a failed or cancelled run again in
        place): :mod:`aion_green.runtime.rewind`."""
        allowed = {"from_seq", "id", "run_id"} if action == "fork" else {"from_seq"}
        body = self._body(environ, allowed)
        ns = self._namespace(environ, params, body)
        from_seq = body.get("from_seq")
        if (from_seq is not None or action == "fork") and (
                type(from_seq) is not int or not 1 <= from_seq < 2 ** 63):
            raise _Reply("invalid_argument", f"'from_seq' must be the seq of an event of the "
                         f"run (a whole number from 1), got {from_seq!r}"
                         + ("" if action == "fork" else "; leave it out for the default point"),
                         field="from_seq")
        if action == "fork":
            handle = self.engine.fork(wid, from_seq, id=_str(body, "id", None), **_run_kw(body),
                                      namespace=ns)
        else:
            handle = self.engine.resume(wid, from_seq, namespace=ns)
        return {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "namespace": ns,
                "from": wid}

    def _schedules(self, method: str, rest: list[str], params: dict[str, str],
                   environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """``/v1/schedules[/ID]``: list and create; show and delete one."""
        if method in ("GET", "DELETE"):
            ns = self._namespace(environ, params)
        if not rest:
            if method == "GET":
                query = _query(params, {"limit", "after", "include_deleted"})
                limit = _int(query, "limit", 100)
                if not 1 <= limit <= 1000:
                    raise _Reply("invalid_argument", f"limit={limit}: ask for 1 to 1000 "
                                 "schedules per page", field="limit")
                deleted = query.get("include_deleted", "false")
                if deleted not in ("true", "false"):
                    raise _Reply("invalid_argument", f"include_deleted={deleted!r}: true or false",
                                 field="include_deleted")
                found = self.engine.schedules(include_deleted=deleted == "true", limit=limit,
                                              after_id=query.get("after"), namespace=ns)
                next_after = found[-1].schedule_id if len(found) == limit else None
                return _reply(start_response, 200, {
                    "schedules": [schedule_to_json(s) for s in found], "next": next_after})
            if method == "POST":
                _query(params, set())
                return _reply(start_response, 200, self._create_schedule(environ, params))
            raise _not_allowed(method, "GET, POST")
        if len(rest) >= 2 and rest[-1] in _SCHEDULE_ACTIONS:
            if method != "POST":
                raise _not_allowed(method, "POST")
            _query(params, {"namespace"})
            sid = _text("/".join(rest[:-1]), "the schedule id")
            return _reply(start_response, 200,
                          self._control_schedule(sid, rest[-1], environ, params))
        sid = "/".join(rest)
        _text(sid, "the schedule id")
        if method == "GET":
            _query(params, set())
            return _reply(start_response, 200,
                          schedule_to_json(self.engine.describe_schedule(sid, namespace=ns)))
        if method == "DELETE":
            query = _query(params, {"timeout"})
            timeout = min(_number(query, "timeout", 30.0), self.max_wait)
            self.engine.describe_schedule(sid, namespace=ns)  # a 404 for an id that names none
            self.engine.unschedule(sid, timeout=timeout, namespace=ns)
            return _reply(start_response, 200, {"schedule_id": sid, "deleted": True})
        raise _not_allowed(method, "GET, DELETE")

    def _create_schedule(self, environ: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        body = self._body(environ, {"schedule_id", "workflow", "args", "cron", "every",
                                    "start_at", "timezone", "overlap", "catch_up"})
        ns = self._namespace(environ, params, body)
        sid = _str(body, "schedule_id", None)
        if not sid:
            raise _Reply("invalid_argument", "'schedule_id' must name the schedule (a non-empty "
                         "string)", field="schedule_id")
        workflow = body.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            raise _Reply("invalid_argument", "'workflow' must be the registered name of a "
                         f"workflow (a non-empty string), got {workflow!r}", field="workflow")
        every = _every(body)
        when = _start_at(body)
        try:
            handle = self.engine.schedule(
                sid, workflow, *_list(body, "args"), cron=_str(body, "cron", None), every=every,
                start_at=when, timezone=_str(body, "timezone", None),
                overlap=_str(body, "overlap", "skip"), catch_up=_str(body, "catch_up", "one"),
                namespace=ns)
        except WorkflowArgumentsInvalid as exc:
            raise _Reply("invalid_argument", str(exc), field="args") from None
        return {"schedule_id": sid, "run_id": handle.run_id}

    def _control_schedule(self, sid: str, action: str, environ: dict[str, Any],
                          params: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/schedules/ID/{pause,resume,trigger,update}``."""
        body = self._body(environ, {"note"} if action == "pause" else
                          set(_SCHEDULE_SPEC) if action == "update" else set())
        ns = self._namespace(environ, params, body)
        if action == "pause":
            self.engine.pause_schedule(sid, note=_str(body, "note", ""), namespace=ns)
            return {"schedule_id": sid, "paused": True}
        if action == "resume":
            self.engine.resume_schedule(sid, namespace=ns)
            return {"schedule_id": sid, "paused": False}
        if action == "trigger":
            self.engine.trigger_schedule(sid, namespace=ns)
            return {"schedule_id": sid, "triggered": True}
        changes: dict[str, Any] = {}
        for key in _SCHEDULE_SPEC:
            if key not in body:
                continue
            if key == "every":
                changes[key] = _every(body)
            elif key == "start_at":
                changes[key] = _start_at(body)
            elif key == "args":
                changes[key] = _list(body, "args")
            else:
                changes[key] = _str(body, key, None)
        if not changes:
            raise _Reply("invalid_argument", "nothing to update: give one or more of "
                         f"{', '.join(_SCHEDULE_SPEC)}")
        try:
            self.engine.update_schedule(sid, **changes, namespace=ns)
        except WorkflowArgumentsInvalid as exc:
            raise _Reply("invalid_argument", str(exc), field="args") from None
        return {"schedule_id": sid, "updated": True}

    def _purge(self, method: str, environ: dict[str, Any],
               params: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/purge``: retention on demand (runtime/retention.py)."""
        if method != "POST":
            raise _not_allowed(method, "POST")
        _query(params, {"namespace"})
        body = self._body(environ, {"older_than", "limit"})
        ns: Optional[str] = None
        if "namespace" in params or "namespace" in body:
            ns = self._namespace(environ, params, body)
        elif environ.get(_GRANTS) is not None:
            raise _Reply("namespace_denied", "a purge of every namespace needs a token that "
                         "grants every namespace; nothing was purged. Name the namespace to "
                         "purge (\"namespace\" in the body, or ?namespace=)", field="namespace")
        older_than = body.get("older_than")
        if (isinstance(older_than, bool) or not isinstance(older_than, (int, float))
                or not 0 <= older_than < float("inf")):
            raise _Reply("invalid_argument", "'older_than' must be the age in seconds (0 or "
                         "more) of the finished runs to purge: 2592000 for 30 days, got "
                         f"{older_than!r}", field="older_than")
        limit = body.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or not 1 <= limit < 2 ** 63):
            raise _Reply("invalid_argument", "'limit' must be a whole number from 1 up (or "
                         f"absent: every run that qualifies), got {limit!r}", field="limit")
        purged = self.engine.purge(older_than, limit=limit, namespace=ns)
        return {"purged": purged, "older_than": older_than, "namespace": ns}

    def _list(self, params: dict[str, str], ns: str) -> dict[str, Any]:
        query, filters = _filters(params, {"limit", "after"})
        limit = _int(query, "limit", 100)
        if not 1 <= limit <= 1000:
            raise _Reply("invalid_argument", f"limit={limit}: ask for 1 to 1000 runs per page",
                         field="limit")
        after = query.get("after")
        if after is not None:
            _field(ev.check_key, "after", after, "'after' (the last id of the previous page)")
        runs = self.engine.list(limit=limit, after_id=after, namespace=ns, **filters)
        next_after = runs[-1].workflow_id if len(runs) == limit else None
        return {"runs": [run_to_json(r) for r in runs], "next": next_after}

    def _count(self, params: dict[str, str], ns: str) -> dict[str, Any]:
        query, filters = _filters(params, {"by"})
        by = query.get("by")
        if by is None:
            return {"count": self.engine.count(namespace=ns, **filters)}
        if by != "status":
            raise _Reply("invalid_argument", f"by={by!r}: counts are grouped by=status only",
                         field="by")
        if filters.get("status") is not None:
            raise _Reply("invalid_argument", "by=status counts every status: leave out 'status'",
                         field="status")
        filters.pop("status", None)
        return {"counts": self.engine.count_by_status(namespace=ns, **filters)}

    def _result(self, wid: str, query: dict[str, str], ns: str) -> dict[str, Any]:
        timeout = min(_number(query, "timeout", self.max_wait), self.max_wait)
        run_id = _run_id(query.get("run_id"))
        if run_id is None:
            result = self.engine.result(wid, timeout=timeout, namespace=ns)
            return {"workflow_id": wid, "status": ev.COMPLETED, "result": result}
        result = self.engine.result(wid, timeout=timeout, run_id=run_id, namespace=ns)
        return {"workflow_id": wid, "run_id": run_id, "status": ev.COMPLETED, "result": result}

    def _history(self, wid: str, query: dict[str, str], ns: str) -> dict[str, Any]:
        after = _int(query, "after", 0)
        limit = _int(query, "limit", self.page)
        if not 1 <= limit <= self.page:
            raise _Reply("invalid_argument", f"limit={limit}: ask for 1 to {self.page} events "
                         "per page (follow 'next' for the rest)")
        run_id = query.get("run_id")
        events = self.engine.history(wid, after, run_id, limit, namespace=ns)
        if not events and after:
            self._run_of(wid, run_id, ns)  # an unknown run is a 404, past its end too
        # A page at a time (issue 16: one request of a big run held its whole history).
        next_after = events[-1].seq if len(events) == limit else None
        return {"events": [event_to_json(e) for e in events], "next": next_after}

    def _run_of(self, wid: str, run_id: Optional[str], ns: str) -> str:
        """The run id a request names (the current run's by default); a
        WorkflowNotFound for an unknown workflow or run."""
        info = self.engine.describe(wid, namespace=ns)
        if run_id is None or run_id == info.run_id:
            return info.run_id
        self.engine.history(wid, 0, run_id, 1, namespace=ns)  # an earlier run, or not found
        return run_id

    def _ended(self, wid: str, run_id: str, ns: str) -> bool:
        # The status commits with the terminal event (store.py): read it
        # before the history, and an empty read after it means no more events.
        info = self.engine.describe(wid, namespace=ns)
        return info.run_id != run_id or info.status != ev.RUNNING

    def _stream(self, wid: str, query: dict[str, str], environ: dict[str, Any],
                start_response: StartResponse, ns: str) -> Iterable[bytes]:
        # Before answering: an unknown workflow or run is a 404 in every form
        # of the request, not a stream that waits forever (issue 16).
        run_id = self._run_of(wid, query.get("run_id") or None, ns)
        head = self.engine.describe(wid, run_id=run_id, namespace=ns).head_seq
        last_id = environ.get("HTTP_LAST_EVENT_ID")
        if last_id:  # a reconnect resumes after the last event it saw
            after = _int({"Last-Event-ID": last_id}, "Last-Event-ID", 0)
            what = "Last-Event-ID"
        elif "after" in query:  # after=0: from the first event
            after, what = _int(query, "after", 0), "after"
        else:  # no cursor: a live tail, the events recorded from now on
            after, what = head, ""
        if what and not 0 <= after <= head:
            raise _Reply("invalid_argument", f"{what}={after}: a cursor is a seq of this run, 0 "
                         f"to its last recorded event ({head}); 0 streams from the first event, "
                         "no cursor from now on", field=what)
        first = self.engine.history(wid, after, run_id, self.page, namespace=ns)
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                  ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        return self._events(wid, run_id, after, first, ns)

    def _events(self, wid: str, run_id: str, after: int, batch: list[ev.Event],
                ns: str) -> Iterator[bytes]:
        # The run id rides on the first frame, so a client resumes this run
        # (the workflow id may later name a run that continued as new).
        yield f"retry: 1000\nevent: run\ndata: {json.dumps({'run_id': run_id})}\n\n".encode()
        naps, ended = _Naps(self.stream_poll, self.heartbeat), False
        while not self.draining:
            for event in batch:
                after = event.seq
                yield (f"id: {event.seq}\nevent: {event.type}\n"
                       f"data: {json.dumps(event_to_json(event))}\n\n").encode()
                if event.type in ev.TERMINAL_TYPES:
                    yield _END
                    return
            if batch:
                naps.news()
            elif ended:  # a cursor at or past the end of a finished run
                yield _END
                return
            elif naps.nap():
                yield b": keep-alive\n\n"
            try:
                ended = len(batch) < self.page and self._ended(wid, run_id, ns)
                # A page at a time: a stream holds one page of a big run, not its history.
                batch = self.engine.history(wid, after, run_id, self.page, namespace=ns)
            except (EngineClosed, StoreUnavailable):
                return  # the answer has begun: a cut, which the client resumes after `after`


    # -- the store-wide event stream (runtime/global_events.py) ----------------------------
    def _global_events(self, method: str, rest: list[str], params: dict[str, str],
                       environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """``GET /v1/events`` (a stream) and ``GET /v1/events/page``."""
        if rest not in ([], ["page"]):
            raise _Reply("not_found", f"no route /v1/events/{'/'.join(rest)}; the store-wide "
                         "events are GET /v1/events (a stream) and GET /v1/events/page")
        if method != "GET":
            raise _not_allowed(method, "GET")
        paged = rest == ["page"]
        query = _query(params, {"after", "type", "status", "namespace"}
                       | ({"limit"} if paged else set()))
        filters = {"types": _names(query, "type", ev.EVENT_TYPES),
                   "statuses": _names(query, "status", ev.STATUSES),
                   "namespace": self._namespace(environ, query)}
        head = self.engine.event_head()
        last_id = None if paged else _header(environ, "HTTP_LAST_EVENT_ID")
        if last_id:  # a reconnect resumes after the last frame it saw
            after, what = _position(last_id, "Last-Event-ID"), "Last-Event-ID"
        elif "after" in query:  # after=0: from the first event
            after, what = _position(query["after"], "after"), "after"
        else:  # no cursor: the events recorded from now on
            after, what = head, ""
        if what and not 0 <= after <= head:
            raise _Reply("invalid_argument", f"{what}={after}: a cursor is a global event "
                         f"position, 0 to the last recorded ({head}); 0 streams from the first "
                         "event, no cursor from now on", field=what)
        if paged:
            limit = _int(query, "limit", 100)
            if not 1 <= limit <= self.page:
                raise _Reply("invalid_argument", f"limit={limit}: ask for 1 to {self.page} "
                             "events per page (follow 'next' for the rest)", field="limit")
            found = self.engine.events(after, limit=limit, **filters)
            return _reply(start_response, 200, {"events": [global_event_to_json(e)
                                                           for e in found.events],
                                                "next": found.next})
        first = self.engine.events(after, limit=self.page, **filters)
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                  ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        return self._global_frames(after, first.events, first.next, filters)

    def _global_frames(self, after: int, batch: list[Any], cursor: int,
                       filters: dict[str, Any]) -> Iterator[bytes]:
        # The cursor rides on a first frame, and on keep-alives when filters
        # skipped events: a client that reconnects with the last id it saw
        # resumes there, not from a new "now" (which would lose the events
        # recorded while it was away).
        yield _cursor_frame(after, retry=True)
        naps, sent = _Naps(self.stream_poll, self.heartbeat), after
        while not self.draining:
            for event in batch:
                sent = event.position
                yield (f"id: {event.position}\nevent: {event.type}\n"
                       f"data: {json.dumps(global_event_to_json(event))}\n\n").encode()
            if batch:
                naps.news()
            elif naps.nap():
                yield _cursor_frame(cursor) if cursor != sent else b": keep-alive\n\n"
                sent = cursor
            try:
                found = self.engine.events(cursor, limit=self.page, **filters)
            except (EngineClosed, StoreUnavailable):
                return  # a cut, which the client resumes after the last id it saw
            batch, cursor = found.events, found.next
def parse_tokens(token: Union[None, str, Sequence[str]]
                 ) -> Optional[list[tuple[bytes, Optional[frozenset[str]]]]]:
    """The tokens a server takes, each ``(secret, the namespaces it grants or
    None for all)``, from ``SECRET`` and ``SECRET:ns1,ns2`` forms (a list, or
    one string separated by spaces); None when no token is set. A malformed
    one is a :class:`ConfigurationError` that never shows the secret."""
    if token is None:
        return None
    items = token.split() if isinstance(token, str) else [t for one in token for t in one.split()]
    if not items:
        raise ConfigurationError("the token is empty: give SECRET or SECRET:ns1,ns2 (or none "
                                 "at all, for an API open to anybody who reaches it)")
    tokens: list[tuple[bytes, Optional[frozenset[str]]]] = []
    for number, item in enumerate(items, 1):
        secret, colon, names = item.partition(":")
        if not secret:
            raise ConfigurationError(f"token {number} of {len(items)} has no secret before its "
                                     "':'; the form is SECRET or SECRET:ns1,ns2")
        granted: Optional[frozenset[str]] = None
        if colon:
            listed = [n for n in names.split(",")]
            for name in listed:
                namespaces.check_namespace(name, f"token {number} of {len(items)}: a namespace "
                                           "it grants")
            granted = frozenset(listed)
        tokens.append((secret.encode(), granted))
    return tokens


_DOCUMENT: list[dict[str, Any]] = []


def _cursor_frame(position: int, retry: bool = False) -> bytes:
    """A frame that only moves the client's cursor (its Last-Event-ID)."""
    return (("retry: 1000\n" if retry else "")
            + f"id: {position}\nevent: cursor\ndata: {json.dumps({'next': position})}\n\n").encode()


def _position(text: str, field: str) -> int:
    try:
        return int(text.strip()) if len(text.strip()) <= 18 else int("x")
    except ValueError:
        raise _Reply("invalid_argument", f"{field}={text[:30]!r}: a cursor is a whole number "
                     "(a global event position)", field=field) from None


def _names(query: dict[str, str], key: str, valid: Any) -> Optional[list[str]]:
    """A comma-separated filter (``type=StepCompleted,TimerFired``), each
    name checked: a 400 naming the field and the valid choices."""
    if key not in query:
        return None
    names = [name.strip() for name in query[key].split(",") if name.strip()]
    for name in names:
        if name not in valid:
            raise _Reply("invalid_argument", f"{key}={query[key]!r}: unknown {name!r}; choose "
                         f"among {', '.join(sorted(valid))} (several separated by commas)",
                         field=key)
    if not names:
        raise _Reply("invalid_argument", f"{key}= names nothing; leave it out, or name one or "
                     f"more of {', '.join(sorted(valid))}", field=key)
    return names


def _openapi() -> dict[str, Any]:
    if not _DOCUMENT:  # built once per process (a benign race: two equal builds)
        from aion_green.transport.openapi import document

        _DOCUMENT.append(document())
    return _DOCUMENT[0]


# The last frame of a stream: the run has ended and nothing follows (a
# client stops here rather than reconnect, e.g. with a cursor past the end).
_END = b"event: end\ndata: {}\n\n"


class _Naps:
    """The pauses of a stream between two reads: short after news, doubling
    up to ``most`` while nothing comes; :meth:`nap` says when a keep-alive
    is due (every ``heartbeat`` seconds of quiet)."""

    def __init__(self, most: float, heartbeat: float) -> None:
        self.most, self.heartbeat = most, heartbeat
        self.pause, self.idle = 0.02, 0.0

    def news(self) -> None:
        self.pause, self.idle = 0.02, 0.0

    def nap(self) -> bool:
        _pause(self.pause)
        self.idle += self.pause
        self.pause = min(self.pause * 2, self.most)
        if self.idle < self.heartbeat:
            return False
        self.idle = 0.0
        return True


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
    stays inside its segment) when the server gives the raw path, as UTF-8.

    WSGI servers hand over strings whose characters are the request's bytes
    (PEP 3333, "latin-1"); PATH_INFO is already percent-decoded that way, so
    "caf%C3%A9" arrives as "cafÃ©" and is re-read here as UTF-8 (issue 16)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path = raw.split("?", 1)[0]
        if "://" in path:  # an absolute URI in the request line
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        script = environ.get("SCRIPT_NAME", "")
        if script and path.startswith(script):
            path = path[len(script):]
        path = path.strip("/")
        return [_utf8(unquote_to_bytes(_wire_bytes(s)), "the path") for s in path.split("/")] if path else []
    path = _utf8(_wire_bytes(environ.get("PATH_INFO", "") or "/"), "the path").strip("/")
    return path.split("/") if path else []


def _wire_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded as UTF-8 already
        return text.encode("utf-8", "surrogateescape")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = ("send JSON in UTF-8" if what == "the body" else "send it in UTF-8"
                if what.endswith("header") else
                "once percent-decoded; percent-encode ids and names as UTF-8")
        raise _Reply("invalid_argument", f"{what} is not valid UTF-8 ({exc.reason} at byte "
                     f"{exc.start}): {hint}") from None


def _header(environ: dict[str, Any], key: str) -> Optional[str]:
    """A header that may carry an id, read as UTF-8 like the path (a WSGI
    server hands it over as latin-1 characters)."""
    value = environ.get(key)
    return _utf8(_wire_bytes(value), f"the {key[5:].replace('_', '-').title()} header") if value else None


def _params(environ: dict[str, Any]) -> dict[str, str]:
    """The query string's parameters (the last of a repeated one)."""
    text = _utf8(_wire_bytes(environ.get("QUERY_STRING", "")), "the query string")
    try:
        parsed = parse_qs(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _Reply("invalid_argument", "the query string is not valid UTF-8 once "
                     "percent-decoded; percent-encode values as UTF-8") from None
    return {k: v[-1] for k, v in parsed.items()}


def _query(params: dict[str, str], allowed: set[str]) -> dict[str, str]:
    allowed = allowed | {"namespace"}  # every route takes one (WSGIApp._namespace)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise _Reply("invalid_argument", f"unknown query parameter(s) {', '.join(unknown)}; "
                     f"this route takes {', '.join(sorted(allowed)) or 'none'}", field=unknown[0])
    return params


# The filters of the list and count routes (besides the attr.NAME ones).
_FILTERS = {"status", "type", "started_after", "started_before", "parent", "id_prefix"}
_ATTR = "attr."


def _filters(params: dict[str, str], allowed: set[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """The list or count route's query (checked against ``allowed`` and the
    filters) and the engine's filter arguments; a 400 naming the field of a
    bad one, before anything is read."""
    attrs = {k: v for k, v in params.items() if k.startswith(_ATTR)}
    query = _query({k: v for k, v in params.items() if k not in attrs}, allowed | _FILTERS)
    status = query.get("status")
    if status is not None and status not in ev.STATUSES:
        raise _Reply("invalid_argument", f"unknown status {status!r}; choose one of "
                     f"{', '.join(ev.STATUSES)}", field="status")
    filters: dict[str, Any] = {"status": status}
    wtype = query.get("type")
    if wtype is not None:
        filters["workflow_type"] = _field(ev.check_key, "type", wtype, "'type'")
    for key in ("started_after", "started_before"):
        if key in query:
            filters[key] = _field(parse_time, key, query[key], key)
    if "parent" in query:
        filters["parent"] = _field(ev.check_key, "parent", query["parent"], "'parent'")
    if "id_prefix" in query:
        filters["id_prefix"] = _field(ev.check_key, "id_prefix", query["id_prefix"], "'id_prefix'")
    attributes: dict[str, str] = {}
    for key, value in attrs.items():
        name = key[len(_ATTR):]
        _field(ev.check_attribute_name, key, name, f"the attribute name {name!r} of {key!r}")
        attributes[name] = _field(ev.check_attribute_value, key, value, f"{key!r}")
    if attributes:
        filters["attributes"] = attributes
    return query, filters


def _field(check: Callable[[Any, str], Any], field: str, value: Any, what: str) -> Any:
    """``check(value, what)``, its error a 400 that names ``field``."""
    try:
        return check(value, what)
    except AionError as exc:
        raise _Reply("invalid_argument", str(exc), field=field) from None


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    length_text = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(length_text) if length_text else None
    except ValueError:
        length = -1
    if length is not None and length < 0:
        # wsgiref reads a negative length as "to the end": a request that
        # never ends held its thread forever (issue 16).
        raise _Reply("invalid_argument", f"Content-Length {length_text!r} is not a size in bytes")
    if length is not None and length > limit:
        raise _Reply("too_large", f"the body has {length} bytes; the body size limit of this "
                     f"server is {limit} bytes")
    stream = environ["wsgi.input"]
    if length is None and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return b""  # no length, no chunks: no body (wsgiref would wait for the end)
    try:
        raw = stream.read(limit + 1 if length is None else length)
    except OSError as exc:  # a read timeout (serve.py), or a cut: nothing was done
        raise _Reply("request_timeout", f"the body did not arrive ({exc or type(exc).__name__}); "
                     "nothing of this request was done: send it again, whole") from None
    if len(raw) > limit:
        raise _Reply("too_large", f"the body has more than {limit} bytes; the body size limit "
                     f"of this server is {limit} bytes")
    return bytes(raw)


def _parse(raw: bytes, max_depth: int, max_digits: int) -> Any:
    text = _utf8(raw, "the body")

    def whole(digits: str) -> int:
        if len(digits.lstrip("-")) > max_digits:
            raise _Reply("invalid_argument", f"the body holds a number of {len(digits)} digits; "
                         f"the number size limit is {max_digits} digits (send a string)")
        return int(digits)

    def real(digits: str) -> float:
        number = float(digits)
        if number in (float("inf"), float("-inf")):
            raise _Reply("invalid_argument", f"the body holds the number {digits[:20]}..., "
                         "beyond a float; the number size limit is a finite float "
                         f"and whole numbers of {max_digits} digits (send a string)")
        return number

    try:
        body = json.loads(text, parse_constant=_no_constant, parse_int=whole, parse_float=real)
    except RecursionError:
        body = None
    except ValueError as exc:
        raise _Reply("invalid_argument", f"the body is not valid JSON ({exc})") from None
    depth = _depth(body, max_depth) if body is not None else max_depth + 1
    if depth > max_depth:
        raise _Reply("invalid_argument", "the body nests arrays and objects deeper than the "
                     f"nesting depth limit of {max_depth}")
    return body


def _depth(value: Any, limit: int) -> int:
    """How deep ``value`` nests, counted up to ``limit + 1`` (no recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level > limit:
                return level
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _body(environ: dict[str, Any], limit: int, allowed: set[str], max_depth: int = 64,
          max_digits: int = 64) -> dict[str, Any]:
    raw = _read_body(environ, limit)
    if not raw.strip():
        return {}
    body = _parse(raw, max_depth, max_digits)
    if not isinstance(body, dict):
        raise _Reply("invalid_argument", f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _Reply("invalid_argument", f"unknown field(s) {', '.join(unknown)}; this route takes "
                     f"{', '.join(sorted(allowed))}")
    return body


def _every(body: dict[str, Any]) -> Any:
    every = body.get("every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, (int, float))):
        raise _Reply("invalid_argument", f"'every' is a number of seconds, got {every!r}",
                     field="every")
    return every


def _start_at(body: dict[str, Any]) -> Optional[datetime]:
    start_at = _str(body, "start_at", None)
    if start_at is None:
        return None
    try:
        when = datetime.fromisoformat(start_at.replace("Z", "+00:00"))
    except ValueError:
        raise _Reply("invalid_argument", f"'start_at' must be an ISO 8601 time with a "
                     f"zone (2031-03-01T02:00:00Z), got {start_at!r}", field="start_at") from None
    if when.tzinfo is None:
        raise _Reply("invalid_argument", f"'start_at' needs a zone (Z or +HH:MM), got "
                     f"{start_at!r}", field="start_at")
    return when


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _str(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key, default)
    if value is not default and not isinstance(value, str):
        raise _Reply("invalid_argument", f"'{key}' must be a string, got {value!r}")
    if isinstance(value, str):
        _text(value, f"'{key}'")
    return value


def _text(value: str, what: str) -> str:
    # JSON's "\ud800" escape gives a lone surrogate, which no store can
    # write (a StoreError, a 500, for an id: issue 16).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reply("invalid_argument", f"{what} holds a lone surrogate ({value!r}); "
                     "send text (UTF-16 surrogates in pairs only)") from None
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
    if isinstance(value, str) and len(value.strip().lstrip("+-")) > 18:
        raise _Reply("invalid_argument", f"'{key}' has more than 18 digits; the number size "
                     f"limit is 18 digits, got {value[:30]!r}...")
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


def _run_id(value: Any) -> Optional[str]:
    """A run id a request names: a non-empty string, or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _Reply("invalid_argument", f"'run_id' must be a run id (a non-empty string), "
                     f"got {value!r}", field="run_id")
    _text(value, "'run_id'")
    return value


def _run_kw(body: dict[str, Any]) -> dict[str, Any]:
    """``run_id=...`` for the engine call, when the body names a run."""
    run_id = _run_id(body.get("run_id"))
    return {} if run_id is None else {"run_id": run_id}


def _error(start_response: StartResponse, code: str, message: str, *, retry: bool = True,
           **extra: Any) -> list[bytes]:
    status = ERRORS[code][0]
    headers = [("Allow", extra["allow"])] if "allow" in extra else []
    if code == "unauthenticated":
        headers.append(("WWW-Authenticate", 'Bearer realm="aion_green"'))
    if code == "unavailable" and retry:  # a store that is down, a server that is stopping: ask again
        headers.append(("Retry-After", "1"))
    return _reply(start_response, status, {"error": {"code": code, "message": message, **extra}},
                  headers)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
            422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}
