"""The HTTP API described once: every route with its parameters, body,
answer, errors and an example, as an OpenAPI 3.1 document (served at
``GET /v1/openapi.json``) and as the Markdown reference page
(``docs/http-api.md``, written by ``python -m aion_green.transport.openapi``).

:data:`ROUTES` is the list the WSGI app serves; ``tests/test_openapi.py``
checks it against what the app answers, so a route added to the app and not
here (or the other way round) fails the suite.
"""
from __future__ import annotations

import json
import sys
from typing import Any, NamedTuple, Optional

from aion_green.transport.codec import ERRORS


class Param(NamedTuple):
    name: str
    where: str  # "path", "query" or "header"
    schema: dict[str, Any]
    text: str
    required: bool = False


class Route(NamedTuple):
    method: str
    path: str
    summary: str
    text: str
    params: tuple[Param, ...] = ()
    body: Optional[dict[str, Any]] = None  # the JSON body's properties
    required: tuple[str, ...] = ()  # the body's required fields
    answer: Optional[dict[str, Any]] = None  # the 200 answer's schema
    errors: tuple[str, ...] = ()
    example: Optional[tuple[Any, Any]] = None  # (request body or query, answer)
    auth: bool = True
    stream: bool = False
    media: Optional[str] = None  # the 200 answer's type, when not JSON nor a stream


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_ANY: dict[str, Any] = {}
_ID = Param("id", "path", _STR, "The workflow id, percent-encoded UTF-8 (or give `workflow_id` "
            "in the query string instead: `/v1/workflows/ACTION?workflow_id=ID`).", True)
_RUN_Q = Param("run_id", "query", _STR, "One run of the workflow (default: its current run).")
_RUN_B = {"run_id": {"type": "string", "description": "The run it is for: refused (409 "
                     "`not_running`, nothing recorded) unless it is the workflow's current run."}}
_REF_RUN = {"$ref": "#/components/schemas/Run"}
_REF_EVENT = {"$ref": "#/components/schemas/Event"}
_COMMON = ("unauthenticated", "unavailable", "internal")
# The filters of the list and count routes.
_FILTERS = (
    Param("status", "query", _STR, "running, completed, failed, cancelled, continued or "
          "timed_out."),
    Param("type", "query", _STR, "A workflow type."),
    Param("started_after", "query", _STR, "Runs whose current run started at or after this "
          "time: ISO-8601 (`2024-05-01`, `2024-05-01T12:00:00Z`; no offset: UTC)."),
    Param("started_before", "query", _STR, "Runs whose current run started before this time "
          "(ISO-8601)."),
    Param("parent", "query", _STR, "The runs this workflow id started as children."),
    Param("id_prefix", "query", _STR, "The runs whose workflow id begins with this."),
    Param("attr.NAME", "query", _STR, "A search attribute (`ctx.upsert_search_attributes`) "
          "to match, by its text form: a string as it is, a number or boolean as its JSON "
          "text (`attr.total=42` matches 42, not 42.0). Several: all must match."),
)

