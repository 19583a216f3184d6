"""The web console: server-rendered pages under ``/ui/`` of the HTTP API.

:class:`Console` is served by :class:`~aion_green.transport.wsgi.WSGIApp`
(``aion-green worker --http`` serves both; a Flask app mounts the WSGIApp
beside its own routes and gets both), with the same tokens and grants. The
pages read the engine directly; every action the browser takes goes through
the API itself, under ``/ui/api/v1/...``, authenticated by the console's
session cookie and its CSRF token (:mod:`.sessions`) instead of a bearer
header, so an action answers exactly as the API does, errors included.

Pages (all GET; ``?namespace=NS`` on each):

============================  =================================================
``/ui/runs``                  the runs, filtered, counted per status, paged
``/ui/run?id=ID&run_id=``     one run: summary, chain, waits, timeline, actions
``/ui/tree?id=ID``            the supervision tree under a run
``/ui/triage``                failed runs and stuck runs, ranked
``/ui/schedules``             the schedules, their next fires, their controls
``/ui/start``                 start a workflow from a form
``/ui/engines``               readiness, leases, queues and the metrics, charted
``/ui/login``, ``/ui/logout``  sign in with the API's token, sign out (POST)
============================  =================================================

Pages read no JavaScript to show their lists; the actions, live updates and
charts use ``static/console.js`` (no build step, nothing from a CDN).
"""
from __future__ import annotations

import logging
from importlib import resources
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs

from aion_green.core import namespaces
from aion_green.core.errors import AionError
from aion_green.transport.codec import ERRORS, code_of
from aion_green.transport.console import pages
from aion_green.transport.console.html import esc, page, tag
from aion_green.transport.console.sessions import Session, Sessions

log = logging.getLogger("aion_green.transport.console")

StartResponse = Callable[..., Any]
_STATIC = {"console.css": "text/css; charset=utf-8",
           "console.js": "text/javascript; charset=utf-8"}
_PAGES = {"runs": pages.runs, "run": pages.run, "tree": pages.tree, "triage": pages.triage,
          "schedules": pages.schedules, "start": pages.start, "engines": pages.engines}
_SECURITY = [("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
             ("Referrer-Policy", "same-origin"),
             ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
              "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")]


class Denied(Exception):
    """A console API request without a session or without its CSRF token."""


