"""Serving the HTTP API with ``gevent.pywsgi`` (``aion-green worker --http``):
each request a greenlet on the calling thread's own hub.

What a plain ``WSGIServer`` lacks, added here (issue 16):

- the raw request path (``RAW_URI``), so a percent-encoded "/" stays inside
  its id ("a%2Fresult" is the id "a/result", not the result of "a");
- a bound on the connections served at once (a pool: when it is full the
  server stops accepting, and the kernel's backlog holds the rest), and a
  read timeout on each connection, so idle or half-open connections (3,000
  were all kept) are closed instead of held;
- a drain: on SIGINT/SIGTERM, requests in flight (long polls waiting for a
  result) answer 503 with ``Retry-After`` instead of being dropped when the
  process exits, and event streams end so that clients resume elsewhere.

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

    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, OSError):  # the read timeout, or the peer went away: just close
            return None
        return super()._handle_client_error(ex)


class _Server(WSGIServer):
    read_timeout: Optional[float] = None

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
        """Stop accepting; what is served from now on answers 503 with
        ``Retry-After``, and event streams end."""
        self.app.drain()
        self.server.close()

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the requests in flight; True
        once none is left."""
        return bool(self.pool.join(timeout=timeout))

    def stop(self, timeout: float) -> None:
        """Give the requests in flight ``timeout`` seconds to answer, then
        cut the rest."""
        self.pool.join(timeout=timeout)
        self.pool.kill(block=True, timeout=1)
