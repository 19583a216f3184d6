"""Versioning of workflow code: ``ctx.patched(change_id)``.

A change to workflow code must not change what a replay of a run recorded
under the old code does. Guard the change::

    if ctx.patched("tax-2027"):
        total = ctx.step(price_with_tax, order)      # the new code
    else:
        total = ctx.step(price, order)               # what old runs recorded

A run that reaches the call live records a ``PatchMarker`` and takes the
new branch; a replay finds the marker where its run recorded it (new
branch) or, for a run recorded by code without the call, finds another
event there (old branch). Asked again in the same run, the answer is the
same. Once no run recorded under the old code is left, replace the call by
``ctx.deprecate_patch(change_id)``, which consumes a recorded marker and
records nothing, and keep only the new branch.

Thread contract: called from the workflow's greenlet.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aion_green.core import events as ev

if TYPE_CHECKING:  # pragma: no cover
    from aion_green.workflows.context import WorkflowContext

_MARKER = frozenset({ev.PATCH_MARKER})


def patched(ctx: "WorkflowContext", change_id: str) -> bool:
    if not isinstance(change_id, str) or not change_id:
        raise ValueError(f"ctx.patched({change_id!r}): a change id is a non-empty string")
    ctx._check()
    known = ctx._patches.get(change_id)
    if known is not None:
        return known
    found = ctx._cursor.next_command()
    if found is None:
        ctx._record(ev.NewEvent(ev.PATCH_MARKER, time.time(), {"patch": change_id}))
        taken = True
    elif found.type == ev.PATCH_MARKER and found.data.get("patch") == change_id:
        ctx._take(_MARKER, {"patch": change_id}, lambda: f"patch {change_id!r}", found)
        taken = True
    else:
        taken = False  # recorded by code that predates this change
    ctx._patches[change_id] = taken
    return taken


def deprecate_patch(ctx: "WorkflowContext", change_id: str) -> None:
    ctx._check()
    found = ctx._cursor.next_command()
    if found is not None and found.type == ev.PATCH_MARKER and found.data.get("patch") == change_id:
        ctx._take(_MARKER, {"patch": change_id}, lambda: f"patch {change_id!r}", found)
