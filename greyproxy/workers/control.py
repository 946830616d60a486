"""The control plane's side of what only it and its workers exchange (docs/workers.md): the
events a worker forwards for the dashboards, the held HTTP requests of every worker, the
workers' metrics at a scrape, and the in-memory state of its own that the workers keep a copy
of (the CA, the running capture recordings, DNS attributions). Changes to rules, pending
requests, sessions, credentials, modes and settings travel through the fleet's sync instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from greyproxy.proxy.docker import listing_message
from greyproxy.workers import metrics_feed
from greyproxy.workers.child import ON_DEMAND
from greyproxy.workers.held_http import SharedRequestHolds

if TYPE_CHECKING:
    from greyproxy.events import Bus, Event
    from greyproxy.metrics import Metrics
    from greyproxy.proxy.docker import DockerResolver
    from greyproxy.proxy.request_hold import RequestHolds
    from greyproxy.workers.channel import Message
    from greyproxy.workers.pool import WorkerPool


class WorkersControl:
    def __init__(self, pool: WorkerPool, bus: Bus, metrics: Metrics, request_holds: RequestHolds,
                 transactions_written: Callable[[], None], docker: Callable[[], DockerResolver | None]) -> None:
        self.pool = pool
        self.bus = bus
        self.metrics = metrics
        self.request_holds = SharedRequestHolds(request_holds, pool.call)  # what the API lists and answers
        self.transactions_written = transactions_written  # a worker wrote some: conversations are assembled here
        self.docker = docker  # the one resolver that asks the Docker engine for every process
        self._gauges: dict[int, dict[str, float]] = {}  # each worker's held connections and tunnels at the last scrape
        pool.on_worker_message = self.on_message
        bus.add_hook(self.tell)
        self._wanted: list[str] | None = None
        bus.subscribers_changed = self._tell_wants
        self._tell_wants()

    def _tell_wants(self) -> None:
        """Tell the workers which on-demand events someone here subscribes to, when that
        changes (a dashboard opened or closed)."""
        wanted = [t for t in ON_DEMAND if self.bus.wants(t)]
        if wanted != self._wanted:
            self._wanted = wanted
            self.pool.broadcast({"t": "wants", "types": wanted})

    def on_message(self, index: int, message: Message) -> None:
        """What a worker says for the control plane alone (greyproxy/workers/pool.py)."""
        kind = message.get("t")
        if kind == "event":
            type_, data = str(message.get("type")), message.get("data")
            if type_.startswith("pending_http."):
                self.request_holds.observe(index, type_, data)
            self.bus.publish(type_, data, recorded=True)  # the worker ran the recorders
        elif kind == "transactions":
            self.transactions_written()
        elif kind == "docker":  # a listing may take the engine's timeout: the link reads on meanwhile
            gevent.spawn(lambda: self.pool.reply(index, message, listing_message(self.docker())))
        elif kind == "gone":
            self._gauges.pop(index, None)
            self.request_holds.worker_gone(index)

    def tell(self, event: Event) -> None:
        """A bus hook: state changed here that the workers keep in memory and the fleet's
        sync does not carry."""
        kind = event["type"]
        if kind == "cert.reloaded":
            self.pool.broadcast({"t": "cert"})
        elif kind in ("recording.started", "recording.stopped"):
            self.pool.broadcast({"t": "recordings"})

    def dns_learned(self, row: Any) -> None:
        """An IP → name attribution from a DNS answer given here: the workers decide raw-IP
        connections by it too."""
        self.pool.broadcast({"t": "dns", "rows": [list(row)]})

    def gather_metrics(self) -> None:
        """Before a scrape: each worker's counters' growth added here, its gauges read."""
        for index, reply in self.pool.ask_all({"t": "metrics"}).items():
            metrics_feed.add(self.metrics, reply.get("d") or [])
            self._gauges[index] = reply.get("g") or {}

    def flush_writers(self) -> None:
        """Each worker writes what it has queued (log rows, transactions, middleware events), so
        an API read sees what was logged a moment ago in any process."""
        self.pool.ask_all({"t": "flush"})

    def health(self) -> WorkersHealth:
        """What /api/health needs from the workers, asked of each once."""
        return WorkersHealth(self.pool.ask_all({"t": "health"}))

    def gauge(self, name: str) -> float:
        return sum(float(g.get(name, 0)) for g in self._gauges.values())


class WorkersHealth:
    """The workers' answers to one health call: their store, and the upstream proxy they dial."""

    def __init__(self, replies: dict[int, Any]) -> None:
        self.replies = {i: r for i, r in replies.items() if isinstance(r, dict)}

    def store(self) -> tuple[float, list[str]]:
        """How long a worker's statement has held its connection (the longest), and why a
        worker's writes fail, if they do: health judges them as the control plane's own."""
        held = max((float(r.get("held") or 0.0) for r in self.replies.values()), default=0.0)
        return held, [f"worker {i}: {reason}" for i, r in sorted(self.replies.items())
                      for reason in r.get("reasons") or ()]

    def upstream_status(self, own: dict[str, Any]) -> dict[str, Any]:
        """The upstream proxy as the processes that dial it see it: the state of whichever saw
        it change last, the tunnels and failures of all."""
        seen = [own, *(r["upstream"] for r in self.replies.values() if isinstance(r.get("upstream"), dict))]
        latest = max(seen, key=lambda s: s.get("changed_at") or 0.0)
        return {**latest, "tunnels": sum(int(s.get("tunnels") or 0) for s in seen),
                "failures": sum(int(s.get("failures") or 0) for s in seen)}
