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
