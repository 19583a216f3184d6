"""``aion-green health [--ready]`` and ``aion-green metrics``: a worker's
probes and figures, for scripts and operators (``--db http://HOST:PORT``).

``health`` exits 0 when the worker serves (with ``--ready``: when its engine
can take work: ``GET /health/ready``), 1 when it does not or does not
answer, saying why. Over a store URL, ``health`` says whether the store
answers a read (there is no server to ask). ``metrics`` prints the
Prometheus text of a worker's ``GET /metrics``."""
from __future__ import annotations

import argparse
from typing import Any

from aion_green.cli.ops import Target
from aion_green.core.errors import AionError, ConfigurationError

NOT_OK = 1


def add_parsers(command: Any) -> None:
    health = command("health", "whether a worker serves, or with --ready can take work "
                     "(exit 0), or not (exit 1)")
    health.add_argument("--ready", action="store_true",
                        help="ask whether its engine can take work (/health/ready)")
    metrics = command("metrics", "a worker's metrics, in Prometheus's text format")
    metrics.add_argument("--openmetrics", action="store_true",
                         help="OpenMetrics instead of Prometheus's text format")


def health(target: Target, args: argparse.Namespace, out: Any) -> int:
    try:
        if target.remote:
            if args.ready:
                doc = target.api.ready()
            else:
                doc = {"ok": target.api.health()}
        else:  # a store URL: whether the store answers a read
            store = target.api.readiness().checks.get("store", "not checked")
            doc = {"ok": store == "ok", "checks": {"store": store}}
    except AionError as exc:  # not answering at all
        doc = {"ok": False, "message": str(exc)}
    ok = bool(doc.get("ok"))
    checks = doc.get("checks") or {}
    detail = "; ".join(f"{name}: {text}" for name, text in sorted(checks.items()))
    what = "ready" if args.ready else "serving"
    out.emit(doc, f"{'' if ok else 'not '}{what}" + (f" ({detail})" if detail else "")
             + ("" if ok or not doc.get("message") else f": {doc['message']}"))
    return 0 if ok else NOT_OK


def metrics(target: Target, args: argparse.Namespace, out: Any) -> int:
    if not target.remote:
        raise ConfigurationError("metrics come from a worker's HTTP API: give --db "
                                 "http://HOST:PORT (the address of `aion-green worker --http`)")
    text = target.api.metrics(openmetrics=args.openmetrics)
    out.emit({"metrics": text}, text.rstrip("\n"))
    return 0
