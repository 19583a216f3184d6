"""Child process of the child-workflow crash tests (``test_children_crash.py``):
runs or resumes the ``family`` workflow (a parent that starts ``KIDS``
children of ``STEPS`` steps each and waits for them in order) on a real
SQLite file, optionally SIGKILLing itself at a chosen point.

Usage::

    python crash_family.py --db PATH --effects PATH --id WID
        [--run-id RID]                 # control: create the parent with this run id first
        [--kill-in-step CHILD:K]       # SIGKILL inside step K of child CHILD (1-based)
        [--kill-before-create CHILD]   # SIGKILL once the writer committed what precedes
                                       # the creation of child CHILD, before creating it

Every step appends ``start <idempotency key>`` then ``done <idempotency
key>`` to the effects file (fsynced), so the counts survive SIGKILL. Child
CHILD's steps from step 2 on wait for child CHILD-1 to be done with its
last step, so "the parent waits on a child" is where a kill lands. On
completion the child prints ``{"result": ..., "patched": ...}``.
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

KIDS = 3
STEPS = 4
EFFECTS_PATH = ""
KILL_IN_STEP = (0, 0)
_native_sleep = _monkey.get_original("time", "sleep")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pragma: no cover - SIGKILL cannot be caught
        _native_sleep(1)


def _record(kind: str, key: str) -> None:
    with open(EFFECTS_PATH, "a", encoding="utf-8") as f:
        f.write(f"{kind} {key}\n")
        f.flush()
        os.fsync(f.fileno())


def effect(child, i, total):
    key = aion.step_info().idempotency_key
    _record("start", key)
    if KILL_IN_STEP == (child, i):
        _die()
    _record("done", key)
    return (total * 31 + child * 1000 + i) % 1_000_003


@aion.workflow(name="crash_family.kid")
def kid(ctx, child):
    total = child
    for i in range(1, STEPS + 1):
        total = ctx.step(effect, child, i, total)
    return {"child": child, "total": total, "id": ctx.workflow_id}


@aion.workflow(name="crash_family.family")
def family(ctx):
    salt = ctx.random()
    children = [ctx.start_child(kid, c) for c in range(1, KIDS + 1)]
    results = [child.result() for child in children]
    return {"salt": salt, "kids": results, "uuid": str(ctx.uuid4())}


def _kill_before_create(child_id: str) -> None:
    original = _store.SQLiteStore.write_batch

    def write_batch(self, ops):
        for i, op in enumerate(ops):
            if isinstance(op, _store.CreateRun) and op.workflow_id == child_id:
                # The creation is queued right behind the parent's
                # ChildStarted and often shares its commit: commit what came
                # before it, then die, as a crash between two commits would.
                if i:
                    original(self, ops[:i])
                _die()
        return original(self, ops)

    _store.SQLiteStore.write_batch = write_batch


def main(argv=None) -> int:
    global EFFECTS_PATH, KILL_IN_STEP
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--effects", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--run-id")
    parser.add_argument("--kill-in-step")
    parser.add_argument("--kill-before-create", type=int, default=0)
    args = parser.parse_args(argv)

    EFFECTS_PATH = args.effects
    if args.kill_in_step:
        child, step = args.kill_in_step.split(":")
        KILL_IN_STEP = (int(child), int(step))
    if args.kill_before_create:
        _kill_before_create(f"{args.id}/child-{args.kill_before_create}")
    if args.run_id:
        store = aion.SQLiteStore(args.db)
        try:
            created, _ = store.create_run(args.id, "crash_family.family", "[]", args.run_id,
                                         time.time())
        finally:
            store.close()
        if not created:
            raise SystemExit(f"control run {args.id!r} already exists in {args.db}")

    with aion.Engine(f"sqlite:///{os.path.abspath(args.db)}", workflows=[family, kid]) as engine:
        result = engine.start(family, id=args.id).result(timeout=60)
    print(json.dumps({"result": result, "patched": _monkey.is_module_patched("threading")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
