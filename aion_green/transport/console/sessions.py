"""The console's sign-in: a bearer token traded once for a session cookie.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so the
console signs in with the API's token once and keeps a cookie. The cookie is
stateless and signed: ``<who>.<nonce>.<expires>.<mac>``, where ``who`` is a
fingerprint of the token it was made from, and ``mac`` an HMAC-SHA256 keyed
by a key derived from that token's secret. So every process that serves the
same tokens (gunicorn's workers, several machines) accepts the same session,
and changing or removing a token ends every session made with it. The
session's CSRF token is derived from it too (an HMAC of its nonce), and
every request that changes something must carry it in ``X-CSRF-Token``.

Signing out clears the cookie and revokes its nonce in this process (the
revocation lives as long as the session would have: a process that did not
see the sign-out accepts the cookie until it expires, ``max_age`` seconds
after sign-in: 12 hours by default).

With no token configured the console is open, as the API is: a session is
made on the first visit (keyed by a secret of this process), for the CSRF
token its actions carry.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from http.cookies import SimpleCookie
from typing import Any, NamedTuple, Optional, Sequence

COOKIE = "aion_console"
_PURPOSE = b"aion_green console session v1"


class Session(NamedTuple):
    """A signed-in browser: the namespaces its token grants (None: all), the
    CSRF token its changes carry, and when it ends (epoch seconds)."""

    grants: Optional[frozenset[str]]
    csrf: str
    expires: float
    nonce: str


class _Key(NamedTuple):
    who: str
    key: bytes
    grants: Optional[frozenset[str]]


class Sessions:
    """Makes, checks and ends sessions for the tokens of one server
    (``tokens``: the API's parsed tokens, ``(secret bytes, grants)`` pairs,
    or None when the API asks for none)."""

    def __init__(self, tokens: Optional[Sequence[tuple[bytes, Optional[frozenset[str]]]]],
                 max_age: float = 12 * 3600) -> None:
        self.open = tokens is None
        self.max_age = max_age
        self._tokens = [] if tokens is None else list(tokens)
        secrets_ = [(os.urandom(32), None)] if tokens is None else list(tokens)
        self._keys = []
        for secret, grants in secrets_:
            key = hmac.new(secret, _PURPOSE, hashlib.sha256).digest()
            who = hashlib.sha256(key).hexdigest()[:16]
            self._keys.append(_Key(who, key, grants))
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- signing in and out -------------------------------------------------------------------
    def sign_in(self, presented: str) -> Optional[str]:
        """The cookie value of a new session for the token ``presented``, or
        None if it is not one of the server's (every token compared, so the
        time taken tells nothing)."""
        found: Optional[_Key] = None
        if self.open:
            found = self._keys[0]
        else:
            given = presented.strip().encode()
            for (secret, _), key in zip(self._tokens, self._keys):
                if hmac.compare_digest(given, secret) and found is None:
                    found = key
        if found is None:
            return None
        nonce = secrets.token_urlsafe(18)
        expires = int(time.time() + self.max_age)
        body = f"{found.who}.{nonce}.{expires}"
        return f"{body}.{self._mac(found.key, body)}"

    def sign_out(self, session: Session) -> None:
        with self._lock:
            now = time.time()
            for nonce, until in list(self._revoked.items()):
                if until < now:
                    del self._revoked[nonce]
            self._revoked[session.nonce] = session.expires

    # -- checking -------------------------------------------------------------------------------
    def session(self, environ: dict[str, Any]) -> Optional[Session]:
        """The request's session, from its cookie, if it is one of ours,
        current and not signed out; else None."""
        value = cookie_of(environ)
        if not value:
            return None
        parts = value.split(".")
        if len(parts) != 4:
            return None
        who, nonce, expires_text, mac = parts
        key = next((k for k in self._keys if hmac.compare_digest(k.who, who)), None)
        if key is None or not hmac.compare_digest(self._mac(key.key, f"{who}.{nonce}.{expires_text}"),
                                                  mac):
            return None
        try:
            expires = float(int(expires_text))
        except ValueError:
            return None
        if expires < time.time():
            return None
        with self._lock:
            if nonce in self._revoked:
                return None
        csrf = self._mac(key.key, f"csrf.{nonce}")[:32]
        return Session(key.grants, csrf, expires, nonce)

    @staticmethod
    def csrf_ok(session: Session, environ: dict[str, Any]) -> bool:
        given = environ.get("HTTP_X_CSRF_TOKEN", "")
        return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())

    # -- cookies --------------------------------------------------------------------------------
    def set_cookie(self, value: str, path: str, environ: dict[str, Any]) -> tuple[str, str]:
        """The ``Set-Cookie`` header of a session: HttpOnly, SameSite=Strict,
        limited to the console's path, and Secure when the request came over
        TLS (``wsgi.url_scheme``, or ``X-Forwarded-Proto`` from a proxy)."""
        secure = "; Secure" if _over_tls(environ) else ""
        return ("Set-Cookie", f"{COOKIE}={value}; Path={path or '/'}; Max-Age={int(self.max_age)}; "
                f"HttpOnly; SameSite=Strict{secure}")

    @staticmethod
    def clear_cookie(path: str, environ: dict[str, Any]) -> tuple[str, str]:
        secure = "; Secure" if _over_tls(environ) else ""
        return ("Set-Cookie", f"{COOKIE}=; Path={path or '/'}; Max-Age=0; HttpOnly; "
                f"SameSite=Strict{secure}")

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def cookie_of(environ: dict[str, Any]) -> Optional[str]:
    header = environ.get("HTTP_COOKIE", "")
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed header from elsewhere: no session, not a 500
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def _over_tls(environ: dict[str, Any]) -> bool:
    return (environ.get("wsgi.url_scheme") == "https"
            or environ.get("HTTP_X_FORWARDED_PROTO", "").lower() == "https")
