"""The web console (issue 19): server-rendered pages under ``/ui/`` of the
HTTP API, with a little JavaScript for actions, live updates and charts."""
from aion_green.transport.console.app import Console

__all__ = ["Console"]
