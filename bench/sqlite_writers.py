"""Several processes writing to one SQLite file through the engine's store
(gunicorn's workers over one file: the driver's group commits and a
client's starts), each committing one step record at a time as fast as it
can for S seconds; per process its commits/s and its waits for a commit
(median, p99, longest), with the writers' queue (stores/sqlite/write_queue.py)
and without it (SQLite's busy handler alone), alternating, in the same run:

    python bench/sqlite_writers.py [--writers 2] [--seconds 4] [--repeat 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent('''
    import json, sys, time
    from aion_green.core import events as ev
    from aion_green.store import Append, CreateRun
    from aion_green.stores.sqlite import write_queue
    from aion_green.stores.sqlite.store import SQLiteStore

    path, name, seconds, queued = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"
    if not queued:
        write_queue.WriteQueue.enter = lambda self, timeout: False
    store = SQLiteStore(path)
    store.write_batch([CreateRun(name, "t", "[]", "run-" + name, 1.0)])
    begin = float(sys.argv[5])
    while time.time() < begin:
        time.sleep(0.001)
    head, waits, end = 1, [], time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        [head] = store.write_batch([Append(name, head, [ev.NewEvent(
            ev.STEP_COMPLETED, 2.0, {"step": head, "result": head})])])
        waits.append(time.monotonic() - t0)
    store.close()
    print(json.dumps(waits))
''')


def one_round(writers, seconds, queued):
    import time

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "writers.db")
        env = dict(os.environ, PYTHONPATH=ROOT)
        subprocess.run([sys.executable, "-c", "import sys; from aion_green.stores.sqlite.store "
                        "import SQLiteStore; SQLiteStore(sys.argv[1]).close()", path],
                       env=env, check=True)
        begin = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, f"w{k}", str(seconds),
                                   "1" if queued else "0", str(begin)],
                                  stdout=subprocess.PIPE, env=env, text=True)
                 for k in range(writers)]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 120)
            waits = sorted(json.loads(out))
            results.append({"commits_per_s": len(waits) / seconds,
                            "p50_ms": 1e3 * waits[len(waits) // 2],
                            "p99_ms": 1e3 * waits[int(len(waits) * 0.99)],
                            "longest_ms": 1e3 * waits[-1]})
        return results


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = {True: [], False: []}
    for _ in range(args.repeat):
        for queued in (False, True):
            rows[queued].append(one_round(args.writers, args.seconds, queued))
    print(f"{args.writers} processes, one step record per commit, {args.seconds:g} s, "
          f"medians of {args.repeat} rounds (load {os.getloadavg()[0]:.2f})")
    print(f"{'':22} {'total/s':>8} {'slowest/s':>9} {'fastest/s':>9} {'ratio':>6} "
          f"{'p50 ms':>7} {'p99 ms':>8} {'longest ms':>10}")
    for queued in (False, True):
        rounds = rows[queued]
        rates = [sorted(r["commits_per_s"] for r in rnd) for rnd in rounds]

        def med(values):
            return statistics.median(values)

        print(f"{'queued (flock)' if queued else 'busy handler alone':22} "
              f"{med([sum(r) for r in rates]):8.0f} {med([r[0] for r in rates]):9.0f} "
              f"{med([r[-1] for r in rates]):9.0f} {med([r[0] / r[-1] for r in rates]):6.2f} "
              f"{med([max(w['p50_ms'] for w in rnd) for rnd in rounds]):7.2f} "
              f"{med([max(w['p99_ms'] for w in rnd) for rnd in rounds]):8.2f} "
              f"{med([max(w['longest_ms'] for w in rnd) for rnd in rounds]):10.1f}")


if __name__ == "__main__":
    main()
