"""Instructions per workflow of bench (b), counted by valgrind: a figure that
does not move with the machine's load.

Wall-clock A/B runs of two builds move 10-20 % on this project's shared
machine, more than most single changes to the hot path. valgrind's callgrind
counts the instructions the process executes (all threads, user space), which
repeat to ~0.3 %. This script runs a small (b): N workflows of 10 trivial steps
(or 0 steps with --steps 0), started from 10 threads on a fresh SQLite file,
under callgrind, and again with no workflow; the difference divided by N is
the cost of one workflow. valgrind serialises the threads, so group commits
are smaller than in a real run and the store's share is larger: compare
builds with it, do not read it as a share of the wall time.

    python bench/instructions.py [--workflows 300] [--steps 10]

Needs valgrind on the PATH (Debian: apt install valgrind); takes about a
minute.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r'''
import os, sys, tempfile, shutil
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, os.path.join(sys.argv[3], "bench"))
import aion_green as aion
from steps import in_threads, trivial  # bench/steps.py's own helpers
STEPS = int(sys.argv[2])

@aion.workflow(name="bench.instructions")
def steps(ctx):
    for i in range(STEPS):
        ctx.step(trivial, i)
    return STEPS

tmp = tempfile.mkdtemp()
try:
    with aion.Engine(f"sqlite:///{tmp}/i.db", workflows=[steps]) as engine:
        engine.start(steps, id="warm-up").result(60)
        handles = []
        in_threads(10, lambda i: handles.append(engine.start(steps, id=f"w-{i}")), list(range(int(sys.argv[1]))))
        for handle in handles:
            handle.result(600)
finally:
    shutil.rmtree(tmp)
'''


def count(workflows: int, steps: int) -> int:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(CHILD)
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
             sys.executable, script, str(workflows), str(steps), root],
            capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        sys.exit(f"valgrind run failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH (Debian: apt install valgrind)")
    full = count(args.workflows, args.steps)
    empty = count(0, args.steps)
    per = (full - empty) / args.workflows
    print(f"{args.workflows} workflows of {args.steps} steps, started from 10 threads, SQLite, durable: "
          f"{per / 1e3:,.0f} k instructions per workflow"
          + (f" ({per / args.steps / 1e3:,.0f} k per step, start and end included)" if args.steps else ""))


if __name__ == "__main__":
    main()
