"""Markup for the console: every value escaped, once.

A page is built from :class:`Markup` (text known to be HTML) and plain
values, which :func:`esc` escapes: an id or a payload holding ``<script>``
shows as text. :func:`tag` and :func:`join` take both, so a renderer never
concatenates a raw value into markup.
"""
from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import urlencode


class Markup(str):
    """Text that is HTML already (built here, never from a value)."""

    __slots__ = ()


Content = Union[Markup, str, int, float, None, Iterable[Any]]


def esc(value: Any) -> Markup:
    """``value`` as HTML: Markup as it is, None as nothing, an iterable as
    its items one after another, anything else as escaped text."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    if isinstance(value, (str, int, float)):
        return Markup(html.escape(str(value), quote=True))
    return Markup("".join(esc(item) for item in value))


def join(*parts: Any) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(element: str, /, *content: Any, **attrs: Any) -> Markup:
    """``<name attrs>content</name>``: attribute names from keywords (``cls``
    is ``class``, ``_`` is ``-``), values escaped; True is a bare attribute,
    None or False leaves it out."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = "class" if key == "cls" else key.rstrip("_").replace("_", "-")
        rendered.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    opening = f"<{element}{''.join(rendered)}>"
    if element in ("input", "meta", "link", "br", "img"):
        return Markup(opening)
    return Markup(f"{opening}{join(*content)}</{element}>")


def url(path: str, **query: Any) -> str:
    """``path?query`` without the parameters that are None or empty."""
    kept = {k.replace("__", "."): v for k, v in query.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def when(epoch: Optional[float]) -> str:
    """A time as UTC text, to the second."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def iso(epoch: Optional[float]) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def span(seconds: Optional[float]) -> str:
    """A duration, short: 850 ms, 12.4 s, 3 min 20 s, 5 h 2 min, 3 d 4 h."""
    if seconds is None or math.isnan(seconds):
        return ""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def pretty(value: Any) -> str:
    """A JSON value, indented (for inputs, results and payloads)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return repr(value)


def compact(value: Any, limit: int = 160) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def status_badge(status: str, paused: bool = False) -> Markup:
    label = f"{status} (paused)" if paused else status
    return tag("span", label, cls=f"badge s-{status}", data_status=status)


def page(title: str, body: Any, *, base: str, csrf: str, nav: str = "",
         namespace: str = "default", signed_in: bool = False,
         extra_head: Any = None) -> bytes:
    """A whole page: head (no asset from elsewhere), navigation, the body."""
    links = []
    for key, label in (("runs", "Runs"), ("triage", "Triage"), ("schedules", "Schedules"),
                       ("start", "Start"), ("engines", "Engines")):
        target = url(f"{base}/{key}", namespace=None if namespace == "default" else namespace)
        links.append(tag("a", label, href=target, cls="here" if key == nav else None))
    switch = tag("form", tag("label", "namespace ", tag("input", name="namespace", value=namespace,
                                                         size="12", aria_label="namespace")),
                 method="get", action=f"{base}/runs", cls="ns")
    out = ""
    if signed_in:
        out = tag("form", tag("input", type="hidden", name="csrf", value=csrf),
                  tag("button", "Sign out", type="submit", id="signout"), method="post",
                  action=f"{base}/logout", cls="signout")
    doc = join(
        Markup("<!doctype html>\n"),
        tag("html", tag("head",
                        tag("meta", charset="utf-8"),
                        tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
                        tag("meta", name="aion-csrf", content=csrf),
                        tag("meta", name="aion-base", content=base),
                        tag("meta", name="aion-namespace", content=namespace),
                        tag("title", title, " · aion_green"),
                        tag("link", rel="stylesheet", href=f"{base}/static/console.css"),
                        tag("script", src=f"{base}/static/console.js", defer=True),
                        extra_head),
            tag("body",
                tag("header", tag("a", "aion_green", href=f"{base}/runs", cls="brand"),
                    tag("nav", *links), switch, out),
                tag("main", tag("h1", title), body)),
            lang="en"))
    return doc.encode("utf-8")


def table(headers: Iterable[Any], rows: Iterable[Iterable[Any]], **attrs: Any) -> Markup:
    head = tag("thead", tag("tr", *(tag("th", h, scope="col") for h in headers)))
    body = tag("tbody", *(tag("tr", *(cell if isinstance(cell, Markup) and cell.startswith("<td")
                                     else tag("td", cell) for cell in row)) for row in rows))
    return tag("div", tag("table", head, body, **attrs), cls="scroll")


def definition(items: Iterable[tuple[str, Any]]) -> Markup:
    return tag("dl", *(join(tag("dt", k), tag("dd", v)) for k, v in items if v not in (None, "")))


def field(label: str, control: Markup, hint: str = "") -> Markup:
    return tag("label", tag("span", label, cls="lbl"), control,
               tag("small", hint) if hint else None, cls="field")


def options(values: Iterable[str], selected: Optional[str], blank: Optional[str] = "") -> Markup:
    out = [tag("option", blank or "any", value="")] if blank is not None else []
    out += [tag("option", v, value=v, selected=v == selected) for v in values]
    return join(*out)


def mapping_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
