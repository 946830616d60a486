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
    method_pattern = peewee.TextField(default="")  # request-level rules (migration 0010); '' = any
    path_pattern = peewee.TextField(default="")
    enabled = peewee.BooleanField(default=True)  # off: listed, but not in the policy index (migration 0014)

    class Meta:
        table_name = "rules"
        indexes = ((("container_pattern", "destination_pattern", "port_pattern", "action", "method_pattern",
                     "path_pattern"), True),)


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
        # The second (migration 0013): a decision finds the rows of one resolved name quickly.
        indexes = ((("container_name", "destination_host", "destination_port"), True),
                   (("container_name", "resolved_hostname", "destination_port"), False))


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
    dialed_ip = peewee.TextField(null=True)  # the address actually connected to (migration 0002)
    node_id = peewee.TextField(null=True)  # the node that wrote it (fleet mode, migration 0011)

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
    middleware_actions = peewee.TextField(null=True)  # JSON list of {middleware, hook, action, tags}
    node_id = peewee.TextField(null=True)  # the node that captured it (fleet mode, migration 0011)
    recording_id = peewee.IntegerField(null=True, index=True)  # the capture recording it belongs to (migration 0009)

    class Meta:
        table_name = "http_transactions"
        indexes = ((("destination_host", "destination_port"), False),)


class MiddlewareEvent(BaseModel):
    """What an external middleware did to an exchange (the middleware audit): deny, block, rewrite, a
    tagged allow/passthrough, or `error` when its on_disconnect policy applied."""

    timestamp = peewee.DateTimeField(index=True)
    middleware = peewee.TextField()
    hook = peewee.TextField()
    action = peewee.TextField()
    status_code = peewee.IntegerField(null=True)
    reason = peewee.TextField(null=True)
    tags = peewee.TextField(null=True)  # JSON object
    container_name = peewee.TextField()
    destination_host = peewee.TextField()
    method = peewee.TextField()
    url = peewee.TextField()

    class Meta:
        table_name = "middleware_events"


class AuditEntry(BaseModel):
    """One control-plane change, linked to the one before it by `prev_hash`."""

    timestamp = peewee.TextField(index=True)  # fixed-width ISO text: hashed exactly as stored
    actor = peewee.TextField(index=True)
    kind = peewee.TextField(index=True)
    target = peewee.TextField(null=True)
    before = peewee.TextField(null=True)  # canonical JSON
    after = peewee.TextField(null=True)
    prev_hash = peewee.TextField()
    hash = peewee.TextField()

    class Meta:
        table_name = "audit_log"


class EndpointRuleRow(BaseModel):
    """URL → LLM decoder; built-in rows are re-seeded at every start."""

    host_pattern = peewee.TextField()
    path_pattern = peewee.TextField()
    method = peewee.TextField(default="POST")
    decoder_name = peewee.TextField(index=True)
    priority = peewee.IntegerField(default=0)
    enabled = peewee.BooleanField(default=True)
    user_defined = peewee.BooleanField(default=False)

    class Meta:
        table_name = "endpoint_rules"


class Conversation(BaseModel):
    id = peewee.TextField(primary_key=True)
    model = peewee.TextField(null=True)
    container_name = peewee.TextField(index=True)
    provider = peewee.TextField(null=True, index=True)
    client_name = peewee.TextField(null=True)
    started_at = peewee.DateTimeField(index=True)
    ended_at = peewee.DateTimeField()
    turn_count = peewee.IntegerField(default=0)
    system_prompt = peewee.TextField(null=True)
    system_prompt_summary = peewee.TextField(null=True)
    first_prompt = peewee.TextField(null=True)
    parent_conversation_id = peewee.TextField(null=True, index=True)
    last_turn_has_response = peewee.BooleanField(default=False)
    metadata_json = peewee.TextField(default="{}")
    request_ids_json = peewee.TextField(default="[]")
    incomplete = peewee.BooleanField(default=False)
    incomplete_reason = peewee.TextField(null=True)
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "conversations"


class Turn(BaseModel):
    conversation_id = peewee.TextField(index=True)
    turn_number = peewee.IntegerField()
    user_prompt = peewee.TextField(null=True)
    steps_json = peewee.TextField(default="[]")
    api_calls_in_turn = peewee.IntegerField(default=0)
    request_ids_json = peewee.TextField(default="[]")
    timestamp = peewee.DateTimeField(null=True)
    timestamp_end = peewee.DateTimeField(null=True)
    duration_ms = peewee.IntegerField(null=True)
    model = peewee.TextField(null=True)

    class Meta:
        table_name = "turns"


class ConversationProcessingState(BaseModel):
    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "conversation_processing_state"


class DnsCacheEntry(BaseModel):
    """IP → name a DNS client was told (proxy/dnscache.py); per client, with absolute expiry."""

    client_ip = peewee.TextField()
    ip = peewee.TextField()
    hostname = peewee.TextField()
    expires_at = peewee.DateTimeField(index=True)
    updated_at = peewee.DateTimeField()

    class Meta:
        table_name = "dns_cache"
        primary_key = peewee.CompositeKey("client_ip", "ip")


class Session(BaseModel):
    """A sandbox launcher's run: its container, rules, credentials (encrypted)."""

    session_id = peewee.TextField(primary_key=True)
    container_name = peewee.TextField(index=True)
    mappings_enc = peewee.BlobField(null=True)  # AES-GCM of JSON {placeholder: {value, label, hosts}}
    labels_json = peewee.TextField(default="{}")
    global_labels_json = peewee.TextField(default="[]")
    ttl_seconds = peewee.IntegerField(default=900)
    created_at = peewee.DateTimeField()
    expires_at = peewee.DateTimeField(index=True)
    last_heartbeat = peewee.DateTimeField()
    substitution_count = peewee.IntegerField(default=0)
    metadata_json = peewee.TextField(default="{}")
    allow_all = peewee.BooleanField(default=False)
    proxy_token_hash = peewee.TextField(null=True)  # SHA-256 of the session's proxy token, never the token

    class Meta:
        table_name = "sessions"


class GlobalCredential(BaseModel):
    id = peewee.TextField(primary_key=True)
    label = peewee.TextField(unique=True)
    placeholder = peewee.TextField(unique=True)
    value_enc = peewee.BlobField()
    value_preview = peewee.TextField()
    hosts_json = peewee.TextField(default="[]")
    created_at = peewee.DateTimeField()
    containers_json = peewee.TextField(default="[]")  # container patterns; [] = any (migration 0008)

    class Meta:
        table_name = "global_credentials"


class Recording(BaseModel):
    """A named capture recording (migration 0009): traffic recorded while it ran, or a HAR import."""

    name = peewee.TextField()
    container_pattern = peewee.TextField(null=True)  # whose traffic it takes; null = every container
    source = peewee.TextField(default="live")  # live | har
    started_at = peewee.DateTimeField()
    stopped_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "recordings"


class SchemaMigration(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.TextField()
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_migrations"


ALL_MODELS = [Rule, PendingRequest, RequestLog, ContainerMode, HttpTransaction, SchemaMigration, DnsCacheEntry, Session,
              GlobalCredential, MiddlewareEvent, AuditEntry, EndpointRuleRow, Conversation, Turn,
              ConversationProcessingState, Recording]
