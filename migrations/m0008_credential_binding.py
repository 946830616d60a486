"""Issue 12 (D31): global credentials may be bound to containers (`containers_json`, a JSON
list of container patterns; empty = any container), and stored value previews are cut to the
current rule (at most 4 characters, nothing for values under 12).

The migration cannot decrypt values (the key is a file in the data dir, not in the database),
so it turns every preview of the older form (first 6 + `***` + last 3) into `***`; at start,
`CredentialService.load` recomputes each preview from its decrypted value (`sk-p***`).
Runs on SQLite and PostgreSQL (peewee's schema migrator).
"""

import peewee
from playhouse.migrate import SchemaMigrator, migrate


def mask_stored_preview(preview: str) -> str:
    """As at version 8 (frozen here, like the schema): a preview already in the current form
    (`***`, or 4 characters then `***`) stays; any other becomes `***`."""
    head, sep, tail = preview.partition("***")
    if sep and not tail and len(head) in (0, 4):
        return preview
    return "***"


def up(db: peewee.Database) -> None:
    migrate(SchemaMigrator.from_database(db).add_column(
        "global_credentials", "containers_json", peewee.TextField(default="[]")))
    rows = db.execute_sql("SELECT id, value_preview FROM global_credentials").fetchall()
    for cred_id, preview in rows:
        masked = mask_stored_preview(preview or "")
        if masked != preview:
            db.execute_sql(f"UPDATE global_credentials SET value_preview = {db.param} WHERE id = {db.param}",
                           (masked, cred_id))
