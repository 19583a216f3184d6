"""Listing and search, engine side: the filters of ``Engine.list``,
``Engine.count`` and ``Engine.count_by_status``, checked and turned into the
store's :class:`~aion_green.store.RunFilter`.

Every filter is ANDed with the others:

- ``status``, ``workflow_type``: as before;
- ``started_after``, ``started_before``: the current run's start (an aware
  ``datetime`` or seconds since the epoch), ``started_after <= start <
  started_before``, so consecutive windows tile. A run that continued as
  new, or was resumed, started when that run began;
- ``parent``: the workflow id whose ``ctx.start_child`` (or supervisor, or
  schedule) started the run. Runs created before the store recorded
  parents (schema 6 on SQLite, 4 on PostgreSQL) have none;
- ``attributes``: search attributes (``ctx.upsert_search_attributes``),
  each name -> value. A filter value matches an attribute whose *text
  form* is the same: a string as it is, any other scalar as its JSON text.
  So ``{"total": 42}`` and ``{"total": "42"}`` both match an attribute 42
  (and a string "42"); ``True`` matches ``true``; ``42`` does not match
  ``42.0``. One rule for the Python API, the HTTP API (``?attr.total=42``)
  and the command line (``--attr total=42``), whose values are text.

Thread contract: pure functions, any thread.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Mapping, Optional, Union

from aion_green.core import events as ev
from aion_green.core import namespaces
from aion_green.core.errors import ConfigurationError
from aion_green.store import RunFilter

Moment = Union[datetime, float, int]


def moment(value: object, what: str) -> float:
    """Seconds since the epoch of an aware ``datetime`` or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError(f"{what}: {value!r} is naive; pass a timezone-aware datetime "
                                     "(datetime.now(timezone.utc), say) or seconds since the epoch")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigurationError(f"{what}: got {value!r}; pass an aware datetime or seconds since the "
                             "epoch (a number)")


def run_filter(started_after: Optional[Moment], started_before: Optional[Moment],
               parent: Optional[str], attributes: Optional[Mapping[str, Any]],
               call: str, namespace: Optional[str] = None,
               id_prefix: Optional[str] = None) -> RunFilter:
    """The store's filter for these arguments of ``call`` (``list``,
    ``count``...), in ``namespace`` (the default if None). Bad input is a
    :class:`ConfigurationError` naming the argument; nothing is read."""
    ns = (namespaces.DEFAULT if namespace is None
          else namespaces.check_namespace(namespace, f"{call}(namespace=...)"))
    after = None if started_after is None else moment(started_after, f"{call}(started_after=...)")
    before = None if started_before is None else moment(started_before, f"{call}(started_before=...)")
    if parent is not None:
        parent = namespaces.key(ns, namespaces.check_id(parent, f"{call}(parent=...)"))
    matched: list[tuple[str, str]] = []
    if attributes:
        if not isinstance(attributes, Mapping):
            raise ConfigurationError(f"{call}(attributes=...): pass a dict of name -> value, "
                                     f"got {type(attributes).__name__}")
        for name, value in attributes.items():
            ev.check_attribute_name(name, f"{call}(attributes=...): the name {name!r}")
            if value is None:
                raise ConfigurationError(f"{call}(attributes=...): the attribute {name!r} is "
                                         "None; a filter matches a value (str, int, float, bool)")
            ev.check_attribute_value(value, f"{call}(attributes=...): the attribute {name!r}")
            matched.append((name, ev.attribute_text(value)))
    prefix = None
    if id_prefix is not None:
        prefix = namespaces.key(ns, namespaces.check_id(id_prefix, f"{call}(id_prefix=...)"))
    return RunFilter(parent, after, before, tuple(sorted(matched)), ns, prefix)
