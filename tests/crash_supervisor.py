"""Child process of the supervision crash test (``test_supervision.py``): a
``one_for_all`` supervisor over three children on a real SQLite file: the
first fails at once in its first two incarnations, the other two sleep one
second (durably) and complete, so each failure finds them running and the
decisions do not depend on timing. Optionally
SIGKILLs itself as the store is about to write the Nth batch that holds an
event of a given type.

Usage::

    python crash_supervisor.py --db PATH --id WID [--kill-at TYPE:N]

Prints ``{"result": ..., "patched": ...}`` on completion.
"""
import os

if os.environ.get("AION_GEVENT_PATCH") == "1":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from gevent import monkey as _monkey  # noqa: E402

import aion_green as aion  # noqa: E402
from aion_green import store as _store  # noqa: E402

_native_sleep = _monkey.get_original("time", "sleep")


def incarnation(ctx):
    return int(ctx.workflow_id.rsplit("-r", 1)[1]) if "-r" in ctx.workflow_id else 0


@aion.workflow(name="crash_supervisor.worker")
def worker(ctx, name, fail_until):
    if incarnation(ctx) < fail_until:
        raise RuntimeError(f"{name} fails in incarnation {incarnation(ctx)}")
    return f"{name}@{incarnation(ctx)}"


@aion.workflow(name="crash_supervisor.sleeper")
def sleeper(ctx, name):
    ctx.sleep(1)
    return f"{name}@{incarnation(ctx)}"


@aion.workflow(name="crash_supervisor.tree")
def tree(ctx):
    return ctx.supervise([aion.ChildSpec(worker, "a", 2, restart="transient"),
                          aion.ChildSpec(sleeper, "b", restart="transient"),
                          aion.ChildSpec(sleeper, "c", restart="transient")],
                         strategy="one_for_all", intensity=10, period=60)


def _kill_at(event_type: str, nth: int) -> None:
    original = _store.SQLiteStore.write_batch
    seen = [0]

    def write_batch(self, ops):
        if any(isinstance(op, _store.Append) and any(e.type == event_type for e in op.events)
               for op in ops):
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
                while True:  # pragma: no cover
                    _native_sleep(1)
        return original(self, ops)

    _store.SQLiteStore.write_batch = write_batch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--kill-at")
    args = parser.parse_args()
    if args.kill_at:
        event_type, nth = args.kill_at.split(":")
        _kill_at(event_type, int(nth))
    with aion.Engine(f"sqlite:///{os.path.abspath(args.db)}", workflows=[tree, worker, sleeper]) as engine:
        result = engine.start(tree, id=args.id).result(timeout=60)
    print(json.dumps({"result": result, "patched": _monkey.is_module_patched("threading")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
