"""External middleware (§13): the audit trail of what middlewares did, and on each captured
exchange the middleware actions that touched it (badges in Activity).

Declared here as at version 5 (not imported from greyproxy.store.models). Runs on SQLite and
PostgreSQL (peewee's schema migrator).
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def up(db: peewee.Database) -> None:
    class MiddlewareEvent(peewee.Model):
        timestamp = peewee.DateTimeField(index=True)
        middleware = peewee.TextField()
        hook = peewee.TextField()  # http-request | http-response
        action = peewee.TextField()  # deny, block, rewrite, tagged-allow, tagged-passthrough, error
        status_code = peewee.IntegerField(null=True)
        reason = peewee.TextField(null=True)
        tags = peewee.TextField(null=True)  # JSON object
        container_name = peewee.TextField()
        destination_host = peewee.TextField()
        method = peewee.TextField()
        url = peewee.TextField()  # redacted like transaction URLs

        class Meta:
            database = db
            table_name = "middleware_events"

    db.create_tables([MiddlewareEvent])
    migrate(SchemaMigrator.from_database(db).add_column(
        "http_transactions", "middleware_actions", peewee.TextField(null=True)))
