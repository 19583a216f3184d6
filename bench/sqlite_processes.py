"""Engine processes over one SQLite file: one driver for the file (the
default) against every engine driving the runs it starts (``?leases=on``).

    python bench/sqlite_processes.py [--processes 2] [--runs 200] [--steps 10]
        [--cpu-ms 1.0] [--repeat 3] [--switch-interval S] [--step-workers N]
        [--modes driver,leases] [--root CHECKOUT]

Each of ``--processes`` processes builds an engine over one fresh, durable
SQLite file, waits until all are up, then starts ``--runs`` workflows of
``--steps`` steps from 20 threads and waits for their results; each step
burns ``--cpu-ms`` of CPU in Python (a step that computes, not one that
waits). Over one driver the driver's process runs every step and the
others only start and wait; with leases each process runs its own. Prints,
per mode, the steps per second over all processes (from the first start to
the last result), each process's share of the steps it ran, and the CPU of
all processes; alternating the modes in each round, medians of the rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, threading, time
import aion_green as aion

url, runs, steps, cpu, go_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
if sys.argv[6] != "-":
    sys.setswitchinterval(float(sys.argv[6]))
ran = [0]

def burn(i):
    end = time.thread_time() + cpu / 1000.0
    x = 0
    while time.thread_time() < end:
        x += 1
    ran[0] += 1
    return i

@aion.workflow(name="bench.burn")
def work(ctx, n):
    return sum(ctx.step(burn, i) for i in range(n))

engine = aion.Engine(url, workflows=[work], step_workers=int(sys.argv[7]))
engine.list(limit=1)
print("up", flush=True)
while not os.path.exists(go_file):
    time.sleep(0.001)
began = time.time()
cpu0 = time.process_time()
handles = []
lock = threading.Lock()

def starter(k):
    mine = [engine.start(work, steps) for _ in range(k)]
    with lock:
        handles.extend(mine)

threads = [threading.Thread(target=starter, args=(runs // 20 + (1 if i < runs % 20 else 0),))
           for i in range(20)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for h in handles:
    assert h.result(timeout=600) == sum(range(steps))
ended = time.time()
print(json.dumps({"began": began, "ended": ended}), flush=True)
# Stay up (a driver drives the others' runs) until every process is done.
sys.stdin.readline()
print(json.dumps({"ran": ran[0], "cpu": time.process_time() - cpu0}), flush=True)
sys.stdin.read()
engine.shutdown()
"""


def one(mode, args):
    directory = tempfile.mkdtemp(prefix="aion-procs-")
    url = f"sqlite:///{os.path.join(directory, 'p.db')}" + ("?leases=on" if mode == "leases" else "")
    go = os.path.join(directory, "go")
    env = dict(os.environ, PYTHONPATH=args.root)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, str(args.runs), str(args.steps),
                               str(args.cpu_ms), go, str(args.switch_interval or "-"),
                               str(args.step_workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env, cwd=directory) for _ in range(args.processes)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "up"
        open(go, "w").close()
        results = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.write("report\n")
            p.stdin.flush()
        for p, r in zip(procs, results):
            r.update(json.loads(p.stdout.readline()))
    finally:
        for p in procs:
            try:
                p.stdin.close()
                p.wait(timeout=30)
            except Exception:  # noqa: BLE001
                p.kill()
    total = args.processes * args.runs * args.steps
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
    ran = [r["ran"] for r in results]
    assert sum(ran) >= total, (ran, total)
    return {"steps_s": total / wall, "shares": [x / sum(ran) for x in ran],
            "cpu": sum(r["cpu"] for r in results) / wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cpu-ms", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--switch-interval", type=float, metavar="S",
                        help="each process's sys.setswitchinterval (default: CPython's 0.005)")
    parser.add_argument("--step-workers", type=int, default=32,
                        help="each engine's step_workers (the engine's default: 32)")
    parser.add_argument("--modes", default="driver,leases", help="driver, leases or both")
    parser.add_argument("--root", default=ROOT)
    args = parser.parse_args()
    print(f"{args.processes} processes over one SQLite file (durable), each {args.runs} workflows "
          f"x {args.steps} steps of {args.cpu_ms} ms CPU, from 20 threads; median of "
          f"{args.repeat}; load {os.getloadavg()[0]:.2f}")
    modes = args.modes.split(",")
    got: dict = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:
            got[mode].append(one(mode, args))
    for mode, runs in got.items():
        rates = [r["steps_s"] for r in runs]
        shares = ", ".join("/".join(f"{s:.0%}" for s in r["shares"]) for r in runs)
        print(f"{mode:7} {statistics.median(rates):8,.0f} steps/s (runs {', '.join(f'{x:,.0f}' for x in rates)}); "
              f"steps run by each process: {shares}; CPU {statistics.median(r['cpu'] for r in runs):.2f} cores")
    if len(modes) == 2:
        print(f"leases / driver: {statistics.median(r['steps_s'] for r in got['leases']) / statistics.median(r['steps_s'] for r in got['driver']):.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
