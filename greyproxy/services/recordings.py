"""Capture recordings: named recordings a user starts and stops, grouping the traffic captured
while they run, and HAR imports (an imported file is a recording of its own).

A running recording takes every new transaction of the containers it names (all of them when
it names none; see capture/recordings.py for overlaps); the proxy learns which from
`ActiveRecordings`, set here at every change.
Replays made while one runs belong to it too.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from greyproxy.capture.bodies import MAX_CAPTURE
from greyproxy.capture.har_import import ImportedEntry
from greyproxy.capture.recordings import Running
from greyproxy.policy.patterns import normalize_container_pattern
from greyproxy.services.rules import NotFound
from greyproxy.store.models import HttpTransaction, Recording
from greyproxy.timeutil import iso, utcnow

if TYPE_CHECKING:
    from peewee import Database

    from greyproxy.capture.recordings import ActiveRecordings
    from greyproxy.capture.redact import Redactor
    from greyproxy.capture.scrub import Scrubber
    from greyproxy.events import Bus
    from greyproxy.store.writer import StoreWriter

MAX_NAME = 200
MAX_RUNNING = 50  # recordings running at once (each is checked for every captured exchange)
INSERT_CHUNK = 100  # rows per database transaction of an import


class RecordingInvalid(ValueError):
    """Bad input for a recording (400)."""


class RecordingConflict(RuntimeError):
    """The recording's state does not allow this (409)."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RecordingInvalid("'name' is required (a non-empty string)")
    name = name.strip()
    if len(name) > MAX_NAME:
        raise RecordingInvalid(f"'name' must be at most {MAX_NAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Co") for c in name):
        raise RecordingInvalid("'name' must not hold control characters or lone surrogates")
    return name


def recording_json(rec: Recording, count: int | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rec.id,
        "name": rec.name,
        "container_pattern": rec.container_pattern,
        "source": rec.source,
        "started_at": iso(rec.started_at),
        "stopped_at": iso(rec.stopped_at) if rec.stopped_at else None,
        "active": rec.source == "live" and rec.stopped_at is None,
    }
    if count is not None:
        data["transaction_count"] = count
    return data


