"""Initial schema: rules, pending_requests, request_logs, container_modes; builtin localhost rules.

Tables are declared here as they were at version 1 (not imported from greyproxy.store.models),
so later model changes never alter what this migration does. Runs on SQLite and PostgreSQL.
"""

import datetime

import peewee
from playhouse.sqlite_ext import AutoIncrementField


def id_field(db: peewee.Database) -> peewee.AutoField:
    """Ids are never reused (SQLite AUTOINCREMENT; PostgreSQL sequences never reuse): a stale
    pending id held by a UI must not approve a newer, different request."""
    return AutoIncrementField() if isinstance(db, peewee.SqliteDatabase) else peewee.AutoField()


def up(db: peewee.Database) -> None:
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Rule(Base):
        id = id_field(db)
        container_pattern = peewee.TextField()
        destination_pattern = peewee.TextField()
        port_pattern = peewee.TextField(default="*")
        rule_type = peewee.TextField(default="permanent")
        action = peewee.TextField(default="allow")
        created_at = peewee.DateTimeField()
        expires_at = peewee.DateTimeField(null=True, index=True)
        last_used_at = peewee.DateTimeField(null=True)
        created_by = peewee.TextField(default="admin")
        notes = peewee.TextField(null=True)
        session_id = peewee.TextField(null=True, index=True)

        class Meta:
            table_name = "rules"
            indexes = ((("container_pattern", "destination_pattern", "port_pattern", "action"), True),)
            constraints = [
                peewee.Check("rule_type IN ('permanent', 'temporary')"),
                peewee.Check("action IN ('allow', 'deny')"),
            ]

    class PendingRequest(Base):
        id = id_field(db)
        container_name = peewee.TextField(index=True)
        container_id = peewee.TextField(default="")
        destination_host = peewee.TextField()
        destination_port = peewee.IntegerField()
        resolved_hostname = peewee.TextField(null=True)
        first_seen = peewee.DateTimeField()
        last_seen = peewee.DateTimeField(index=True)
        attempt_count = peewee.IntegerField(default=1)

        class Meta:
            table_name = "pending_requests"
            indexes = ((("container_name", "destination_host", "destination_port"), True),)

    class RequestLog(Base):
        id = id_field(db)
        timestamp = peewee.DateTimeField(index=True)
        container_name = peewee.TextField(index=True)
        container_id = peewee.TextField(null=True)
        destination_host = peewee.TextField(index=True)
        destination_port = peewee.IntegerField(null=True)
        resolved_hostname = peewee.TextField(null=True)
        method = peewee.TextField(null=True)
        result = peewee.TextField(index=True)
        rule_id = peewee.IntegerField(null=True)
        response_time_ms = peewee.IntegerField(null=True)
        mitm_skip_reason = peewee.TextField(null=True)
        reason = peewee.TextField(null=True)
        would = peewee.TextField(null=True)

        class Meta:
            table_name = "request_logs"

    class ContainerMode(Base):
        id = id_field(db)
        container_pattern = peewee.TextField(unique=True)
        mode = peewee.TextField()
        created_at = peewee.DateTimeField()

        class Meta:
            table_name = "container_modes"

    db.create_tables([Rule, PendingRequest, RequestLog, ContainerMode])
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    for dest in ("127.0.0.1", "::1", "localhost"):
        Rule.create(
            container_pattern="*",
            destination_pattern=dest,
            port_pattern="*",
            action="allow",
            created_at=now,
            created_by="builtin",
            notes="builtin: loopback",
        )