# The filters and cursor of the store-wide event routes.
_GLOBAL = (
    Param("after", "query", _INT, "The events after this global position (0: from the first)."),
    Param("type", "query", _STR, "Event types, comma-separated (`StepCompleted,TimerFired`)."),
    Param("status", "query", _STR, "Statuses of the runs the events belong to, as they are "
          "when read (not when recorded), comma-separated: running, completed, failed, "
          "cancelled, continued (an earlier run of a chain)."),
)
_SCHEDULE_ID = Param("id", "path", _STR, "The schedule id, percent-encoded UTF-8.", True)
# A control request: no such schedule; a deleted one (or one whose current run
# predates control: 400); bad input.
_CONTROL_ERRORS = ("not_found", "not_running", "invalid_argument")

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "Liveness", "`{\"ok\": true}` while the server answers; never "
          "authenticated.", answer={"type": "object", "properties": {"ok": {"type": "boolean"}}},
          example=(None, {"ok": True}), auth=False),
    Route("GET", "/health/live", "Liveness probe", "`{\"ok\": true}` while the process "
          "serves, draining included; never authenticated.",
          answer={"type": "object", "properties": {"ok": {"type": "boolean"}}},
          example=(None, {"ok": True}), auth=False),
    Route("GET", "/health/ready", "Readiness probe",
          "200 when the engine can take work: it is not shut down, its store answers a read "
          "(through the engine's reader) within the app's `ready_timeout` (1 s), and over "
          "PostgreSQL this engine's lease is current. Otherwise a 503 `unavailable` whose "
          "`checks` name what is not ready (never a path, a URL or an error's message); a "
          "draining server is not ready. Never authenticated (probes send no token).",
          answer={"type": "object", "properties": {
              "ok": {"type": "boolean"}, "driving": {"type": "boolean"},
              "checks": {"type": "object", "description": "check -> `ok` or what is wrong: "
                         "`store`, `lease` (PostgreSQL), `engine`, `server`."}}},
          errors=("unavailable",),
          example=(None, {"ok": True, "driving": True, "checks": {"store": "ok"}}), auth=False),
    Route("GET", "/metrics", "Prometheus metrics",
          "The engine's figures in Prometheus's text format (OpenMetrics when the `Accept` "
          "header asks for it): step attempts started, completed and failed, step duration, "
          "group-commit size and duration, runs by status, hub lag, queue depths, timers "
          "pending, resident runs, lease state. Wants the token when one is set (it names "
          "workflow types). Without `prometheus_client` (the `metrics` extra): 503 "
          "`unavailable` saying what to install.",
          media="text/plain",
          example=(None, "# TYPE aion_steps_started_total counter\n"
                         "aion_steps_started_total 14.0\n...")),
    Route("GET", "/v1/openapi.json", "This document", "The API as OpenAPI 3.1; never "
          "authenticated (it names no workflow and no secret).", answer={"type": "object"},
          auth=False),
    Route("POST", "/v1/workflows", "Start a workflow",
          "Start a run of a registered workflow type. Idempotent by id: the same id with the "
          "same type and arguments answers the existing run; other ones are a 409.",
          params=(Param("Idempotency-Key", "header", _STR, "The workflow id (as the body's "
                        "`id`; send one, or the same in both)."),),
          body={"workflow": {"type": "string", "description": "The registered type name."},
                "args": {"type": "array", "description": "Its arguments, JSON values."},
                "id": {"type": "string", "description": "The workflow id (default: a new uuid)."},
                "execution_timeout": {"type": "number", "description": "Seconds (above 0) the "
                                      "workflow may run, over every run of its chain; past "
                                      "them it ends with status `timed_out`."},
                "wait": {"type": "number", "description": "Start and wait in one request: "
                         "seconds (above 0, at most the server's `max_wait`) to wait for the "
                         "run's end once it is started. Ended: `status` `completed` and "
                         "`result` (a failed, cancelled or timed-out end is the error "
                         "`/result` gives); still going: `status` `running`."}},
          required=("workflow",),
          answer={"type": "object", "properties": {"workflow_id": _STR, "run_id": _STR,
                                                   "namespace": _STR, "status": _STR,
                                                   "result": _ANY}},
          errors=("invalid_argument", "already_exists", "too_large", "workflow_failed",
                  "cancelled", "timed_out"),
          example=({"workflow": "shop.checkout", "args": ["o-1"], "id": "order-o-1"},
                   {"workflow_id": "order-o-1", "run_id": "5f0c...e1", "namespace": "default"})),
    Route("GET", "/v1/workflows", "List runs",
          "The current run of each workflow, ordered by id, a page at a time, filtered (all "
          "filters ANDed). Each summary names its `parent_id` and its `search_attributes`. A "
          "bad filter is a 400 whose `field` names it.",
          params=(*_FILTERS,
                  Param("limit", "query", _INT, "1 to 1000 (default 100)."),
                  Param("after", "query", _STR, "The page after this workflow id (`next`).")),
          answer={"type": "object", "properties": {
              "runs": {"type": "array", "items": _REF_RUN},
              "next": {"type": ["string", "null"]}}},
          errors=("invalid_argument",),
          example=("?status=running&limit=2", {"runs": ["..."], "next": "order-o-2"})),
    Route("GET", "/v1/workflows/count", "Count runs",
          "How many runs the list with the same filters finds, over all its pages; with "
          "`by=status`, a count per status (every status named). A workflow whose id is "
          "`count` is described with `/v1/workflows?workflow_id=count`.",
          params=(*_FILTERS, Param("by", "query", _STR, "`status`: a count per status (then "
                                   "leave out `status`).")),
          answer={"type": "object", "properties": {
              "count": _INT, "counts": {"type": "object", "additionalProperties": _INT}}},
          errors=("invalid_argument",),
          example=("?attr.customer=c-1&by=status", {"counts": {
              "running": 1, "completed": 4, "failed": 0, "cancelled": 0, "continued": 0}})),
    Route("GET", "/v1/workflows/{id}", "Describe a run",
          "What the store knows of the run. An earlier run of a chain that continued as new "
          "has the status `continued` and names `next_run_id`.",
          params=(_ID, _RUN_Q), answer=_REF_RUN, errors=("not_found", "invalid_argument"),
          example=(None, {"workflow_id": "order-o-1", "run_id": "5f0c...e1",
                          "workflow_type": "shop.checkout", "status": "running",
                          "args": ["o-1"], "result": None, "error": None, "head_seq": 4,
                          "created_at": 1764720000.0, "updated_at": 1764720001.5})),
    Route("GET", "/v1/workflows/{id}/result", "Wait for the end",
          "The workflow's result once it ends (the last run of a chain; with `run_id`, that "
          "run alone). Waits at most the server's `max_wait` (60 s): a 504 `timeout` then "
          "means it goes on running, ask again.",
          params=(_ID, Param("timeout", "query", _NUM, "Seconds to wait (at most max_wait)."),
                  _RUN_Q),
          answer={"type": "object", "properties": {"workflow_id": _STR, "status": _STR,
                                                   "result": _ANY, "run_id": _STR}},
          errors=("not_found", "workflow_failed", "cancelled", "timed_out", "continued_as_new",
                  "timeout", "invalid_argument"),
          example=("?timeout=30", {"workflow_id": "order-o-1", "status": "completed",
                                   "result": {"tracking": "t-9"}})),
    Route("GET", "/v1/workflows/{id}/history", "Read a history",
          "The recorded events of the run, a page at a time (follow `next`).",
          params=(_ID, Param("after", "query", _INT, "Events after this seq (default 0)."),
                  _RUN_Q, Param("limit", "query", _INT, "1 to the server's page (1000).")),
          answer={"type": "object", "properties": {
              "events": {"type": "array", "items": _REF_EVENT},
              "next": {"type": ["integer", "null"]}}},
          errors=("not_found", "invalid_argument"),
          example=("?after=0&limit=2", {"events": [
              {"seq": 1, "type": "WorkflowStarted", "at": 1764720000.0, "data": {}},
              {"seq": 2, "type": "StepCompleted", "at": 1764720000.1, "data": {}}], "next": 2})),
    Route("GET", "/v1/workflows/{id}/events", "Stream a run's events",
          "Server-sent events: a `run` frame naming the run, then one frame per event (`id:` "
          "its seq, `event:` its type, `data:` the event), and an `end` frame after the run's "
          "end. No cursor: the events recorded from now on (a live tail); `after=0`: from the "
          "first; `Last-Event-ID` resumes after that seq. A cursor below 0 or past the run's "
          "last event is a 400.",
          params=(_ID, Param("after", "query", _INT, "Stream the events after this seq."),
                  _RUN_Q, Param("Last-Event-ID", "header", _STR, "Resume after this seq.")),
          errors=("not_found", "invalid_argument"), stream=True,
          example=("?after=0", "event: run\ndata: {\"run_id\": \"5f0c...e1\"}\n\n"
                               "id: 1\nevent: WorkflowStarted\ndata: {...}\n\n...")),
    Route("GET", "/v1/events", "Stream every run's events",
          "Server-sent events of every run's events in commit order, for dashboards and "
          "exporters. Each event is one frame: `id:` its global position (the cursor), "
          "`event:` its type, `data:` a GlobalEvent (namespace, workflow id, run id, per-run "
          "seq, type, time, data): the events of the runs of one namespace. A `cursor` "
          "frame (`id:` and `{\"next\": N}`) opens the stream, and "
          "keep-alives carry the cursor when filters skipped events, so a client that "
          "reconnects with the last id it saw misses nothing. No cursor: the events recorded "
          "from now on (a live tail); `after=0`: from the first; `Last-Event-ID` resumes after "
          "that position. A cursor below 0 or past the last recorded position is a 400 whose "
          "`field` names `after` or `Last-Event-ID`. Positions are given in commit order "
          "(an event never appears below a position a reader has seen) and may have gaps "
          "(runs removed by retention). The stream ends only when the server stops.",
          params=(*_GLOBAL, Param("Last-Event-ID", "header", _INT,
                                  "Resume after this global position.")),
          errors=("invalid_argument",), stream=True,
          example=("?after=0&type=StepCompleted", "retry: 1000\nid: 0\nevent: cursor\n"
                   "data: {\"next\": 0}\n\nid: 2\nevent: StepCompleted\ndata: "
                   "{\"position\": 2, \"workflow_id\": \"order-o-1\", \"run_id\": "
                   "\"5f0c...e1\", \"seq\": 2, \"type\": \"StepCompleted\", ...}\n\n...")),
    Route("GET", "/v1/events/page", "Read every run's events, a page",
          "The events of `GET /v1/events` as one JSON page: those after `after` (no `after`: "
          "none, and `next` is the cursor of now), at most `limit`; follow `next`, which moves "
          "past events the filters skipped.",
          params=(*_GLOBAL, Param("limit", "query", _INT, "1 to the server's page (1000; "
                                  "default 100).")),
          answer={"type": "object", "properties": {
              "events": {"type": "array", "items": {"$ref": "#/components/schemas/GlobalEvent"}},
              "next": _INT}},
          errors=("invalid_argument",),
          example=("?after=0&limit=1", {"events": [
              {"position": 1, "namespace": "default", "workflow_id": "order-o-1",
               "run_id": "5f0c...e1", "seq": 1,
               "type": "WorkflowStarted", "at": 1764720000.0, "data": {}}], "next": 1})),
    Route("POST", "/v1/workflows/{id}/signals/{name}", "Send a message",
          "Record message `name` in the run's history (kept until the workflow receives it). "
          "With an idempotency key a retried signal is recorded once, and a retry answers the "
          "recorded `seq`, also once the signal has ended the run.",
          params=(_ID, Param("name", "path", _STR, "The message name.", True),
                  Param("Idempotency-Key", "header", _STR, "As the body's `idempotency_key`.")),
          body={"payload": {"description": "A JSON value."},
                "idempotency_key": {"type": "string"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR, "seq": _INT}},
          errors=("not_found", "not_running", "invalid_argument", "too_large"),
          example=({"payload": {"approved": True}}, {"workflow_id": "order-o-1", "seq": 7})),
    Route("POST", "/v1/workflows/{id}/queries/{name}", "Query a live run",
          "Ask the live run's `ctx.set_query(name, handler)`: `handler(*args)`, never recorded.",
          params=(_ID, Param("name", "path", _STR, "The query name.", True)),
          body={"args": {"type": "array"}, "timeout": {"type": "number"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR, "answer": _ANY}},
          errors=("not_found", "not_running", "query_failed", "timeout", "invalid_argument"),
          example=({"args": []}, {"workflow_id": "order-o-1", "answer": "waiting for approval"})),
    Route("POST", "/v1/workflows/{id}/cancel", "Request cancellation",
          "Record `CancelRequested`; the workflow sees `Cancelled` at its next wait and may "
          "clean up. Asking twice records once.",
          params=(_ID,), body={"reason": {"type": "string"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR,
                                                   "cancel_requested": {"type": "boolean"}}},
          errors=("not_found", "not_running", "invalid_argument"),
          example=({"reason": "customer asked"}, {"workflow_id": "order-o-1",
                                                  "cancel_requested": True})),
    Route("POST", "/v1/workflows/{id}/terminate", "Terminate a run",
          "End the run now, without cleanup: `WorkflowCancelled` (type `Terminated`) is "
          "recorded and none of its code runs again. Its children run on.",
          params=(_ID,), body={"reason": {"type": "string"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR,
                                                   "terminated": {"type": "boolean"}}},
          errors=("not_found", "not_running", "invalid_argument"),
          example=({"reason": "stuck"}, {"workflow_id": "order-o-1", "terminated": True})),
    Route("POST", "/v1/workflows/{id}/pause", "Pause a run",
          "Record `WorkflowPaused`: until it is unpaused the run starts no step, fires no "
          "timer and takes no message (messages are recorded and kept for it); a step already "
          "running finishes. Its status stays `running`, and describe shows `paused: true`. "
          "The pause holds across restarts; terminate and the execution timeout still end it.",
          params=(_ID,), body={"reason": {"type": "string"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR, "paused": {
              "type": "boolean"}, "seq": _INT}},
          errors=("not_found", "not_running", "invalid_argument"),
          example=({"reason": "supplier outage"}, {"workflow_id": "order-o-1", "paused": True,
                                                   "seq": 8})),
    Route("POST", "/v1/workflows/{id}/unpause", "Unpause a run",
          "Record `WorkflowUnpaused`: the run goes on; timers that came due while it was "
          "paused fire now, and messages recorded meanwhile are delivered.",
          params=(_ID,), body={"reason": {"type": "string"}, **_RUN_B},
          answer={"type": "object", "properties": {"workflow_id": _STR, "paused": {
              "type": "boolean"}, "seq": _INT}},
          errors=("not_found", "not_running", "invalid_argument"),
          example=({}, {"workflow_id": "order-o-1", "paused": False, "seq": 9})),
    Route("POST", "/v1/purge", "Purge finished runs",
          "Retention on demand: delete the runs that ended more than `older_than` seconds ago, "
          "at most `limit` of them (default: all), with everything the store holds of their "
          "ids (histories, earlier runs of a chain, timers, search attributes). Never a running "
          "run; a chain of continue-as-new goes with its last run; a child by its own end, but "
          "not while its running parent waits to record that end. A purged id is then unknown "
          "(404 `not_found`) and may be started again. Without `namespace`, every namespace's "
          "runs, which needs a token that grants every namespace (else 403 "
          "`namespace_denied`); with it, that namespace's only. The server's engine may also "
          "purge on a timer (`aion-green worker --retention 30d`).",
          body={"older_than": {"type": "number", "description": "The age in seconds, 0 or "
                               "more: runs that ended before now minus this go."},
                "limit": {"type": "integer", "description": "At most this many (1 or more)."}},
          required=("older_than",),
          answer={"type": "object", "properties": {"purged": _INT, "older_than": _NUM,
                                                   "namespace": {"type": ["string", "null"]}}},
          errors=("invalid_argument",),
          example=({"older_than": 2592000}, {"purged": 1204, "older_than": 2592000,
                                             "namespace": None})),
    Route("POST", "/v1/workflows/{id}/fork", "Fork a run",
          "A new workflow id (in the same namespace) whose history is a fresh "
          "`WorkflowStarted` (`forked_from`) and copies of the run's events 2..`from_seq`: "
          "replayed (no step, send or child start runs again), then it runs on live. The "
          "source, running or finished, is not changed. A cut that would split a record from "
          "its outcome is a 400 saying why; nothing is written.",
          params=(_ID,),
          body={"from_seq": {"type": "integer", "description": "The last event to reuse (from 1)."},
                "id": {"type": "string", "description": "The new workflow id (default: "
                       "`<id>/fork-<8 hex>`)."}, **_RUN_B},
          required=("from_seq",),
          answer={"type": "object", "properties": {"workflow_id": _STR, "run_id": _STR,
                                                   "namespace": _STR, "from": _STR}},
          errors=("not_found", "already_exists", "invalid_argument"),
          example=({"from_seq": 6, "id": "order-o-1-retry"},
                   {"workflow_id": "order-o-1-retry", "run_id": "77aa...03",
                    "namespace": "default", "from": "order-o-1"})),
    Route("POST", "/v1/workflows/{id}/resume", "Resume a failed or cancelled run",
          "Run a run that ended failed or cancelled again in place: its history is archived "
          "(read it with `run_id`) and a new run of the same id replays its events "
          "2..`from_seq` (default: before what failed, or before the cancel request), then runs "
          "on. Not `unpause`: a paused run is running. A running or completed run is a 400 "
          "saying what to do instead; nothing is written.",
          params=(_ID,),
          body={"from_seq": {"type": "integer", "description": "The last event to reuse "
                             "(default: the resume point)."}},
          answer={"type": "object", "properties": {"workflow_id": _STR, "run_id": _STR,
                                                   "namespace": _STR, "from": _STR}},
          errors=("not_found", "invalid_argument"),
          example=({}, {"workflow_id": "order-o-1", "run_id": "c3d4...9f",
                        "namespace": "default", "from": "order-o-1"})),
    Route("GET", "/v1/schedules", "List schedules",
          "The schedules (active ones; `include_deleted=true` adds unscheduled ones), ordered by "
          "id, a page at a time, each with its spec and, where the server drives it, its next "
          "fire time, the run it tracks and the fire that waits.",
          params=(Param("limit", "query", _INT, "1 to 1000 (default 100)."),
                  Param("after", "query", _STR, "The page after this schedule id (`next`)."),
                  Param("include_deleted", "query", _STR, "`true` or `false` (default).")),
          answer={"type": "object", "properties": {
              "schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}},
              "next": {"type": ["string", "null"]}}},
          errors=("invalid_argument",),
          example=("?limit=10", {"schedules": ["..."], "next": None})),
    Route("POST", "/v1/schedules", "Create a schedule",
          "Start workflow `workflow` at each fire time of `cron` (five fields, in `timezone`, "
          "UTC by default) or every `every` seconds (from `start_at`, or from now), as run "
          "`ID@<fire time>`. Idempotent by id and spec; another spec under the id is a 409.",
          body={"schedule_id": {"type": "string"}, "workflow": {"type": "string"},
                "args": {"type": "array"}, "cron": {"type": "string"},
                "every": {"type": "number", "description": "Seconds."},
                "start_at": {"type": "string", "description": "ISO 8601 with a zone."},
                "timezone": {"type": "string"},
                "overlap": {"type": "string", "enum": ["skip", "buffer_one", "cancel_previous",
                                                       "allow_all"]},
                "catch_up": {"type": "string", "enum": ["all", "one", "skip"]}},
          required=("schedule_id", "workflow"),
          answer={"type": "object", "properties": {"schedule_id": _STR, "run_id": _STR}},
          errors=("invalid_argument", "already_exists", "too_large"),
          example=({"schedule_id": "nightly", "workflow": "shop.report", "cron": "0 2 * * *"},
                   {"schedule_id": "nightly", "run_id": "9a1b...07"})),
    Route("GET", "/v1/schedules/{id}", "Describe a schedule",
          "One schedule: its current spec, `active`, `paused` (with its `note`) or `deleted`, "
          "and its next fire time.",
          params=(Param("id", "path", _STR, "The schedule id, percent-encoded UTF-8.", True),),
          answer={"$ref": "#/components/schemas/Schedule"}, errors=("not_found",),
          example=(None, {"schedule_id": "nightly", "workflow": "shop.report", "args": [],
                          "cron": "0 2 * * *", "every": None, "timezone": None,
                          "start_at": None, "overlap": "skip", "catch_up": "one",
                          "status": "active", "next_fire": "2031-03-02T02:00:00+00:00",
                          "running": None, "pending": None, "run_id": "9a1b...07",
                          "paused": False, "note": ""})),
    Route("DELETE", "/v1/schedules/{id}", "Delete a schedule",
          "Unschedule: the schedule fires no more (its cancel is recorded and it ends); the "
          "runs it started go on. Deleting a deleted schedule is fine.",
          params=(Param("id", "path", _STR, "The schedule id, percent-encoded UTF-8.", True),
                  Param("timeout", "query", _NUM, "Seconds to wait for its end (default 30, at "
                        "most max_wait).")),
          answer={"type": "object", "properties": {"schedule_id": _STR,
                                                   "deleted": {"type": "boolean"}}},
          errors=("not_found", "timeout", "invalid_argument"),
          example=(None, {"schedule_id": "nightly", "deleted": True})),
    Route("POST", "/v1/schedules/{id}/pause", "Pause a schedule",
          "From its next wait the schedule fires nothing until resumed (a trigger still starts "
          "a run); recorded in its history (a control message) before the answer. Describe "
          "shows it `paused`, with the note.",
          params=(_SCHEDULE_ID,), body={"note": {"type": "string", "description": "Why."}},
          answer={"type": "object", "properties": {"schedule_id": _STR,
                                                   "paused": {"type": "boolean"}}},
          errors=_CONTROL_ERRORS,
          example=({"note": "maintenance"}, {"schedule_id": "nightly", "paused": True})),
    Route("POST", "/v1/schedules/{id}/resume", "Resume a schedule",
          "The schedule fires again. The fires missed while it was paused go by its "
          "`catch_up` policy, as after downtime: `one` starts the latest, `all` each, `skip` "
          "none (but one on time).",
          params=(_SCHEDULE_ID,), body={},
          answer={"type": "object", "properties": {"schedule_id": _STR,
                                                   "paused": {"type": "boolean"}}},
          errors=_CONTROL_ERRORS,
          example=({}, {"schedule_id": "nightly", "paused": False})),
    Route("POST", "/v1/schedules/{id}/trigger", "Trigger a schedule now",
          "One fire now, run `ID@<now>`, under the schedule's `overlap` policy (under `skip` "
          "nothing starts while the run it tracks runs); paused or not.",
          params=(_SCHEDULE_ID,), body={},
          answer={"type": "object", "properties": {"schedule_id": _STR,
                                                   "triggered": {"type": "boolean"}}},
          errors=_CONTROL_ERRORS,
          example=({}, {"schedule_id": "nightly", "triggered": True})),
    Route("POST", "/v1/schedules/{id}/update", "Update a schedule",
          "Change the schedule's spec: only the fields given change (`cron` replaces an "
          "interval, `every` a cron). Checked as a new schedule is; its next fires follow the "
          "new spec from the update on. An empty update is a 400.",
          params=(_SCHEDULE_ID,),
          body={"cron": {"type": "string"}, "every": {"type": "number", "description": "Seconds."},
                "args": {"type": "array"},
                "start_at": {"type": "string", "description": "ISO 8601 with a zone."},
                "timezone": {"type": "string"},
                "overlap": {"type": "string", "enum": ["skip", "buffer_one", "cancel_previous",
                                                       "allow_all"]},
                "catch_up": {"type": "string", "enum": ["all", "one", "skip"]}},
          answer={"type": "object", "properties": {"schedule_id": _STR,
                                                   "updated": {"type": "boolean"}}},
          errors=_CONTROL_ERRORS,
          example=({"cron": "30 3 * * *"}, {"schedule_id": "nightly", "updated": True})),
)

