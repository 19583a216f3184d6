"""A monotonic clock for the engine's own time limits.

freezegun replaces ``time.monotonic`` and ``time.perf_counter`` (and every
module attribute bound to them) while a test freezes the clock; a wait with
a limit measured by them would then never end. ``clock_gettime`` is left
alone, so the engine measures its waits with it. Durable deadlines are a
different matter: they are wall-clock ``time.time()`` values, and tests are
meant to move them.
"""
import time

_clock_gettime = time.clock_gettime
_MONOTONIC = time.CLOCK_MONOTONIC


def monotonic() -> float:
    return _clock_gettime(_MONOTONIC)


def seconds_of(value: object, what: str) -> float:
    """Seconds in a duration given as a timedelta or a number; ``what`` names
    the call in the error. NaN and infinity are refused: recorded as a
    deadline, NaN was a row the store refused (the run stopped and stopped
    again at every restart) and infinity is not JSON (issue 16)."""
    import math
    from datetime import timedelta

    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what}: a duration is a timedelta or a number of seconds, "
                        f"got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"{what}: a duration must be a finite number of seconds, got {value!r}")
    return seconds
