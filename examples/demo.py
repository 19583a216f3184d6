"""aion_green demo: a durable workflow on the embedded SQLite store.

1. A worker process runs an order workflow, step by step.
2. The demo kills that process with SIGKILL in the middle of the run.
3. A new engine over the same file resumes the run by replay: the steps that
   were recorded are not run again, and the workflow finishes.

Run it with:  python examples/demo.py   (it writes ./demo.db)
"""
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import aion_green as aion

DB = os.path.abspath("demo.db")
LOG = os.path.abspath("demo-side-effects.log")


def say(text):
    print(f"{datetime.now():%H:%M:%S.%f}"[:-3], text, flush=True)


def side_effect(name, *detail):
    """A step: something the outside world sees (we append it to a log)."""
    time.sleep(0.4)  # a slow call to some service
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()} {name} {detail}\n")
    key = aion.step_info().idempotency_key
    say(f"  [pid {os.getpid()}] step {name}{detail} ran (idempotency key {key})")
    return {"step": name, "ok": True}


@aion.workflow(name="demo.order")
def order(ctx, order_id, items):
    total = 0
    for item, price in items:
        ctx.step(side_effect, "reserve", item)
        total += price
    ctx.step(side_effect, "charge", order_id, total)
    ctx.step(side_effect, "ship", order_id)
    return {"order": order_id, "total": total, "id": str(ctx.uuid4()), "finished_at": ctx.now().isoformat()}


ITEMS = [["book", 12], ["lamp", 30], ["mug", 8], ["plant", 15]]


def worker():
    with aion.Engine(f"sqlite:///{DB}", workflows=[order]) as engine:
        engine.start(order, "o-1", ITEMS, id="order-o-1").result()


def steps_recorded():
    try:
        with open(LOG) as log:
            return sum(1 for _ in log)
    except FileNotFoundError:
        return 0


def main():
    for path in (DB, DB + "-wal", DB + "-shm", LOG):
        if os.path.exists(path):
            os.remove(path)
    say(f"1. a worker process runs workflow 'order-o-1' (6 steps) on {DB}")
    child = subprocess.Popen([sys.executable, __file__, "--worker"])
    while steps_recorded() < 3:
        time.sleep(0.02)
    time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    say(f"2. killed the worker (SIGKILL, pid {child.pid}) after {steps_recorded()} steps ran")
    say("3. a new engine opens the same file and resumes the run by replay:")
    with aion.Engine(f"sqlite:///{DB}", workflows=[order]) as engine:
        result = engine.result("order-o-1", timeout=60)
        say(f"   result: {result}")
        print()
        print(" seq  type               detail")
        for event in engine.history("order-o-1"):
            detail = {k: v for k, v in event.data.items() if k in ("step", "name", "attempt", "result")}
            print(f" {event.seq:>3}  {event.type:<18} {detail}")
    with open(LOG) as log:
        lines = log.read().splitlines()
    print()
    say(f"side effects: {len(lines)} lines for 6 steps (a step cut by the kill may run again; "
        "a recorded step never does)")
    for line in lines:
        print("   ", line)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main()
