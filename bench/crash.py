"""The crash campaign of issue 8, long form: ``--trials`` campaigns of the
mix in ``tests/crash_mix.py`` (steps with a retry, timers, messages,
children, continue_as_new loops, a supervision tree), each SIGKILLing its
worker process at seeded random points (a delay after the engine is up, or
just before or after the Nth group commit) up to ``--max-kills`` times,
until a worker finishes the mix; each is then checked against an
uncrashed control run (the invariants are listed in
``tests/crash_campaign.py``).

Prints one line per trial (seed, kills, epochs, steps re-run after a crash,
seconds, findings), then the totals; exits 1 if any trial found anything.

    python bench/crash.py [--trials 20] [--seed 1] [--max-kills 12] [--scale 2] [--patched]

Trial i uses seed ``--seed + i``: ``--trials 1 --seed S`` repeats trial S.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import crash_campaign as cc  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-kills", type=int, default=12)
    parser.add_argument("--scale", type=int, default=2, help="copies of each top-level workflow")
    parser.add_argument("--patched", action="store_true",
                        help="workers run under gevent.monkey.patch_all()")
    parser.add_argument("--kill-rate", type=float, default=6.0,
                        help="mean kill delay = an uninterrupted worker's span / this")
    parser.add_argument("--keep", help="a directory to keep the stores in (default: temporary)")
    args = parser.parse_args(argv)

    workdir = args.keep or tempfile.mkdtemp(prefix="aion-crash-")
    os.makedirs(workdir, exist_ok=True)
    started = time.monotonic()
    control = cc.run_control(workdir, args.scale, args.patched)
    print(f"control: {len(control.runs)} runs, {control.batches} group commits, "
          f"{control.span:.2f} s from engine up to exit; mode "
          f"{'patched' if args.patched else 'plain'}, scale {args.scale}", flush=True)
    kills = epochs = reruns = failed = 0
    for seed in range(args.seed, args.seed + args.trials):
        camp = cc.run_campaign(workdir, seed, control, scale=args.scale, max_kills=args.max_kills,
                               patched=args.patched, kill_rate=args.kill_rate)
        kills, epochs, reruns = kills + camp.kills, epochs + len(camp.epochs), reruns + camp.reruns
        failed += bool(camp.findings)
        print(f"seed {seed}: {camp.kills} kills, {len(camp.epochs)} epochs, {camp.reruns} steps "
              f"re-run after a crash, {camp.seconds:.1f} s, {len(camp.findings)} findings", flush=True)
        for finding in camp.findings:
            print(f"  FINDING {finding}", flush=True)
    elapsed = time.monotonic() - started
    print(f"trials {args.trials}, kills {kills}, epochs {epochs}, steps re-run after a crash "
          f"{reruns}, trials with findings {failed}, {elapsed:.0f} s in all")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
