"""Serving the HTTP API with ``gevent.pywsgi`` (``aion-green worker --http``):
each request a greenlet on the calling thread's own hub.

What a plain ``WSGIServer`` lacks, added here:

- the raw request path (``RAW_URI``), so a percent-encoded "/" stays inside
  its id ("a%2Fresult" is the id "a/result", not the result of "a");
"""
from __future__ import annotations

from typing import Any, Optional

from gevent.pywsgi import WSGIHandler, WSGIServer

from .wsgi import WSGIApp


class _Handler(WSGIHandler):
    def get_environ(self) -> Any:
        env = super().get_environ()
        # gevent.pywsgi gives only PATH_INFO, percent-decoded: an id's "%2F"
        # would split it (issue 16). self.path is the request line's target.
        env["RAW_URI"] = self.path
        return env


def serve(engine: Any, address: tuple[str, int], token: Optional[str]) -> WSGIServer:
    """Start serving ``engine``'s API on ``address`` (binds now: a taken port
    fails here)."""
    server = WSGIServer(address, WSGIApp(engine, token=token), log=None, handler_class=_Handler)
    server.start()
    return server
