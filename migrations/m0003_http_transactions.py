"""HTTP transactions captured by TLS interception and sniffing (§8.4), and mitm_skip_reason use."""

import peewee

from migrations.m0001_initial import id_field


def up(db: peewee.Database) -> None:
    class HttpTransaction(peewee.Model):
        id = id_field(db)
        timestamp = peewee.DateTimeField(index=True)
        container_name = peewee.TextField(index=True)
        destination_host = peewee.TextField()
        destination_port = peewee.IntegerField()
        method = peewee.TextField()
        url = peewee.TextField()
        request_headers = peewee.TextField(null=True)
        request_body = peewee.BlobField(null=True)
        request_body_size = peewee.IntegerField(null=True)
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
        substituted_credentials = peewee.TextField(null=True)
        session_id = peewee.TextField(null=True, index=True)
        replay_of = peewee.IntegerField(null=True)

        class Meta:
            database = db
            table_name = "http_transactions"
            indexes = ((("destination_host", "destination_port"), False),)

    db.create_tables([HttpTransaction])
