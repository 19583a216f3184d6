"""The embedded SQLite store: one file, WAL, durable commits."""
from aion_green.stores.sqlite.schema import sqlite_path_from_url
from aion_green.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "sqlite_path_from_url"]
