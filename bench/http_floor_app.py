"""What the HTTP layer costs alone: ``bench/http.py --target floor``.

The same mount as ``examples/flask_app.py`` (a Flask app, werkzeug's
``DispatcherMiddleware``, ``WSGIApp`` at ``/aion``) over an engine double
whose ``start`` and ``result`` answer at once, with nothing recorded.
gunicorn's parsing, the WSGI apps, the API's validation and JSON, and
gevent's sockets are all there; the engine's hub, step pool and writer are
not. A start-and-wait round trip against it is the floor that the HTTP
layer puts under ``--target api-wait``: its server CPU per round trip,
subtracted from api-wait's, is what the engine adds.
"""
import os

from flask import Flask, jsonify
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from aion_green.transport.wsgi import WSGIApp


class _Handle:
    run_id = "run-floor"

    def __init__(self, workflow_id):
        self.workflow_id = workflow_id


class InstantEngine:
    """Answers ``start`` and ``result`` at once (the routes api-wait uses)."""

    def start(self, workflow, *args, id=None, namespace=None, **bounds):
        return _Handle(id)

    def result(self, workflow_id, timeout=None, namespace=None):
        return {"order": workflow_id, "reserved": True}


app = Flask(__name__)


@app.get("/health")
def health():
    return jsonify({"ok": True, "pid": os.getpid(), "driving": True})


app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, {"/aion": WSGIApp(InstantEngine())})
