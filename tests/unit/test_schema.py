"""The peewee models (store/models.py) and the migrations (migrations/) describe one schema: a
column a model names but no migration creates would fail only at run time, on the first write."""

from __future__ import annotations

from pathlib import Path

from greyproxy.store.db import open_database
from greyproxy.store.migrate import apply_migrations, available
from greyproxy.store.models import ALL_MODELS
from tests.backends import database_url  # noqa: F401 - SQLite and PostgreSQL


def test_every_model_column_exists_after_the_migrations(tmp_path: Path, database_url: str | None) -> None:  # noqa: F811
    db = open_database(database_url, tmp_path / "greyproxy.db")
    assert apply_migrations(db) == [version for version, _ in available()]
    for model in ALL_MODELS:
        table = model._meta.table_name  # noqa: SLF001
        columns = {c.name for c in db.get_columns(table)}
        expected = {f.column_name for f in model._meta.sorted_fields}  # noqa: SLF001
        assert expected <= columns, f"{table}: {sorted(expected - columns)} missing from the migrations"
    assert apply_migrations(db) == []  # and a second start applies nothing
    db.close()
