"""``aion-green`` command line: run a worker, look into a store.

    aion-green [--db URL] worker MODULE [MODULE...]
    aion-green [--db URL] list [--status S] [--type T] [--limit N] [--json]
    aion-green [--db URL] show ID [--json]

``worker`` imports the modules (their ``@aion.workflow`` functions are
registered), drives runs until SIGTERM or SIGINT, then shuts down cleanly
(the runs it drove resume in the next engine). ``list`` and ``show`` only
look: they never run, fire or record anything.

Exit codes: 0 success, 1 not found, 2 bad usage or a store error.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Optional

from . import events as ev
from .engine import Engine
from .errors import AionError, WorkflowNotFound


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aion-green", description="Look into an aion_green store.")
    parser.add_argument("--db", default=None, help="store URL (default: ./aion.db)")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list workflow runs")
    listing.add_argument("--status", choices=ev.STATUSES)
    listing.add_argument("--type", dest="workflow_type")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="a run's status and its history")
    show.add_argument("workflow_id")
    show.add_argument("--json", action="store_true")
    worker = sub.add_parser("worker", help="drive workflows until SIGTERM")
    worker.add_argument("modules", nargs="+", help="modules that define the workflows")
    return parser


def _worker(db: Optional[str], modules: list[str]) -> int:
    import importlib
    import os
    import signal
    import time

    from .registry import _DECORATED

    sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"aion-green worker: cannot import {name!r}: {exc}", file=sys.stderr)
            return 2
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.append(number))
    engine = Engine(db)
    try:
        engine.list(limit=1)  # start it: it resumes what it may drive
        kinds = sorted(_DECORATED)
        print(f"aion-green worker {os.getpid()}: {len(kinds)} workflow type(s) "
              f"({', '.join(kinds) or 'none'}); store {engine._store_name()}; "
              f"{'driving' if engine.driving else 'a client of ' + engine._driver_lock.holder()}",
              flush=True)
        while not stop:
            time.sleep(0.1)
        print(f"aion-green worker {os.getpid()}: signal {stop[0]}, shutting down", flush=True)
    except AionError as exc:
        print(f"aion-green worker: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    print(f"aion-green worker {os.getpid()}: stopped", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        return _worker(args.db, args.modules)
    # Passive: looking must never resume (and so run) anybody's workflows,
    # fire a timer, drain an inbox or take the store's driver lock.
    engine = Engine(args.db, recover=False)
    engine._passive = True
    try:
        if args.command == "list":
            runs = engine.list(status=args.status, workflow_type=args.workflow_type, limit=args.limit)
            if args.json:
                print(json.dumps([run.__dict__ for run in runs]))
            else:
                print(f"{'workflow id':<36} {'type':<30} {'status':<10} {'events':>6}  updated")
                for run in runs:
                    print(f"{run.workflow_id:<36} {run.workflow_type:<30} {run.status:<10} "
                          f"{run.head_seq:>6}  {_when(run.updated_at)}")
            return 0
        info = engine.describe(args.workflow_id)
        history = engine.history(args.workflow_id)
        if args.json:
            print(json.dumps({"run": info.__dict__, "history": [e.to_json() for e in history]}))
            return 0
        print(f"{info.workflow_id}  {info.workflow_type}{tuple(info.args)!r}  {info.status}")
        if info.status == ev.COMPLETED:
            print(f"result: {json.dumps(info.result)}")
        elif info.error:
            print(f"error: {info.error.get('type')}: {info.error.get('message')}")
        print(f"{'seq':>5}  {'time (UTC)':<23}  {'type':<18}  detail")
        for event in history:
            detail = json.dumps(event.data, separators=(",", ":"))
            print(f"{event.seq:>5}  {_when(event.at):<23}  {event.type:<18}  {detail[:100]}")
        return 0
    except WorkflowNotFound as exc:
        print(f"aion-green: {exc}", file=sys.stderr)
        return 1
    except AionError as exc:
        print(f"aion-green: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
