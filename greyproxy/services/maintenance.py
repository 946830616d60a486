"""Background upkeep of stored traffic: the retro-active header redaction job, the
retro-active secret scrubbing job and retention.

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
from greyproxy.credentials.placeholders import mask_stored_preview, value_preview
from greyproxy.events import Bus
from greyproxy.policy.durations import DurationError, parse_go_duration
from greyproxy.services.audit import canonical, entry_hash
from greyproxy.services.rules import Conflict
from greyproxy.store.models import (
    AuditEntry,
    Conversation,
    HttpTransaction,
    MiddlewareEvent,
    PendingRequest,
    Recording,
    RequestLog,
    Turn,
)
from greyproxy.timeutil import utcnow

log = logging.getLogger("greyproxy.maintenance")

PROGRESS_EVENT = "maintenance.progress"
REDACT_BATCH = 500
DELETE_BATCH = 2000
MAX_DELETE_BATCHES = 100_000  # 200 M rows per table and run: a bound, not an expectation
SIZE_BATCH = 500
ROW_OVERHEAD = 200  # bytes a transaction row takes besides its text and blob columns (estimate)
RETENTION_INTERVAL = 600.0  # seconds between retention runs


# -- background jobs ---------------------------------------------------------------------------
class BackgroundJob:
    """One run at a time in a greenlet, progress as `maintenance.progress` events and `status`."""

    TASK = ""
    WHAT = ""

    def __init__(self, db: peewee.Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.greenlet: gevent.Greenlet | None = None
        self.status: dict[str, Any] = {"task": self.TASK, "processed": 0, "total": 0, "done": True, "running": False}

    @property
    def running(self) -> bool:
        return self.greenlet is not None and not self.greenlet.dead

    def start(self) -> None:
        if self.running:
            raise Conflict(f"{self.WHAT} is already running")
        self.status = {"task": self.TASK, "processed": 0, "total": 0, "done": False, "running": True}
        self.greenlet = gevent.spawn(self._run_safely)

    def _progress(self, **fields: Any) -> None:
        self.status.update(fields)
        self.bus.publish(PROGRESS_EVENT, {k: v for k, v in self.status.items() if k != "running"})

    def _run_safely(self) -> None:
        try:
            changed = self.run()
            log.info("%s done: %s of %s rows changed", self.WHAT, changed, self.status["total"])
        except Exception as exc:  # reported to whoever watches, never a dead job that looks alive
            log.exception("%s failed", self.WHAT)
            self.status["running"] = False
            self._progress(done=True, error=str(exc))

    def run(self) -> int:
        raise NotImplementedError


# -- retro-active header redaction -------------------------------------------------------------
class RedactionJob(BackgroundJob):
    """`POST /api/maintenance/redact-headers`: rewrite every stored transaction's headers (and
    URL) with the current redaction patterns. Idempotent; one run at a time."""

    TASK = "redact_headers"
    WHAT = "header redaction"

    def __init__(self, db: peewee.Database, bus: Bus, redactor: Callable[[], Redactor]) -> None:
        super().__init__(db, bus)
        self.redactor = redactor

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


# -- retro-active secret scrubbing -------------------------------------------------------
SCRUB_ROWS = 200  # rows of one table per batch
SCRUB_BYTES = 8 * 1024 * 1024  # body bytes per batch of transactions (at least one row)
LOG_COLUMNS = ("container_name", "container_id", "destination_host", "resolved_hostname", "method", "reason",
               "would", "mitm_skip_reason", "dialed_ip")
MIDDLEWARE_COLUMNS = ("middleware", "reason", "tags", "container_name", "destination_host", "method", "url")
CONVERSATION_COLUMNS = ("model", "client_name", "system_prompt", "system_prompt_summary", "first_prompt",
                        "metadata_json", "incomplete_reason")
TURN_COLUMNS = ("user_prompt", "steps_json", "model")


class ScrubJob(BackgroundJob):
    """`POST /api/maintenance/scrub-secrets`: what the capture-time scrubbing (capture/scrub.py)
    does, applied to what is already stored, for installs that captured echoes before it:

    - transactions and frames: every vault value, and each row's own request values the
      current redaction would remove (recovered from its stored request headers and URL when
      they were stored raw), in URL, headers (any name) and bodies; headers and URL also get
      the current redaction, as `redact-headers` would;
    - request logs, middleware events, conversations and turns: every vault value;
    - audit entries: every vault value, and `value_preview` fields cut to the current rule
      (recomputed from the value while the credential exists). Rewriting an entry changes its
      hash, so the chain is recomputed from the first rewritten entry on, in one transaction,
      and a `maintenance.scrub` entry records it with the head hash before the rewrite: the
      chain verifies, and the rewrite itself is on record.

    Batches are one short transaction each (SCRUB_ROWS rows, for transactions also at most
    SCRUB_BYTES of bodies) with a yield between them, in a greenlet, never on a connection's path.
    On SQLite the replaced content is also gone from disk (secure_delete, then a WAL checkpoint).
    Idempotent: a second run changes nothing."""

    TASK = "scrub_secrets"
    WHAT = "secret scrubbing"

    def __init__(self, db: peewee.Database, bus: Bus, redactor: Callable[[], Redactor], scrubber: Any,
                 vault: Any, audit: Any) -> None:
        super().__init__(db, bus)
        self.redactor = redactor
        self.scrubber = scrubber
        self.vault = vault
        self.audit = audit
        self.actor = "system"

    def start(self, actor: str = "system") -> None:
        self.actor = actor
        super().start()

    def run(self) -> int:
        # SQLite keeps what a rewrite replaced: in the WAL until a checkpoint, and in the freed
        # space of pages. secure_delete zeroes freed content while the job runs; the checkpoint
        # at the end moves the rewritten pages into the database file and empties the WAL.
        sqlite = isinstance(self.db, peewee.SqliteDatabase)
        before = self.db.execute_sql("PRAGMA secure_delete").fetchone()[0] if sqlite else None
        if sqlite:
            self.db.execute_sql("PRAGMA secure_delete = 1")
        try:
            return self._run()
        finally:
            if sqlite:
                self.db.execute_sql(f"PRAGMA secure_delete = {int(before or 0)}")
                try:
                    self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                except peewee.DatabaseError:  # a reader still holds the WAL: the next checkpoint will do
                    log.warning("secret scrubbing: the WAL checkpoint did not complete")

    def _run(self) -> int:
        tables: list[tuple[type[peewee.Model], tuple[str, ...]]] = [
            (RequestLog, LOG_COLUMNS), (MiddlewareEvent, MIDDLEWARE_COLUMNS),
            (Conversation, CONVERSATION_COLUMNS), (Turn, TURN_COLUMNS),
        ]
        everywhere = self.scrubber.everywhere()
        max_txn = HttpTransaction.select(peewee.fn.MAX(HttpTransaction.id)).scalar() or 0
        total = HttpTransaction.select().where(HttpTransaction.id <= max_txn).count()
        if everywhere is not None:
            total += sum(model.select().count() for model, _ in tables)
        total += AuditEntry.select().count()
        self._progress(total=total, processed=0)
        changed: dict[str, int] = {}
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self._progress(processed=done)
            gevent.sleep(0)

        changed["http_transactions"] = self._transactions(max_txn, advance)
        for model, columns in tables:
            if everywhere is not None:
                changed[model._meta.table_name] = _scrub_table(self.db, model, columns, everywhere, advance)
        changed["audit_log"] = self._audit(everywhere, advance)
        self.status["running"] = False
        self._progress(processed=done, done=True, changed=changed)
        return sum(changed.values())

    # -- transactions ---------------------------------------------------------------------
    def _transactions(self, max_id: int, advance: Callable[[int], None]) -> int:
        redactor = self.redactor()
        size = (peewee.fn.COALESCE(peewee.fn.LENGTH(HttpTransaction.request_body), 0)
                + peewee.fn.COALESCE(peewee.fn.LENGTH(HttpTransaction.response_body), 0))
        last_id, changed = 0, 0
        while True:
            sized = list(HttpTransaction.select(HttpTransaction.id, size.alias("bytes"))
                         .where((HttpTransaction.id > last_id) & (HttpTransaction.id <= max_id))
                         .order_by(HttpTransaction.id).limit(SCRUB_ROWS).tuples())
            if not sized:
                return changed
            ids, budget = [], 0
            for row_id, nbytes in sized:
                if ids and budget + (nbytes or 0) > SCRUB_BYTES:
                    break
                ids.append(row_id)
                budget += nbytes or 0
            rows = list(HttpTransaction.select(
                HttpTransaction.id, HttpTransaction.url, HttpTransaction.request_headers,
                HttpTransaction.response_headers, HttpTransaction.request_body, HttpTransaction.response_body,
                HttpTransaction.request_body_truncated, HttpTransaction.response_body_truncated,
            ).where(HttpTransaction.id.in_(ids)).order_by(HttpTransaction.id))
            with self.db.atomic():
                for row in rows:
                    changes = _scrubbed_transaction(row, redactor, self.scrubber)
                    if changes:
                        HttpTransaction.update(changes).where(HttpTransaction.id == row.id).execute()
                        changed += 1
            last_id = ids[-1]
            advance(len(ids))

    # -- audit ----------------------------------------------------------------------------
    def _preview(self, data: Any) -> Any:
        """`value_preview` fields cut to the current rule (from the value when it is known)."""
        if isinstance(data, list):
            return [self._preview(v) for v in data]
        if not isinstance(data, dict):
            return data
        out = {k: self._preview(v) for k, v in data.items()}
        preview = out.get("value_preview")
        if isinstance(preview, str):
            secret = self.vault.get(out.get("placeholder")) if isinstance(out.get("placeholder"), str) else None
            out["value_preview"] = value_preview(secret.value) if secret is not None else mask_stored_preview(preview)
        return out

    def _audit_text(self, text: str | None, everywhere: Any) -> str | None:
        if not text:
            return text
        if "value_preview" in text:
            data = parse_json_column(text)
            if data is not None:
                fixed = self._preview(data)
                if fixed != data:
                    text = canonical(fixed)
        return everywhere(text) if everywhere is not None and text else text

    def _audit(self, everywhere: Any, advance: Callable[[int], None]) -> int:
        """Rewrite and re-chain in one transaction with no yield: no entry can be recorded
        between the rewrite and the new head (AuditLog keeps the head in memory)."""
        rows = list(AuditEntry.select().order_by(AuditEntry.id))
        first = None
        rewritten = 0
        for i, row in enumerate(rows):
            fields = {
                "target": everywhere(row.target) if everywhere is not None and row.target else row.target,
                "before": self._audit_text(row.before, everywhere),
                "after": self._audit_text(row.after, everywhere),
            }
            if any(getattr(row, k) != v for k, v in fields.items()):
                for k, v in fields.items():
                    setattr(row, k, v)
                rewritten += 1
                if first is None:
                    first = i
        if first is None:
            advance(len(rows))
            return 0
        old_head = rows[-1].hash
        prev = rows[first - 1].hash if first > 0 else ""
        with self.db.atomic():
            for row in rows[first:]:
                digest = entry_hash(prev, row.timestamp, row.actor, row.kind, row.target, row.before, row.after)
                AuditEntry.update(target=row.target, before=row.before, after=row.after, prev_hash=prev,
                                  hash=digest).where(AuditEntry.id == row.id).execute()
                prev = digest
            self.audit.resume(prev)
            self.audit.record("maintenance.scrub", "audit_log", None,
                              {"rewritten_entries": rewritten, "rechained_from": rows[first].id,
                               "previous_head_hash": old_head}, actor=self.actor)
        advance(len(rows))
        return rewritten


def _header_pairs(stored: Any) -> list[tuple[str, str]]:
    if not isinstance(stored, dict):
        return []
    return [(str(k), str(v)) for k, vs in stored.items() for v in (vs if isinstance(vs, list) else [vs])]


def _scrubbed_transaction(row: HttpTransaction, redactor: Redactor, scrubber: Any) -> dict[Any, Any]:
    request = parse_json_column(row.request_headers)
    # Values stored raw before the current patterns covered them are this row's own secrets.
    scrub = scrubber.for_exchange(redactor.redacted_values(_header_pairs(request), row.url or ""))
    changes: dict[Any, Any] = {}
    url = redactor.url(row.url or "")
    if scrub is not None:
        url = scrub(url)
    if url != row.url:
        changes[HttpTransaction.url] = url
    for field, stored in ((HttpTransaction.request_headers, request),
                          (HttpTransaction.response_headers, parse_json_column(row.response_headers))):
        if not isinstance(stored, dict):
            continue
        new = redactor.header_map(stored)
        if scrub is not None:
            new = scrub.headers(new)
        if new != stored:
            changes[field] = json.dumps(new)
    if scrub is not None:
        for field, cut in ((HttpTransaction.request_body, row.request_body_truncated),
                           (HttpTransaction.response_body, row.response_body_truncated)):
            body = getattr(row, field.name)
            if body is None:
                continue
            body = bytes(body) if isinstance(body, memoryview | bytearray) else body
            new_body = scrub.data(body, bool(cut))
            if new_body != body:
                changes[field] = new_body
    return changes


def _scrub_table(db: peewee.Database, model: type[peewee.Model], columns: tuple[str, ...], scrub: Any,
                 advance: Callable[[int], None]) -> int:
    """Every vault value out of the text `columns` of `model`, in primary-key order batches."""
    pk = model._meta.primary_key
    fields = [getattr(model, c) for c in columns]
    last: Any = None
    changed = 0
    while True:
        query = model.select(pk, *fields).order_by(pk).limit(SCRUB_ROWS * 10)
        if last is not None:
            query = query.where(pk > last)
        rows = list(query)
        if not rows:
            return changed
        with db.atomic():
            for row in rows:
                updates = {}
                for f in fields:
                    value = getattr(row, f.name)
                    if isinstance(value, str) and value:
                        new = scrub(value)
                        if new != value:
                            updates[f] = new
                if updates:
                    model.update(updates).where(pk == getattr(row, pk.name)).execute()
                    changed += 1
        last = getattr(rows[-1], pk.name)
        advance(len(rows))


# -- retention ---------------------------------------------------------------------------
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
    """Deletes what the retention settings say is too old, and the oldest transactions while the database is over
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
            # An imported HAR keeps its own (old) times: its rows count from the import instead.
            fresh_imports = Recording.select(Recording.id).where((Recording.source == "har")
                                                                 & (Recording.started_at >= cutoff))
            result["deleted_transactions"] = _delete_where(
                HttpTransaction, (HttpTransaction.timestamp < cutoff)
                & (HttpTransaction.recording_id.is_null() | HttpTransaction.recording_id.not_in(fresh_imports)))
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
