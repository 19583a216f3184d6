"""Record the golden histories (tests/golden_flows.py) with the aion_green
that is importable, into this folder: run once per release whose histories
must keep replaying. Each file is one run's history (its events as JSON)
and its result.

    python tests/histories/record.py [--release NAME]
"""
import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import golden_flows as g  # noqa: E402

import aion_green as aion  # noqa: E402


def dump(engine, wid, release):
    result = engine.result(wid, timeout=30)  # (first: the history is read once the run ended)
    history = engine.history(wid)
    return {"release": release, "workflow_id": wid, "workflow_type": history[0]["workflow_type"],
            "result": result,
            "events": [{"seq": e.seq, "type": e.type, "at": e.at, "data": e.data} for e in history]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--release", default=f"aion_green {aion.__version__}")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="aion-golden-")
    runs = {}
    with aion.Engine(f"sqlite:///{folder}/golden.db", workflows=g.FLOWS) as engine:
        engine.start(g.steps, 3, id="steps")
        engine.start(g.timers, id="timers")
        engine.start(g.peer, id="peer")
        engine.start(g.messages, "peer", id="messages")
        engine.signal("messages", "m", {"n": 1})
        engine.signal("messages", "m", "two")
        engine.start(g.family, id="family")
        engine.start(g.versioned, id="versioned")
        engine.start(g.chain, 2, id="chain")
        for wid in ("steps", "timers", "messages", "peer", "family", "family/child-1",
                    "versioned", "chain"):
            runs[wid] = dump(engine, wid, args.release)
    slug = args.release.replace(" ", "-")
    for wid, run in runs.items():
        path = os.path.join(HERE, f"{slug}--{wid.replace('/', '_')}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(run, f, indent=1, sort_keys=True)
            f.write("\n")
        print(path)


if __name__ == "__main__":
    main()
