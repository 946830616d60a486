"""DNS attribution (issue 6): the per-client IP → hostname cache, and the IP a log row dialled.

Declared here as at version 2 (not imported from greyproxy.store.models). Runs on SQLite and
PostgreSQL (peewee's schema migrator).
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def up(db: peewee.Database) -> None:
    class DnsCache(peewee.Model):
        # Keyed by (client, address): a name attributed to an IP for one client is never seen
        # by another (see greyproxy/proxy/dnscache.py), so no surrogate id is needed.
        client_ip = peewee.TextField()
        ip = peewee.TextField()
        hostname = peewee.TextField()
        expires_at = peewee.DateTimeField(index=True)
        updated_at = peewee.DateTimeField()

        class Meta:
            database = db
            table_name = "dns_cache"
            primary_key = peewee.CompositeKey("client_ip", "ip")

    db.create_tables([DnsCache])
    migrate(SchemaMigrator.from_database(db).add_column("request_logs", "dialed_ip", peewee.TextField(null=True)))
