"""The store writer: every write the proxy path asks for happens here, in batches, so a
connection never waits on SQL. A crash loses at most one batch interval of log rows."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
import peewee
from gevent.event import Event
from gevent.lock import RLock

from greyproxy.store.bulk import insert_rows
from greyproxy.store.db import db_path, describe
from greyproxy.store.dnscache import DnsRow, prune_dns_cache, save_dns_cache
from greyproxy.store.models import HttpTransaction, MiddlewareEvent, RequestLog
from greyproxy.store.records import Attempt, merge_attempts
from greyproxy.timeutil import utcnow

log = logging.getLogger("greyproxy.store")

MAX_QUEUED_LOGS = 200_000  # beyond this the oldest rows are dropped (and counted), memory stays bounded
BATCH_ROWS = 500
TRANSACTION_DELAY = 0.25  # seconds: how long a captured exchange may wait before it is written
MAX_QUEUED_DNS = 50_000  # distinct (client, ip) rows waiting; beyond this new ones are dropped
DNS_PRUNE_SECONDS = 60.0  # how often expired dns_cache rows are deleted


class StoreWriter:
    def __init__(self, db: peewee.Database, record_attempt: Callable[[Attempt], None],
                 touch_used: Callable[[set[int], dt.datetime], None], interval: float = 1.0):
        """`record_attempt` and `touch_used` are the services' writes (the pending queue, rules'
        last use), handed in so the store knows no service."""
        self.db = db
        self.record_attempt = record_attempt
        self.touch_used = touch_used
        self.interval = interval
        self._logs: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUED_LOGS)
        self._attempts: deque[Attempt] = deque(maxlen=10_000)
        self._used: set[int] = set()
        self._skips: deque[tuple[str, str, int, str]] = deque(maxlen=10_000)
        self._transactions: deque[tuple[dict[str, Any], Callable[[int, dict[str, Any]], None] | None]] = deque(
            maxlen=10_000
        )
        self._middleware_events: deque[dict[str, Any]] = deque(maxlen=10_000)
        # (client_ip, ip) -> newest row: a burst of lookups for one name is one upsert
        self._dns: dict[tuple[str, str], DnsRow] = {}
        self._dns_pruned_at = 0.0
        self.dns_dropped = 0
        self._wake = Event()
        # One flush at a time: statements yield (they run in the database thread), and an API
        # call may flush (to read its own writes) while the writer greenlet does.
        self._flushing = RLock()
        self._greenlet: gevent.Greenlet | None = None
        self.rows_written = 0
        # Honest health (issue 13): why the last flush failed and since when (time.time()),
        # None once a flush succeeds again; /api/health reports it as "degraded".
        self.failure: str | None = None
        self.failing_since: float | None = None
        self.failed_flushes = 0
        # Called after transactions were written (the conversation assembler wakes up).
        self.on_transactions: Callable[[], None] = lambda: None
        # (table, seconds, rows) for each batch written; the runtime points it at the metrics.
        self.observe_batch: Callable[[str, float, int], None] = lambda _table, _seconds, _rows: None
        # Applied to each log row and middleware event before it is written (no real
        # credential value in storage); the runtime points it at the scrubber.
        self.scrub_row: Callable[[dict[str, Any]], dict[str, Any]] = lambda row: row
        # Which node writes (fleet mode, docs/fleet.md): on every log row and transaction.
        self.node_id: str | None = None

    # -- called from the connection path: memory only ----------------------------------
    def log(self, **row: Any) -> None:
        row.setdefault("timestamp", utcnow())
        row.setdefault("node_id", self.node_id)
        self._logs.append(row)

    def attempt(self, attempt: Attempt) -> None:
        self._attempts.append(attempt)
        self._wake.set()  # new pending rows should show up at once, not after a batch interval

    def transaction(self, row: dict[str, Any], saved: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        """Queue a captured exchange; `saved(id, row)` runs (in the writer) once it has its id. Written
        within TRANSACTION_DELAY, in batches: one commit per exchange would cost the hub more
        than the exchange itself."""
        row.setdefault("node_id", self.node_id)
        self._transactions.append((row, saved))

    def middleware_event(self, row: dict[str, Any]) -> None:
        """One middleware audit row; written with the next log batch."""
        self._middleware_events.append(row)

    def skip_reason(self, container: str, host: str, port: int, reason: str) -> None:
        """Why a tunnel was not intercepted, noted on the connection's log row."""
        for row in reversed(self._logs):  # usually still queued: set it before it is written
            if (row["container_name"], row["destination_host"], row["destination_port"]) == (container, host, port):
                row["mitm_skip_reason"] = reason
                return
        self._skips.append((container, host, port, reason))
        self._wake.set()

    def used(self, rule_id: int) -> None:
        self._used.add(rule_id)

    def dns_cache(self, row: DnsRow) -> None:
        """Persist one IP → hostname attribution (client_ip, ip, hostname, expires_at epoch)."""
        key = (row[0], row[1])
        if key not in self._dns and len(self._dns) >= MAX_QUEUED_DNS:
            self.dns_dropped += 1
            return
        self._dns[key] = row

    # -- the writer greenlet -------------------------------------------------------------
    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
        self.flush()

    def _run(self) -> None:
        last_logs = time.monotonic()
        while True:
            self._wake.wait(timeout=TRANSACTION_DELAY)
            self._wake.clear()
            try:
                self._flush_attempts()
                self._flush_transactions()
                if time.monotonic() - last_logs >= self.interval or len(self._logs) >= BATCH_ROWS:
                    last_logs = time.monotonic()
                    self.flush()
            except Exception as exc:  # keep the writer alive; the rows stay queued for the next try
                self._failed(exc)
                gevent.sleep(self.interval)
            else:
                self._succeeded()

    def _failed(self, exc: BaseException) -> None:
        reason = describe(exc, db_path(self.db))
        self.failed_flushes += 1
        if self.failure is None:
            self.failing_since = time.time()
            log.exception("store writer: flush failed: %s", reason)
        elif reason != self.failure:
            log.error("store writer: flush still failing: %s", reason)
        self.failure = reason

    def _succeeded(self) -> None:
        if self.failure is not None:
            log.warning("store writer: writes succeed again (failed %d times since %s)", self.failed_flushes,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.failing_since or 0)))
            self.failure = self.failing_since = None
            self.failed_flushes = 0

    def health(self) -> list[str]:
        """Reasons the store is not healthy (empty when it is)."""
        if self.failure is None:
            return []
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.failing_since or 0))
        queued = len(self._logs) + len(self._attempts) + len(self._transactions)
        return [f"store writes failing since {since}: {self.failure}; {queued} rows waiting"]

    def _flush_attempts(self) -> None:
        with self._flushing:
            while self._attempts:
                # Everything queued, taken off before the writes (which yield: the deque may move
                # meanwhile) and merged per destination: one transaction per destination, not
                # per held connection. What a failed write leaves goes back in front, in order.
                merged = merge_attempts(self._attempts)
                self._attempts.clear()
                for i, attempt in enumerate(merged):
                    try:
                        self.record_attempt(attempt)
                    except BaseException:
                        self._attempts.extendleft(reversed(merged[i:]))
                        raise

    def _flush_transactions(self) -> None:
        with self._flushing:
            while self._transactions:
                batch = [self._transactions.popleft() for _ in range(min(BATCH_ROWS, len(self._transactions)))]
                started = time.monotonic()
                ids = insert_rows(self.db, HttpTransaction, [row for row, _ in batch])
                self.observe_batch("http_transactions", time.monotonic() - started, len(batch))
                for (row, callback), txn_id in zip(batch, ids, strict=True):
                    if callback is not None:
                        callback(txn_id, row)
                self.on_transactions()

    def flush(self) -> None:
        with self._flushing:
            self._flush_attempts()
            self._flush_transactions()
            if self._used:
                used, self._used = self._used, set()
                self.touch_used(used, utcnow())
            while self._logs:
                batch = [self._logs.popleft() for _ in range(min(BATCH_ROWS, len(self._logs)))]
                started = time.monotonic()
                try:
                    insert_rows(self.db, RequestLog, [self.scrub_row(row) for row in batch])
                except BaseException:
                    self._logs.extendleft(reversed(batch))  # queued again, in order, for the next try
                    raise
                self.observe_batch("request_logs", time.monotonic() - started, len(batch))
                self.rows_written += len(batch)
            while self._middleware_events:
                batch = [self.scrub_row(self._middleware_events.popleft())
                         for _ in range(min(BATCH_ROWS, len(self._middleware_events)))]
                insert_rows(self.db, MiddlewareEvent, batch)
            while self._skips:
                container, host, port, reason = self._skips.popleft()
                latest = (
                    RequestLog.select(RequestLog.id)
                    .where((RequestLog.container_name == container) & (RequestLog.destination_host == host)
                           & (RequestLog.destination_port == port))
                    .order_by(RequestLog.id.desc())
                    .limit(1)
                )
                RequestLog.update(mitm_skip_reason=reason).where(RequestLog.id.in_(latest)).execute()
            self._flush_dns()

    def _flush_dns(self) -> None:
        while self._dns:
            keys = list(itertools.islice(self._dns, BATCH_ROWS))
            save_dns_cache(self.db, [self._dns[k] for k in keys])
            for k in keys:
                del self._dns[k]
        now = time.time()
        if now - self._dns_pruned_at >= DNS_PRUNE_SECONDS:
            self._dns_pruned_at = now
            prune_dns_cache(now)
