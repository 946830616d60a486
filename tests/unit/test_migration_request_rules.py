"""Migration 0010 (request-level rules) on a store that already holds rules: rows and ids are
kept, an id is still never reused, 'hold' is accepted, the unique index covers method and path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import peewee
import pytest

from greyproxy.store import migrate
from greyproxy.store.db import open_database
from greyproxy.store.models import Rule
from tests.backends import database_url  # noqa: F401 - SQLite and PostgreSQL


def test_upgrade_keeps_rules_and_ids(tmp_path: Path, database_url: str | None, monkeypatch) -> None:  # noqa: F811
    db = open_database(database_url, tmp_path / "greyproxy.db")
    every = migrate.available()
    monkeypatch.setattr(migrate, "available", lambda: [m for m in every if m[0] < 10])
    migrate.apply_migrations(db)
    now = dt.datetime(2026, 1, 1)
    ids = [db.execute_sql(
        "INSERT INTO rules (container_pattern, destination_pattern, port_pattern, rule_type, action, created_at, "
        f"created_by) VALUES ('agent', 'd{i}.example', '443', 'permanent', 'allow', {db.param}, 'admin') "
        "RETURNING id", (now,)).fetchone()[0] for i in range(3)]
    db.execute_sql(f"DELETE FROM rules WHERE id = {db.param}", (ids[-1],))  # the highest id is gone
    monkeypatch.setattr(migrate, "available", lambda: every)
    assert 10 in migrate.apply_migrations(db)
    kept = {r.id: (r.destination_pattern, r.method_pattern, r.path_pattern) for r in Rule.select()}
    assert kept[ids[0]] == ("d0.example", "", "") and kept[ids[1]] == ("d1.example", "", "")
    fresh = Rule.create(container_pattern="agent", destination_pattern="d1.example", port_pattern="443",
                        action="hold", created_at=now, method_pattern="POST", path_pattern="/v1/x")
    assert fresh.id > ids[-1]  # never the deleted rule's id
    with pytest.raises(peewee.IntegrityError):
        with db.atomic():
            Rule.create(container_pattern="agent", destination_pattern="d1.example", port_pattern="443",
                        action="hold", created_at=now, method_pattern="POST", path_pattern="/v1/x")
    with pytest.raises(peewee.IntegrityError):
        with db.atomic():
            Rule.create(container_pattern="agent", destination_pattern="d9.example", port_pattern="443",
                        action="maybe", created_at=now)
    db.close()
