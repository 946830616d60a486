"""PostgreSQL for fleet mode (docs/fleet.md): several nodes share one database.

The driver is psycopg2 (the `psycopg2-binary` wheel), used blocking and without psycogreen:
like SQLite's, every statement (and the connect) runs in the store's own OS thread
(store/executor.py), on one connection per node, so the gevent hub never waits on the
database and a transaction belongs to the greenlet that opened it. psycogreen would instead
make libpq yield to the hub, which the executor makes unnecessary, and would put every
statement back on the hub's thread. The change notifications that cross nodes use a second
connection of their own, waited on cooperatively (greyproxy/fleet/link.py).

Every call that can wait on the network has a bound: the connect timeout, a statement timeout,
an idle-in-transaction timeout and TCP keepalives (a silent peer is noticed in ~25 s).
"""

from __future__ import annotations

from typing import Any

import peewee
import psycopg2
import psycopg2.extensions

from greyproxy.store.executor import OffHubMixin

CONNECT_TIMEOUT = 5  # seconds
STATEMENT_TIMEOUT_MS = 15_000
IDLE_IN_TRANSACTION_MS = 30_000
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def connect_params(url: str) -> dict[str, Any]:
    """psycopg2 keyword arguments for a `postgresql://` URL (its own parser: every libpq
    parameter in the query string keeps working). Raises ValueError on a malformed URL."""
    try:
        params: dict[str, Any] = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"database.url: {exc}".strip()) from exc
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    for key, value in KEEPALIVES.items():
        params.setdefault(key, value)
    params.setdefault("application_name", "greyproxy")
    options = params.get("options", "")
    params["options"] = (f"{options} -c statement_timeout={STATEMENT_TIMEOUT_MS} "
                         f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c timezone=UTC").strip()
    return params


def safe_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        return "postgresql://(malformed)"
    host, port, name = params.get("host", ""), params.get("port", ""), params.get("dbname", "")
    user = params.get("user")
    return f"postgresql://{user + '@' if user else ''}{host}{':' + port if port else ''}/{name}"


def _bytes(value: Any, cursor: Any) -> bytes | None:
    raw = psycopg2.BINARY(value, cursor)
    return None if raw is None else bytes(raw)


# bytea as bytes (psycopg2 gives memoryview): the code reading blobs is shared with SQLite.
BYTEA_AS_BYTES = psycopg2.extensions.new_type(psycopg2.BINARY.values, "GREYPROXY_BYTEA", _bytes)
BROKEN = (psycopg2.OperationalError, psycopg2.InterfaceError)


class PostgresDatabase(OffHubMixin, peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database with a reconnect: a statement that finds the connection
    broken (the server restarted, a failover) outside a transaction is retried once on a new
    connection; inside a transaction the error reaches the caller (the transaction is lost, and
    the caller's error handling says so), and the next statement reconnects."""

    def __init__(self, url: str) -> None:
        params = connect_params(url)
        self.display = safe_url(url)  # what error messages name (never the password)
        super().__init__(params.pop("dbname", "postgres"), thread_safe=False, **params)
        self._init_off_hub()

    def _connect(self) -> Any:
        def connect() -> Any:
            conn = psycopg2.connect(dbname=self.database, **self.connect_params)
            psycopg2.extensions.register_type(BYTEA_AS_BYTES, conn)
            conn.autocommit = True  # peewee issues BEGIN/COMMIT itself
            return conn

        return self.run_in_db(connect)

    def connection_in_transaction(self) -> bool:
        conn = self._state.conn
        return conn is not None and not self._broken() and (
            conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE)

    def _broken(self) -> bool:
        conn = self._state.conn
        return conn is None or bool(getattr(conn, "closed", 1))

    def _drop(self) -> None:
        conn = self._state.conn
        self._state.reset()
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        try:
            return super().execute_sql(sql, params)
        except (peewee.OperationalError, peewee.InterfaceError):
            if not self._broken() or self.in_transaction():
                raise  # inside a transaction the rollback drops the dead connection (below)
            self._drop()
            if sql.strip().upper() in ("COMMIT", "ROLLBACK"):
                raise
            return super().execute_sql(sql, params)

    def rollback(self) -> None:
        if self._broken():  # nothing to roll back on a dead connection: the server did it
            self._drop()
            return
        try:
            super().rollback()
        except (*BROKEN, peewee.OperationalError, peewee.InterfaceError):  # raw, or as the store thread hands it back
            if not self._broken():
                raise
            self._drop()

    def begin(self, *args: Any, **kwargs: Any) -> None:
        if not self.is_closed() and self._broken():
            self._drop()
        super().begin(*args, **kwargs)


def connect_postgres(url: str) -> PostgresDatabase:
    db = PostgresDatabase(url)
    db.connect()
    return db
