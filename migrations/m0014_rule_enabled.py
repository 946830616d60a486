"""Issue 17: a rule can be switched off without being deleted. `rules.enabled` (true for every
existing rule); a disabled rule stays listed, keeps its id, hits and audit history, and is left
out of the policy index until it is enabled again.

A plain ADD COLUMN with a default (no table rebuild, the AUTOINCREMENT counter untouched). Runs on
SQLite and PostgreSQL.
"""

import peewee


def up(db: peewee.Database) -> None:
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql('ALTER TABLE "rules" ADD COLUMN IF NOT EXISTS "enabled" BOOLEAN NOT NULL DEFAULT TRUE')
        return
    columns = [row[1] for row in db.execute_sql('PRAGMA table_info("rules")').fetchall()]
    if "enabled" not in columns:
        db.execute_sql('ALTER TABLE "rules" ADD COLUMN "enabled" INTEGER NOT NULL DEFAULT 1')