class Console:
    """The console of one API (:class:`~aion_green.transport.wsgi.WSGIApp`):
    its engine, its tokens. ``session_age``: how long a sign-in lasts."""

    def __init__(self, api: Any, session_age: float = 12 * 3600) -> None:
        self.api = api
        self.sessions = Sessions(api._tokens, session_age)

    @property
    def engine(self) -> Any:
        return self.api.engine

    # -- the API under /ui/api ------------------------------------------------------------------
    def api_grants(self, environ: dict[str, Any], method: str) -> Optional[frozenset[str]]:
        """The grants of a console API request (None: every namespace), from
        its session; a change (any method but GET and HEAD) must carry the
        session's CSRF token. :class:`Denied` otherwise."""
        session = self.sessions.session(environ)
        if session is None:
            raise Denied("the console's session is missing or has ended: sign in again at "
                         f"{_base(environ)}/login")
        if method not in ("GET", "HEAD") and not self.sessions.csrf_ok(session, environ):
            raise Denied("the console's CSRF token is missing or wrong (X-CSRF-Token); "
                         "nothing was done: reload the page and try again")
        return session.grants

    # -- pages ----------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse,
                 segments: list[str]) -> Iterable[bytes]:
        try:
            return self._serve(environ, start_response, segments)
        except Exception:
            log.exception("console: an unexpected error; this is a bug in aion_green")
            data = b"<!doctype html><title>Internal error</title><p>An unexpected error occurred " \
                   b"(logged by the server); this is a bug in aion_green.</p>"
            start_response("500 Internal Server Error", [
                ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data))),
                *_SECURITY])
            return [data]

    def _serve(self, environ: dict[str, Any], start_response: StartResponse,
               segments: list[str]) -> Iterable[bytes]:
        base = _base(environ)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        name = segments[0] if segments else ""
        if name == "static" and len(segments) == 2 and segments[1] in _STATIC:
            return self._static(segments[1], start_response)
        if name == "login":
            return self._login(method, environ, start_response, base)
        headers: list[tuple[str, str]] = []
        session = self.sessions.session(environ)
        if session is None and self.sessions.open:
            cookie = self.sessions.sign_in("")
            assert cookie is not None
            headers.append(self.sessions.set_cookie(cookie, base, environ))
            session = self.sessions.session({"HTTP_COOKIE": f"aion_console={cookie}"})
        if session is None:
            if method in ("GET", "HEAD"):
                target = base + "/" + "/".join(segments)
                query = environ.get("QUERY_STRING", "")
                return _redirect(start_response, f"{base}/login?"
                                 + _query_string(next=target + ("?" + query if query else "")))
            return self._html(start_response, 401, "Signed out", tag(
                "p", "This console's session has ended. ",
                tag("a", "Sign in again", href=f"{base}/login"), "."), base, "", False)
        if name == "logout":
            return self._logout(method, environ, start_response, base, session)
        if name == "":
            return _redirect(start_response, f"{base}/runs", headers)
        render = _PAGES.get(name)
        if render is None or len(segments) != 1:
            return self._html(start_response, 404, "Not found", tag(
                "p", "No page here. ", tag("a", "See the runs", href=f"{base}/runs"), "."),
                base, session.csrf, not self.sessions.open, headers)
        if method not in ("GET", "HEAD"):
            return self._html(start_response, 405, "Not allowed", tag(
                "p", f"{method} is not allowed here: pages are read with GET."),
                base, session.csrf, not self.sessions.open, headers + [("Allow", "GET")])
        params = _params(environ)
        request = pages.Request(self.engine, base, params, session, self.api._public)
        try:
            request.namespace = self._namespace(params, session)
            title, body = render(request)
            status = 200
        except pages.Problem as problem:
            title, body, status = problem.title, tag("p", problem.message, cls="error"), problem.status
        except AionError as exc:
            code = code_of(exc)
            status = ERRORS.get(code, (500,))[0]
            title = "Not found" if code == "not_found" else "Could not show this"
            body = tag("p", self.api._public(str(exc)), cls="error", data_code=code)
        except Exception:
            log.exception("console: an unexpected error; this is a bug in aion_green")
            status, title = 500, "Internal error"
            body = tag("p", "An unexpected error occurred (logged by the server).", cls="error")
        return self._html(start_response, status, title, body, base, session.csrf,
                          not self.sessions.open, headers, nav=name,
                          namespace=getattr(request, "namespace", namespaces.DEFAULT),
                          head=getattr(request, "head", None))

    @staticmethod
    def _namespace(params: dict[str, str], session: Session) -> str:
        given = params.get("namespace")
        if not given:
            # A sign-in granted some namespaces, not the default: the first of them.
            granted = session.grants
            given = (namespaces.DEFAULT if granted is None or namespaces.DEFAULT in granted
                     else sorted(granted)[0])
        try:
            ns = namespaces.check_namespace(given, "the namespace")
        except AionError as exc:
            raise pages.Problem(400, "Bad namespace", str(exc)) from None
        if session.grants is not None and ns not in session.grants:
            raise pages.Problem(403, "Namespace denied",
                                f"This sign-in is not granted namespace {ns!r}. Choose one of: "
                                f"{', '.join(sorted(session.grants))}.")
        return ns

    # -- sign in and out --------------------------------------------------------------------------
    def _login(self, method: str, environ: dict[str, Any], start_response: StartResponse,
               base: str) -> Iterable[bytes]:
        params = _params(environ)
        target = _safe_next(params.get("next"), base)
        if self.sessions.open:
            return _redirect(start_response, target)
        problem = None
        if method == "POST":
            form = _form(environ)
            target = _safe_next(form.get("next"), base)
            cookie = self.sessions.sign_in(form.get("token", ""))
            if cookie is not None:
                return _redirect(start_response, target,
                                 [self.sessions.set_cookie(cookie, base, environ)])
            problem = "That is not this server's token. Nothing was changed."
        elif method not in ("GET", "HEAD"):
            problem = f"{method} is not allowed here."
        body = tag("form",
                   tag("p", problem, cls="error") if problem else None,
                   tag("p", "This server's API wants a token. Sign in with it once; the "
                       "console keeps a session cookie (HttpOnly, SameSite=Strict)."),
                   tag("label", tag("span", "Token", cls="lbl"),
                       tag("input", type="password", name="token", autocomplete="current-password",
                           required=True, autofocus=True, id="token"), cls="field"),
                   tag("input", type="hidden", name="next", value=target),
                   tag("button", "Sign in", type="submit", id="signin"),
                   method="post", action=f"{base}/login", cls="login")
        return self._html(start_response, 401 if problem else 200, "Sign in", body, base, "",
                          False)

    def _logout(self, method: str, environ: dict[str, Any], start_response: StartResponse,
                base: str, session: Session) -> Iterable[bytes]:
        if method != "POST":
            return self._html(start_response, 405, "Not allowed",
                              tag("p", "Sign out with the button (a POST)."), base,
                              session.csrf, True, [("Allow", "POST")])
        form = _form(environ)
        environ = {**environ, "HTTP_X_CSRF_TOKEN": form.get("csrf", "")}
        if not self.sessions.csrf_ok(session, environ):
            return self._html(start_response, 403, "Not signed out", tag(
                "p", "The form's CSRF token is missing or wrong: reload the page and try again."),
                base, session.csrf, True)
        self.sessions.sign_out(session)
        return _redirect(start_response, f"{base}/login",
                         [self.sessions.clear_cookie(base, environ)])

    # -- replies ----------------------------------------------------------------------------------
    def _html(self, start_response: StartResponse, status: int, title: str, body: Any,
              base: str, csrf: str, signed_in: bool,
              headers: Optional[list[tuple[str, str]]] = None, nav: str = "",
              namespace: str = namespaces.DEFAULT, head: Any = None) -> list[bytes]:
        data = page(title, body, base=base, csrf=csrf, nav=nav, namespace=namespace,
                    signed_in=signed_in, extra_head=head)
        start_response(f"{status} {_REASONS.get(status, 'Error')}", [
            ("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"), *_SECURITY, *(headers or [])])
        return [data]

    @staticmethod
    def _static(name: str, start_response: StartResponse) -> list[bytes]:
        data = resources.files("aion_green.transport.console").joinpath("static").joinpath(name).read_bytes()
        start_response("200 OK", [("Content-Type", _STATIC[name]),
                                  ("Content-Length", str(len(data))),
                                  ("Cache-Control", "max-age=300"), *_SECURITY])
        return [data]


