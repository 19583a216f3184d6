"""Reaching an engine from other processes: the HTTP/JSON API as a WSGI app
(:mod:`aion_green.transport.wsgi`) and a client with the engine's method
names (:mod:`aion_green.transport.client`)."""
