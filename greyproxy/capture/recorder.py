"""Turns what the interceptor saw into stored transactions: headers redacted, bodies tapped,
written by the StoreWriter (never on the connection path), then `transaction.new`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from greyproxy.capture.bodies import BodyTap
from greyproxy.capture.scrub import Scrub
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.capture.websocket import Frame
from greyproxy.proxy.httpwire import Head
from greyproxy.store.models import HttpTransaction
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    from greyproxy.capture.recordings import ActiveRecordings
    from greyproxy.capture.redact import Redactor
    from greyproxy.capture.scrub import Scrubber
    from greyproxy.events import Bus
    from greyproxy.metrics import Metrics
    from greyproxy.store.writer import StoreWriter


@dataclass(slots=True)
class Exchange:
    """One request/response pair as it passes; filled in by the interceptor."""

    container: str
    host: str
    port: int
    url: str
    request: Head
    rule_id: int | None
    started: float = field(default_factory=time.monotonic)
    request_tap: BodyTap | None = None
    response: Head | None = None
    response_tap: BodyTap | None = None
    session_id: str | None = None
    substituted: list[str] = field(default_factory=list)
    # real value → placeholder for every secret substituted into this request
    reverse: dict[str, str] = field(default_factory=dict)
    # raw values the Redactor removes from this request's headers and URL (Authorization,
    # Cookie, token= …): never stored, wherever they come back
    redacted_values: list[str] = field(default_factory=list)
    middleware_facts: Any = None  # the RequestFacts the middlewares saw (proxy/mwhooks.py)
    middleware_actions: list[dict[str, Any]] = field(default_factory=list)

    def tap_for(self, head: Head) -> BodyTap:
        return BodyTap(head.get("content-type"), head.get("content-encoding"))


def _head_size(head: Head | None) -> int:
    """Bytes of a message head on the wire (start line, headers, blank line)."""
    if head is None:
        return 0
    return sum(len(p) for p in head.start) + 4 + sum(len(k) + len(v) + 4 for k, v in head.headers) + 2


class TransactionRecorder:
    def __init__(self, bus: Bus, redactor: Callable[[], Redactor], scrubber: Scrubber,
                 recordings: ActiveRecordings, writer: StoreWriter, metrics: Metrics) -> None:
        self.bus = bus
        self.redactor = redactor  # read at each exchange: a settings change replaces the Redactor
        self.scrubber = scrubber
        self.recordings = recordings
        self.writer = writer
        self.metrics = metrics

    def _publish(self, txn_id: int, row: dict[str, Any]) -> None:
        if self.bus.wants("transaction.new"):  # a model and its JSON for nobody is wasted hub time
            self.bus.publish("transaction.new", transaction_to_json(HttpTransaction(id=txn_id, **row)))

    def _headers(self, head: Head | None, scrub: Scrub | None) -> str | None:
        if head is None:
            return None
        stored = self.redactor().headers(head.headers)
        return json.dumps(stored if scrub is None else scrub.headers(stored))

    def _scrub(self, ex: Exchange) -> Scrub | None:
        """What this exchange's rows must not hold: every vault value, the secrets
        substituted into its request and the raw values redacted from it."""
        return self.scrubber.for_exchange(ex.reverse, ex.redacted_values)

    def record(self, ex: Exchange) -> None:
        req_body, req_size, req_cut = ex.request_tap.result() if ex.request_tap else (None, 0, False)
        resp_body, resp_size, resp_cut = ex.response_tap.result() if ex.response_tap else (None, 0, False)
        scrub = self._scrub(ex)
        url = self.redactor().url(ex.url)
        if scrub is not None:
            url = scrub(url)
            req_body = scrub.data(req_body, req_cut)
            resp_body = scrub.data(resp_body, resp_cut)
        row: dict[str, Any] = {
            "timestamp": utcnow(),
            "container_name": ex.container,
            "destination_host": ex.host,
            "destination_port": ex.port,
            "method": ex.request.start[0],
            "url": url,
            "request_headers": self._headers(ex.request, scrub),
            "request_body": req_body,
            "request_body_size": req_size,
            "request_body_truncated": req_cut,
            "request_content_type": ex.request.get("content-type"),
            "status_code": int(ex.response.start[1]) if ex.response else None,
            "response_headers": self._headers(ex.response, scrub),
            "response_body": resp_body,
            "response_body_size": resp_size,
            "response_body_truncated": resp_cut,
            "response_content_type": ex.response.get("content-type") if ex.response else None,
            "duration_ms": int((time.monotonic() - ex.started) * 1000),
            "rule_id": ex.rule_id,
            "session_id": ex.session_id,
            "substituted_credentials": json.dumps(ex.substituted) if ex.substituted else None,
            "middleware_actions": json.dumps(ex.middleware_actions) if ex.middleware_actions else None,
            "recording_id": self.recordings.recording_for(ex.container),
        }
        self.writer.transaction(row, self._publish)
        # Parsed traffic (intercepted or plain HTTP) is not piped by relay(): count heads + bodies.
        self.metrics.relayed(_head_size(ex.request) + req_size, _head_size(ex.response) + resp_size)

    def frame(self, ex: Exchange, frame: Frame, from_client: bool) -> None:
        self.metrics.relayed(frame.size if from_client else 0, 0 if from_client else frame.size)
        if not frame.payload:
            return
        url = self.redactor().url(ex.url.replace("https://", "wss://", 1).replace("http://", "ws://", 1))
        payload = frame.payload
        truncated = len(frame.payload) < frame.size and not frame.inflated
        scrub = self._scrub(ex)
        if scrub is not None:
            url = scrub(url)
            # A value may be cut by the capture limit or by the fragment boundaries of a message.
            payload = scrub.data(payload, truncated or frame.inflated or not frame.fin, frame.opcode == 0)
        row: dict[str, Any] = {
            "timestamp": utcnow(),
            "container_name": ex.container,
            "destination_host": ex.host,
            "destination_port": ex.port,
            "method": "WS_REQ" if from_client else "WS_RESP",
            "url": url,
            "request_body": payload,
            "request_body_size": frame.size,
            "request_body_truncated": truncated,
            "status_code": 101,
            "rule_id": ex.rule_id,
            "session_id": ex.session_id,
            "recording_id": self.recordings.recording_for(ex.container),
        }
        self.writer.transaction(row, self._publish)
