"""The store writer's bulk insert: many rows per statement, and the ids it returns are each
row's own, in order (callbacks attach to them), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from greyproxy.store.bulk import insert_rows
from greyproxy.store.models import RequestLog
from tests.backends import backend_db as db  # noqa: F401 - SQLite and PostgreSQL


def test_ids_match_their_rows_across_statements(db):  # noqa: F811
    existing = insert_rows(db, RequestLog, [{"timestamp": dt.datetime(2026, 1, 1), "container_name": "before",
                                             "destination_host": "x", "result": "allowed"}])
    rows = [{"timestamp": dt.datetime(2026, 1, 1, 0, 0, i % 60), "container_name": f"c{i}",
             "destination_host": f"h{i}.example", "destination_port": i, "result": "allowed",
             "mitm_skip_reason": None if i % 2 else "bypassed"} for i in range(450)]  # several statements
    ids = insert_rows(db, RequestLog, rows)
    assert len(ids) == 450 and len(set(ids)) == 450 and min(ids) > existing[0]
    stored = {r.id: r for r in RequestLog.select().where(RequestLog.id.in_(ids))}
    for row_id, row in zip(ids, rows, strict=True):
        got = stored[row_id]
        assert (got.container_name, got.destination_host, got.destination_port, got.mitm_skip_reason) == (
            row["container_name"], row["destination_host"], row["destination_port"], row["mitm_skip_reason"])
    assert insert_rows(db, RequestLog, []) == []
