"""Serving the HTTP API with ``gevent.pywsgi`` (``aion-green worker --http``):
each request a greenlet on the calling thread's own hub.

What a plain ``WSGIServer`` lacks, added here (issue 16):

- the raw request path (``RAW_URI``), so a percent-encoded "/" stays inside
  its id ("a%2Fresult" is the id "a/result", not the result of "a");
- a bound on the connections served at once (a pool: when it is full the
  server stops accepting, and the kernel's backlog holds the rest), and a
  read timeout on each connection, so idle or half-open connections (3,000
  were all kept) are closed instead of held;
- a drain: on SIGINT/SIGTERM, new requests answer 503 with ``Retry-After``
  while the requests in flight finish (``aion-green worker --grace``; those
  still waiting at its end answer 503 too, instead of being dropped when the
  process exits), and event streams end so that clients resume elsewhere.

Thread contract: every method runs on the thread whose hub serves (the
worker's main thread).
"""
from __future__ import annotations

import socket
from typing import Any, Optional, Sequence, Union

from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from aion_green.transport.wsgi import WSGIApp


class _Handler(WSGIHandler):
    def get_environ(self) -> Any:
        env = super().get_environ()
        # gevent.pywsgi gives only PATH_INFO, percent-decoded: an id's "%2F"
        # would split it. self.path is the request line's target, undecoded.
        env["RAW_URI"] = self.path
        return env

    def handle_one_response(self) -> Any:
        # Requests being answered (a connection idle between two requests is
        # not one): what a drain waits for.
        server = self.server
        server.answering += 1
        try:
            return super().handle_one_response()
        finally:
            server.answering -= 1
            if server.application.draining:  # no next request on this connection
                self.close_connection = True

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, OSError):  # the read timeout, or the peer went away: just close
            return None
        return super()._handle_client_error(ex)


class _Server(WSGIServer):
    read_timeout: Optional[float] = None
    # Requests being answered now (see _Handler.handle_one_response).
    answering = 0

    def handle(self, sock: socket.socket, address: Any) -> None:
        # A timeout on each read (and write) of the connection: a client that
        # sends nothing, or stops halfway, is cut after read_timeout seconds.
        sock.settimeout(self.read_timeout)
        super().handle(sock, address)


class Server:
    """The API of ``engine`` served on ``address`` (bound at once: a taken
    port fails here, before the worker's banner).

    ``max_connections``: the most connections served at once (each a
    greenlet); ``read_timeout``: the longest wait for a client's next bytes
    (an idle keep-alive connection is closed after it too). Neither bounds a
    request that waits on the engine (a result, a stream), which writes.
    """

    def __init__(self, engine: Any, address: tuple[str, int], token: Union[None, str, Sequence[str]],
                 max_connections: int = 1000, read_timeout: float = 30.0) -> None:
        self.app = WSGIApp(engine, token=token)
        self.pool = Pool(max_connections)
        self.server = _Server(address, self.app, spawn=self.pool, log=None, handler_class=_Handler)
        self.server.read_timeout = read_timeout or None
        self.server.start()

    @property
    def server_port(self) -> int:
        return int(self.server.server_port)

    def drain(self) -> None:
        """Every request from now on answers 503 with ``Retry-After`` (the
        server still accepts: a client is told to go elsewhere, rather than
        refused), each connection closes after its answer, and event streams
        end. Requests already being answered go on."""
        self.app.drain()

    def answering(self) -> int:
        """How many requests are being answered now."""
        return int(self.server.answering)

    def stop(self, timeout: float) -> None:
        """Stop accepting; give the requests in flight ``timeout`` seconds to
        answer, then cut the rest."""
        self.server.close()
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