# Every route of runs and schedules is in one namespace (WSGIApp._namespace).
_NAMESPACED = ("/v1/workflows", "/v1/schedules", "/v1/events", "/v1/purge")
_NS = Param("namespace", "query", _STR, "The namespace (default `default`); ids are unique "
            "per namespace, and a run of another namespace answers as an id never seen (404). "
            "A POST may name it in its body instead. A token not granted it: 403 "
            "`namespace_denied`, nothing done.")


def _in_namespaces(route: Route) -> Route:
    if not route.path.startswith(_NAMESPACED):
        return route
    body = None if route.body is None else {**route.body, "namespace": {
        "type": "string", "description": "The namespace (as `?namespace=`; default `default`)."}}
    return route._replace(params=route.params + (_NS,), body=body,
                          errors=route.errors + ("namespace_denied",))


ROUTES = tuple(_in_namespaces(route) for route in ROUTES)

_ERROR_TEXT = {
    "invalid_argument": "Bad input: the message names the field; nothing was recorded.",
    "unauthenticated": "No or a wrong bearer token.",
    "namespace_denied": "The token is not granted the namespace asked for: nothing was "
                        "done, nothing listed.",
    "not_found": "No such workflow, or no such run of it (or no such route).",
    "method_not_allowed": "The route takes another method.",
    "request_timeout": "The request's body did not arrive in time.",
    "already_exists": "The id names a run of another type or other arguments.",
    "not_running": "The run has finished, or the request names a run that is not the "
                   "current one: nothing was recorded.",
    "workflow_failed": "The run failed: `detail` holds its error type and message.",
    "cancelled": "The run was cancelled (or terminated).",
    "timed_out": "The run's execution timeout passed: it ended with status `timed_out`.",
    "continued_as_new": "That run continued as new: `next_run_id` names the run it became.",
    "too_large": "The body is over the server's limit.",
    "query_failed": "The query handler raised, the name is unknown, or no live run answers.",
    "internal": "A bug in aion_green (logged by the server).",
    "unavailable": "The store or the server is unavailable (or stopping: `Retry-After`).",
    "timeout": "No answer in time; the run goes on.",
}


