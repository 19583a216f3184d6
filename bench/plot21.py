"""Issue 21's plot, from the JSON that bench/steps.py and bench/compare.py
write: left, each engine figure as a fraction of the ceiling that bounds it
(measured in the same rounds); right, aion_green's figure against DBOS's and
Celery's (how many times faster; below 1, slower).

    python bench/steps.py --repeat 5 --json steps.json
    python bench/steps.py --repeat 5 --patched --json steps-patched.json
    python bench/compare.py --no-patched --repeat 5 --only chain,concurrent,starts --json compare.json
    python bench/plot21.py --steps steps.json --patched steps-patched.json --compare compare.json
"""
import argparse
import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "issue21.png")


def fractions(steps):
    """[(label, fraction of its ceiling, bar or None)] from steps.py's JSON."""
    runs, c = steps["runs"], steps["ceiling_medians"]
    a = statistics.median(1000 / r["a"] for r in runs)
    b = statistics.median(10000 / r["b"] for r in runs)
    s = statistics.median(1000 / r["c"] for r in runs)
    d = statistics.median(1000 / r["d"] for r in runs)
    return [
        ("(a) sequential\nsteps / single\ncommits", a / c["single_commit"], 0.80),
        ("(a) / the\nstore's own\ncommits", a / c["store_commit"], None),
        ("(c) starts,\n1 thread / single\ncommits", s / c["single_commit"], 3000 / c["single_commit"]),
        ("(b) concurrent\nsteps / batched\nrows", b / c["batched"], 40000 / c["batched"]),
        ("(d) starts, 50\nthreads (3 rows)\n/ batched rows", 3 * d / c["batched"], 9000 / c["batched"]),
    ]


def ratios(compare):
    plain = compare["plain"]

    def med(engine, scenario, n, key):
        entry = plain.get(f"{engine}/{scenario}/{n}")
        vals = [r[key] for r in (entry or {"runs": []})["runs"] if key in r]
        return statistics.median(vals) if vals else None

    rows = [("sequential,\n1 x 1,000", "sequential", 1000, "steps_per_s"),
            ("chains of 10,\none at a time", "chain", 100, "steps_per_s"),
            ("1,000 x 10,\nconcurrent", "concurrent", 1000, "steps_per_s"),
            ("1,000 single-step\nstarts", "starts", 1000, "workflows_per_s")]
    out = []
    for label, scenario, n, key in rows:
        a = med("aion", scenario, n, key)
        out.append((label, {e: (a / v if a and v else None)
                            for e in ("dbos", "celery", "celery_gevent")
                            for v in [med(e, scenario, n, key)]}))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", required=True)
    parser.add_argument("--patched", default="", help="steps.py --patched's JSON (drawn beside)")
    parser.add_argument("--compare", required=True)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.steps) as f:
        plain = fractions(json.load(f))
    patched = None
    if args.patched:
        with open(args.patched) as f:
            patched = fractions(json.load(f))
    with open(args.compare) as f:
        vs = ratios(json.load(f))

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=100)
    width = 0.38 if patched else 0.6
    xs = range(len(plain))
    left.bar([x - (width / 2 if patched else 0) for x in xs], [p[1] * 100 for p in plain], width,
             label="plain", color="#3b75af")
    if patched:
        left.bar([x + width / 2 for x in xs], [p[1] * 100 for p in patched], width,
                 label="patch_all()", color="#9ecae1")
    for x, (_, frac, bar) in zip(xs, plain):
        left.annotate(f"{frac:.0%}" if frac >= 0.01 else f"{frac:.1%}", (x - (width / 2 if patched else 0),
                      frac * 100), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        if patched:
            pf = patched[x][1]
            left.annotate(f"{pf:.0%}" if pf >= 0.01 else f"{pf:.1%}", (x + width / 2, pf * 100),
                          textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        if bar is not None:
            left.hlines(bar * 100, x - 0.45, x + 0.45, colors="#c0392b", linestyles="dashed")
    left.set_xticks(list(xs))
    left.set_xticklabels([p[0] for p in plain], fontsize=7.5)
    left.set_ylabel("% of the ceiling, same rounds (median)")
    left.set_title("aion_green against the machine's ceilings\n(dashed: issue 21's bar)", fontsize=10)
    left.legend(fontsize=8)
    left.grid(True, axis="y", alpha=0.3)

    names = {"dbos": "vs DBOS 3.4", "celery": "vs Celery prefork", "celery_gevent": "vs Celery -P gevent"}
    colors = {"dbos": "#e6550d", "celery": "#31a354", "celery_gevent": "#a1d99b"}
    w = 0.26
    for k, engine in enumerate(("dbos", "celery", "celery_gevent")):
        pts = [(i, r[1][engine]) for i, r in enumerate(vs) if r[1][engine]]
        right.bar([i + (k - 1) * w for i, _ in pts], [v for _, v in pts], w, label=names[engine],
                  color=colors[engine])
        for i, v in pts:
            right.annotate(f"{v:.1f}x", (i + (k - 1) * w, v), textcoords="offset points", xytext=(0, 2),
                           ha="center", fontsize=7)
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_yscale("log")
    right.set_xticks(range(len(vs)))
    right.set_xticklabels([r[0] for r in vs], fontsize=8)
    right.set_ylabel("aion_green's figure / theirs (median)")
    right.set_title("aion_green against DBOS and Celery, same runs", fontsize=10)
    right.legend(fontsize=8)
    right.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"plot: {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
