"""The workers' data-path counters, summed into the control plane's /metrics (docs/workers.md).

At each scrape the control plane asks every worker what its counters and histograms grew by
since the last time, and adds that to its own metric objects, so /metrics and /api/metrics show
every process's connections, bytes, handshakes and limit hits, with no second registry to keep
consistent. The held-connection and open-tunnel gauges are each worker's values at the scrape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from greyproxy.metrics import Metrics

# The Metrics attributes a worker's data path moves (reloads are counted by each process itself).
SUMMED = ("connections", "decision_seconds", "hold_seconds", "bytes", "mitm_handshakes", "db_batch_seconds",
          "db_rows", "docker_lookups", "limit_hits")

Reading = dict[tuple[str, tuple[str, ...]], list[float]]  # (attribute, labels) -> [value] or [buckets..., sum]


def _children(metric: Any) -> list[tuple[tuple[str, ...], Any]]:
    # prometheus_client keeps a labelled metric's children by their label values.
    return list(metric._metrics.items()) if metric._labelnames else [((), metric)]  # noqa: SLF001


def read(metrics: Metrics) -> Reading:
    out: Reading = {}
    for name in SUMMED:
        for labels, child in _children(getattr(metrics, name)):
            if hasattr(child, "_buckets"):  # a histogram: per-bucket counts (not cumulative), then the sum
                out[(name, labels)] = [b.get() for b in child._buckets] + [child._sum.get()]  # noqa: SLF001
            else:
                out[(name, labels)] = [child._value.get()]  # noqa: SLF001
    return out


def growth(now: Reading, before: Reading) -> list[list[Any]]:
    """[[attribute, labels, [deltas]]] for what changed."""
    out = []
    for key, values in now.items():
        old = before.get(key)
        deltas = values if old is None else [a - b for a, b in zip(values, old, strict=True)]
        if any(deltas):
            out.append([key[0], list(key[1]), deltas])
    return out


def add(metrics: Metrics, grown: list[list[Any]]) -> None:
    """Add a worker's growth to the control plane's metric objects."""
    for name, labels, deltas in grown:
        if name not in SUMMED:
            continue
        metric = getattr(metrics, name)
        child = metric.labels(*labels) if labels else metric
        if hasattr(child, "_buckets"):
            for bucket, delta in zip(child._buckets, deltas[:-1], strict=False):  # noqa: SLF001
                bucket.inc(delta)
            child._sum.inc(deltas[-1])  # noqa: SLF001
        else:
            child.inc(deltas[0])


class MetricsFeed:
    """In a worker: what grew since the control plane last asked, and the gauges now."""

    def __init__(self, metrics: Metrics, gauges: Callable[[], dict[str, float]]) -> None:
        self.metrics = metrics
        self.gauges = gauges
        self._before: Reading = {}

    def take(self) -> dict[str, Any]:
        now = read(self.metrics)
        grown, self._before = growth(now, self._before), now
        return {"d": grown, "g": self.gauges()}
