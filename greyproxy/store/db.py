"""Database connection: SQLite (WAL) in the data dir by default."""

from __future__ import annotations

import shutil
from pathlib import Path

import peewee

from greyproxy.store.executor import OffHubSqliteDatabase
from greyproxy.store.models import ALL_MODELS, database_proxy

FULL_BELOW = 64 * 1024  # bytes: SQLite then reports a full disk as "disk I/O error" at times


class StoreError(OSError):
    """The database cannot be opened, migrated or written; the message names the file and the
    real cause (`greyproxy serve` prints it and exits 1)."""


def real_cause(exc: BaseException) -> BaseException:
    """The error that started it. When a statement inside a transaction fails with SQLITE_FULL
    (or IOERR), SQLite rolls the transaction back itself; peewee's `atomic()` then rolls back
    again and raises `cannot rollback - no transaction is active`, which hides the cause (it
    stays in `__context__`)."""
    seen: BaseException = exc
    while "no transaction is active" in str(seen) and seen.__context__ is not None:
        seen = seen.__context__
    return seen


def describe(exc: BaseException, path: str | Path | None) -> str:
    """`database PATH: CAUSE (N KiB free on its filesystem)`: what a person can act on."""
    text = f"database {path}: {real_cause(exc)}" if path else str(real_cause(exc))
    if path and str(path) != ":memory:" and "://" not in str(path):
        try:
            free = shutil.disk_usage(Path(path).parent).free
            text += f" ({free // 1024} KiB free on its filesystem{': it is full' if free < FULL_BELOW else ''})"
        except OSError:
            pass
    return text


def db_path(db: peewee.Database) -> str | None:
    # PostgreSQL: its URL without the password (store/postgres.py)
    return getattr(db, "display", None) or getattr(db, "database", None)


def connect_sqlite(path: Path) -> peewee.SqliteDatabase:
    # One connection shared by every greenlet (thread_safe=False), driven from one database
    # thread so no statement runs on the gevent hub (store/executor.py); a lock keeps each
    # transaction to the greenlet that opened it.
    db = OffHubSqliteDatabase(
        str(path),
        thread_safe=False,
        check_same_thread=False,
        pragmas={
            "journal_mode": "wal",
            "busy_timeout": 5000,
            "synchronous": "normal",
            "foreign_keys": 1,
        },
    )
    db.connect()
    return db


def bind(db: peewee.Database) -> None:
    database_proxy.initialize(db)
    db.bind(ALL_MODELS)


def open_database(url: str | None, sqlite_path: Path) -> peewee.Database:
    if url:
        return open_postgres(url)
    try:
        db = connect_sqlite(sqlite_path)
    except peewee.DatabaseError as exc:
        raise StoreError(f"cannot open the {describe(exc, sqlite_path)}") from exc
    bind(db)
    return db


def open_postgres(url: str) -> peewee.Database:
    """Fleet mode (docs/fleet.md): the same schema and queries on a shared PostgreSQL."""
    from greyproxy.store.postgres import connect_postgres, is_postgres_url, safe_url

    if not is_postgres_url(url):
        raise ValueError("database.url: only postgresql://... URLs are supported (or none, for SQLite)")
    try:
        db = connect_postgres(url)
    except peewee.DatabaseError as exc:
        raise StoreError(f"cannot open the database {safe_url(url)}: {str(exc).strip()}") from exc
    bind(db)
    return db
