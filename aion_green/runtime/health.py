"""Whether an engine can take work now: what ``/health/ready`` answers
(issue 18).

Ready means: the engine is not shut down, its store answers a cheap read
(a primary-key lookup) through the engine's reader thread within a short
bound, and, over PostgreSQL, this engine's own lease (its entry among the
engines, renewed with every heartbeat) is current. Over SQLite a client of
another process's driver is ready too: it takes work and hands it over.

What is wrong is said without the store's name or the error's message (a
path, a URL with a password): the check names the error's type; the log of
the server holds the rest.

Thread contract: :func:`readiness` runs on the caller's thread or greenlet
(never the hub's): the read goes through the reader and the caller waits on
a :class:`~aion_green.hub_thread.Future`, so a greenlet of a web server
parks alone and the hub never blocks.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from aion_green.core.errors import EngineClosed, Timeout

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.runtime.engine import Engine

log = logging.getLogger("aion_green.health")

# The id the store read looks up: a primary-key lookup, as cheap as a read
# gets (that a run has this id would change nothing).
_PROBE_ID = "aion.health-probe"
OK = "ok"


@dataclasses.dataclass(frozen=True)
class Readiness:
    """``ready``, whether this engine ``driving`` its store's runs, and each
    check: ``"ok"`` or what is wrong (``engine``, ``store``, and over
    PostgreSQL ``lease``)."""

    ready: bool
    driving: bool
    checks: dict[str, str]

    def problems(self) -> str:
        """What keeps the engine from taking work, in one line."""
        return "; ".join(f"{name}: {state}" for name, state in self.checks.items() if state != OK)


def readiness(engine: "Engine", timeout: float) -> Readiness:
    """Check ``engine`` (starting it, as any first use does); the store's
    read may take at most ``timeout`` seconds."""
    if engine._closed:
        return Readiness(False, False, {"engine": "shut down"})
    try:
        engine._ensure_started()
    except EngineClosed:
        return Readiness(False, False, {"engine": "shut down"})
    except Exception as exc:  # noqa: BLE001 - the store could not be opened
        log.warning("readiness: the engine could not start: %s", exc)
        return Readiness(False, False, {"store": f"could not be opened ({type(exc).__name__})"})
    epoch = engine._epoch
    checks = {"store": OK}
    try:
        epoch.reader.call(epoch.reader.store.get_run, _PROBE_ID).result(timeout)
    except Timeout:
        checks["store"] = f"no answer to a read within {timeout:g} s"
    except EngineClosed:
        return Readiness(False, False, {"engine": "shut down"})
    except Exception as exc:  # noqa: BLE001 - any failure of the read is the answer
        log.warning("readiness: the store did not answer a read: %s", exc)
        checks["store"] = f"a read failed ({type(exc).__name__})"
    if epoch.leased and not engine._passive:
        until, now = epoch.leases.lease_until, time.time()
        if until == 0.0:
            checks["lease"] = "not taken yet (the engine is starting)"
        elif until <= now:
            checks["lease"] = (f"ran out {now - until:.0f} s ago (its renewal did not reach "
                               "the store)")
        else:
            checks["lease"] = OK
        driving = checks["lease"] == OK
    else:
        driving = bool(epoch.sharing.driving)
    return Readiness(all(state == OK for state in checks.values()), driving, checks)
