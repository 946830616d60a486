"""Fleet mode (issue 14): which node wrote a log row or captured an exchange. `node_id` on
`request_logs` and `http_transactions` (null for rows written before this version).

Runs on SQLite and PostgreSQL (peewee's schema migrator).
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def up(db: peewee.Database) -> None:
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("request_logs", "node_id", peewee.TextField(null=True)),
        migrator.add_column("http_transactions", "node_id", peewee.TextField(null=True)),
    )
