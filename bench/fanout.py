"""Child workflows on the SQLite store with durable commits.

(a) one parent fans out to 1,000 children of one step each (all started,
    then all awaited with ctx.parallel);
(b) a tree of depth 3 and breadth 10: the root starts 10 children, each
    starts 10, each of those 10 leaves of one step (1,111 runs).

Prints wall time and runs/s (children and parents all count as runs): the
median of --repeat runs, each on a fresh file.

    python bench/fanout.py [--repeat 3] [--children 1000] [--breadth 10]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import aion_green as aion  # noqa: E402


def trivial(i):
    return i


@aion.workflow(name="bench.leaf")
def leaf(ctx, i):
    return ctx.step(trivial, i)


@aion.workflow(name="bench.fan")
def fan(ctx, n):
    children = [ctx.start_child(leaf, i) for i in range(n)]
    return sum(ctx.parallel(children))


@aion.workflow(name="bench.node")
def node(ctx, depth, breadth):
    if depth == 0:
        return ctx.step(trivial, 1)
    children = [ctx.start_child(node, depth - 1, breadth) for _ in range(breadth)]
    return 1 + sum(ctx.parallel(children))


def run_once(durable, workflow, *args):
    directory = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        url = f"sqlite:///{os.path.join(directory, 'bench.db')}"
        with aion.Engine(url, workflows=[leaf, fan, node], durable=durable) as engine:
            began = time.perf_counter()
            result = engine.start(workflow, *args, id="root").result(timeout=600)
            wall = time.perf_counter() - began
            runs = len(engine.list(limit=100_000))
        return wall, runs, result
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--breadth", type=int, default=10)
    parser.add_argument("--no-durable", action="store_true")
    args = parser.parse_args()
    durable = not args.no_durable
    scenarios = [
        (f"(a) 1 parent -> {args.children} children of 1 step", fan, (args.children,),
         sum(range(args.children)), args.children + 1),
        (f"(b) tree depth 3 x breadth {args.breadth}", node, (3, args.breadth),
         sum(args.breadth ** d for d in range(4)), sum(args.breadth ** d for d in range(4))),
    ]
    print(f"aion_green child workflows, SQLite, durable={durable}, median of {args.repeat}")
    for label, workflow, wargs, expected, expected_runs in scenarios:
        walls = []
        for _ in range(args.repeat):
            wall, runs, result = run_once(durable, workflow, *wargs)
            if result != expected or runs != expected_runs:
                raise SystemExit(f"{label}: got result {result} over {runs} runs, "
                                 f"expected {expected} over {expected_runs}")
            walls.append(wall)
        wall = statistics.median(walls)
        print(f"{label}: {wall:.2f} s wall, {expected_runs / wall:,.0f} runs/s "
              f"(runs: {expected_runs}; all: {', '.join(f'{w:.2f}' for w in walls)} s)")


if __name__ == "__main__":
    main()
