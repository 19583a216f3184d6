"""Structured logs: the JSON formatter users install on a handler
(``aion_green.logs.JsonFormatter``, see :mod:`aion_green.core.logs` for the
fields). Defined in the core; re-exported here, where users import it."""
from aion_green.core.logs import JsonFormatter

__all__ = ["JsonFormatter"]
