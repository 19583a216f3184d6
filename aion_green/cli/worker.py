"""``aion-green worker``: drive the workflows of some modules until SIGTERM,
optionally serving the HTTP API; and what the other commands learn of the
worker that drives a SQLite file (who, which types, where its API is).

The HTTP API is served by ``gevent.pywsgi`` on the main thread's own gevent
hub, each request a greenlet there. That is the caller side of the engine:
its waits (a result, a query) park the request's greenlet on an async
watcher of *that* hub and never touch the engine's hub thread, and a request
that waits does not hold up the others (see DESIGN.md, "Threads and where
code runs"). The main greenlet only naps and watches for the stop signal.

The worker file ``<database>.worker`` (JSON: pid, workflow types, HTTP
address) says what the worker offers; it is trusted only while the process
it names holds the database's driver lock, so a stale file is harmless.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Optional

from aion_green.core.errors import AionError, ConfigurationError
from aion_green.runtime.sharing import (
    remove_worker_file,
    write_worker_file,
)
from aion_green.stores.sqlite.schema import sqlite_path_from_url


def is_http(url: Optional[str]) -> bool:
    return url is not None and url.startswith(("http://", "https://"))


def sqlite_file(url: Optional[str]) -> Optional[str]:
    """The database file a store URL names, or None (PostgreSQL, HTTP, memory)."""
    if is_http(url) or (url is not None and url.startswith(("postgres://", "postgresql://"))):
        return None
    path = sqlite_path_from_url(url)
    return None if path in ("", ":memory:") else os.path.abspath(path)










def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--http {text!r}: give HOST:PORT, like 127.0.0.1:8080 "
                                 "(port 0 takes any free port)")
    return host.strip("[]"), int(port)


def run_worker(args: argparse.Namespace, out: Any) -> int:
    import importlib

    import gevent

    from aion_green.core.registry import _DECORATED, parameters_of
    from aion_green.runtime.engine import Engine

    db, token = args.db, args.token
    try:
        if is_http(db):
            raise ConfigurationError(f"--db {db}: a worker drives a store; give its URL "
                                     "(sqlite:///path.db or postgresql://...), not an HTTP address")
        address = None if args.http is None else _address(args.http)
        if token is not None:
            from aion_green.transport.wsgi import parse_tokens

            parse_tokens(token)  # a malformed one is refused before anything starts
    except ConfigurationError as exc:
        out.error(type(exc).__name__, str(exc))
        return 2
    sys.path.insert(0, os.getcwd())
    for name in args.modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            out.error("ImportError", f"worker: cannot import {name!r}: {exc}; run the worker "
                      "in the directory that holds it, or set PYTHONPATH")
            return 2
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.append(number))
    db_path = sqlite_file(db)
    engine = Engine(db, retention=getattr(args, "retention", None))
    server: Any = None
    try:
        engine.list(limit=1)  # start it: it resumes what it may drive
        kinds = sorted(_DECORATED)
        own = [k for k in kinds if not k.startswith("aion.")]  # not the built-ins (schedules)
        url = None
        if address is not None:
            server = _serve(engine, address, args)
            host = address[0] if ":" not in address[0] else f"[{address[0]}]"
            url = f"http://{host}:{server.server_port}"
            if token is None and address[0] not in ("127.0.0.1", "localhost", "::1"):
                out.progress(f"aion-green worker: warning: the HTTP API on {url} takes requests "
                             "from anybody who reaches it; give --token")
        if db_path is not None:
            write_worker_file(db_path, {"pid": os.getpid(), "types": kinds, "http": url,
                                         "parameters": {k: parameters_of(_DECORATED[k]) for k in kinds}})
        role = "driving" if engine.driving else f"a client of {engine._epoch.driver_lock.holder()}"
        out.emit({"pid": os.getpid(), "types": kinds, "store": engine._store_name(),
                  "driving": engine.driving, "http": url},
                 f"aion-green worker {os.getpid()}: {len(own)} workflow type(s) "
                 f"({', '.join(own) or 'none'}); store {engine._store_name()}; {role}"
                 + (f"; HTTP API on {url}" if url else ""))
        while not stop:
            gevent.sleep(0.1)  # lets the server's greenlets run; signals land between naps
        _say(out, f"aion-green worker {os.getpid()}: signal {stop[0]}, shutting down")
    except (AionError, OSError) as exc:
        out.error(type(exc).__name__, f"worker: {exc}")
        return 2
    finally:
        # The drain (issue 18): new requests answer 503 with Retry-After
        # while the requests being answered and the steps running finish,
        # for at most --grace seconds; then the engine's shutdown wakes the
        # long polls still waiting (a result) with EngineClosed, which they
        # answer as 503 too. Before, the process exited under them (issue 16).
        if server is not None:
            server.drain()
        _settle(engine, server, getattr(args, "grace", 30.0))
        engine.shutdown()
        if server is not None:
            server.stop(timeout=5.0)
        if db_path is not None:
            remove_worker_file(db_path)
    _say(out, f"aion-green worker {os.getpid()}: stopped")
    return 0


def _settle(engine: Any, server: Any, grace: float) -> None:
    """Wait up to ``grace`` seconds for the step attempts running now to end
    (their records land; steps started meanwhile are left to the engine's
    shutdown and its ``step_grace``), then up to 1 s more, within the grace,
    for the requests being answered: those that waited on these steps' runs
    answer now. A request still waiting then (a result of a run that waits
    for a message) is answered 503 by the engine's shutdown: a long poll
    does not hold the worker for the whole grace."""
    import gevent

    from aion_green.core.clock import monotonic

    in_flight = getattr(getattr(engine, "_epoch", None), "in_flight", {})
    # (list() first: a step thread may change the dict meanwhile; list is one C call)
    running = set(list(in_flight))
    deadline = monotonic() + grace
    while running and monotonic() < deadline:
        gevent.sleep(0.05)
        running &= set(list(in_flight))
    deadline = min(deadline, monotonic() + 1.0)
    while server is not None and server.answering() and monotonic() < deadline:
        gevent.sleep(0.05)


def _say(out: Any, text: str) -> None:
    """A worker's news: on stdout, or on stderr once stdout had its JSON."""
    if not out.json:
        out.line(text)
    elif not out.quiet:
        print(text, file=sys.stderr, flush=True)


def _serve(engine: Any, address: tuple[str, int], args: argparse.Namespace) -> Any:
    from aion_green.transport.serve import Server

    return Server(engine, address, args.token, max_connections=args.http_connections,
                  read_timeout=args.http_read_timeout)
