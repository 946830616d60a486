"""The audit log (D16): control-plane changes in a hash chain (greyproxy/services/audit.py).

Declared here as at version 6 (not imported from greyproxy.store.models). Runs on SQLite and
PostgreSQL. Times are fixed-width ISO text: the hash covers exactly what is stored.
"""

import peewee


def up(db: peewee.Database) -> None:
    class AuditEntry(peewee.Model):
        timestamp = peewee.TextField(index=True)
        actor = peewee.TextField(index=True)
        kind = peewee.TextField(index=True)
        target = peewee.TextField(null=True)
        before = peewee.TextField(null=True)
        after = peewee.TextField(null=True)
        prev_hash = peewee.TextField()
        hash = peewee.TextField()

        class Meta:
            database = db
            table_name = "audit_log"

    db.create_tables([AuditEntry])
