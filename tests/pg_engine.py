"""Child process of the multi-engine PostgreSQL tests (test_postgres_engines.py):
one engine over a database URL that drives what it claims until SIGTERM or
SIGKILL.

    python pg_engine.py URL EFFECTS LEASE MAX_RESIDENT [start-slow]

Prints ``engine <id> <pid>`` once the engine runs. Every step appends
``<idempotency key> <pid>`` to EFFECTS (fsynced) after its side effect.
"""
import os

if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey

    monkey.patch_all()

import signal  # noqa: E402
import sys  # noqa: E402

from gevent import monkey as _monkey  # noqa: E402

import aion_green as aion  # noqa: E402

_native_sleep = _monkey.get_original("time", "sleep")
URL, EFFECTS, LEASE, CAP = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])


def effect(i, seconds):
    _native_sleep(seconds)
    with open(EFFECTS, "a", encoding="utf-8") as f:
        f.write(f"{aion.step_info().idempotency_key} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return os.getpid()


@aion.workflow(name="pg.work")
def work(ctx, steps, seconds):
    pids = [ctx.step(effect, i, seconds) for i in range(steps)]
    return len(pids)


def trivial(i):
    return i


@aion.workflow(name="pg.quick")
def quick(ctx, steps):
    return sum(ctx.step(trivial, i) for i in range(steps))


@aion.workflow(name="pg.slow")
def slow(ctx, steps):
    return [ctx.step(effect, i, 0.3) for i in range(steps)]


def main():
    engine = aion.Engine(URL, workflows=[work, quick, slow], lease=LEASE, max_resident=CAP)
    engine.list(limit=1)  # start it
    if sys.argv[5:] == ["start-slow"]:
        engine.start(slow, 20, id="slow")
    print(f"engine {engine.engine_id} {os.getpid()}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        _native_sleep(0.05)
    engine.shutdown()


if __name__ == "__main__":
    main()
