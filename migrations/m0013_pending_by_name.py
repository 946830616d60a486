"""Issue 13: an index on pending rows by (container, resolved name, port), so a decision finds
the rows of one name (other addresses of it) without reading every pending row of the
container: a bulk decision over 100,000 rows did just that for each chunk.

Runs on SQLite and PostgreSQL.
"""

import peewee


def up(db: peewee.Database) -> None:
    db.execute_sql('CREATE INDEX IF NOT EXISTS "pending_requests_by_name" ON "pending_requests" '
                   '("container_name", "resolved_hostname", "destination_port")')
