"""The console's pages: each a function of a :class:`Request` that reads the
engine and answers ``(title, body markup)``. Values reach the markup only
through :mod:`.html` (escaped). Actions are forms the script sends to the
API (``data-path``: the route under ``/ui/api``; fields marked
``data-query`` go in its query string, ``data-body`` in its JSON body,
``data-json`` parsed as JSON first); without the script the pages still
show everything.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterable, Optional
from urllib.parse import quote

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import AionError
from aion_green.transport.codec import event_to_json, parse_time, public_error
from aion_green.transport.console.html import (
    Markup,
    compact,
    definition,
    field,
    join,
    options,
    pretty,
    span,
    status_badge,
    table,
    tag,
    url,
    when,
)

# A run's timeline: events per page, and how many a failures-only view reads
# at most (pages of the store's size) before it says it stopped looking.
PAGE = 100
_SCAN = 1000
_SCAN_LIMIT = 200_000
_FAILURES = frozenset({ev.STEP_FAILED, ev.CHILD_FAILED, ev.WORKFLOW_FAILED, ev.WORKFLOW_TIMED_OUT,
                       ev.WORKFLOW_CANCELLED, ev.CANCEL_REQUESTED})


class Problem(Exception):
    """A page that cannot be shown as asked: its status, title, message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class Request:
    """What a page renders from: the engine, the console's base path, the
    query's parameters, the session, the namespace asked for."""

    def __init__(self, engine: Any, base: str, params: dict[str, str], session: Any,
                 public: Callable[[str], str]) -> None:
        self.engine = engine
        self.base = base
        self.params = params
        self.session = session
        self.public = public
        self.namespace = namespaces.DEFAULT
        self.head: Any = None

    def link(self, page: str, **query: Any) -> str:
        ns = None if self.namespace == namespaces.DEFAULT else self.namespace
        return url(f"{self.base}/{page}", namespace=ns, **query)

    def run_link(self, workflow_id: str, run_id: Optional[str] = None, text: Any = None) -> Markup:
        return tag("a", workflow_id if text is None else text,
                   href=self.link("run", id=workflow_id, run_id=run_id), cls="run-link")

    def api(self, path: str, **query: Any) -> str:
        """The path of an API route under the console, for the script."""
        ns = None if self.namespace == namespaces.DEFAULT else self.namespace
        return url(f"{self.base}/api{path}", namespace=ns, **query)

    def text(self, key: str) -> Optional[str]:
        value = self.params.get(key, "").strip()
        return value or None

    def number(self, key: str, default: int, low: int, high: int) -> int:
        text = self.params.get(key, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise Problem(400, "Bad parameter", f"{key}={text!r} is not a whole number") from None
        if not low <= value <= high:
            raise Problem(400, "Bad parameter", f"{key}={value}: give {low} to {high}")
        return value


# -- runs ---------------------------------------------------------------------------------------
def _filters(r: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """The list filters the query names (for the engine) and the same as
    query parameters (for links that keep them)."""
    keep = {k: r.text(k) for k in ("type", "prefix", "started_after", "started_before",
                                   "attrs", "parent")}
    engine: dict[str, Any] = {"workflow_type": keep["type"], "id_prefix": keep["prefix"],
                              "parent": keep["parent"], "namespace": r.namespace}
    for key in ("started_after", "started_before"):
        given = keep[key]
        if given:
            try:
                engine[key] = parse_time(given, key)
            except AionError as exc:
                raise Problem(400, "Bad filter", str(exc)) from None
    if keep["attrs"]:
        attributes = {}
        for part in keep["attrs"].split(","):
            name, eq, value = part.strip().partition("=")
            if not eq or not name.strip():
                raise Problem(400, "Bad filter", f"attributes: {part.strip()!r} is not NAME=VALUE "
                              "(several: separated by commas)")
            attributes[name.strip()] = value.strip()
        engine["attributes"] = attributes
    return engine, keep


def runs(r: Request) -> tuple[str, Markup]:
    status = r.text("status")
    if status is not None and status not in ev.STATUSES:
        raise Problem(400, "Bad filter", f"unknown status {status!r}; choose one of "
                      f"{', '.join(ev.STATUSES)}")
    limit = r.number("limit", 50, 1, 500)
    after = r.text("after")
    filters, keep = _filters(r)
    found = r.engine.list(status=status, limit=limit, after_id=after, **filters)
    counts = r.engine.count_by_status(**filters)
    now = time.time()

    chips = [tag("a", "all ", tag("b", sum(counts.values())),
                 href=r.link("runs", **keep), cls="chip" + (" here" if status is None else ""))]
    for name in ev.STATUSES:
        chips.append(tag("a", status_badge(name), " ", tag("b", counts.get(name, 0)),
                         href=r.link("runs", status=name, **keep),
                         cls="chip" + (" here" if status == name else ""), data_count=name))
    types = r.engine.workflow_types() if hasattr(r.engine, "workflow_types") else []
    form = tag(
        "form",
        tag("input", type="hidden", name="namespace", value=r.namespace)
        if r.namespace != namespaces.DEFAULT else None,
        field("id prefix", tag("input", name="prefix", value=keep["prefix"], size="14")),
        field("status", tag("select", options(ev.STATUSES, status, "any"), name="status")),
        field("type", join(tag("input", name="type", value=keep["type"], list="types", size="16"),
                           tag("datalist", options(types, None, None), id="types"))),
        field("started after (UTC)", tag("input", name="started_after", type="text",
                                         value=keep["started_after"], placeholder="2026-01-31T12:00",
                                         size="16")),
        field("started before (UTC)", tag("input", name="started_before", type="text",
                                          value=keep["started_before"], size="16")),
        field("attributes", tag("input", name="attrs", value=keep["attrs"],
                                placeholder="customer=c-1, vip=true", size="20")),
        field("parent", tag("input", name="parent", value=keep["parent"], size="12")),
        tag("button", "Filter", type="submit"),
        tag("a", "clear", href=r.link("runs")),
        method="get", action=f"{r.base}/runs", cls="filters", id="filters")

    rows = []
    for run in found:
        ended = run.updated_at if run.finished else None
        took = (ended - run.created_at) if ended is not None else now - run.created_at
        rows.append([
            Markup(join(Markup("<td>"), tag("input", type="checkbox", name="sel",
                                            value=run.workflow_id, data_run=run.run_id,
                                            aria_label=f"select {run.workflow_id}"),
                        Markup("</td>"))),
            status_badge(run.status), run.workflow_type, r.run_link(run.workflow_id),
            when(run.created_at), when(ended),
            span(took) if ended is not None else join("running ", span(took)),
            r.run_link(run.parent_id) if run.parent_id else ""])
    listing = (table(["", "status", "type", "id", "started (UTC)", "ended (UTC)", "duration",
                      "parent"], rows, id="runs")
               if rows else tag("p", "No run matches.", cls="empty"))
    pager = []
    if after:
        pager.append(tag("a", "⇤ first page", href=r.link("runs", status=status, **keep)))
    if len(found) == limit:
        pager.append(tag("a", "next page →", rel="next", id="next-page",
                         href=r.link("runs", status=status, after=found[-1].workflow_id,
                                     limit=limit if limit != 50 else None, **keep)))
    bulk = tag("div", tag("span", "Selected: "),
               tag("button", "Cancel selected", type="button", data_bulk="cancel",
                   data_path=r.api("/v1/workflows/cancel")),
               tag("button", "Terminate selected", type="button", data_bulk="terminate",
                   cls="danger", data_path=r.api("/v1/workflows/terminate")),
               tag("output", id="bulk-out"), cls="bulk", data_needs_js=True)
    return "Runs", join(tag("div", *chips, cls="chips", id="counts"), form, bulk, listing,
                        tag("nav", *pager, cls="pager"))


# -- one run -------------------------------------------------------------------------------------
def run(r: Request) -> tuple[str, Markup]:
    wid = r.text("id")
    if wid is None:
        raise Problem(400, "Which run?", "Name the workflow: /ui/run?id=ID")
    run_id = r.text("run_id")
    info = r.engine.describe(wid, run_id=run_id, namespace=r.namespace)
    current = r.engine.describe(wid, namespace=r.namespace) if run_id else info
    now = time.time()
    ended = info.updated_at if info.finished else None
    first = r.engine.history(wid, 0, info.run_id, 1, namespace=r.namespace)
    started = first[0].data if first else {}

    summary = definition([
        ("status", join(status_badge(info.status, info.paused),
                        tag("span", "", id="live-state", aria_live="polite"))),
        ("namespace", info.namespace),
        ("workflow id", tag("code", info.workflow_id, id="workflow-id")),
        ("run id", tag("code", info.run_id)),
        ("type", info.workflow_type),
        ("parent", r.run_link(info.parent_id) if info.parent_id else None),
        ("started (UTC)", when(info.created_at)),
        ("ended (UTC)", when(ended)),
        ("duration", span((ended or now) - info.created_at)),
        ("execution deadline", when(info.execution_deadline) if info.execution_deadline else None),
        ("search attributes", ", ".join(f"{k}={v}" for k, v in info.search_attributes.items())
         or None),
        ("cannot run here", info.unrunnable),
        ("events", info.head_seq),
    ])
    chain = _chain(r, wid, info, current, started)
    io = [tag("h3", "Input"), tag("pre", pretty(info.args), cls="json", id="input")]
    if info.status == ev.COMPLETED or info.status == ev.CONTINUED:
        io += [tag("h3", "Result"), tag("pre", pretty(info.result), cls="json", id="result")]
    elif info.error is not None:
        error = public_error(info.error)
        io += [tag("h3", "Error"), tag("pre", error.get("type", "") + ": " + str(error.get("message", ""))
                                       if isinstance(error, dict) else pretty(error),
                                       cls="json error", id="error")]
    waits = _waits(r, wid, info, now) if not info.finished else None
    timeline = _timeline(r, wid, info)
    actions = _actions(r, info)
    links = tag("p", tag("a", "supervision tree", href=r.link("tree", id=wid)), " · ",
                tag("a", "children", href=r.link("runs", parent=wid)), " · ",
                tag("a", "JSON", href=r.api("/v1/workflows", workflow_id=wid, run_id=run_id)),
                cls="links")
    body = join(tag("section", summary, chain, links, cls="summary"),
                tag("section", *io, cls="io"),
                tag("section", tag("h2", "Waiting on"), waits, cls="waits") if waits else None,
                actions, timeline)
    return f"Run {wid}", body


def _chain(r: Request, wid: str, info: Any, current: Any, started: dict[str, Any]) -> Any:
    """The runs of the chain (continue-as-new) around this one: earlier ones
    from each run's ``continued_from``, at most 20 back; the current one."""
    earlier: list[str] = []
    previous = started.get("continued_from")
    while previous and len(earlier) < 20:
        earlier.append(previous)
        try:
            events = r.engine.history(wid, 0, previous, 1, namespace=r.namespace)
        except AionError:
            break
        previous = events[0].data.get("continued_from") if events else None
    if not earlier and current.run_id == info.run_id:
        return None
    items = [tag("li", r.run_link(wid, run_id, tag("code", run_id[:12]))) for run_id in reversed(earlier)]
    items.append(tag("li", tag("code", info.run_id[:12]), " (this run)", cls="here"))
    if info.next_run_id:
        items.append(tag("li", r.run_link(wid, info.next_run_id, tag("code", info.next_run_id[:12]))))
    if current.run_id != info.run_id and current.run_id != info.next_run_id:
        items.append(tag("li", "… ", r.run_link(wid, None, "the current run")))
    return tag("div", tag("h3", "Run chain (continue-as-new)"), tag("ol", *items, cls="chain"),
               id="chain")


def _waits(r: Request, wid: str, info: Any, now: float) -> Markup:
    """What a running run waits on now: its steps in flight (this engine's),
    its timers and children started and not ended (from its history's last
    events), or a message."""
    items = []
    if info.paused:
        items.append(tag("li", tag("b", "paused"), ": no step, timer or message until unpaused"))
    for step in info.steps_running:
        items.append(tag("li", "step ", tag("b", step.name), f" #{step.step} attempt {step.attempt}"
                         " running since ", when(step.since), " (", span(now - step.since), ")",
                         data_wait="step"))
    events = _tail(r, wid, info, 2000)
    timers: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for event in events:
        data = event.data
        if event.type == ev.TIMER_STARTED:
            timers[data.get("timer")] = event
        elif event.type in (ev.TIMER_FIRED, ev.TIMER_CANCELLED):
            timers.pop(data.get("timer"), None)
        elif event.type == ev.CHILD_STARTED:
            children[data.get("id")] = event
        elif event.type in (ev.CHILD_COMPLETED, ev.CHILD_FAILED):
            children.pop(data.get("id"), None)
    for name, event in timers.items():
        fire_at = event.data.get("fire_at")
        late = fire_at is not None and now > fire_at + 30
        items.append(tag("li", "timer ", tag("b", name), " set at ", when(event.at), ", fires at ",
                         when(fire_at), " (", "overdue by " if late else "in ",
                         span(abs((fire_at or now) - now)), ")", data_wait="timer",
                         cls="late" if late else None))
    for child_id, event in children.items():
        items.append(tag("li", "child ", r.run_link(child_id), " (",
                         event.data.get("workflow_type", ""), ") since ", when(event.at), " (",
                         span(now - event.at), ")", data_wait="child"))
    if not items:
        last = events[-1] if events else None
        items.append(tag("li", "a message, or its next step (nothing pending is recorded) — the last "
                         "event ", last.type if last else "", " at ", when(last.at if last else None),
                         " (", span(now - last.at) if last else "", " ago)", data_wait="other"))
    return tag("ul", *items, id="waits")


def _tail(r: Request, wid: str, info: Any, most: int) -> list[Any]:
    """The run's last ``most`` events, oldest first."""
    after = max(0, info.head_seq - most)
    out: list[Any] = []
    while True:
        events = r.engine.history(wid, after, info.run_id, _SCAN, namespace=r.namespace)
        out.extend(events)
        if len(events) < _SCAN:
            return out
        after = events[-1].seq


def _timeline(r: Request, wid: str, info: Any) -> Markup:
    """The history, newest first, a page at a time (``before``: the seq the
    page ends below), all events or the failures only (``only=failures``)."""
    size = r.number("size", PAGE, 10, 1000)
    before = r.number("before", info.head_seq + 1, 1, 2 ** 62)
    failures = r.text("only") == "failures"
    keep = {"id": wid, "run_id": r.text("run_id"), "only": "failures" if failures else None,
            "size": None if size == PAGE else size}
    note = None
    if failures:
        picked: list[Any] = []
        scanned = 0
        after = 0
        while scanned < _SCAN_LIMIT:
            events = r.engine.history(wid, after, info.run_id, _SCAN, namespace=r.namespace)
            picked.extend(e for e in events if e.type in _FAILURES and e.seq < before)
            scanned += len(events)
            if len(events) < _SCAN:
                break
            after = events[-1].seq
        else:
            note = f"Looked at the first {scanned} events only."
        shown = picked[-size:]
        previous_at: dict[int, float] = {}
        more = len(picked) > size
    else:
        low = max(1, before - size)
        events = r.engine.history(wid, max(0, low - 2), info.run_id, before - low + 1,
                                  namespace=r.namespace) if before > 1 else []
        previous_at = {events[i + 1].seq: events[i].at for i in range(len(events) - 1)}
        shown = [e for e in events if low <= e.seq < before]
        more = low > 1
    rows = [_event_row(r, e, previous_at.get(e.seq), info.created_at) for e in reversed(shown)]
    live = (not info.finished and not failures and before > info.head_seq)
    stream = r.api("/v1/workflows/events", workflow_id=wid, run_id=info.run_id,
                   after=info.head_seq) if live else None
    toggle = (tag("a", "all events", href=r.link("run", **{**keep, "only": None}))
              if failures else tag("a", "failures only", href=r.link("run", **{**keep, "only": "failures"}),
                                   id="failures-only"))
    pager = []
    if before <= info.head_seq:
        pager.append(tag("a", "⇤ newest", href=r.link("run", **keep)))
    if more and shown:
        pager.append(tag("a", "older events →", id="older", rel="next",
                         href=r.link("run", before=shown[0].seq, **keep)))
    head = tag("thead", tag("tr", *(tag("th", h, scope="col") for h in
                                    ("seq", "at (UTC)", "+", "event", "what"))))
    body = tag("tbody", *rows, id="timeline", data_stream=stream, data_start=info.created_at)
    return tag("section",
               tag("h2", "History"),
               tag("p", toggle, " · ", f"{info.head_seq} events", " · newest first",
                   tag("span", " · live", cls="live") if live else None, cls="links"),
               tag("p", note, cls="note") if note else None,
               tag("div", tag("table", head, body, cls="timeline"), cls="scroll"),
               tag("nav", *pager, cls="pager"),
               cls="history")


def _event_row(r: Request, event: Any, previous_at: Optional[float], start: float) -> Markup:
    shown = event_to_json(event)
    cls = "ev fail" if event.type in _FAILURES else "ev"
    return tag("tr",
               tag("td", event.seq), tag("td", when(event.at)),
               tag("td", span(event.at - start)),
               tag("td", tag("span", event.type, cls=f"etype t-{event.type}")),
               tag("td", describe_event(r, event.type, shown["data"], event.at, previous_at),
                   tag("details", tag("summary", "data"), tag("pre", pretty(shown["data"])))),
               cls=cls, data_seq=event.seq, data_type=event.type)


def describe_event(r: Request, kind: str, data: Any, at: float,
                   previous_at: Optional[float]) -> Markup:
    """One line that says what an event means."""
    data = data if isinstance(data, dict) else {}
    took = f" in ≈{span(at - previous_at)}" if previous_at is not None else ""

    def error_text(error: Any) -> str:
        if isinstance(error, dict):
            return f"{error.get('type', '')}: {error.get('message', '')}"
        return compact(error)

    if kind == ev.WORKFLOW_STARTED:
        return join("started ", tag("b", data.get("workflow_type", "")), " with ",
                    tag("code", compact(data.get("args", []))))
    if kind in (ev.STEP_COMPLETED, ev.STEP_FAILED):
        what = join("step ", data.get("step", ""), " ", tag("b", data.get("name", "")), " attempt ",
                    data.get("attempt", ""))
        if kind == ev.STEP_COMPLETED:
            return join(what, " completed", took, ": ", tag("code", compact(data.get("result"))))
        retry = " (will retry)" if data.get("retryable") else " (no retry)"
        return join(what, " failed", took, ": ", tag("span", error_text(data.get("error")),
                                                        cls="err"), retry)
    if kind == ev.TIMER_STARTED:
        return join("timer ", data.get("timer", ""), " set to fire at ", when(data.get("fire_at")),
                    " (in ", span((data.get("fire_at") or at) - at), ")")
    if kind in (ev.TIMER_FIRED, ev.TIMER_CANCELLED):
        return join("timer ", data.get("timer", ""), " fired" if kind == ev.TIMER_FIRED
                    else " cancelled")
    if kind == ev.MESSAGE_RECEIVED:
        return join("message ", tag("b", data.get("name", "")), " received: ",
                    tag("code", compact(data.get("payload"))))
    if kind == ev.MESSAGE_SENT:
        return join("message ", tag("b", data.get("name", "")), " sent to ",
                    r.run_link(str(data.get("to", ""))) if data.get("to") else "")
    if kind == ev.CHILD_STARTED:
        return join("child ", r.run_link(str(data.get("id", ""))), " (", data.get("workflow_type", ""),
                    ") started with ", tag("code", compact(data.get("args", []))))
    if kind == ev.CHILD_COMPLETED:
        return join("child ", r.run_link(str(data.get("id", ""))), " completed: ",
                    tag("code", compact(data.get("result"))))
    if kind == ev.CHILD_FAILED:
        return join("child ", r.run_link(str(data.get("id", ""))), " ended ",
                    data.get("status", "failed"), ": ",
                    tag("span", error_text(data.get("error")), cls="err"))
    if kind == ev.CHILD_RESTARTED:
        return join("supervisor ", data.get("supervisor", ""), " restarted child ",
                    data.get("index", ""), " (incarnation ", data.get("incarnation", ""), ", ",
                    data.get("strategy", ""), ") after ",
                    r.run_link(namespaces.local(str(data.get("after", "")))) if data.get("after")
                    else "", " ", data.get("reason", ""))
    if kind in (ev.WORKFLOW_COMPLETED, ev.WORKFLOW_CONTINUED_AS_NEW):
        verb = "completed" if kind == ev.WORKFLOW_COMPLETED else "continued as new"
        return join(verb, ": ", tag("code", compact(data.get("result", data.get("args")))))
    if kind in (ev.WORKFLOW_FAILED, ev.WORKFLOW_TIMED_OUT, ev.WORKFLOW_CANCELLED):
        return join(kind[8:].lower().replace("timedout", "timed out"), ": ",
                    tag("span", error_text(data.get("error", data.get("reason", ""))), cls="err"))
    if kind in (ev.CANCEL_REQUESTED, ev.WORKFLOW_PAUSED, ev.WORKFLOW_UNPAUSED):
        verb = {ev.CANCEL_REQUESTED: "cancel requested", ev.WORKFLOW_PAUSED: "paused",
                ev.WORKFLOW_UNPAUSED: "unpaused"}[kind]
        return join(verb, (": " + str(data.get("reason"))) if data.get("reason") else "")
    if kind == ev.SEARCH_ATTRIBUTES_UPSERTED:
        attrs = data.get("attributes") or {}
        return join("search attributes: ", ", ".join(f"{k}={v}" for k, v in attrs.items()))
    if kind == ev.PATCH_MARKER:
        return join("patch ", tag("code", data.get("patch", "")))
    return tag("code", compact(data))


def _actions(r: Request, info: Any) -> Markup:
    """The forms of the run's actions, sent by the script to the API."""
    wid, running = info.workflow_id, not info.finished
    pin = tag("input", type="hidden", data_body="run_id", value=info.run_id)
    forms = []

    def form(title: str, path: str, *fields: Any, confirm: str, then: str = "reload",
             danger: bool = False, key: str = "") -> Markup:
        return tag("form", tag("h3", title), *fields,
                   tag("button", title, type="submit", cls="danger" if danger else None),
                   tag("output", cls="out"),
                   data_path=path, data_method="POST", data_confirm=confirm, data_then=then,
                   cls="action", id=f"act-{key or title.lower()}")

    if running:
        forms.append(form(
            "Signal", r.api("/v1/workflows/signals", workflow_id=wid),
            field("name", tag("input", data_query="name", required=True, name="name")),
            field("payload (JSON)", tag("textarea", "null", data_body="payload", data_json=True,
                                        rows="2", name="payload")),
            pin, confirm=f"Send this signal to {wid}?", then="stay"))
        forms.append(form(
            "Query", r.api("/v1/workflows/queries", workflow_id=wid),
            field("name", tag("input", data_query="name", required=True, name="name")),
            field("args (JSON array)", tag("textarea", "[]", data_body="args", data_json=True,
                                           rows="1", name="args")),
            pin, confirm="", then="show"))
        forms.append(form(
            "Cancel", r.api("/v1/workflows/cancel", workflow_id=wid),
            field("reason", tag("input", data_body="reason", name="reason")), pin,
            confirm=f"Cancel {wid}? Its cleanup runs."))
        forms.append(form(
            "Terminate", r.api("/v1/workflows/terminate", workflow_id=wid),
            field("reason", tag("input", data_body="reason", name="reason")), pin,
            confirm=f"Terminate {wid} now, with no cleanup?", danger=True))
        verb = "unpause" if info.paused else "pause"
        forms.append(form(
            verb.capitalize(), r.api(f"/v1/workflows/{verb}", workflow_id=wid),
            field("reason", tag("input", data_body="reason", name="reason")), pin,
            confirm=f"{verb.capitalize()} {wid}?"))
    forms.append(form(
        "Fork", r.api("/v1/workflows/fork", workflow_id=wid),
        field("from event (seq)", tag("input", data_body="from_seq", data_json=True, required=True,
                                      type="number", min="1", max=str(info.head_seq),
                                      name="from_seq")),
        field("new id (optional)", tag("input", data_body="id", name="new_id")), pin,
        confirm="Fork a new run that replays these events, then goes on?", then="goto"))
    if info.status in (ev.FAILED, ev.CANCELLED):
        forms.append(form(
            "Resume", r.api("/v1/workflows/resume", workflow_id=wid),
            field("from event (seq, optional)", tag("input", data_body="from_seq", data_json=True,
                                                    type="number", min="1", name="from_seq")),
            confirm=f"Run {wid} again in place from that event?"))
    return tag("section", tag("h2", "Actions"), tag("div", *forms, cls="actions"),
               cls="act", data_needs_js=True)


# -- the supervision tree -------------------------------------------------------------------------
_TREE_NODES = 1000
_TREE_DEPTH = 8


def tree(r: Request) -> tuple[str, Markup]:
    wid = r.text("id")
    if wid is None:
        raise Problem(400, "Which run?", "Name the workflow: /ui/tree?id=ID")
    root = r.engine.describe(wid, namespace=r.namespace)
    budget = [_TREE_NODES]

    def node(info: Any, depth: int) -> Markup:
        budget[0] -= 1
        kids = (r.engine.list(parent=info.workflow_id, limit=200, namespace=r.namespace)
                if depth < _TREE_DEPTH and budget[0] > 0 else [])
        restarts = _restarts(r, info) if kids else 0
        line = tag("div", status_badge(info.status, info.paused), " ",
                   r.run_link(info.workflow_id), " ", tag("span", info.workflow_type, cls="type"),
                   tag("span", f" · {restarts} restart{'s' if restarts != 1 else ''}",
                       cls="restarts") if restarts else None,
                   cls="node", data_id=info.workflow_id, data_status=info.status)
        inner = [node(kid, depth + 1) for kid in kids if budget[0] > 0]
        cut = len(inner) < len(kids) or len(kids) == 200
        more = tag("li", "… more children: ", tag("a", "list them", href=r.link(
            "runs", parent=info.workflow_id)), cls="more") if cut else None
        return tag("li", line, tag("ul", *inner, more) if inner or more else None)

    counts: dict[str, int] = {}
    markup = node(root, 0)
    return f"Supervision tree of {wid}", join(
        tag("p", "Each run with the runs it started (as children or under a supervisor), their "
            "status at a glance; restarts counted from the parent's history.", cls="note"),
        tag("ul", markup, cls="tree", id="tree"), counts and None)


def _restarts(r: Request, info: Any) -> int:
    """How many restarts a supervisor recorded in the run's history."""
    count, after = 0, 0
    while True:
        events = r.engine.history(info.workflow_id, after, info.run_id, _SCAN, namespace=r.namespace)
        count += sum(1 for e in events if e.type == ev.CHILD_RESTARTED)
        if len(events) < _SCAN:
            return count
        after = events[-1].seq


# -- triage ------------------------------------------------------------------------------------------
def triage(r: Request) -> tuple[str, Markup]:
    """Failed runs (the latest failures first), then stuck runs: a step in
    flight, or a timer waited on, far longer than usual for the run's type
    (10 times the median in completed runs of the type, and at least
    ``min`` seconds, 60 by default), or a timer overdue by more than 30
    seconds. Steps in flight are this engine's (on PostgreSQL, another
    engine's steps show by their timers and ages only)."""
    now = time.time()
    least = r.number("min", 60, 1, 10 ** 7)
    failed = []
    for status in (ev.FAILED, ev.TIMED_OUT):
        failed.extend(r.engine.list(status=status, limit=500, namespace=r.namespace))
    failed.sort(key=lambda i: i.updated_at, reverse=True)
    rows = []
    for info in failed[:50]:
        step = _failing_step(r, info)
        error = public_error(info.error) or {}
        rows.append([status_badge(info.status), r.run_link(info.workflow_id), info.workflow_type,
                     when(info.updated_at), step,
                     tag("span", f"{error.get('type', '')}: {error.get('message', '')}"
                         if isinstance(error, dict) else compact(error), cls="err")])
    failures = (table(["status", "id", "type", "ended (UTC)", "failing step", "error"], rows,
                      id="failed") if rows else tag("p", "No failed run.", cls="empty"))

    running = r.engine.list(status=ev.RUNNING, limit=300, namespace=r.namespace)
    usual_of: dict[tuple[str, str], Optional[float]] = {}
    stuck = []
    for info in running:
        steps = (r.engine.steps_running(info.workflow_id, namespace=r.namespace)
                 if hasattr(r.engine, "steps_running") else [])
        for step in steps:
            age = now - step.since
            if age <= least:
                continue
            key = (info.workflow_type, step.name)
            if key not in usual_of:
                usual_of[key] = _usual(r, *key)
            usual = usual_of[key]
            if usual is not None and age <= 10 * usual:
                continue
            why = (f"step {step.name} running for {span(age)}"
                   + (f", usually {span(usual)}" if usual is not None else ""))
            stuck.append((age / max(usual or least, 1e-3), info, why))
        if info.paused:
            continue
        open_timers: dict[Any, Any] = {}
        for event in _tail(r, info.workflow_id, info, 50):
            if event.type == ev.TIMER_STARTED:
                open_timers[event.data.get("timer")] = event
            elif event.type in (ev.TIMER_FIRED, ev.TIMER_CANCELLED):
                open_timers.pop(event.data.get("timer"), None)
        for name, event in open_timers.items():
            late = now - (event.data.get("fire_at") or now)
            if late > 30:
                stuck.append((late / 30, info, f"timer {name} overdue by {span(late)}"))
                continue
            age = now - event.at
            if age <= least:
                continue
            key = (info.workflow_type, _TIMER)
            if key not in usual_of:
                usual_of[key] = _usual(r, *key)
            usual = usual_of[key]
            if usual is not None and age > 10 * usual:
                stuck.append((age / max(usual, 1e-3), info, f"timer {name} waited on for "
                              f"{span(age)}, usually {span(usual)} (it fires at "
                              f"{when(event.data.get('fire_at'))})"))
    stuck.sort(key=lambda s: s[0], reverse=True)
    stuck_rows = [[status_badge(info.status, info.paused), r.run_link(info.workflow_id),
                   info.workflow_type, when(info.created_at), why] for _, info, why in stuck[:50]]
    stuck_table = (table(["status", "id", "type", "started (UTC)", "stuck on"], stuck_rows,
                         id="stuck") if stuck_rows else tag("p", "No stuck run.", cls="empty"))
    return "Triage", join(
        tag("h2", f"Failed ({len(failed)}{'+' if len(failed) >= 500 else ''})"), failures,
        tag("h2", f"Stuck ({len(stuck)})"),
        tag("p", f"Of {len(running)} running runs: a step in flight or a timer waited on more "
            f"than ten times as long as usual for the type (and over {least} s), or a timer "
            "overdue by over 30 s.", cls="note"),
        stuck_table)


_TIMER = "\x00timer"  # the key of timer waits among step names (no step is named so)


def _usual(r: Request, workflow_type: str, name: str) -> Optional[float]:
    """The median time step ``name`` took (or, for ``_TIMER``, a timer was
    waited on, from its start to its fire) in the last events of up to 20
    completed runs of ``workflow_type``, or None if none did. A step's
    time runs from the event before its outcome (its start is not
    recorded)."""
    took: list[float] = []
    for info in r.engine.list(status=ev.COMPLETED, workflow_type=workflow_type, limit=20,
                              namespace=r.namespace):
        previous = None
        timers: dict[Any, float] = {}
        for event in _tail(r, info.workflow_id, info, 200):
            if name == _TIMER:
                if event.type == ev.TIMER_STARTED:
                    timers[event.data.get("timer")] = event.at
                elif event.type == ev.TIMER_FIRED and event.data.get("timer") in timers:
                    took.append(event.at - timers.pop(event.data.get("timer")))
            elif event.type == ev.STEP_COMPLETED and event.data.get("name") == name and previous:
                took.append(event.at - previous)
            previous = event.at
    return statistics.median(took) if took else None


def _failing_step(r: Request, info: Any) -> Markup:
    for event in reversed(_tail(r, info.workflow_id, info, 50)):
        if event.type == ev.STEP_FAILED:
            return join("step ", event.data.get("step", ""), " ", tag("b", event.data.get("name", "")),
                        " attempt ", event.data.get("attempt", ""))
        if event.type == ev.CHILD_FAILED:
            return join("child ", r.run_link(str(event.data.get("id", ""))))
    return Markup("")


# -- schedules ----------------------------------------------------------------------------------------
def schedules(r: Request) -> tuple[str, Markup]:
    after = r.text("after")
    found = r.engine.schedules(limit=100, after_id=after, namespace=r.namespace)
    rows = []
    for s in found:
        spec = s.cron or (f"every {span(s.every)}" if s.every else "")
        if s.timezone:
            spec += f" ({s.timezone})"
        path = "/v1/schedules/" + quote(s.schedule_id, safe="")
        controls = [tag("form", tag("button", label, type="submit"),
                        data_path=r.api(f"{path}/{verb}"), data_method="POST",
                        data_confirm=f"{label} schedule {s.schedule_id}?", data_then="reload",
                        cls="inline", id=f"sched-{verb}")
                    for verb, label in ((("resume", "Resume"),) if s.paused else (("pause", "Pause"),))
                    + (("trigger", "Trigger now"),)]
        rows.append([tag("code", s.schedule_id), s.workflow, spec,
                     s.next_fire or "", tag("span", "paused" + (f": {s.note}" if s.note else ""),
                                            cls="badge s-paused") if s.paused else s.status,
                     f"{s.overlap} / {s.catch_up}",
                     r.run_link(s.running) if s.running else "", join(*controls)])
    listing = (table(["id", "workflow", "when", "next fire", "state", "overlap / catch-up",
                      "running", ""], rows, id="schedules")
               if rows else tag("p", "No schedule.", cls="empty"))
    pager = (tag("a", "next page →", href=r.link("schedules", after=found[-1].schedule_id))
             if len(found) == 100 else None)
    return "Schedules", join(listing, tag("nav", pager, cls="pager"))


# -- start ---------------------------------------------------------------------------------------------
def start(r: Request) -> tuple[str, Markup]:
    # (The engine's own types, aion.*, such as a schedule's, are not started by hand.)
    types = [t for t in (r.engine.workflow_types() if hasattr(r.engine, "workflow_types") else [])
             if not t.startswith("aion.")]
    chosen = r.text("workflow")
    body = tag(
        "form",
        field("workflow", tag("select", options(types, chosen, None), data_body="workflow",
                              name="workflow", required=True)),
        field("id (optional: one is made)", tag("input", data_body="id", name="id")),
        field("args (a JSON array)", tag("textarea", "[]", data_body="args", data_json=True,
                                         rows="3", name="args")),
        field("execution timeout (seconds, optional)",
              tag("input", data_body="execution_timeout", data_json=True, type="number",
                  min="0", step="any", name="execution_timeout")),
        tag("button", "Start", type="submit"), tag("output", cls="out"),
        data_path=r.api("/v1/workflows"), data_method="POST", data_confirm="",
        data_then="goto", cls="action wide", id="act-start", data_needs_js=True)
    note = (None if types else
            tag("p", "This engine has no registered workflow type.", cls="empty"))
    return "Start a workflow", join(note, body)


# -- engines -------------------------------------------------------------------------------------------
_CHARTS = (("aion_queue_depth", "queue depth", "queue"), ("aion_resident_runs", "resident runs", ""),
           ("aion_evicted_runs", "runs parked out of memory", ""),
           ("aion_timers_pending", "timers pending", ""), ("aion_runs", "runs by status", "status"),
           ("aion_hub_lag_seconds", "hub loop lag (s)", ""))


def engines(r: Request) -> tuple[str, Markup]:
    engine = r.engine
    rows: list[Iterable[Any]] = []
    readiness = engine.readiness(timeout=1.0) if hasattr(engine, "readiness") else None
    if readiness is not None:
        rows.append(["ready", "yes" if readiness.ready else "no: " + r.public(readiness.problems())])
        rows.append(["drives runs", "yes" if readiness.driving else "no (a client of the store)"])
    for label, name in (("resident runs (peak)", "resident_peak"), ("evictions", "evictions")):
        value = getattr(engine, name, None)
        if value is not None and not callable(value):
            rows.append([label, value])
    unrunnable = getattr(engine, "unrunnable", None)
    if unrunnable:
        rows.append(["runs it cannot drive", len(unrunnable)])
    live = []
    found = engine.engines() if hasattr(engine, "engines") else []
    if any(other.seen_until is not None for other in found):  # PostgreSQL's engines and leases
        for other in found:
            live.append([tag("code", other.engine_id), "this engine" if other.here else "",
                         when(other.seen_until), other.leased_runs,
                         ", ".join(t for t in other.workflow_types if not t.startswith("aion."))])
    charts = [tag("figure", tag("figcaption", label),
                  tag("div", cls="chart", data_metric=name, data_label=label_name),
                  cls="metric") for name, label, label_name in _CHARTS]
    return "Engines", join(
        tag("h2", "This engine"), tag("div", definition([(str(k), v) for k, v in rows]),
                                      cls="summary", id="engine"),
        tag("h2", "Engines sharing the store"),
        table(["engine", "", "seen until (UTC)", "runs leased", "workflow types"], live, id="engines")
        if live else tag("p", "One engine drives this store (SQLite: the file's driver lock); "
                         "PostgreSQL lists every engine and its leases here.", cls="note"),
        tag("h2", "Metrics"),
        tag("p", "From ", tag("a", "/metrics", href=r.api("/metrics")),
            ", sampled every 2 s while this page is open.", cls="note"),
        tag("div", *charts, cls="charts", id="charts", data_source=r.api("/metrics")))