def _error_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "enum": sorted(ERRORS)},
            "message": {"type": "string"}},
        "additionalProperties": True}}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ROUTES`."""
    from aion_green import __version__

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary, "description": route.text,
                              "operationId": _operation_id(route)}
        if route.params:
            op["parameters"] = [{"name": p.name, "in": p.where, "required": p.required,
                                 "schema": p.schema, "description": p.text} for p in route.params]
        if route.body is not None:
            body_schema: dict[str, Any] = {"type": "object", "properties": route.body,
                                           "additionalProperties": False}
            if route.required:
                body_schema["required"] = list(route.required)
            op["requestBody"] = {"required": bool(route.required), "content": {
                "application/json": {"schema": body_schema}}}
        media = route.media or ("text/event-stream" if route.stream else "application/json")
        ok: dict[str, Any] = {"description": "OK", "content": {
            media: {"schema": route.answer or {"type": "string"}}}}
        if route.example is not None and not route.stream:
            ok["content"][media]["example"] = route.example[1]
        responses: dict[str, Any] = {"200": ok}
        codes = route.errors + (_COMMON if route.auth else ("internal",))
        by_status: dict[str, list[str]] = {}
        for code in codes:
            by_status.setdefault(str(ERRORS[code][0]), []).append(code)
        for status, names in sorted(by_status.items()):
            responses[status] = {
                "description": "; ".join(f"`{n}`: {_ERROR_TEXT[n]}" for n in names),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        op["responses"] = responses
        if not route.auth:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "aion_green HTTP API", "version": __version__,
                 "description": "A durable workflow engine's operations over HTTP/JSON. Every "
                                "error is `{\"error\": {\"code\", \"message\", ...}}` with the "
                                "status of its code."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _error_schema(), "Run": _run_schema(), "Event": _event_schema(),
                        "Schedule": _schedule_schema(), "GlobalEvent": _global_event_schema()}},
        "security": [{"bearer": []}],
    }


