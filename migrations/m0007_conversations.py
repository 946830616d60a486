"""LLM conversations (§10): endpoint rules (URL → decoder), conversations and their turns,
and the assembler's cursor. http_transactions.conversation_id already exists (m0003).

Declared here as at version 7 (not imported from greyproxy.store.models). Runs on SQLite and
PostgreSQL.
"""

import peewee


def up(db: peewee.Database) -> None:
    class EndpointRule(peewee.Model):
        host_pattern = peewee.TextField()
        path_pattern = peewee.TextField()
        method = peewee.TextField(default="POST")
        decoder_name = peewee.TextField(index=True)
        priority = peewee.IntegerField(default=0)
        enabled = peewee.BooleanField(default=True)
        user_defined = peewee.BooleanField(default=False)

        class Meta:
            database = db
            table_name = "endpoint_rules"
            indexes = ((("host_pattern", "path_pattern", "method", "user_defined"), True),)

    class Conversation(peewee.Model):
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
            database = db
            table_name = "conversations"

    class Turn(peewee.Model):
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
            database = db
            table_name = "turns"
            indexes = ((("conversation_id", "turn_number"), True),)

    class ConversationProcessingState(peewee.Model):
        key = peewee.TextField(primary_key=True)
        value = peewee.TextField()

        class Meta:
            database = db
            table_name = "conversation_processing_state"

    db.create_tables([EndpointRule, Conversation, Turn, ConversationProcessingState])
