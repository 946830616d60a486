"""The store writer: every write the proxy path asks for happens here, in batches, so a
connection never waits on SQL (D5). A crash loses at most one batch interval of log rows."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import gevent
import peewee
from gevent.event import Event

from greyproxy.services.pending import Attempt, PendingService
from greyproxy.services.rules import RuleService
from greyproxy.store.models import RequestLog
from greyproxy.timeutil import utcnow

log = logging.getLogger("greyproxy.store")

MAX_QUEUED_LOGS = 200_000  # beyond this the oldest rows are dropped (and counted), memory stays bounded
BATCH_ROWS = 500


class StoreWriter:
    def __init__(self, db: peewee.Database, pending: PendingService, rules: RuleService, interval: float = 1.0):
        self.db = db
        self.pending = pending
        self.rules = rules
        self.interval = interval
        self._logs: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUED_LOGS)
        self._attempts: deque[Attempt] = deque(maxlen=10_000)
        self._used: set[int] = set()
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self.rows_written = 0

    # -- called from the connection path: memory only ----------------------------------
    def log(self, **row: Any) -> None:
        row.setdefault("timestamp", utcnow())
        self._logs.append(row)

    def attempt(self, attempt: Attempt) -> None:
        self._attempts.append(attempt)
        self._wake.set()  # new pending rows should show up at once, not after a batch interval

    def used(self, rule_id: int) -> None:
        self._used.add(rule_id)

    # -- the writer greenlet -------------------------------------------------------------
    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
        self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep the writer alive; the rows stay queued for the next try
                log.exception("store writer: flush failed")
                gevent.sleep(self.interval)

    def flush(self) -> None:
        while self._attempts:
            attempt = self._attempts[0]
            self.pending.record_attempt(attempt)
            self._attempts.popleft()
        if self._used:
            used, self._used = self._used, set()
            self.rules.touch_used(used, utcnow())
        while self._logs:
            batch = [self._logs[i] for i in range(min(BATCH_ROWS, len(self._logs)))]
            with self.db.atomic():
                RequestLog.insert_many(batch).execute()
            for _ in batch:
                self._logs.popleft()
            self.rows_written += len(batch)