def _operation_id(route: Route) -> str:
    words = [w for w in route.path.replace("{", "").replace("}", "").split("/") if w]
    return route.method.lower() + "_" + "_".join(w.replace(".", "_") for w in words)


def _run_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {
        "workflow_id": _STR, "namespace": _STR, "run_id": _STR, "workflow_type": _STR,
        "status": {"type": "string",
                   "enum": ["running", "completed", "failed", "cancelled", "continued",
                            "timed_out"]},
        "args": {"type": "array"}, "result": _ANY, "error": _ANY, "head_seq": _INT,
        "created_at": _NUM, "updated_at": _NUM, "unrunnable": _STR, "next_run_id": _STR,
        "steps_running": {"type": "array"},
        "parent_id": {"type": ["string", "null"],
                      "description": "The workflow id that started this run as a child."},
        "search_attributes": {"type": "object", "description": "name -> str, int, float or "
                              "bool (ctx.upsert_search_attributes)."},
        "execution_deadline": {"type": "number", "description": "When the run's execution "
                               "timeout passes (seconds since the epoch); absent without one."},
        "paused": {"type": "boolean", "description": "Present (true) while the run is "
                   "paused; its status stays `running`."}}}


def _schedule_schema() -> dict[str, Any]:
    nullable = {"type": ["string", "null"]}
    return {"type": "object", "properties": {
        "schedule_id": _STR, "workflow": _STR, "args": {"type": "array"}, "cron": nullable,
        "every": {"type": ["number", "null"]}, "timezone": nullable, "start_at": nullable,
        "overlap": _STR, "catch_up": _STR, "status": _STR, "next_fire": nullable,
        "running": nullable, "pending": nullable, "run_id": nullable,
        "paused": {"type": "boolean"}, "note": _STR}}


