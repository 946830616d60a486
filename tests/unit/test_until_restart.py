"""'restart' as a rule duration, and migration 0015 on a store that already holds rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import peewee
import pytest

from greyproxy.policy.durations import rule_duration, rule_type_for
from greyproxy.store import migrate
from greyproxy.store.db import open_database
from greyproxy.store.models import Rule
from tests.backends import database_url  # noqa: F401 - SQLite and PostgreSQL


@pytest.mark.parametrize(("text", "seconds", "rule_type"), [
    ("restart", None, "until_restart"),
    (" Restart ", None, "until_restart"),
    ("permanent", None, "permanent"),
    (None, None, "permanent"),
    ("7d", 604800, "temporary"),
    ("90m", 5400, "temporary"),
])
def test_rule_type_follows_the_duration(text, seconds, rule_type) -> None:
    assert rule_duration(text) == seconds
    assert rule_type_for(text, rule_duration(text)) == rule_type


def test_migration_0015_keeps_rules_and_ids(tmp_path: Path, database_url: str | None, monkeypatch) -> None:  # noqa: F811
    db = open_database(database_url, tmp_path / "greyproxy.db")
    every = migrate.available()
    monkeypatch.setattr(migrate, "available", lambda: [m for m in every if m[0] < 15])
    migrate.apply_migrations(db)
    now = dt.datetime(2026, 1, 1)
    ids = [db.execute_sql(
        "INSERT INTO rules (container_pattern, destination_pattern, port_pattern, rule_type, action, created_at, "
        "created_by, method_pattern, path_pattern) "
        f"VALUES ('agent', 'd{i}.example', '443', 'permanent', 'allow', {db.param}, 'admin', '', '') "
        "RETURNING id", (now,)).fetchone()[0] for i in range(3)]
    db.execute_sql(f"DELETE FROM rules WHERE id = {db.param}", (ids[-1],))  # the highest id is gone
    monkeypatch.setattr(migrate, "available", lambda: every)
    assert 15 in migrate.apply_migrations(db)
    kept = {r.id: r.destination_pattern for r in Rule.select()}  # the built-in rules are there too
    assert kept[ids[0]] == "d0.example" and kept[ids[1]] == "d1.example" and ids[2] not in kept
    fresh = Rule.create(container_pattern="agent", destination_pattern="d9.example", port_pattern="443",
                        action="allow", rule_type="until_restart", created_at=now)
    assert fresh.id > ids[-1]  # never the deleted rule's id
    with pytest.raises(peewee.IntegrityError):  # the CHECK is still there, only wider
        with db.atomic():
            Rule.create(container_pattern="agent", destination_pattern="d8.example", port_pattern="443",
                        action="allow", rule_type="sometimes", created_at=now)
    with pytest.raises(peewee.IntegrityError):  # so is the unique index
        with db.atomic():
            Rule.create(container_pattern="agent", destination_pattern="d9.example", port_pattern="443",
                        action="allow", created_at=now)
    db.close()
