"""Child process of the crash tests (``test_crash.py``): runs, resumes or
replays the ``counting`` workflow on a real SQLite file, optionally SIGKILLing
itself at a chosen point.

Usage::

    python crash_child.py --db PATH --effects PATH --id WID --steps N
        [--run-id RID]            # control: create the run with this run id first
        [--kill-in-step K]        # SIGKILL inside step K, after its "start" line
        [--kill-before-record K]  # SIGKILL as the writer is about to record step K
        [--kill-in-replay K]      # SIGKILL once replay has handed out step K's record
        [--slow-after K --slow S] # steps after K sleep S seconds (a parent kills us)

Every step appends ``start <step> <idempotency key> <attempt>`` and then
``done <step> <key> <attempt>`` to the effects file, each line flushed and
fsynced, so the counts survive SIGKILL. On completion the child prints one
JSON line ``{"result": ..., "patched": <gevent patch_all() in effect>}``.

With ``AION_GEVENT_PATCH=1`` it calls ``gevent.monkey.patch_all()`` before
anything else, as the test suite does, so crashes are exercised in both modes.
"""
import os

if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from gevent import monkey as _monkey  # noqa: E402

import aion_green as aion  # noqa: E402
from aion_green import store as _store  # noqa: E402
from aion_green.workflows import replay as _replay  # noqa: E402

WORKFLOW_TYPE = "crash_child.counting"
_MODULUS = 2**61 - 1
# Steps run on native pool threads: a patched time.sleep there would build a
# gevent hub per thread.
_native_sleep = _monkey.get_original("time", "sleep")

EFFECTS_PATH = ""
KILL_IN_STEP = 0
SLOW_AFTER = 0
SLOW = 0.0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pragma: no cover - SIGKILL cannot be caught; never returns
        _native_sleep(1)


def _record(kind: str, step: int, key: str, attempt: int) -> None:
    with open(EFFECTS_PATH, "a", encoding="utf-8") as f:
        f.write(f"{kind} {step} {key} {attempt}\n")
        f.flush()
        os.fsync(f.fileno())


def effect(i, total, salt):
    """The side effect of step ``i``: counted in the effects file; its result
    depends on the previous step's result and on the workflow's random salt."""
    info = aion.step_info()
    if info.step != i:
        raise AssertionError(f"step_info().step={info.step} inside the effect of step {i}")
    _record("start", i, info.idempotency_key, info.attempt)
    if KILL_IN_STEP == i:
        _die()
    if SLOW_AFTER and i > SLOW_AFTER:
        _native_sleep(SLOW)
    new_total = (total * 1_000_003 + i * 7919 + int(salt * 1e9)) % _MODULUS
    _record("done", i, info.idempotency_key, info.attempt)
    return {"total": new_total, "step": i, "key": info.idempotency_key}


@aion.workflow(name=WORKFLOW_TYPE)
def counting(ctx, n):
    # Drawn before any step: the salt feeds every step, so a replay that drew
    # another value would make the live steps after a crash diverge from the
    # control run.
    salt = ctx.random()
    total = 0
    for i in range(1, n + 1):
        total = ctx.step(effect, i, total, salt)["total"]
    return {"total": total, "salt": salt, "r_end": ctx.random(), "uuid": str(ctx.uuid4()), "steps": n}


def _kill_before_record(step: int) -> None:
    original = _store.SQLiteStore.write_batch

    def write_batch(self, ops):
        for op in ops:
            if isinstance(op, _store.Append) and any(
                e.type == "StepCompleted" and e.data.get("step") == step for e in op.events
            ):
                _die()
        return original(self, ops)

    _store.SQLiteStore.write_batch = write_batch


def _kill_in_replay(step: int) -> None:
    # consume() is where every replayed command is handed out (take() ends in it).
    original = _replay.HistoryCursor.consume

    def consume(self, event):
        original(self, event)
        if event.type == "StepCompleted" and event.data.get("step") == step:
            _die()

    _replay.HistoryCursor.consume = consume


def main(argv=None) -> int:
    global EFFECTS_PATH, KILL_IN_STEP, SLOW_AFTER, SLOW
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--run-id")
    parser.add_argument("--kill-in-step", type=int, default=0)
    parser.add_argument("--kill-before-record", type=int, default=0)
    parser.add_argument("--kill-in-replay", type=int, default=0)
    parser.add_argument("--slow-after", type=int, default=0)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    EFFECTS_PATH = args.effects
    KILL_IN_STEP = args.kill_in_step
    SLOW_AFTER, SLOW = args.slow_after, args.slow
    if args.kill_before_record:
        _kill_before_record(args.kill_before_record)
    if args.kill_in_replay:
        _kill_in_replay(args.kill_in_replay)
    if args.run_id:
        # The control run gets the crashed run's identity, so that its seeded
        # ctx.random() draws the same values and results compare in full.
        store = aion.SQLiteStore(args.db)
        try:
            created, _ = store.create_run(args.id, WORKFLOW_TYPE, json.dumps([args.steps]),
                                         args.run_id, time.time())
        finally:
            store.close()
        if not created:
            raise SystemExit(f"control run {args.id!r} already exists in {args.db}")

    with aion.Engine(f"sqlite:///{os.path.abspath(args.db)}", workflows=[counting]) as engine:
        # Idempotent by id: an existing run (being resumed) is returned as it is.
        handle = engine.start(counting, args.steps, id=args.id)
        result = handle.result(timeout=args.timeout)
    patched = _monkey.is_module_patched("threading")
    print(json.dumps({"result": result, "patched": patched}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