def _event_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {"seq": _INT, "type": _STR, "at": _NUM,
                                             "data": {"type": "object"}}}


def _global_event_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {
        "position": {"type": "integer", "description": "The global cursor."},
        "namespace": _STR, "workflow_id": _STR, "run_id": _STR, "seq": _INT, "type": _STR, "at": _NUM,
        "data": {"type": "object"}}}


def markdown() -> str:
    """The reference page of every route (``docs/http-api.md``)."""
    lines = ["# HTTP API reference", "",
             "<!-- Written by `python -m aion_green.transport.openapi > docs/http-api.md`; "
             "tests/test_openapi.py checks it is current. -->", "",
             "The engine's operations over HTTP/JSON (`aion-green worker --http HOST:PORT`, or "
             "`aion_green.transport.wsgi.WSGIApp` in any WSGI server). With a token, every "
             "request but the health and document routes sends `Authorization: Bearer TOKEN`. "
             "The machine-readable form is `GET /v1/openapi.json`.", "",
             "Ids are percent-encoded UTF-8 path segments; every route of one run also takes "
             "its id as `?workflow_id=ID` (signals and queries with `&name=NAME`) on "
             "`/v1/workflows/ACTION`, which every WSGI server hands over intact.", "",
             "## Namespaces and grants", "",
             "Every run belongs to a namespace: `default` unless a request names one "
             "(`?namespace=NS` on any route of runs and schedules, or `namespace` in a POST "
             "body). Ids are unique per namespace; a run's children, the messages it sends and "
             "the runs a schedule starts stay in its namespace. A run of another namespace is "
             "invisible: the answer is the one for an id never seen (404 `not_found`).", "",
             "A server's token is `SECRET` (every namespace) or `SECRET:ns1,ns2` (those "
             "only); `aion-green worker --token` is repeatable, and `AION_GREEN_TOKEN` takes "
             "several separated by spaces. A request for a namespace its token is not granted "
             "is a 403 `namespace_denied`: nothing is done, recorded or listed.", "",
             "## Errors", "",
             "Every error is one JSON body, `{\"error\": {\"code\", \"message\", ...}}`:", "",
             "| code | status | meaning |", "|---|---|---|"]
    for code, (status, _) in sorted(ERRORS.items(), key=lambda kv: (kv[1][0], kv[0])):
        lines.append(f"| `{code}` | {status} | {_ERROR_TEXT[code]} |")
    for route in ROUTES:
        lines += ["", f"## {route.method} `{route.path}`", "", f"**{route.summary}.** {route.text}"]
        if not route.auth:
            lines += ["", "No token needed."]
        if route.params:
            lines += ["", "| parameter | in | meaning |", "|---|---|---|"]
            lines += [f"| `{p.name}`{' (required)' if p.required else ''} | {p.where} | {p.text} |"
                      for p in route.params]
        if route.body is not None:
            lines += ["", "| body field | meaning |", "|---|---|"]
            for name, schema in route.body.items():
                need = " (required)" if name in route.required else ""
                lines.append(f"| `{name}`{need} | {schema.get('description', schema.get('type', 'any'))} |")
        codes = route.errors + (_COMMON if route.auth else ("internal",))
        lines += ["", "Errors: " + ", ".join(f"`{c}` ({ERRORS[c][0]})" for c in codes) + "."]
        if route.example is not None:
            request, answer = route.example
            target = route.path.replace("{id}", "order-o-1").replace("{name}", "approval")
            if isinstance(request, str):
                target += request if request.startswith("?") else ""
            lines += ["", "Example:", "", "```http", f"{route.method} {target}"]
            if isinstance(request, dict):
                lines += ["Content-Type: application/json", "", json.dumps(request)]
            lines += ["```", "", "```json" if not (route.stream or route.media) else "```text",
                      answer if isinstance(answer, str) else json.dumps(answer, indent=2), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--json"]:
        print(json.dumps(document(), indent=2))
    else:
        sys.stdout.write(markdown())
