"""Advisory locks for work that several fleet nodes (docs/fleet.md) must not do at once; on
SQLite (one process) they cost nothing and always succeed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import peewee

CONVERSATIONS = 0x636F6E76  # "conv": assembling conversations, seeding their endpoint rules


def _shared(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)


def xact_lock(db: peewee.Database, key: int) -> None:
    """Inside a transaction: wait for the lock, held until it commits or rolls back."""
    if _shared(db):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))


@contextmanager
def try_lock(db: peewee.Database, key: int) -> Iterator[bool]:
    """Whether this node may do the work now (another node doing it: False, do not wait)."""
    if not _shared(db):
        yield True
        return
    got = bool(db.execute_sql("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
    try:
        yield got
    finally:
        if got:
            try:
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))
            except peewee.DatabaseError:  # the connection is gone: so is the lock
                pass
