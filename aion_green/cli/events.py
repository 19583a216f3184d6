"""``aion-green events``: the store-wide event stream (every run's events
in commit order, ``GET /v1/events``), over a store URL or a worker's HTTP
API: a line per event (``--json``: one object per line), from ``--after``
(default: the first event), or with ``--follow`` on as they are recorded
(without ``--after``: from now on) until interrupted."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Iterator, Optional

from aion_green.cli.ops import Target, _when
from aion_green.store import EventPage, GlobalEvent
from aion_green.transport.codec import global_event_to_json

# How often --follow over a store looks again: soon after events, at most this apart.
_POLL_FIRST, _POLL_MAX = 0.05, 0.5


def add_parser(command: Any) -> None:
    """The ``events`` command's options (``command`` makes a subcommand)."""
    cmd = command("events", "every run's events in commit order (the store-wide stream)")
    cmd.add_argument("--after", type=int, metavar="CURSOR",
                     help="the events after this global position (default: from the first; "
                          "with --follow: from now on)")
    cmd.add_argument("--type", dest="types", action="append", metavar="TYPE",
                     help="only events of this type (StepCompleted...); repeat or separate "
                          "by commas for several")
    cmd.add_argument("--status", dest="statuses", action="append", metavar="STATUS",
                     help="only events of runs of this status now (running, completed...)")
    cmd.add_argument("--follow", action="store_true",
                     help="then show events as they are recorded, until interrupted")


def _names(given: Optional[list[str]]) -> Optional[list[str]]:
    if not given:
        return None
    return [name.strip() for text in given for name in text.split(",") if name.strip()]


def _page(target: Target, after: Optional[int], types: Any, statuses: Any) -> EventPage:
    read = target.api.event_page if target.remote else target.api.events
    page: EventPage = read(after, types=types, statuses=statuses, limit=1000)
    return page


def _followed(target: Target, after: Optional[int], types: Any,
              statuses: Any) -> Iterator[GlobalEvent]:
    if target.remote:  # the server's stream, resumed at its cursor after a cut
        yield from target.api.global_events(after, types=types, statuses=statuses)
        return
    cursor = _page(target, after, types, statuses).next if after is None else after
    pause = _POLL_FIRST
    while True:
        page = _page(target, cursor, types, statuses)
        yield from page.events
        pause = _POLL_FIRST if page.events else min(pause * 2, _POLL_MAX)
        cursor = page.next
        if not page.events:
            time.sleep(pause)


def events(target: Target, args: argparse.Namespace, out: Any) -> int:
    types, statuses = _names(args.types), _names(args.statuses)
    if args.follow:
        found: Iterator[GlobalEvent] = _followed(target, args.after, types, statuses)
    else:
        found = _all(target, 0 if args.after is None else args.after, types, statuses)
    out.line(f"{'position':>9}  {'time (UTC)':<23}  {'workflow id':<24} {'seq':>5}  "
             f"{'type':<18}  detail")
    for event in found:
        detail = json.dumps(event.data, separators=(",", ":"))
        out.emit(global_event_to_json(event),
                 f"{event.position:>9}  {_when(event.at):<23}  {event.workflow_id:<24} "
                 f"{event.seq:>5}  {event.type:<18}  {detail[:80]}")
    return 0


def _all(target: Target, after: int, types: Any, statuses: Any) -> Iterator[GlobalEvent]:
    while True:
        page = _page(target, after, types, statuses)
        yield from page.events
        if not page.events:
            return
        after = page.next
