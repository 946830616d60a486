"""Operational metrics (docs/decisions.md#audit-observability-traffic-tools), one registry per runtime (no process-global state).

The proxy path only increments counters and observes histograms (memory, no I/O); gauges that
need a look at the store (pending count) are read at scrape time, on the API's greenlet.
`GET /metrics` renders the registry in the Prometheus text format; `GET /api/metrics` gives the
same figures as JSON (`snapshot()`), read from the same metric objects so the two never differ.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

log = logging.getLogger("greyproxy")

# Deciding is in-memory: most decisions take well under a millisecond.
DECISION_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A hold lasts until a human answers or hold_seconds (at most an hour) passes.
HOLD_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _safe(read: Callable[[], float]) -> Callable[[], float]:
    """A gauge callback that cannot fail a scrape (a broken database reads as NaN)."""

    def value() -> float:
        try:
            return float(read())
        except Exception as exc:  # whatever the source raises, the scrape must still answer
            log.debug("metrics: gauge read failed: %s", exc)
            return math.nan

    return value


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        reg = self.registry
        self.connections = Counter(
            "greyproxy_connections", "Proxy connections decided (one per request log row), by result and reason",
            ["result", "reason"], registry=reg)
        self.decision_seconds = Histogram(
            "greyproxy_decision_seconds", "Time to decide a connection, hold time excluded",
            buckets=DECISION_BUCKETS, registry=reg)
        self.hold_seconds = Histogram(
            "greyproxy_hold_seconds", "Time a connection was held waiting for a human decision",
            buckets=HOLD_BUCKETS, registry=reg)
        self.bytes = Counter(
            "greyproxy_relayed_bytes", "Bytes relayed for clients (up = client to destination)",
            ["direction"], registry=reg)
        self.mitm_handshakes = Counter(
            "greyproxy_mitm_handshakes", "TLS interception handshakes, by result", ["result"], registry=reg)
        self.db_batch_seconds = Histogram(
            "greyproxy_db_write_batch_seconds", "Time to write one batch of rows (logs, transactions)",
            ["table"], buckets=DB_BUCKETS, registry=reg)
        self.db_rows = Counter("greyproxy_db_rows_written", "Rows written in batches", ["table"], registry=reg)
        self.docker_lookups = Counter(
            "greyproxy_docker_lookups", "Container identity lookups by source IP, by result", ["result"],
            registry=reg)
        self.reloads = Counter("greyproxy_reloads", "Configuration reloads (SIGHUP), by result", ["result"],
                               registry=reg)
        self.limit_hits = Counter(
            "greyproxy_limit_hits", "Connections or requests refused or cut by a limit (limits:), by limit",
            ["limit"], registry=reg)
        self.held = Gauge("greyproxy_held_connections", "Connections held open right now", registry=reg)
        self.pending = Gauge("greyproxy_pending_requests", "Pending requests waiting for a decision", registry=reg)
        self.tunnels = Gauge("greyproxy_open_tunnels", "Allowed connections open right now", registry=reg)
        self.uptime = Gauge("greyproxy_uptime_seconds", "Seconds since this process started", registry=reg)
        self.uptime.set_function(lambda: time.time() - self.started)
        # The proxy path counts through children bound once: prometheus_client's labels() costs
        # more per call than the increment itself (bench/peers.py, CPU per connection).
        self._up = self.bytes.labels("up")
        self._down = self.bytes.labels("down")
        self._decided: dict[tuple[str, str], Any] = {}
        self._mitm: dict[str, Any] = {}
        self.info = Gauge("greyproxy_build_info", "Constant 1, labelled with the version", ["version"],
                          registry=reg)

    def bind(self, *, version: str, held: Callable[[], float], pending: Callable[[], float],
             tunnels: Callable[[], float]) -> None:
        """Wire the gauges that read live state (called once by the runtime)."""
        self.info.labels(version).set(1)
        self.held.set_function(_safe(held))
        self.pending.set_function(_safe(pending))
        self.tunnels.set_function(_safe(tunnels))

    # -- called from the proxy path: memory only ----------------------------------------
    def decided(self, result: str, reason: str) -> None:
        child = self._decided.get((result, reason))
        if child is None:
            child = self._decided[(result, reason)] = self.connections.labels(result, reason)
        child.inc()

    def timing(self, decision_seconds: float, hold_seconds: float | None) -> None:
        self.decision_seconds.observe(max(decision_seconds, 0.0))
        if hold_seconds is not None:
            self.hold_seconds.observe(max(hold_seconds, 0.0))

    def relayed(self, up: int, down: int) -> None:
        if up:
            self._up.inc(up)
        if down:
            self._down.inc(down)

    def mitm(self, result: str) -> None:
        child = self._mitm.get(result)
        if child is None:
            child = self._mitm[result] = self.mitm_handshakes.labels(result)
        child.inc()

    def db_batch(self, table: str, seconds: float, rows: int) -> None:
        self.db_batch_seconds.labels(table).observe(seconds)
        self.db_rows.labels(table).inc(rows)

    def docker(self, result: str) -> None:
        self.docker_lookups.labels(result).inc()

    def limit_hit(self, limit: str) -> None:
        self.limit_hits.labels(limit).inc()

    # -- output --------------------------------------------------------------------------
    def prometheus_text(self) -> bytes:
        """The classic text exposition (version 0.0.4)."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        """The same figures as /metrics, as one JSON object."""
        by_reason: dict[str, dict[str, int]] = {"allowed": {}, "blocked": {}}
        totals = {"allowed": 0, "blocked": 0}
        for labels, value in _values(self.connections, "_total"):
            result, reason = labels["result"], labels["reason"]
            totals[result] = totals.get(result, 0) + int(value)
            by_reason.setdefault(result, {})[reason] = int(value)
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "connections": {**totals, "by_reason": by_reason},
            "decision_seconds": _histogram(self.decision_seconds),
            "hold_seconds": _histogram(self.hold_seconds),
            "held_connections": _gauge(self.held),
            "pending_requests": _gauge(self.pending),
            "open_tunnels": _gauge(self.tunnels),
            "bytes_relayed": {labels["direction"]: int(v) for labels, v in _values(self.bytes, "_total")},
            "mitm_handshakes": {labels["result"]: int(v) for labels, v in _values(self.mitm_handshakes, "_total")},
            "db_write_batches": {
                labels["table"]: h for labels, h in _histograms_by(self.db_batch_seconds, "table")
            },
            "db_rows_written": {labels["table"]: int(v) for labels, v in _values(self.db_rows, "_total")},
            "docker_lookups": {labels["result"]: int(v) for labels, v in _values(self.docker_lookups, "_total")},
            "reloads": {labels["result"]: int(v) for labels, v in _values(self.reloads, "_total")},
            "limit_hits": {labels["limit"]: int(v) for labels, v in _values(self.limit_hits, "_total")},
        }


def _values(metric: MetricWrapperBase, suffix: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                out.append((dict(sample.labels), sample.value))
    return out


def _gauge(metric: Gauge) -> float | None:
    values = [v for _, v in _values(metric, "")]
    if not values or math.isnan(values[0]):
        return None  # JSON has no NaN
    value = values[0]
    return int(value) if value.is_integer() else value


def _histogram(metric: Histogram) -> dict[str, Any]:
    found = _histograms_by(metric, None)
    return found[0][1] if found else {"count": 0, "sum": 0.0, "buckets": {}}


def _histograms_by(metric: Histogram, label: str | None) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Histogram samples regrouped per label value: {count, sum, buckets {le: cumulative count}}."""
    groups: dict[str, dict[str, Any]] = {}
    keys: dict[str, dict[str, str]] = {}
    for family in metric.collect():
        for s in family.samples:
            key = s.labels.get(label, "") if label else ""
            keys[key] = {label: key} if label else {}
            group = groups.setdefault(key, {"count": 0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_bucket"):
                group["buckets"][s.labels["le"]] = int(s.value)
            elif s.name.endswith("_count"):
                group["count"] = int(s.value)
            elif s.name.endswith("_sum"):
                group["sum"] = s.value
    return [(keys[k], groups[k]) for k in groups]
