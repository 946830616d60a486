"""peewee models mirroring the current schema (migrations/ creates and evolves it)."""

from __future__ import annotations

import peewee

database_proxy = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Rule(BaseModel):
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


class PendingRequest(BaseModel):
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


class RequestLog(BaseModel):
    timestamp = peewee.DateTimeField(index=True)
    container_name = peewee.TextField(index=True)
    container_id = peewee.TextField(null=True)
    destination_host = peewee.TextField(index=True)
    destination_port = peewee.IntegerField(null=True)
    resolved_hostname = peewee.TextField(null=True)
    method = peewee.TextField(null=True)
    result = peewee.TextField(index=True)
    # Plain integer, not a foreign key: log rows are written in batches after the decision and
    # must not fail because the rule was deleted in between.
    rule_id = peewee.IntegerField(null=True)
    response_time_ms = peewee.IntegerField(null=True)
    mitm_skip_reason = peewee.TextField(null=True)
    reason = peewee.TextField(null=True)
    would = peewee.TextField(null=True)

    class Meta:
        table_name = "request_logs"


class ContainerMode(BaseModel):
    container_pattern = peewee.TextField(unique=True)
    mode = peewee.TextField()
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "container_modes"


class HttpTransaction(BaseModel):
    """One HTTP exchange seen in clear (or one WebSocket frame: method WS_REQ / WS_RESP)."""

    timestamp = peewee.DateTimeField(index=True)
    container_name = peewee.TextField(index=True)
    destination_host = peewee.TextField()
    destination_port = peewee.IntegerField()
    method = peewee.TextField()
    url = peewee.TextField()
    request_headers = peewee.TextField(null=True)  # JSON {Name: [values]}, redacted
    request_body = peewee.BlobField(null=True)  # text-like bodies only, decompressed, at most 2 MiB
    request_body_size = peewee.IntegerField(null=True)  # the true size on the wire (decoded)
    request_body_truncated = peewee.BooleanField(default=False)
    request_content_type = peewee.TextField(null=True)
    status_code = peewee.IntegerField(null=True)
    response_headers = peewee.TextField(null=True)
    response_body = peewee.BlobField(null=True)
    response_body_size = peewee.IntegerField(null=True)
    response_body_truncated = peewee.BooleanField(default=False)
    response_content_type = peewee.TextField(null=True)
    duration_ms = peewee.IntegerField(null=True)
    rule_id = peewee.IntegerField(null=True)
    result = peewee.TextField(default="auto")
    conversation_id = peewee.TextField(null=True, index=True)
    substituted_credentials = peewee.TextField(null=True)  # JSON list of labels
    session_id = peewee.TextField(null=True, index=True)
    replay_of = peewee.IntegerField(null=True)

    class Meta:
        table_name = "http_transactions"
        indexes = ((("destination_host", "destination_port"), False),)


class SchemaMigration(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.TextField()
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_migrations"


ALL_MODELS = [Rule, PendingRequest, RequestLog, ContainerMode, HttpTransaction, SchemaMigration]
