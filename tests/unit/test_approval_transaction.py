"""Issue 13: an approval (pending rows out, rule in, audit entries) is one transaction; events
and the wake-up of held connections come after the commit; the audit chain stays linear."""

from __future__ import annotations

import datetime as dt
import sqlite3

import peewee
import psycopg2
import pytest

from greyproxy.events import Bus
from greyproxy.services.audit import AuditLog, verify
from greyproxy.services.pending import PendingService
from greyproxy.services.rules import RuleService
from greyproxy.store.db import describe, real_cause
from greyproxy.store.models import AuditEntry, PendingRequest, Rule
from greyproxy.store.postgres import PostgresDatabase
from tests.backends import backend_db  # noqa: F401 - `db`: a migrated store, SQLite and PostgreSQL


class Setup:
    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.bus = Bus()
        self.changes: list[str] = []  # what on_change saw: committed state, from another connection
        self.rules = RuleService(db, self.bus, self._on_change)
        self.pending = PendingService(db, self.bus, self.rules, lambda *a: 0, lambda *a: None)
        self.audit = AuditLog(db, self.bus, {})
        self.events: list[str] = []
        self.bus.add_hook(lambda e: self.events.append(e["type"]))

    def _on_change(self, *_change: object) -> None:  # a RuleChange, with incremental policy updates
        query = "SELECT count(*) FROM rules WHERE destination_pattern LIKE '%.example'"
        if isinstance(self.db, PostgresDatabase):  # another connection sees only what is committed
            other = psycopg2.connect(dbname=self.db.database, **self.db.connect_params)
            try:
                with other.cursor() as cur:
                    cur.execute(query)
                    self.changes.append(f"rules={cur.fetchone()[0]}")
            finally:
                other.close()
            return
        with sqlite3.connect(self.db.database) as other:
            self.changes.append(f"rules={other.execute(query).fetchone()[0]}")

    def add_pending(self, host: str) -> int:
        now = dt.datetime(2026, 1, 1)
        return PendingRequest.create(container_name="agent1", destination_host=host, destination_port=443,
                                     first_seen=now, last_seen=now).id


def chain(db: peewee.Database) -> tuple[int, str | None]:
    return verify(db.execute_sql("SELECT id, timestamp, actor, kind, target, before, after, prev_hash, hash"
                                 " FROM audit_log ORDER BY id"))


def test_approval_commits_before_wake_and_events(db):
    s = Setup(db)
    pid = s.add_pending("a.example")
    rule = s.pending.resolve(pid, "allow", "exact", None, None, actor="api")
    assert s.changes == ["rules=1"]  # on_change (the wake-up) saw the committed rule
    assert s.events == ["rule.created", "pending_request.allowed"]
    kinds = [e.kind for e in AuditEntry.select().order_by(AuditEntry.id)]
    assert kinds == ["rule.create", "pending.allow"]  # written once each, not again on publish
    assert PendingRequest.select().count() == 0 and Rule.get_by_id(rule["id"]).created_by == "api"
    assert chain(db) == (2, None)


def test_failed_audit_write_leaves_nothing_half_done(db):
    s = Setup(db)
    pid = s.add_pending("b.example")
    s.pending.resolve(s.add_pending("c.example"), "allow", "exact", None, None)

    def broken(events):
        if any(event["type"] == "pending_request.allowed" for event in events):
            raise peewee.OperationalError("database or disk is full")

    s.bus.add_recorder(broken)  # runs after the audit recorder: its entries are written, then rolled back
    s.events.clear()
    s.changes.clear()
    with pytest.raises(peewee.OperationalError):
        s.pending.resolve(pid, "allow", "exact", None, None)
    assert PendingRequest.get_or_none(PendingRequest.id == pid) is not None
    assert Rule.select().where(Rule.destination_pattern == "b.example").count() == 0
    assert s.events == [] and s.changes == []  # nobody woken, nothing announced
    # The chain goes on from the last committed entry, not from the rolled-back one.
    s.bus._recorders.remove(broken)
    s.pending.resolve(pid, "deny", "exact", None, None)
    assert chain(db) == (4, None)


def test_dismiss_writes_its_entry_with_the_delete(db):
    s = Setup(db)
    pid = s.add_pending("d.example")
    assert s.pending.dismiss(pid)
    assert [e.kind for e in AuditEntry.select()] == ["pending.dismiss"]
    assert s.events == ["pending_request.dismissed"]
    assert not s.pending.dismiss(pid)


def test_plain_publish_still_records_once(db):
    s = Setup(db)
    s.bus.publish("rule.deleted", {"id": 7})
    assert [e.kind for e in AuditEntry.select()] == ["rule.delete"]


def test_real_cause_skips_the_failed_rollback(tmp_path):
    try:
        try:
            raise peewee.OperationalError("database or disk is full")
        except peewee.OperationalError:
            raise peewee.OperationalError("cannot rollback - no transaction is active") from None
    except peewee.OperationalError as exc:
        caught = exc
    # `from None` keeps __context__ (only hides it in tracebacks)
    assert str(real_cause(caught)) == "database or disk is full"
    text = describe(caught, tmp_path / "g.db")
    assert text.startswith(f"database {tmp_path / 'g.db'}: database or disk is full (")
    assert "KiB free on its filesystem" in text
