"""Fleet mode (issue 14): SQLite's `instr(haystack, needle)` (1-based position, 0 when absent),
which some queries use to look inside stored text and bodies without loading them, defined on
PostgreSQL for text and for bytea (a body searched for a text marker). Nothing to do on SQLite.
"""

import peewee

FUNCTIONS = (
    "CREATE OR REPLACE FUNCTION instr(text, text) RETURNS integer "
    "AS 'SELECT strpos($1, $2)' LANGUAGE sql IMMUTABLE",
    "CREATE OR REPLACE FUNCTION instr(bytea, text) RETURNS integer "
    "AS 'SELECT position(convert_to($2, ''UTF8'') in $1)' LANGUAGE sql IMMUTABLE",
)


def up(db: peewee.Database) -> None:
    if isinstance(db, peewee.SqliteDatabase):
        return
    for statement in FUNCTIONS:
        db.execute_sql(statement)
