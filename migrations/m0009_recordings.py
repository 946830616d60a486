"""Capture recordings: named recordings a user starts and stops (or a HAR file imported), and
on each captured exchange the recording it belongs to.

Declared here as at version 9 (not imported from greyproxy.store.models).
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def up(db: peewee.Database) -> None:
    class Recording(peewee.Model):
        name = peewee.TextField()
        container_pattern = peewee.TextField(null=True)
        source = peewee.TextField(default="live")
        started_at = peewee.DateTimeField()
        stopped_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "recordings"

    db.create_tables([Recording])
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("http_transactions", "recording_id", peewee.IntegerField(null=True)),
        migrator.add_index("http_transactions", ("recording_id",), False),
    )
