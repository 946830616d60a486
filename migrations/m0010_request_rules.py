"""Issue 18: request-level rules. `rules` gains `method_pattern` and `path_pattern` ('' = any:
a rule with neither is a connection rule, as before), `action` may be 'hold', and the unique
index covers the two new columns (a hold on `POST /v1/x` and one on `GET /v1/x` for the same
host are two rules).

The CHECK on `action` cannot be altered in place in SQLite: the table is rebuilt (same rows,
same ids, the AUTOINCREMENT counter kept so ids are still never reused). PostgreSQL drops and
re-adds the constraint. Runs on SQLite and PostgreSQL.
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate

OLD_UNIQUE = "rules_container_pattern_destination_pattern_port_pattern_action"
UNIQUE_COLUMNS = ("container_pattern", "destination_pattern", "port_pattern", "action", "method_pattern",
                  "path_pattern")
OLD_CHECK = "CHECK (action IN ('allow', 'deny'))"
NEW_CHECK = "CHECK (action IN ('allow', 'deny', 'hold'))"


def _sqlite_rebuild(db: peewee.Database) -> None:
    """One rebuild that adds the columns, widens the CHECK and makes the new unique index (peewee's
    SQLite migrator would rebuild the table again for each NOT NULL column, losing the counter)."""
    (create,) = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'rules'").fetchone()
    if OLD_CHECK not in create:
        raise RuntimeError("migration 0010: the rules table is not in the form this migration knows")
    new_columns = "\"method_pattern\" TEXT NOT NULL DEFAULT '', \"path_pattern\" TEXT NOT NULL DEFAULT '', "
    new_sql = (create.replace(OLD_CHECK, NEW_CHECK).replace("CHECK (rule_type", new_columns + "CHECK (rule_type", 1)
               .replace('CREATE TABLE "rules"', 'CREATE TABLE "rules__new"', 1))
    columns = [row[1] for row in db.execute_sql('PRAGMA table_info("rules")').fetchall()]
    names = ", ".join(f'"{c}"' for c in columns)
    db.execute_sql(new_sql)
    db.execute_sql(f'INSERT INTO "rules__new" ({names}) SELECT {names} FROM "rules"')
    # Keep the AUTOINCREMENT high-water mark (a deleted rule's id is never handed out again).
    seq = db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = 'rules'").fetchone()
    db.execute_sql('DROP TABLE "rules"')
    db.execute_sql('ALTER TABLE "rules__new" RENAME TO "rules"')
    if seq is not None:
        db.execute_sql("DELETE FROM sqlite_sequence WHERE name IN ('rules__new', 'rules')")
        db.execute_sql("INSERT INTO sqlite_sequence (name, seq) VALUES ('rules', ?)", (seq[0],))
    db.execute_sql('CREATE INDEX "rules_expires_at" ON "rules" ("expires_at")')
    db.execute_sql('CREATE INDEX "rules_session_id" ON "rules" ("session_id")')
    cols = ", ".join(f'"{c}"' for c in UNIQUE_COLUMNS)
    db.execute_sql(f'CREATE UNIQUE INDEX "rules_patterns_action" ON "rules" ({cols})')


def up(db: peewee.Database) -> None:
    if isinstance(db, peewee.SqliteDatabase):
        _sqlite_rebuild(db)
        return
    db.execute_sql("ALTER TABLE rules DROP CONSTRAINT IF EXISTS rules_action_check")
    db.execute_sql(f"ALTER TABLE rules ADD CONSTRAINT rules_action_check {NEW_CHECK}")
    db.execute_sql(f'DROP INDEX IF EXISTS "{OLD_UNIQUE}"')
    migrator = SchemaMigrator.from_database(db)
    migrate(
        migrator.add_column("rules", "method_pattern", peewee.TextField(default="")),
        migrator.add_column("rules", "path_pattern", peewee.TextField(default="")),
        migrator.add_index("rules", UNIQUE_COLUMNS, True),
    )
