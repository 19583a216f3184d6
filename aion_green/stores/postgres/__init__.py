"""The PostgreSQL store: many engines on many machines over one database
(leases and fencing tokens). Needs the ``postgres`` extra (psycopg 3)."""
from aion_green.stores.postgres.schema import SCHEMA_VERSION
from aion_green.stores.postgres.store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore"]
