"""Step throughput on the SQLite store with durable commits (fsync per commit).

(a) one workflow of 1,000 sequential trivial steps;
(b) 1,000 concurrent workflows of 10 steps (started from 50 client threads,
    as a web app's requests would), in an engine that ran one such burst
    before (the figure of that first, cold burst is printed beside);
(c) 1,000 single-step workflows started back to back from one thread, then
    waited for.

Prints steps/s, workflows/s and microseconds per step: the median of
--repeat runs (the machine is shared and noisy), each on a fresh file. For
(b) it also prints the share of the wall time spent in CPython's cyclic
garbage collector: 1,000 runs that start together are a burst of some 50,000
new container objects, and the collector's default thresholds (700, 10, 10)
make it sweep them again and again. ``--gc-threshold N`` runs with
``gc.set_threshold(N, 10, 10)``, as a tuned deployment would (see the
README's "Throughput and the garbage collector").

    python bench/steps.py [--repeat 5] [--no-durable] [--gc-threshold N]
"""
import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

from gevent import monkey

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import aion_green as aion  # noqa: E402

_start_thread = monkey.get_original("_thread", "start_new_thread")
_lock = monkey.get_original("_thread", "allocate_lock")


def trivial(i):
    return i


@aion.workflow(name="bench.sequential")
def sequential(ctx, n):
    for i in range(n):
        ctx.step(trivial, i)
    return n


@aion.workflow(name="bench.ten")
def ten(ctx):
    for i in range(10):
        ctx.step(trivial, i)
    return 10


@aion.workflow(name="bench.one")
def one(ctx):
    return ctx.step(trivial, 1)


def in_threads(n_threads, fn, items):
    """Run fn(item) for every item from n_threads native threads."""
    chunks = [items[i::n_threads] for i in range(n_threads)]
    done = [_lock() for _ in chunks]
    for lock, chunk in zip(done, chunks):
        lock.acquire()

        def run(chunk=chunk, lock=lock):
            try:
                for item in chunk:
                    fn(item)
            finally:
                lock.release()

        _start_thread(run, ())
    for lock in done:
        lock.acquire()


gc_time = []  # seconds of each collection during (b)
_gc_began = [0.0]


def _on_gc(phase, info):
    if phase == "start":
        _gc_began[0] = time.perf_counter()
    else:
        gc_time.append(time.perf_counter() - _gc_began[0])


def measure(durable):
    tmp = tempfile.mkdtemp(prefix="aion-bench-")
    try:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        with aion.Engine(url, workflows=[sequential, ten, one], durable=durable) as engine:
            engine.start(one, id="warm-up").result(30)
            t0 = time.perf_counter()
            engine.start(sequential, 1000, id="a").result(120)
            a = time.perf_counter() - t0

            # (b) twice: the first burst in a fresh engine (cold: the step
            # pool's threads start, caches fill), then the one measured.
            bursts = []
            for burst in ("cold", "b"):
                handles = []
                gc_time.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                in_threads(50, lambda i, h=handles, prefix=burst: h.append(engine.start(ten, id=f"{prefix}-{i}")),
                           list(range(1000)))
                for handle in handles:
                    handle.result(120)
                bursts.append((time.perf_counter() - t0, time.process_time() - c0, sum(gc_time)))
            b_cold = bursts[0][0]
            b, b_cpu, b_gc = bursts[1]

            t0 = time.perf_counter()
            handles = [engine.start(one, id=f"c-{i}") for i in range(1000)]
            for handle in handles:
                handle.result(120)
            c = time.perf_counter() - t0
        return a, b, c, b_cpu, b_gc, b_cold
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-durable", action="store_true", help="synchronous=NORMAL (no fsync per commit)")
    parser.add_argument("--gc-threshold", type=int, metavar="N",
                        help="gc.set_threshold(N, 10, 10) first (the default is 700)")
    args = parser.parse_args()
    durable = not args.no_durable
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, 10, 10)
    gc.callbacks.append(_on_gc)
    runs = [measure(durable) for _ in range(args.repeat)]
    a = statistics.median(r[0] for r in runs)
    b = statistics.median(r[1] for r in runs)
    c = statistics.median(r[2] for r in runs)
    b_cpu = statistics.median(r[3] for r in runs)
    b_gc = statistics.median(r[4] / r[1] for r in runs)
    b_cold = statistics.median(r[5] for r in runs)
    print(f"aion_green {aion.__version__}, SQLite, durable={durable}, gc thresholds {gc.get_threshold()}, "
          f"median of {args.repeat} runs")
    print(f"(a) 1 workflow x 1,000 sequential steps : {1000 / a:8.0f} steps/s  {a / 1000 * 1e6:6.0f} us/step"
          f"   (target >= 3,000 steps/s)")
    print(f"(b) 1,000 workflows x 10 steps, concurrent: {10000 / b:8.0f} steps/s  {b / 10000 * 1e6:6.0f} us/step"
          f"   (target >= 20,000 steps/s)  [{1000 / b:.0f} workflows/s, CPU {b_cpu / 10000 * 1e6:.0f} us/step, "
          f"cyclic GC {b_gc:.0%} of the wall time; the engine's first burst, cold: "
          f"{10000 / b_cold:.0f} steps/s]")
    print(f"(c) 1,000 single-step workflows, back to back: {1000 / c:8.0f} workflows/s  {c / 1000 * 1e6:6.0f} us/workflow"
          f"   (target >= 1,000 workflows/s)")
    print("runs (a, b, c seconds):", ", ".join(f"({x:.2f}, {y:.2f}, {z:.2f})" for x, y, z, *_ in runs))


if __name__ == "__main__":
    main()
