"""Run a test module over both store backends: `from tests.backends import database_url`
(a fixture) makes every test there run on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import pytest

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_cluster").fresh_url()
