"""The redaction job and the retention policy, on a temporary SQLite database in-process."""

from __future__ import annotations

import datetime as dt
import json

import gevent
import pytest

from greyproxy.capture.redact import REDACTED, Redactor
from greyproxy.events import Bus
from greyproxy.services.maintenance import PROGRESS_EVENT, RedactionJob, Retention, RetentionPolicy
from greyproxy.services.rules import Conflict
from greyproxy.store.models import HttpTransaction, RequestLog
from tests.backends import backend_db  # noqa: F401 - `db`: a migrated store, SQLite and PostgreSQL


def add_txn(i: int, headers: dict, when: dt.datetime | None = None) -> None:
    HttpTransaction.create(timestamp=when or dt.datetime(2030, 1, 1), container_name="c", destination_host="h",
                           destination_port=443, method="GET", url=f"https://h/{i}?token=t{i}",
                           request_headers=json.dumps(headers), response_headers=None)


def test_redaction_job_rewrites_once_and_reports_progress(db):
    for i in range(1100):
        add_txn(i, {"X-Custom": [f"v{i}"], "Accept": ["*/*"]})
    bus = Bus()
    events = bus.subscribe(maxsize=100, types=[PROGRESS_EVENT])
    job = RedactionJob(db, bus, lambda: Redactor(["x-custom"]))
    job.start()
    with pytest.raises(Conflict):
        job.start()  # one run at a time
    job.greenlet.join(timeout=30)
    seen = []
    while (e := events.get(timeout=0)) is not None:
        seen.append(e["data"])
    assert seen[-1] == {"task": "redact_headers", "processed": 1100, "total": 1100, "done": True}
    assert [e["processed"] for e in seen] == [0, 500, 1000, 1100, 1100]
    row = HttpTransaction.get_by_id(7)
    assert json.loads(row.request_headers) == {"X-Custom": [REDACTED], "Accept": ["*/*"]}
    assert row.url == f"https://h/6?token={REDACTED}"
    assert job.run() == 0  # idempotent: nothing left to change


def test_redaction_job_failure_is_reported(db):
    bus = Bus()
    events = bus.subscribe(types=[PROGRESS_EVENT])

    def broken() -> Redactor:
        raise RuntimeError("boom")

    job = RedactionJob(db, bus, broken)
    job.start()
    job.greenlet.join(timeout=10)
    last = None
    while (e := events.get(timeout=0)) is not None:
        last = e["data"]
    assert last["done"] is True and last["error"] == "boom" and job.running is False
    job.start()  # a failed run does not block the next one
    job.greenlet.join(timeout=10)


def test_retention_policy_from_config():
    p = RetentionPolicy.from_config({"logs_days": 30, "transactions_days": 7, "max_db_mb": 2048, "pending_ttl": "7d"})
    assert (p.logs_days, p.transactions_days, p.max_db_mb, p.pending_ttl) == (30, 7, 2048, 604800)
    off = RetentionPolicy.from_config({"logs_days": 0, "transactions_days": None, "max_db_mb": 0, "pending_ttl": "0"})
    assert (off.logs_days, off.transactions_days, off.max_db_mb, off.pending_ttl) == (None, None, None, None)
    assert RetentionPolicy.from_config({"logs_days": 0.5}).logs_days == 0.5
    for bad, key in (({"logs_days": -1}, "logs_days"), ({"max_db_mb": "big"}, "max_db_mb"),
                     ({"transactions_days": True}, "transactions_days"), ({"pending_ttl": "later"}, "pending_ttl"),
                     ({"logs_days": float("inf")}, "logs_days")):
        with pytest.raises(ValueError, match=key):
            RetentionPolicy.from_config(bad)


def test_retention_prunes_by_age_in_batches(db):
    now = dt.datetime(2030, 6, 1)
    old = now - dt.timedelta(days=40)
    with db.atomic():
        RequestLog.insert_many([{"timestamp": old, "container_name": "c", "destination_host": "h", "result": "allowed"}]
                               * 4500).execute()  # more than two delete batches
    RequestLog.create(timestamp=now, container_name="c", destination_host="h", result="allowed")
    add_txn(1, {}, when=now - dt.timedelta(days=8))
    add_txn(2, {}, when=now - dt.timedelta(days=6))
    retention = Retention(db, Bus(), RetentionPolicy(max_db_mb=None, pending_ttl=None))
    result = gevent.spawn(retention.prune, now).get(timeout=30)
    assert result["deleted_request_logs"] == 4500 and result["deleted_transactions"] == 1
    assert RequestLog.select().count() == 1 and HttpTransaction.select().count() == 1
