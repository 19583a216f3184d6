"""Namespaces: every run belongs to one, and ids are unique per namespace.

A namespace is a name (``"default"`` unless one is given) that scopes
workflow ids: ``orders/1`` in namespace ``shop`` and ``orders/1`` in
``default`` are two runs that know nothing of each other. A run's children,
the messages it sends (``ctx.send``) and the runs a schedule starts live in
the namespace of the run that made them.

Below the engine's public operations, a run is named by one string, its
*key*: the workflow id itself in the default namespace (so stores, histories
and ids made before namespaces read as they were), and
``"<namespace>\\x1f<id>"`` in any other. U+001F (the unit separator) may not
appear in a namespace or in a workflow id, so a key names exactly one
(namespace, id) pair, and an id derived from a key by appending to it (a
child's ``<parent>/child-1``, a schedule's ``<schedule>@<time>``) stays in
its namespace. Histories keep keys where they name other runs (a child's
``id``, a message's ``to``); :func:`present` shows them as ids again.

Thread contract: pure functions, any thread.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from aion_green.core import events as ev
from aion_green.core.errors import ConfigurationError

DEFAULT = "default"
SEPARATOR = "\x1f"
MAX_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


def new_id() -> str:
    """A new random id: the hex form of a version-4 UUID, as
    ``uuid.uuid4().hex`` gives it, built without the UUID object (a start
    draws one or two; the object cost ~2 us each)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


def check_namespace(value: object, what: str = "the namespace") -> str:
    """``value`` if it can name a namespace, else :class:`ConfigurationError`
    saying what a namespace may be."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_LENGTH or not _NAME.match(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigurationError(
            f"{what} {shown!r} is not a namespace name: use 1 to {MAX_LENGTH} letters, digits, "
            "'_', '.' or '-', beginning with a letter or digit (\"default\" unless you name one)")
    return value


def check_id(value: object, what: str = "the workflow id") -> str:
    """``value`` if it can be a workflow id in any namespace
    (:func:`aion_green.core.events.check_key`, and no U+001F)."""
    text = ev.check_key(value, what)
    if SEPARATOR in text:
        raise ConfigurationError(
            f"{what} {text[:60]!r} holds U+001F (the unit separator) at position "
            f"{text.index(SEPARATOR)}, which ids may not hold (it separates a namespace from an "
            "id inside the engine): leave it out")
    return text


def key(namespace: str, workflow_id: str) -> str:
    """The key of ``workflow_id`` in ``namespace`` (both checked already)."""
    if namespace == DEFAULT:
        return workflow_id
    full = f"{namespace}{SEPARATOR}{workflow_id}"
    if len(full) > ev.MAX_KEY_LENGTH:
        raise ConfigurationError(
            f"the workflow id is {len(workflow_id)} characters long; in namespace {namespace!r} "
            f"the limit is {ev.MAX_KEY_LENGTH - len(namespace) - 1}: use a shorter one (a hash "
            "of it, say)")
    return full


def qualify(namespace: Optional[str], workflow_id: object, what: str = "the workflow id") -> str:
    """Check ``namespace`` (None: the default) and ``workflow_id``, and give
    the key they name: what the public operations do with their arguments."""
    ns = DEFAULT if namespace is None else check_namespace(namespace)
    return key(ns, check_id(workflow_id, what))


def namespace_of(run_key: str) -> str:
    """The namespace of a key."""
    ns, sep, _ = run_key.partition(SEPARATOR)
    return ns if sep else DEFAULT


def local(run_key: str) -> str:
    """The workflow id of a key (the key itself in the default namespace)."""
    _, sep, rest = run_key.partition(SEPARATOR)
    return rest if sep else run_key


def within(namespace: str, workflow_id: str, what: str = "the workflow id") -> str:
    """The key of an id that a run of ``namespace`` names (a child, a
    message's target): the id in the run's own namespace. An id made from
    the run's own key (a child's ``<key>/child-1``) is a key already; one
    holding U+001F otherwise (another namespace's key) is refused, so a run
    reaches no other namespace."""
    if SEPARATOR in workflow_id and namespace != DEFAULT and namespace_of(workflow_id) == namespace:
        ev.check_key(workflow_id, what)
        return workflow_id
    return key(namespace, check_id(workflow_id, what))


# The fields of recorded events that hold another run's key.
_KEY_FIELDS = {
    ev.CHILD_STARTED: ("id",),
    ev.CHILD_COMPLETED: ("id",),
    ev.CHILD_FAILED: ("id",),
    ev.CHILD_RESTARTED: ("after", "id"),
    ev.MESSAGE_SENT: ("to",),
}


def present(event: ev.Event) -> ev.Event:
    """``event`` as a caller sees it: ids where the history holds keys (the
    same event, unchanged, when it holds none of another namespace)."""
    fields = _KEY_FIELDS.get(event.type)
    if not fields:
        return event
    data: Optional[dict[str, Any]] = None
    for name in fields:
        value = event.data.get(name)
        if isinstance(value, str) and SEPARATOR in value:
            if data is None:
                data = dict(event.data)
            data[name] = local(value)
    return event if data is None else ev.Event(event.seq, event.type, event.at, data)
