"""Bulk inserts for the store writer's hot tables (request_logs, http_transactions).

peewee builds a query object per statement, which costs more CPU than SQLite's own work at
proxy rates; on SQLite these rows go through one prepared statement instead. Values are
converted with each field's own db_value, so the stored form is what peewee would write."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import peewee

from greyproxy.store.executor import run_in_db

MAX_VARIABLES = 32766  # SQLite's bound on ? parameters in one statement (3.32 and later)
MAX_ROWS_PER_STATEMENT = 200


def _sql_value(field: peewee.Field, value: Any) -> Any:
    value = field.db_value(value)
    if isinstance(value, dt.datetime):  # peewee's text form; sqlite3's adapter is deprecated
        return value.isoformat(sep=" ")
    if isinstance(value, bool):
        return int(value)
    return value


def insert_rows(db: peewee.Database, model: type[peewee.Model], rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows (dicts of field name → value; missing fields take their defaults) in one
    transaction; returns the new ids in order."""
    if not rows:
        return []
    meta = model._meta  # noqa: SLF001 - peewee's public-by-convention metadata
    # Every column but the id: peewee's defaults live in Python, not in the table's DDL.
    fields = [f for f in meta.sorted_fields if f is not meta.primary_key]
    defaults = {f.name: f.default() if callable(f.default) else f.default for f in fields}
    if not isinstance(db, peewee.SqliteDatabase):
        with db.atomic():
            query = model.insert_many(rows, fields=fields).returning(meta.primary_key)
            return [r[0] for r in query.tuples().execute()]
    columns = ", ".join(f.column_name for f in fields)
    one_row = f"({', '.join('?' for _ in fields)})"
    per_statement = max(1, min(MAX_ROWS_PER_STATEMENT, MAX_VARIABLES // len(fields)))

    def insert() -> list[int]:  # in the database thread: one hop for the whole batch
        cursor = db.connection().cursor()
        ids: list[int] = []
        try:
            # Many rows per statement: one step (and one release of the GIL) for each chunk.
            for start in range(0, len(rows), per_statement):
                chunk = rows[start:start + per_statement]
                params = [_sql_value(f, row.get(f.name, defaults[f.name])) for row in chunk for f in fields]
                cursor.execute(f'INSERT INTO "{meta.table_name}" ({columns}) VALUES '
                               + ", ".join([one_row] * len(chunk)), params)
                # One statement, in our transaction: its rows took consecutive rowids, the
                # last one's is lastrowid.
                last = cursor.lastrowid
                ids.extend(range(last - len(chunk) + 1, last + 1))
        finally:
            # Here, in the database thread: a cursor kept alive by the error's traceback would
            # be finalized by the garbage collector on the hub, waiting for the connection's
            # mutex with the GIL held (store/executor.py, OffHubCursor.execute).
            cursor.close()
        return ids

    with db.atomic():
        return run_in_db(db, insert)
