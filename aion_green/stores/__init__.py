"""The store implementations, and opening one by URL in one place.

(The implementations move here with the layers of issue 17; today this
package holds the opening, so that the contract in ``store.py`` imports no
implementation.)"""
from __future__ import annotations

from typing import Any, Optional


def open_store(url: Optional[str], durable: bool = True, busy_timeout: float = 5.0) -> Any:
    """The store a URL names: ``None`` or ``sqlite:///...`` (SQLite; with
    ``?leases=on``, runs leased to its engines), or ``postgresql://...``
    (PostgreSQL, with the ``postgres`` extra)."""
    # -> Any, not Union[SQLiteStore, PostgresStore]: the engine hands it to
    # StoreWriter(store: IEventStore), and without a zope.interface plugin
    # mypy does not take an @implementer class for its interface.
    if url is not None and url.startswith(("postgres://", "postgresql://")):
        from aion_green.stores.postgres.store import PostgresStore

        return PostgresStore(url, connect_timeout=busy_timeout)
    from aion_green.stores.sqlite.schema import sqlite_leases_from_url, sqlite_path_from_url
    from aion_green.stores.sqlite.store import SQLiteStore

    return SQLiteStore(sqlite_path_from_url(url), durable=durable, busy_timeout=busy_timeout,
                       leases=sqlite_leases_from_url(url))
