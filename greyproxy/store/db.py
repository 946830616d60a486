"""Database connection: SQLite (WAL) in the data dir by default."""

from __future__ import annotations

from pathlib import Path

import peewee

from greyproxy.store.models import ALL_MODELS, database_proxy


def connect_sqlite(path: Path) -> peewee.SqliteDatabase:
    # One connection shared by every greenlet (thread_safe=False): SQLite calls never yield to
    # the gevent hub, so statements cannot interleave; code must not yield inside a transaction.
    db = peewee.SqliteDatabase(
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
        raise ValueError("database.url: only SQLite is supported in this version (PostgreSQL fleet mode is planned)")
    db = connect_sqlite(sqlite_path)
    bind(db)
    return db
