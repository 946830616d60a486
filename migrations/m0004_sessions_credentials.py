"""Sessions of a sandbox launcher and global credentials (§11), values encrypted (D16)."""

import peewee


def up(db: peewee.Database) -> None:
    class Session(peewee.Model):
        session_id = peewee.TextField(primary_key=True)
        container_name = peewee.TextField(index=True)
        mappings_enc = peewee.BlobField(null=True)
        labels_json = peewee.TextField(default="{}")
        global_labels_json = peewee.TextField(default="[]")
        ttl_seconds = peewee.IntegerField(default=900)
        created_at = peewee.DateTimeField()
        expires_at = peewee.DateTimeField(index=True)
        last_heartbeat = peewee.DateTimeField()
        substitution_count = peewee.IntegerField(default=0)
        metadata_json = peewee.TextField(default="{}")
        allow_all = peewee.BooleanField(default=False)
        proxy_token_hash = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = "sessions"

    class GlobalCredential(peewee.Model):
        id = peewee.TextField(primary_key=True)
        label = peewee.TextField(unique=True)
        placeholder = peewee.TextField(unique=True)
        value_enc = peewee.BlobField()
        value_preview = peewee.TextField()
        hosts_json = peewee.TextField(default="[]")
        created_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "global_credentials"

    db.create_tables([Session, GlobalCredential])