class RecordingService:
    def __init__(self, db: Database, bus: Bus, writer: StoreWriter, recordings: ActiveRecordings,
                 redactor: Callable[[], Redactor], scrubber: Scrubber, on_imported: Callable[[], None]) -> None:
        self.db = db
        self.bus = bus
        self.writer = writer
        self.recordings = recordings  # the proxy's view of the running recordings
        self.redactor = redactor  # read at each import: a settings change replaces the Redactor
        self.scrubber = scrubber
        self.on_imported = on_imported  # imported LLM calls become conversations like captured ones

    def load(self) -> None:
        """At start: the running recordings become the proxy's view."""
        self._publish_running()

    def _publish_running(self) -> None:
        running = Recording.select().where(Recording.stopped_at.is_null() & (Recording.source == "live"))
        self.recordings.set(Running(r.id, r.container_pattern) for r in running)

    def _count(self, rec_id: int) -> int:
        return HttpTransaction.select().where(HttpTransaction.recording_id == rec_id).count()

    def get(self, rec_id: int) -> Recording:
        rec = Recording.get_or_none(Recording.id == rec_id)
        if rec is None:
            raise NotFound(f"recording {rec_id} not found")
        return rec

    def describe(self, rec_id: int) -> dict[str, Any]:
        return recording_json(self.get(rec_id), self._count(rec_id))

    def list(self, active: bool | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        query = Recording.select()
        if active is not None:
            running = Recording.stopped_at.is_null() & (Recording.source == "live")
            query = query.where(running if active else ~running)
        total = query.count()
        rows = list(query.order_by(Recording.id.desc()).limit(limit).offset(offset))
        return {"items": [recording_json(r, self._count(r.id)) for r in rows], "total": total}

    def start(self, name: Any, container: Any = None) -> dict[str, Any]:
        name = check_name(name)
        pattern = None
        if container is not None:
            if not isinstance(container, str):
                raise RecordingInvalid("'container' must be a string (a container name or pattern)")
            pattern = normalize_container_pattern(container)  # PatternError: a 400 naming it
        running = Recording.select().where(Recording.stopped_at.is_null() & (Recording.source == "live")).count()
        if running >= MAX_RUNNING:
            raise RecordingConflict(f"{MAX_RUNNING} recordings are running already: stop one first")
        rec = Recording.create(name=name, container_pattern=pattern, source="live", started_at=utcnow())
        self._publish_running()
        data = recording_json(rec, 0)
        self.bus.publish("recording.started", data)
        return data

    def stop(self, rec_id: int) -> dict[str, Any]:
        rec = self.get(rec_id)
        if rec.source != "live" or rec.stopped_at is not None:
            raise RecordingConflict(f"recording {rec_id} is not running")
        # Exchanges captured until now may still be queued: they belong to it.
        self.writer.flush()
        rec.stopped_at = utcnow()
        rec.save()
        self._publish_running()
        data = recording_json(rec, self._count(rec.id))
        self.bus.publish("recording.stopped", data)
        return data

    def delete(self, rec_id: int, with_transactions: bool) -> dict[str, Any]:
        rec = self.get(rec_id)
        self.writer.flush()
        t = HttpTransaction
        if with_transactions:
            deleted = t.delete().where(t.recording_id == rec.id).execute()
        else:
            deleted = 0
            t.update(recording_id=None).where(t.recording_id == rec.id).execute()
        rec.delete_instance()
        self._publish_running()
        return {"deleted": True, "transactions_deleted": deleted}

    def import_har(self, entries: list[ImportedEntry], name: Any, container: Any) -> dict[str, Any]:
        """Store checked HAR entries as transactions of a new recording (one database transaction)."""
        name = check_name(name)
        if not isinstance(container, str):
            raise RecordingInvalid("'container' must be a string")
        container = normalize_container_pattern(container)
        if any(c in container for c in "*?["):
            raise RecordingInvalid("'container' of an import is a name, not a pattern")
        # Rows are made first, pausing between entries (redaction and scrubbing take a while for
        # thousands), then written in one database transaction: all or nothing.
        rows = []
        for i, entry in enumerate(entries):
            rows.extend(self._rows(entry, container))
            if i % 50 == 49:
                gevent.sleep(0.001)  # a timer, not sleep(0): the hub polls sockets in between
        # A HAR recording is made (and its retention counted from) the moment it is imported; its
        # transactions keep the times the file gives them. Written a chunk per database
        # transaction with a pause between them (one transaction of thousands of rows would stop
        # the proxy for a second or more); stopped_at stays null until the last chunk is in, and
        # a failure takes back what was written: all or nothing.
        rec = Recording.create(name=name, container_pattern=container, source="har", started_at=utcnow())
        try:
            for row in rows:
                row["recording_id"] = rec.id
            for start in range(0, len(rows), INSERT_CHUNK):
                with self.db.atomic():
                    HttpTransaction.insert_many(rows[start : start + INSERT_CHUNK]).execute()
                gevent.sleep(0.001)
        except BaseException:
            HttpTransaction.delete().where(HttpTransaction.recording_id == rec.id).execute()
            rec.delete_instance()
            raise
        rec.stopped_at = utcnow()
        rec.save()
        data = recording_json(rec, len(rows))
        self.bus.publish("recording.imported", data)
        self.on_imported()
        return {"recording": data, "imported": len(entries), "transactions": len(rows)}

    def _rows(self, e: ImportedEntry, container: str) -> list[dict[str, Any]]:
        """An entry as stored rows, redacted and scrubbed like a capture (an imported file may
        hold live secrets: they are not kept)."""
        redactor = self.redactor()
        scrub = self.scrubber.for_exchange(redactor.redacted_values(e.request_headers, e.url))
        url = redactor.url(e.url)
        req_headers, resp_headers = redactor.headers(e.request_headers), redactor.headers(e.response_headers)
        req_body, req_size, req_cut = e.request_body
        resp_body, resp_size, resp_cut = e.response_body
        if scrub is not None:
            url, req_headers, resp_headers = scrub(url), scrub.headers(req_headers), scrub.headers(resp_headers)
            req_body, resp_body = scrub.data(req_body, req_cut), scrub.data(resp_body, resp_cut)
        common = {"container_name": container, "destination_host": e.host, "destination_port": e.port,
                  "result": "imported"}
        rows = [{
            **common,
            "timestamp": e.timestamp, "method": e.method, "url": url,
            "request_headers": json.dumps(req_headers), "request_body": req_body,
            "request_body_size": req_size, "request_body_truncated": req_cut,
            "request_content_type": e.request_content_type, "status_code": e.status_code,
            "response_headers": json.dumps(resp_headers), "response_body": resp_body,
            "response_body_size": resp_size, "response_body_truncated": resp_cut,
            "response_content_type": e.response_content_type, "duration_ms": e.duration_ms,
        }]
        ws_url = url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        for frame in e.frames:
            payload, cut = frame.payload[:MAX_CAPTURE], len(frame.payload) > MAX_CAPTURE
            payload = payload if scrub is None else scrub.data(payload, cut)
            rows.append({**common, "timestamp": frame.timestamp, "method": "WS_REQ" if frame.from_client else "WS_RESP",
                         "url": ws_url, "request_body": payload, "request_body_size": len(frame.payload),
                         "request_body_truncated": cut, "status_code": 101})
        return rows
