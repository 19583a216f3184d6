"""Search attributes, the workflow side: ``ctx.upsert_search_attributes``.

A workflow names what it is about so that operators find it::

    ctx.upsert_search_attributes({"customer": order["customer"], "total": 42})

and then ``engine.list(attributes={"customer": "c-1"})``, or over HTTP
``GET /v1/workflows?attr.customer=c-1``. The upsert is a command of the
workflow: recorded (``SearchAttributesUpserted``) before the call returns,
and matched in order on replay like a step, so a replay records nothing
again and a changed upsert is a :class:`NonDeterminismError`. The store
indexes the attributes in the same transaction as the event (see
``stores/batch.py``).

Values are JSON scalars (str, int, float, bool); None removes a name. The
attributes belong to the workflow id: a run that continues as new carries
them into its next run (its ``WorkflowStarted`` names them).

Thread contract: called from the workflow's greenlet.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

from aion_green.core import events as ev
from aion_green.core.errors import ConfigurationError
from aion_green.core.history import merge_attributes

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext

_UPSERTED = frozenset({ev.SEARCH_ATTRIBUTES_UPSERTED})


def checked(attributes: object, what: str) -> dict[str, Any]:
    """``attributes`` as a plain dict whose names and values a store can
    index (None values kept: they remove); else :class:`ConfigurationError`."""
    if not isinstance(attributes, Mapping):
        raise ConfigurationError(f"{what}: pass a dict of name -> value, got "
                                 f"{type(attributes).__name__}")
    found: dict[str, Any] = {}
    for name, value in attributes.items():
        ev.check_attribute_name(name, f"{what}: the attribute name {name!r}")
        if value is not None:
            ev.check_attribute_value(value, f"{what}: the attribute {name!r}")
        found[name] = value
    return found


def upsert(ctx: "WorkflowContext", attributes: Mapping[str, Any]) -> None:
    what = "ctx.upsert_search_attributes(...)"
    attrs = checked(attributes, what)
    ctx._check()
    if not attrs:
        return  # nothing to record, live and on replay alike
    merged = merge_attributes(dict(ctx._search_attributes), attrs)
    if len(merged) > ev.MAX_SEARCH_ATTRIBUTES:
        raise ConfigurationError(
            f"{what} in workflow {ctx.workflow_id!r}: that makes {len(merged)} search "
            f"attributes; a workflow holds at most {ev.MAX_SEARCH_ATTRIBUTES} (remove some with "
            "a value of None)")
    data = {"attributes": attrs}
    if ctx._take(_UPSERTED, data, lambda: f"upsert_search_attributes({attrs!r})") is None:
        ctx._record(ev.NewEvent(ev.SEARCH_ATTRIBUTES_UPSERTED, time.time(), data))
    ctx._search_attributes = merged
