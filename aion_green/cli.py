"""``aion-green`` command line: look into a store (the full CLI, with a
worker and the write commands, comes with a later issue).

    aion-green [--db URL] list [--status S] [--type T] [--limit N] [--json]
    aion-green [--db URL] show ID [--json]

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
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
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
