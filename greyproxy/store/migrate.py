"""Numbered migrations (migrations/mNNNN_name.py, each with up(db)), applied once, in order."""

from __future__ import annotations

import datetime
import importlib
import pkgutil

import peewee

import migrations
from greyproxy.store.db import StoreError, db_path, describe
from greyproxy.store.models import SchemaMigration


def available() -> list[tuple[int, str]]:
    found = []
    for info in pkgutil.iter_modules(migrations.__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            found.append((int(info.name[1:5]), info.name))
    return sorted(found)


def apply_migrations(db: peewee.Database) -> list[int]:
    """Apply every migration not yet recorded in schema_migrations; returns the versions applied.
    A database error (a full disk, a read-only file, a lock) is a StoreError naming the file and
    the real cause, not the `cannot rollback` that follows it."""
    try:
        return _apply(db)
    except peewee.DatabaseError as exc:
        raise StoreError(f"cannot prepare the {describe(exc, db_path(db))}") from exc


# Fleet mode: nodes starting together take turns (a session-level advisory lock), so each
# migration runs once; the key is arbitrary but fixed.
MIGRATION_LOCK = 0x67727970  # "gryp"


def _apply(db: peewee.Database) -> list[int]:
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            return _apply_unlocked(db)
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return _apply_unlocked(db)


def _apply_unlocked(db: peewee.Database) -> list[int]:
    db.create_tables([SchemaMigration], safe=True)
    done = {row.version for row in SchemaMigration.select(SchemaMigration.version)}
    applied = []
    for version, name in available():
        if version in done:
            continue
        module = importlib.import_module(f"migrations.{name}")
        with db.atomic():
            module.up(db)
            SchemaMigration.create(
                version=version,
                name=name,
                applied_at=datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
            )
        applied.append(version)
    return applied
