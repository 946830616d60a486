"""Run a test module over both store backends: `from tests.backends import database_url`
(servers from gp_factory) or `backend_db` (a `db` fixture, in process) makes every test there
run on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from greyproxy.store.db import open_database
from greyproxy.store.migrate import apply_migrations

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").fresh_url()


def open_store(url: str | None, tmp_path: Path) -> peewee.Database:
    """A migrated store bound to the models: SQLite in tmp_path, or the PostgreSQL at url."""
    db = open_database(url, tmp_path / "t.db")
    apply_migrations(db)
    return db


@pytest.fixture(params=BACKENDS, name="db")
def backend_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[peewee.Database]:
    """`from tests.backends import backend_db` gives a module a `db` fixture (a migrated, bound
    store) on SQLite and on a fresh PostgreSQL database."""
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_cluster").fresh_url()
    db = open_store(url, tmp_path)
    yield db
    db.close()
