"""Database statements run off the gevent hub (store/executor.py): a statement waiting on a
database another process has locked leaves every other greenlet running, and transactions of
two greenlets never mix on the one connection."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gevent
import peewee
import pytest

from greyproxy.store.db import bind, connect_sqlite
from greyproxy.store.executor import run_in_db
from greyproxy.store.migrate import apply_migrations
from greyproxy.store.models import Rule
from greyproxy.timeutil import utcnow


@pytest.fixture()
def db(tmp_path: Path):
    database = connect_sqlite(tmp_path / "t.db")
    bind(database)
    apply_migrations(database)
    yield database
    database.close()


def _rule(pattern: str) -> dict:
    return {"container_pattern": "*", "destination_pattern": pattern, "port_pattern": "443",
            "action": "allow", "created_by": "test", "created_at": utcnow()}


def _ticks(stop: gevent.event.Event, gaps: list[float]) -> None:
    last = time.monotonic()
    while not stop.is_set():
        gevent.sleep(0.005)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


def test_a_write_waiting_on_a_locked_database_does_not_stop_the_hub(db, tmp_path):
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    stop, gaps = gevent.event.Event(), []
    ticker = gevent.spawn(_ticks, stop, gaps)
    gevent.sleep(0.02)
    releaser = gevent.spawn_later(1.0, other.execute, "COMMIT")
    started = time.monotonic()
    Rule.create(**_rule("a.example.com"))  # waits (busy timeout) until the lock goes
    waited = time.monotonic() - started
    stop.set()
    ticker.join()
    releaser.join()
    other.close()
    assert waited >= 0.9  # it really waited on the lock
    assert max(gaps) < 0.2, f"the hub stalled {max(gaps):.3f} s while a statement waited"


def test_transactions_of_two_greenlets_do_not_mix(db):
    """A greenlet that opened a transaction owns the connection until it ends: another
    greenlet's statement waits, and is not rolled back with the first one's."""

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), db.atomic():
            Rule.create(**_rule("rolled-back.example.com"))
            gevent.sleep(0.05)  # the other greenlet runs meanwhile
            raise RuntimeError("abort")

    def committed() -> None:
        gevent.sleep(0.01)
        Rule.create(**_rule("kept.example.com"))

    gevent.joinall([gevent.spawn(rolled_back), gevent.spawn(committed)], raise_error=True)
    made = Rule.select().where(Rule.destination_pattern.endswith(".example.com"))
    assert [r.destination_pattern for r in made] == ["kept.example.com"]


def test_errors_come_back_as_peewee_errors_and_the_connection_stays_usable(db):
    with pytest.raises(peewee.OperationalError):
        db.execute_sql("SELECT * FROM no_such_table")
    assert run_in_db(db, lambda: db.connection().execute("SELECT 41 + 1").fetchone()[0]) == 42
    assert db.execute_sql("SELECT 1").fetchone() == (1,)


def test_a_greenlet_killed_mid_statement_keeps_the_connection_until_it_ends(db, tmp_path):
    """A transaction's greenlet killed while its statement waits in the database thread: the
    next greenlet's transaction must not start inside the first (SQLite: 'cannot start a
    transaction within a transaction'), and the killed one's rows are rolled back."""
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")

    def doomed() -> None:
        with db.atomic():
            Rule.create(**_rule("doomed.example.com"))  # waits on the lock in the database thread

    victim = gevent.spawn(doomed)
    gevent.sleep(0.2)
    victim.kill(block=False)  # while its INSERT still waits
    gevent.spawn_later(0.3, other.execute, "COMMIT")
    with db.atomic():
        Rule.create(**_rule("next.example.com"))
    victim.join(timeout=10)
    other.close()
    patterns = {r.destination_pattern for r in Rule.select()}
    assert "next.example.com" in patterns
    assert "doomed.example.com" not in patterns


def test_a_transaction_that_reads_first_still_writes_when_another_process_wrote_meanwhile(db, tmp_path):
    """WAL: a transaction that began with a read cannot write once another connection has
    committed since (SQLITE_BUSY at once, without the busy wait). With workers writing log rows
    all the time, a rule's create (a read, then the insert) failed so as a 503. A transaction
    takes the write lock when it begins, so the other writer waits for it instead."""
    db.execute_sql("CREATE TABLE scratch (x TEXT)")
    other = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys\n"
        "sys.stdin.readline()\n"  # told when the transaction below has read
        f"c = sqlite3.connect({str(tmp_path / 't.db')!r}, timeout=10)\n"
        "c.execute(\"INSERT INTO scratch VALUES ('theirs')\")\n"
        "c.commit()\n")], stdin=subprocess.PIPE, text=True)
    try:
        with db.atomic():
            assert db.execute_sql("SELECT count(*) FROM scratch").fetchone() == (0,)
            other.stdin.write("go\n")
            other.stdin.flush()
            time.sleep(0.5)  # the other process writes now, unless it must wait for this transaction
            db.execute_sql("INSERT INTO scratch VALUES ('mine')")
        assert other.wait(timeout=15) == 0
    finally:
        other.kill()
    assert sorted(db.execute_sql("SELECT x FROM scratch").fetchall()) == [("mine",), ("theirs",)]
