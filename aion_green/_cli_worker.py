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
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Optional

from ._sqlite_schema import sqlite_path_from_url
from .errors import AionError, ConfigurationError
from .sharing import DriverLock


@dataclass
class Driver:
    """Who drives the runs of a SQLite file, as far as a client can tell."""

    held: bool  # some process holds the driver lock
    pid: Optional[int]
    types: Optional[list[str]]  # the workflow types of an aion-green worker; None: unknown
    http: Optional[str]  # the worker's HTTP API, if it serves one
    name: str  # for messages: "process 1234"
    # Their parameters (registry.parameters_of), so a client can check the
    # arguments of a start; absent for a type the worker did not describe.
    parameters: Optional[dict[str, Any]] = None


def is_http(url: Optional[str]) -> bool:
    return url is not None and url.startswith(("http://", "https://"))


def sqlite_file(url: Optional[str]) -> Optional[str]:
    """The database file a store URL names, or None (PostgreSQL, HTTP, memory)."""
    if is_http(url) or (url is not None and url.startswith(("postgres://", "postgresql://"))):
        return None
    path = sqlite_path_from_url(url)
    return None if path in ("", ":memory:") else os.path.abspath(path)


def _worker_file(db_path: str) -> str:
    return f"{db_path}.worker"


def probe_driver(db_path: str) -> Driver:
    """Look at the driver lock of ``db_path`` without taking it for longer
    than a probe. (A worker that starts during the probe's instant finds the
    lock taken, becomes a client, and takes over within a second.)"""
    import fcntl

    lock = DriverLock(db_path)
    assert lock.path is not None
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:
        return Driver(False, None, None, None, "no process")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            held = True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
    finally:
        os.close(fd)
    if not held:
        return Driver(False, None, None, None, "no process")
    name = lock.holder()
    try:
        pid: Optional[int] = int(name.split()[-1])
    except ValueError:
        pid = None
    try:
        with open(_worker_file(db_path), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or pid is None or info.get("pid") != pid:
        return Driver(True, pid, None, None, name)
    parameters = info.get("parameters")
    return Driver(True, pid, list(info.get("types") or []), info.get("http"),
                  f"the aion-green worker, {name}",
                  parameters if isinstance(parameters, dict) else None)


def _write_worker_file(db_path: str, info: dict[str, Any]) -> None:
    path = _worker_file(db_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def _remove_worker_file(db_path: str) -> None:
    path = _worker_file(db_path)
    try:
        with open(path, encoding="utf-8") as f:
            mine = json.load(f).get("pid") == os.getpid()
        if mine:
            os.remove(path)
    except (OSError, ValueError, AttributeError):
        pass


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--http {text!r}: give HOST:PORT, like 127.0.0.1:8080 "
                                 "(port 0 takes any free port)")
    return host.strip("[]"), int(port)


def run_worker(args: argparse.Namespace, out: Any) -> int:
    import importlib

    import gevent

    from .engine import Engine
    from .registry import _DECORATED, parameters_of

    db, token = args.db, args.token
    try:
        if is_http(db):
            raise ConfigurationError(f"--db {db}: a worker drives a store; give its URL "
                                     "(sqlite:///path.db or postgresql://...), not an HTTP address")
        address = None if args.http is None else _address(args.http)
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
    engine = Engine(db)
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
            _write_worker_file(db_path, {"pid": os.getpid(), "types": kinds, "http": url,
                                         "parameters": {k: parameters_of(_DECORATED[k]) for k in kinds}})
        role = "driving" if engine.driving else f"a client of {engine._driver_lock.holder()}"
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
        if server is not None:
            # No new connections; what is in flight gets a moment to finish,
            # then the engine's shutdown wakes the long polls (a result
            # wait) with EngineClosed, which they answer as 503 with
            # Retry-After. Before, the process exited under them (issue 16).
            server.drain()
            server.settle(timeout=1.0)
        engine.shutdown()
        if server is not None:
            server.stop(timeout=5.0)
        if db_path is not None:
            _remove_worker_file(db_path)
    _say(out, f"aion-green worker {os.getpid()}: stopped")
    return 0


def _say(out: Any, text: str) -> None:
    """A worker's news: on stdout, or on stderr once stdout had its JSON."""
    if not out.json:
        out.line(text)
    elif not out.quiet:
        print(text, file=sys.stderr, flush=True)


def _serve(engine: Any, address: tuple[str, int], args: argparse.Namespace) -> Any:
    from .transport.serve import Server

    return Server(engine, address, args.token, max_connections=args.http_connections,
                  read_timeout=args.http_read_timeout)
