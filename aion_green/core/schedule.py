"""What a schedule is, as the engine, the HTTP API and the client show it
(the schedules themselves run in :mod:`aion_green.runtime.schedules`)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple, Optional

# A schedule's policies (runtime/schedules.py, OVERLAP and CATCH_UP), for type checkers.
Overlap = Literal["skip", "buffer_one", "cancel_previous", "allow_all"]
CatchUp = Literal["all", "one", "skip"]


class ScheduleInfo(NamedTuple):
    """A schedule as ``engine.schedules()`` and ``engine.describe_schedule``
    show it: its spec, whether it is active (its run goes on) or deleted
    (unscheduled: cancelled), and, asked of the live schedule, its next fire
    time, the run it tracks and the fire that waits (None where no engine
    here drives it). The spec is the current one (``engine.update_schedule``
    changes it), and a paused schedule says so, with its note."""

    schedule_id: str
    workflow: str
    args: list[Any]
    cron: Optional[str]
    every: Optional[float]  # seconds
    timezone: Optional[str]
    start_at: Optional[str]  # ISO 8601
    overlap: str
    catch_up: str
    status: str  # "active", "paused" or "deleted" (or "failed", should its run fail)
    next_fire: Optional[str] = None  # ISO 8601
    running: Optional[str] = None  # the workflow id of the run it tracks
    pending: Optional[str] = None  # a fire held back (overlap buffer_one / cancel_previous)
    run_id: Optional[str] = None
    # Paused (engine.pause_schedule): it fires nothing until resumed; the
    # note given with the pause.
    paused: bool = False
    note: str = ""

    @property
    def next_fire_time(self) -> Optional[datetime]:
        """``next_fire`` as an aware datetime (None if none is known)."""
        return None if self.next_fire is None else datetime.fromisoformat(
            self.next_fire.replace("Z", "+00:00"))
