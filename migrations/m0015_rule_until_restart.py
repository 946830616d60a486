"""Issue 17: a decision may last "until restart". Such a rule is stored with rule_type
'until_restart' (no expiry) and removed when greyproxy starts; the CHECK on `rules.rule_type`
gains that value.

SQLite cannot alter a CHECK in place: the table is rebuilt (same rows, same ids, the
AUTOINCREMENT counter kept, its indexes made again as they were). PostgreSQL drops and re-adds
the constraint. Runs on SQLite and PostgreSQL.
"""

import peewee

OLD_CHECK = "CHECK (rule_type IN ('permanent', 'temporary'))"
NEW_CHECK = "CHECK (rule_type IN ('permanent', 'temporary', 'until_restart'))"


def _sqlite_rebuild(db: peewee.Database) -> None:
    (create,) = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'rules'").fetchone()
    if NEW_CHECK in create:
        return
    if OLD_CHECK not in create:
        raise RuntimeError("migration 0015: the rules table is not in the form this migration knows")
    indexes = [sql for (sql,) in db.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rules' AND sql IS NOT NULL").fetchall()]
    new_sql = create.replace(OLD_CHECK, NEW_CHECK, 1).replace('CREATE TABLE "rules"', 'CREATE TABLE "rules__new"', 1)
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
    for sql in indexes:
        db.execute_sql(sql)


def up(db: peewee.Database) -> None:
    if isinstance(db, peewee.SqliteDatabase):
        _sqlite_rebuild(db)
        return
    db.execute_sql("ALTER TABLE rules DROP CONSTRAINT IF EXISTS rules_rule_type_check")
    db.execute_sql(f"ALTER TABLE rules ADD CONSTRAINT rules_rule_type_check {NEW_CHECK}")
