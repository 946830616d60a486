"""Database statements run off the gevent hub (docs/design.md, "The data path never waits").

Every proxy listener, the API and the background jobs share one gevent hub. A SQLite statement
run on it freezes all of them for as long as it takes, and a database locked by another process
freezes them for the whole busy timeout. So the database object here hands every statement to
one dedicated OS thread: the calling greenlet waits, the hub keeps serving connections, and
sqlite3 (like psycopg) releases the GIL while the engine works.

One thread and one connection keep statements in the order they were issued, as before. What
the single thread does not give is the old guarantee that a greenlet's statements never
interleave with another's (they now yield), so a greenlet-reentrant lock is held for each
statement and for the whole of a transaction: whoever opens a transaction owns the connection
until it commits or rolls back.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import peewee
from gevent.lock import RLock
from gevent.monkey import get_original
from gevent.threadpool import ThreadPool

log = logging.getLogger("greyproxy.store")

T = TypeVar("T")

# Set while the database thread runs a piece of work: a statement issued from inside it (peewee
# model code run whole in the thread, e.g. a bulk decision) runs there directly. A real
# thread-local, as gevent's monkey-patching would make `threading.local` greenlet-local.
_in_db_thread = get_original("threading", "local")()


class OffHubCursor:
    """Stands in for a DB-API cursor: `execute` runs in the database thread and fetches every
    row there, so reading the result never touches the engine from the hub."""

    def __init__(self, raw: Any, database: OffHubMixin) -> None:
        self._raw: Any = raw
        self._connection = raw.connection  # a cursor for each further execute
        self._database = database
        self._rows: list[tuple[Any, ...]] = []
        self._next = 0
        self.description: Sequence[Any] | None = None
        self.lastrowid: int | None = None
        self.rowcount = -1

    def execute(self, sql: str, params: Sequence[Any] = ()) -> OffHubCursor:
        raw, self._raw = self._raw, None
        connection = self._connection

        def run() -> tuple[list[tuple[Any, ...]], Any, Any, int]:
            cursor = raw if raw is not None else connection.cursor()
            try:
                cursor.execute(sql, params)
                rows = cursor.fetchall() if cursor.description else []
                return rows, cursor.description, cursor.lastrowid, cursor.rowcount
            finally:
                # Closed here, in the database thread. Left to the garbage collector, a cursor
                # is finalized on the hub, where resetting its statement waits for the
                # connection's mutex (held by a statement busy-waiting on a lock) with the GIL
                # held: every greenlet stopped for up to the busy timeout.
                cursor.close()

        self._rows, self.description, self.lastrowid, self.rowcount = self._database.run_in_db(run)
        self._next = 0
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        rows = self._rows[self._next:self._next + size]
        self._next += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        self._rows = []


class ConnectionLock:
    """The connection's greenlet-reentrant lock, which also knows since when it has been held
    (health tells a busy database from a stuck one without waiting for it)."""

    def __init__(self) -> None:
        self._lock = RLock()
        self._depth = 0
        self.held_since: float | None = None  # time.monotonic() of the outermost acquire

    def acquire(self, timeout: float | None = None) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        self._depth += 1
        if self._depth == 1:
            self.held_since = time.monotonic()
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.held_since = None
        self._lock.release()

    def __enter__(self) -> ConnectionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _Owned:
    """A transaction context (peewee's atomic/transaction/savepoint) entered while holding the
    connection's lock, released after it has committed or rolled back."""

    def __init__(self, db: OffHubMixin, inner: Any) -> None:
        self._db = db
        self._lock = db._db_lock
        self._inner = inner

    def __enter__(self) -> Any:
        # Inside the database thread the caller already owns the connection (run_in_db holds it).
        self._locked = not getattr(_in_db_thread, "active", False)
        if self._locked:
            self._lock.acquire()
        outermost = self._db.transaction_depth() == 0  # type: ignore[attr-defined]
        try:
            return self._inner.__enter__()
        except BaseException:
            try:
                if outermost:
                    self._db.undo_interrupted_begin()
            finally:
                if self._locked:
                    self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._inner.__exit__(*exc)
        finally:
            if self._locked:
                self._lock.release()

    def __getattr__(self, name: str) -> Any:  # commit()/rollback() on the context object
        return getattr(self._inner, name)


class OffHubMixin:
    """Mixed in front of a peewee Database class (see `OffHubSqliteDatabase`)."""

    _db_thread: ThreadPool | None
    _db_lock: ConnectionLock

    def _init_off_hub(self) -> None:
        self._db_thread = None  # started on first use, again after close()
        self._db_lock = ConnectionLock()

    def run_in_db(self, work: Callable[[], T]) -> T:
        """Run `work` (which may use the raw connection, `self.connection()`) in the database
        thread, holding the connection; the calling greenlet waits, the hub does not. Driver
        errors come out as peewee's exception classes, as from any statement."""
        if getattr(_in_db_thread, "active", False):  # already there (a statement inside `work`)
            return work()
        context = contextvars.copy_context()  # who acts (the audit's current_actor) goes along

        def in_thread() -> tuple[bool, Any]:
            # The error comes back as a value: raised in the pool, gevent would also report it
            # to the hub's error handler as if it were unexpected.
            _in_db_thread.active = True
            try:
                return True, context.run(work)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling greenlet
                return False, exc
            finally:
                _in_db_thread.active = False

        with self._db_lock:
            if self._db_thread is None:
                self._db_thread = ThreadPool(1)
            running = self._db_thread.spawn(in_thread)
            try:
                ok, value = running.get()
            except BaseException:
                # This greenlet was interrupted (killed, a Timeout) while the thread still runs
                # its statement: the connection stays ours until the statement ends, or the
                # next holder's BEGIN would land inside this transaction.
                _wait_out(running)
                raise
        if ok:
            return value
        with peewee.__exception_wrapper__:
            raise value

    def connection_in_transaction(self) -> bool:
        """Whether the raw connection is inside a transaction (called in the database thread)."""
        return bool(getattr(self.connection(), "in_transaction", False))  # type: ignore[attr-defined]

    def undo_interrupted_begin(self) -> None:
        """After a transaction's start failed: if its BEGIN did run (the greenlet was killed or
        timed out while it waited its turn for the database), roll it back, or every later
        BEGIN on the connection would land inside it ('cannot start a transaction within a
        transaction') and its locks would stay held."""

        def undo() -> None:
            if self.connection_in_transaction():
                self.connection().cursor().execute("ROLLBACK")  # type: ignore[attr-defined]

        try:
            self.run_in_db(undo)
        except Exception:  # noqa: BLE001 - the start's own error is what the caller hears
            log.warning("database: could not roll back an interrupted transaction start", exc_info=True)

    def held_for(self) -> float:
        """How long the statement or transaction now using the connection has held it (0 when
        the connection is free)."""
        since = self._db_lock.held_since
        return 0.0 if since is None else time.monotonic() - since

    def cursor(self, named_cursor: Any = None) -> OffHubCursor:
        return OffHubCursor(super().cursor(), self)  # type: ignore[misc]

    def atomic(self, *args: Any, **kwargs: Any) -> _Owned:
        return _Owned(self, super().atomic(*args, **kwargs))  # type: ignore[misc]

    def transaction(self, *args: Any, **kwargs: Any) -> _Owned:
        return _Owned(self, super().transaction(*args, **kwargs))  # type: ignore[misc]

    def savepoint(self) -> _Owned:
        return _Owned(self, super().savepoint())  # type: ignore[misc]

    def manual_commit(self) -> _Owned:
        return _Owned(self, super().manual_commit())  # type: ignore[misc]

    def close(self) -> bool:
        with self._db_lock:
            closed = super().close()  # type: ignore[misc]
            if self._db_thread is not None:
                self._db_thread.kill()
                self._db_thread = None
        return closed


# Connections inherited by a forked worker: never used, and never closed there (closing them
# could touch the parent's session); kept referenced so the garbage collector leaves them be.
_inherited: list[Any] = []


def _wait_out(running: Any) -> None:
    """Wait for work already handed to the database thread, through further interruptions (it
    ends within the busy timeout)."""
    while not running.ready():
        try:
            running.wait()
        except BaseException:  # noqa: BLE001, S112 - the caller re-raises the first one
            continue


def reopen_after_fork(db: peewee.Database) -> None:
    """In a forked child (docs/workers.md): the parent's connection and database thread are not
    the child's. A new database thread and a new connection, the inherited one left alone."""
    state = db._state  # noqa: SLF001 - peewee keeps the connection there
    if state.conn is not None:
        _inherited.append(state.conn)
    state.reset()
    if isinstance(db, OffHubMixin):
        db._db_thread = None  # noqa: SLF001
        db._db_lock = ConnectionLock()  # noqa: SLF001
    db.connect()


def run_in_db(db: peewee.Database, work: Callable[[], T]) -> T:
    """`work` in the database thread when `db` has one, else here (a plain peewee database)."""
    return db.run_in_db(work) if isinstance(db, OffHubMixin) else work()


class OffHubSqliteDatabase(OffHubMixin, peewee.SqliteDatabase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_off_hub()

    def transaction(self, lock_type: str | None = "IMMEDIATE") -> _Owned:  # type: ignore[override]
        # A transaction takes the write lock when it begins. Deferred (SQLite's default), one
        # that reads first cannot write once another process (a worker writing its log rows)
        # has committed since: SQLite answers SQLITE_BUSY at once, without the busy wait, and
        # the change fails. Immediate, it waits its turn (busy_timeout) and then holds it.
        return super().transaction(lock_type)