_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _base(environ: dict[str, Any]) -> str:
    return environ.get("SCRIPT_NAME", "").rstrip("/") + "/ui"


def _redirect(start_response: StartResponse, target: str,
              headers: Optional[list[tuple[str, str]]] = None) -> list[bytes]:
    start_response("303 See Other", [("Location", target), ("Content-Length", "0"),
                                     ("Cache-Control", "no-store"), *(headers or [])])
    return [b""]


def _safe_next(target: Optional[str], base: str) -> str:
    """Where to go after signing in: a page of this console only (never
    another site: ``//evil.example`` or ``https://...``)."""
    path = (target or "").split("?", 1)[0]
    if (not target or not target.startswith(base + "/") or "//" in target
            or "\\" in target or any(ord(c) < 32 for c in target)
            or any(part in (".", "..") for part in path.split("/"))):
        return f"{base}/runs"
    return target


def _query_string(**values: str) -> str:
    from urllib.parse import urlencode
    return urlencode(values)


def _params(environ: dict[str, Any]) -> dict[str, str]:
    text = environ.get("QUERY_STRING", "")
    try:
        text = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    parsed = parse_qs(text, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _form(environ: dict[str, Any]) -> dict[str, str]:
    """A small urlencoded form (sign in, sign out): at most 64 KiB read."""
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), 65536)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


__all__ = ["Console", "Denied", "esc"]
