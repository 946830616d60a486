"""The PostgreSQL store across a server restart (issue 14): a statement outside a transaction
reconnects by itself; a transaction cut by the restart fails (its caller says so, nothing half
done), and the next statement works."""

from __future__ import annotations

from collections.abc import Iterator

import peewee
import pytest

from greyproxy.store.db import open_database
from greyproxy.store.migrate import apply_migrations
from greyproxy.store.models import Rule
from greyproxy.timeutil import utcnow
from tests.pgcluster import PgCluster, pg_bin


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed")
    cluster = PgCluster().init()
    yield cluster
    cluster.destroy()


def add(host: str) -> None:
    Rule.create(container_pattern="c", destination_pattern=host, port_pattern="*", action="allow",
                created_at=utcnow())


def test_reconnects_after_a_restart_and_loses_no_committed_row(own_cluster, tmp_path):
    db = open_database(own_cluster.fresh_url(), tmp_path / "unused.db")
    try:
        apply_migrations(db)
        add("before.example")
        own_cluster.restart()
        add("after.example")  # outside a transaction: retried once on a new connection
        with pytest.raises(peewee.DatabaseError), db.atomic():
            add("inside.example")
            own_cluster.restart()
            add("inside-2.example")  # the transaction is gone with the old connection
        hosts = {r.destination_pattern for r in Rule.select()}
        assert {"before.example", "after.example"} <= hosts
        assert not hosts & {"inside.example", "inside-2.example"}  # all or nothing
    finally:
        db.close()


def test_a_bad_url_is_a_clear_error_naming_no_password(tmp_path):
    from greyproxy.store.db import StoreError

    with pytest.raises(StoreError) as caught:
        open_database("postgresql://u:hunter2@127.0.0.1:1/none?connect_timeout=1", tmp_path / "x.db")
    assert "hunter2" not in str(caught.value) and "postgresql://u@127.0.0.1:1/none" in str(caught.value)
    with pytest.raises(ValueError):
        open_database("mysql://u@h/db", tmp_path / "x.db")
