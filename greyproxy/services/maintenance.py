"""Background upkeep of stored traffic: the retro-active header redaction job (§9) and
retention (D19).

Both run in greenlets and share the process's single database connection, so every batch is
one short transaction with no cooperative yield inside it, and the loop yields between batches:
the proxy's own writes interleave instead of waiting for the whole job.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import peewee
from gevent.lock import Semaphore

from greyproxy.capture.redact import Redactor
from greyproxy.capture.serialize import parse_json_column
from greyproxy.events import Bus
from greyproxy.policy.durations import DurationError, parse_go_duration
from greyproxy.services.rules import Conflict
from greyproxy.store.models import HttpTransaction, PendingRequest, RequestLog
from greyproxy.timeutil import utcnow

log = logging.getLogger("greyproxy.maintenance")

PROGRESS_EVENT = "maintenance.progress"
REDACT_BATCH = 500
DELETE_BATCH = 2000
MAX_DELETE_BATCHES = 100_000  # 200 M rows per table and run: a bound, not an expectation
SIZE_BATCH = 500
ROW_OVERHEAD = 200  # bytes a transaction row takes besides its text and blob columns (estimate)
RETENTION_INTERVAL = 600.0  # seconds between retention runs


# -- retro-active header redaction -------------------------------------------------------------
class RedactionJob:
    """`POST /api/maintenance/redact-headers`: rewrite every stored transaction's headers (and
    URL) with the current redaction patterns. Idempotent; one run at a time."""

    TASK = "redact_headers"

    def __init__(self, db: peewee.Database, bus: Bus, redactor: Callable[[], Redactor]) -> None:
        self.db = db
        self.bus = bus
        self.redactor = redactor
        self.greenlet: gevent.Greenlet | None = None
        self.status: dict[str, Any] = {"task": self.TASK, "processed": 0, "total": 0, "done": True, "running": False}

    @property
    def running(self) -> bool:
        return self.greenlet is not None and not self.greenlet.dead

    def start(self) -> None:
        if self.running:
            raise Conflict("header redaction is already running")
        self.status = {"task": self.TASK, "processed": 0, "total": 0, "done": False, "running": True}
        self.greenlet = gevent.spawn(self._run_safely)

    def _progress(self, **fields: Any) -> None:
        self.status.update(fields)
        self.bus.publish(PROGRESS_EVENT, {k: v for k, v in self.status.items() if k != "running"})

    def _run_safely(self) -> None:
        try:
            changed = self.run()
            log.info("header redaction done: %s of %s rows changed", changed, self.status["total"])
        except Exception as exc:  # reported to whoever watches, never a dead job that looks alive
            log.exception("header redaction failed")
            self.status["running"] = False
            self._progress(done=True, error=str(exc))

    def run(self) -> int:
        """Redact in id order, REDACT_BATCH rows per transaction; returns the rows changed."""
        redactor = self.redactor()
        max_id = HttpTransaction.select(peewee.fn.MAX(HttpTransaction.id)).scalar() or 0
        total = HttpTransaction.select().where(HttpTransaction.id <= max_id).count()
        self._progress(total=total, processed=0)
        last_id, processed, changed = 0, 0, 0
        # Ids only grow and each round moves past the last one: the bound is never the exit.
        for _ in range(total // REDACT_BATCH + 2):
            rows = list(
                HttpTransaction.select(
                    HttpTransaction.id, HttpTransaction.url, HttpTransaction.request_headers,
                    HttpTransaction.response_headers,
                )
                .where((HttpTransaction.id > last_id) & (HttpTransaction.id <= max_id))
                .order_by(HttpTransaction.id)
                .limit(REDACT_BATCH)
            )
            if not rows:
                break
            with self.db.atomic():
                for row in rows:
                    changes = _redacted_columns(row, redactor)
                    if changes:
                        HttpTransaction.update(changes).where(HttpTransaction.id == row.id).execute()
                        changed += 1
            processed += len(rows)
            last_id = rows[-1].id
            self._progress(processed=processed)
            gevent.sleep(0)
        self.status["running"] = False
        self._progress(processed=processed, done=True)
        return changed


def _redacted_columns(row: HttpTransaction, redactor: Redactor) -> dict[Any, Any]:
    changes: dict[Any, Any] = {}
    for field in (HttpTransaction.request_headers, HttpTransaction.response_headers):
        text = getattr(row, field.name)
        stored = parse_json_column(text)
        if isinstance(stored, dict):
            redacted = redactor.header_map(stored)
            if redacted != stored:  # only rows that change are written: a re-run rewrites nothing
                changes[field] = json.dumps(redacted)
    url = redactor.url(row.url)
    if url != row.url:
        changes[HttpTransaction.url] = url
    return changes


# -- retention (D19) ---------------------------------------------------------------------------
def _positive_or_off(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
        raise ValueError(f"'retention.{key}' must be a number >= 0 (0 or null = keep forever)")
    return float(value) or None


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    logs_days: float | None = 30
    transactions_days: float | None = 7
    max_db_mb: float | None = 2048
    pending_ttl: float | None = 7 * 86400  # seconds

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> RetentionPolicy:
        """From `retention:` in the YAML; ValueError naming the key when a value is bad."""
        ttl_text = raw.get("pending_ttl")
        ttl: float | None = None
        if ttl_text not in (None, "", 0, "0"):
            try:
                ttl = parse_go_duration(str(ttl_text))
            except DurationError as exc:
                raise ValueError(f"'retention.pending_ttl': {exc}") from None
        return cls(
            logs_days=_positive_or_off(raw, "logs_days"),
            transactions_days=_positive_or_off(raw, "transactions_days"),
            max_db_mb=_positive_or_off(raw, "max_db_mb"),
            pending_ttl=ttl or None,
        )


def _delete_where(model: type[peewee.Model], condition: Any) -> int:
    """DELETE in batches of DELETE_BATCH rows, yielding between them."""
    deleted = 0
    for _ in range(MAX_DELETE_BATCHES):
        ids = model.select(model.id).where(condition).order_by(model.id).limit(DELETE_BATCH)
        n = model.delete().where(model.id.in_(ids)).execute()
        deleted += n
        if n < DELETE_BATCH:
            break
        gevent.sleep(0)
    return deleted


def used_bytes(db: peewee.Database) -> int | None:
    """Bytes of the SQLite database in use. Deleting rows frees pages for reuse without shrinking
    the file, so the file's size would never come down; pages in use do."""
    if not isinstance(db, peewee.SqliteDatabase):
        return None
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    free = db.execute_sql("PRAGMA freelist_count").fetchone()[0]
    size = db.execute_sql("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


class Retention:
    """Deletes what D19 says is too old, and the oldest transactions while the database is over
    `max_db_mb`; every RETENTION_INTERVAL seconds and once at start."""

    def __init__(self, db: peewee.Database, bus: Bus, policy: RetentionPolicy,
                 interval: float = RETENTION_INTERVAL) -> None:
        self.db = db
        self.bus = bus
        self.policy = policy
        self.interval = interval
        self._lock = Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _loop(self) -> None:
        while True:
            try:
                self.prune()
            except Exception:  # a failed run is retried at the next interval
                log.exception("retention: prune failed")
            gevent.sleep(self.interval)

    def prune(self, now: dt.datetime | None = None) -> dict[str, Any]:
        with self._lock:
            result = self._prune(now or utcnow())
        self.last = result
        if any(v for k, v in result.items() if k.startswith("deleted_")):
            log.info("retention: %s", result)
            self.bus.publish(PROGRESS_EVENT, {"task": "retention", "done": True, **result})
        return result

    def _prune(self, now: dt.datetime) -> dict[str, Any]:
        p = self.policy
        result: dict[str, Any] = {"deleted_request_logs": 0, "deleted_transactions": 0,
                                  "deleted_pending": 0, "deleted_transactions_for_size": 0}
        if p.logs_days:
            cutoff = now - dt.timedelta(days=p.logs_days)
            result["deleted_request_logs"] = _delete_where(RequestLog, RequestLog.timestamp < cutoff)
        if p.transactions_days:
            cutoff = now - dt.timedelta(days=p.transactions_days)
            result["deleted_transactions"] = _delete_where(HttpTransaction, HttpTransaction.timestamp < cutoff)
        if p.pending_ttl:
            result["deleted_pending"] = self._prune_pending(now - dt.timedelta(seconds=p.pending_ttl))
        if p.max_db_mb:
            result["deleted_transactions_for_size"] = self._prune_for_size(int(p.max_db_mb * 1024 * 1024))
        used = used_bytes(self.db)
        result["db_used_mb"] = round(used / (1024 * 1024), 2) if used is not None else None
        return result

    def _prune_pending(self, cutoff: dt.datetime) -> int:
        deleted = 0
        for _ in range(MAX_DELETE_BATCHES):
            ids = [r.id for r in PendingRequest.select(PendingRequest.id)
                   .where(PendingRequest.last_seen < cutoff).limit(DELETE_BATCH)]
            if not ids:
                break
            PendingRequest.delete().where(PendingRequest.id.in_(ids)).execute()
            deleted += len(ids)
            for pending_id in ids:
                self.bus.publish("pending_request.dismissed", {"pending_id": pending_id, "reason": "expired"})
            gevent.sleep(0)
        return deleted

    def _prune_for_size(self, limit_bytes: int) -> int:
        """Delete the oldest transactions, about as many bytes as the database is over."""
        deleted = 0
        for _ in range(MAX_DELETE_BATCHES):
            used = used_bytes(self.db)
            if used is None or used <= limit_bytes:
                break
            ids = _oldest_covering(used - limit_bytes)
            if not ids:
                log.warning("retention: database uses more than max_db_mb with no transactions left to delete")
                break
            deleted += HttpTransaction.delete().where(HttpTransaction.id.in_(ids)).execute()
            gevent.sleep(0)
        return deleted


def _oldest_covering(excess: int) -> list[int]:
    """Ids of the oldest transactions whose stored size adds up to `excess` bytes (at most
    SIZE_BATCH rows: the caller measures again and comes back for more)."""
    size = ROW_OVERHEAD
    for column in (HttpTransaction.url, HttpTransaction.request_headers, HttpTransaction.response_headers,
                   HttpTransaction.request_body, HttpTransaction.response_body):
        size = size + peewee.fn.COALESCE(peewee.fn.LENGTH(column), 0)
    rows = HttpTransaction.select(HttpTransaction.id, size.alias("bytes")).order_by(HttpTransaction.id).limit(SIZE_BATCH)
    ids, total = [], 0
    for row in rows.objects():
        ids.append(row.id)
        total += row.bytes
        if total >= excess:
            break
    return ids
