"""A Flask shop that runs durable workflows from its request handlers.

Run it under gunicorn's gevent worker, with or without ``--preload``::

    AION_GREEN_DB=sqlite:///shop.db gunicorn -k gevent -w 2 -b 127.0.0.1:8000 examples.flask_app:app

Every worker gets its own engine, started on its first request (never at
import, so an engine built in gunicorn's master before the fork is started
afresh in each worker). One worker's engine drives the runs of ``shop.db``;
the others are its clients (see ``aion_green.runtime.sharing``). A handler that
waits for a workflow parks its greenlet only: the worker goes on serving.

Routes:

- ``POST /ship/<order>?delay=S``: start the ``ship`` workflow (a durable
  sleep of S seconds) and answer with its result;
- ``POST /stamp/<order>``: start a one-step workflow and answer with its
  result (what ``bench/http.py`` measures);
- ``POST /checkout/<order>``: start ``checkout``, which waits for approval;
  ``POST /checkout/<order>/approve`` signals it; ``GET /checkout/<order>``
  waits for its result;
- ``GET /health``: this worker's pid and whether its engine drives;
- ``/aion/...``: the engine's HTTP API (``aion_green.transport.wsgi``), with
  the bearer token of ``AION_TOKEN`` when set.
"""
import os
from datetime import timedelta

from flask import Flask, jsonify, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import aion_green as aion
from aion_green.transport.wsgi import WSGIApp


def reserve_stock(order_id):
    """A step: the side effect a real shop would have (here, a receipt)."""
    return {"order": order_id, "reserved": True, "key": aion.step_info().idempotency_key}


@aion.workflow(name="shop.ship")
def ship(ctx, order_id, delay):
    ctx.sleep(timedelta(seconds=delay))
    return {"order": order_id, "shipped": True}


@aion.workflow(name="shop.stamp")
def stamp(ctx, n):
    return ctx.step(reserve_stock, n)


@aion.workflow(name="shop.checkout")
def checkout(ctx, order_id):
    receipt = ctx.step(reserve_stock, order_id)
    approval = ctx.receive("approve", timeout=timedelta(days=2))
    return {"receipt": receipt, "approved_by": approval}


# Built at import, started lazily: safe under gunicorn --preload.
engine = aion.Engine(os.environ.get("AION_GREEN_DB", "sqlite:///shop.db"), workflows=[ship, stamp, checkout])
app = Flask(__name__)


@app.post("/ship/<order_id>")
def ship_order(order_id):
    delay = float(request.args.get("delay", "0.2"))
    handle = engine.start(ship, order_id, delay, id=f"ship-{order_id}")
    return jsonify(handle.result(timeout=60))


@app.post("/stamp/<order_id>")
def stamp_order(order_id):
    """One round trip: start a one-step workflow and answer with its result."""
    return jsonify(engine.start(stamp, order_id, id=f"stamp-{order_id}").result(timeout=60))


@app.post("/checkout/<order_id>")
def start_checkout(order_id):
    engine.start(checkout, order_id, id=f"checkout-{order_id}")
    return jsonify({"workflow_id": f"checkout-{order_id}"}), 202


@app.post("/checkout/<order_id>/approve")
def approve(order_id):
    by = (request.get_json(silent=True) or {}).get("by", "anonymous")
    seq = engine.signal(f"checkout-{order_id}", "approve", by,
                        idempotency_key=request.headers.get("Idempotency-Key"))
    return jsonify({"recorded_at_seq": seq})


@app.get("/checkout/<order_id>")
def checkout_result(order_id):
    return jsonify(engine.result(f"checkout-{order_id}", timeout=60))


@app.get("/health")
def health():
    return jsonify({"ok": True, "pid": os.getpid(), "driving": engine.driving})


@app.errorhandler(aion.AionError)
def workflow_error(error):
    status = 404 if isinstance(error, aion.WorkflowNotFound) else 409
    return jsonify({"error": type(error).__name__, "message": str(error)}), status


app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, {"/aion": WSGIApp(engine, token=os.environ.get("AION_TOKEN"))})
