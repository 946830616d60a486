"""A worker process of `serve --workers N` (docs/workers.md): the data path, and nothing else.

Forked by the control plane once everything was built, so a worker starts with the same rule
index, sessions, secrets, settings and CA in memory. It binds its own HTTP and SOCKS5 listening
sockets on the control plane's ports (SO_REUSEPORT: the kernel spreads new connections over the
workers), writes its own log rows, pending attempts and transactions into the shared database,
and follows every change through its link to the control plane, as a fleet node follows the
others (greyproxy/fleet/sync.py). It runs no API, no DNS listener and no maintenance job.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from greyproxy.drain import drain
from greyproxy.events import from_other_node
from greyproxy.gcpolicy import freeze_startup_objects
from greyproxy.proxy.dnscache import CacheRow
from greyproxy.proxy.docker import DEFAULT_TIMEOUT as DOCKER_TIMEOUT
from greyproxy.proxy.docker import ContainerInfo, listing_from_message
from greyproxy.services.audit import current_actor
from greyproxy.store.executor import OffHubMixin, reopen_after_fork
from greyproxy.workers import metrics_feed
from greyproxy.workers.channel import Channel, Message

log = logging.getLogger("greyproxy.workers")

# Events a worker publishes that the control plane's API keeps track of.
FORWARDED = ("pending_http.created", "pending_http.allowed", "pending_http.denied", "pending_http.expired",
             "pending_http.gone", "session.substitution")
# Forwarded only while a dashboard or client on the control plane subscribes to them (it says
# so: "wants"): serializing each captured exchange for nobody costs the worker and the link.
ON_DEMAND = ("transaction.new",)


class WorkerProcess:
    def __init__(self, rt: Any, index: int, count: int, sock: socket.socket) -> None:
        """`rt`: the runtime as it was forked (greyproxy/runtime.py builds the servers)."""
        self.rt = rt
        self.index = index
        self.count = count
        self.channel = Channel(sock, f"{rt.node_id}/w{index}", self._on_message, self._link_lost)
        self._stop = Event()
        self._hurry = Event()
        self._stopping = False
        self.wanted: set[str] = set()  # the ON_DEMAND event types the control plane wants now
        self.metrics = metrics_feed.MetricsFeed(rt.metrics, lambda: {"held": rt.holds.total,
                                                                      "tunnels": len(rt.tracker)})

    # -- run -----------------------------------------------------------------------------
    def run(self) -> None:
        rt = self.rt
        reopen_after_fork(rt.db)
        os.environ.pop("NOTIFY_SOCKET", None)  # systemd hears from the control plane only
        rt.close_control_plane_sockets()
        # Held HTTP request ids stay unique across the processes: each takes every count+1-th.
        rt.request_holds.stride(self.index, self.count + 1)
        rt.settings.persist = False  # settings.json is the control plane's to write
        rt.limits_share = self.count  # the caps are shared out (docs/workers.md#limits)
        rt.holds.on_unanswered = lambda key, seconds: self.channel.send({"t": "unanswered", "k": list(key),
                                                                         "s": seconds})
        # A pending row's PTR name is looked up where it is shown: in the control plane.
        rt.pending.ptr_name = lambda _host: None
        rt.fleet.start(self.channel)
        # Container listings come from the control plane, which asks the engine for everyone.
        rt.docker_lister = self._docker_listing
        rt.docker = rt.build_docker_resolver(rt.config)
        # In publish order, on the same link as everything else: a read the control plane makes
        # after a barrier (WorkerPool.barrier) sees what a worker published before answering it.
        rt.bus.forward(lambda kind: kind in FORWARDED or kind in self.wanted, lambda event: self.channel.send(
            {"t": "event", "type": event["type"], "data": event["data"]}))
        # The conversations are assembled by the control plane: it hears when rows were written.
        rt.writer.on_transactions = lambda: self.channel.send({"t": "transactions"})
        servers = rt.proxy_servers(reuse_port=True)
        rt.writer.start()
        rt.sessions.start()
        rt.tracker.start()
        rt.mitm.watch()
        rt.middlewares.start()
        gevent.signal_handler(signal.SIGTERM, self._on_stop_signal)
        gevent.signal_handler(signal.SIGINT, self._on_stop_signal)
        gevent.signal_handler(signal.SIGHUP, lambda: None)  # the control plane reloads, then tells us
        self.channel.start()
        for server in servers:
            server.start()
        freeze_startup_objects()  # what this worker built at its start, as the control plane does
        self.channel.send({"t": "ready"})
        log.debug("worker %d serving (pid %d)", self.index, os.getpid())
        self._stop.wait()
        self._drain(servers)

    # -- from the control plane ----------------------------------------------------------
    def _on_message(self, m: Message) -> None:
        rt = self.rt
        kind = m.get("t")
        if kind == "ping":  # everything sent before it has been applied (WorkerPool.barrier)
            self.channel.reply(m, True)
        elif kind == "metrics":  # a scrape on the control plane
            self.channel.reply(m, self.metrics.take())
        elif kind == "cert":  # generated, uploaded or reloaded on the control plane
            rt.mitm.reload(force=True)
        elif kind == "recordings":
            rt.recording_service.load()
        elif kind == "unanswered":  # another worker's hold timed out with nobody answering
            container, host, port = m["k"]
            rt.holds.remember_unanswered((str(container), str(host), int(port)), float(m["s"]))
        elif kind == "wants":
            self.wanted = {t for t in m.get("types", ()) if t in ON_DEMAND}
        elif kind == "flush":  # an API read on the control plane wants what was logged a moment ago
            gevent.spawn(self._flush, m)  # a locked database must not hold up the messages behind it
        elif kind == "health":  # /api/health on the control plane: this worker's store and upstream
            proxy = rt.upstream.get()
            self.channel.reply(m, {"held": rt.db.held_for() if isinstance(rt.db, OffHubMixin) else 0.0,
                                   "reasons": rt.writer.health(),
                                   "upstream": proxy.status() if proxy is not None else None})
        elif kind == "dns":
            rt.dnscache.load(CacheRow(*row) for row in m.get("rows", ()))
        elif kind == "reload":
            token = from_other_node.set(True)  # the control plane logged and audited it
            try:
                rt.reloader.reload(data_path_only=True)
            finally:
                from_other_node.reset(token)
        elif kind == "http.answer":
            who = current_actor.set(str(m.get("who") or "api"))  # who answered, for the audit entry
            try:
                held = rt.request_holds.answer(int(m["id"]), bool(m.get("allow")), m.get("actor"),
                                               m.get("reason"))
            finally:
                current_actor.reset(who)
            self.channel.reply(m, None if held is None else held.to_json())
        else:
            rt.fleet.apply(m)

    def _docker_listing(self) -> dict[str, ContainerInfo]:
        # The control plane's engine timeout, and a margin for the link.
        return listing_from_message(self.channel.call({"t": "docker"}, timeout=DOCKER_TIMEOUT + 0.5))

    def _flush(self, m: Message) -> None:
        try:
            self.rt.writer.flush()
        except Exception:  # noqa: BLE001 - the rows stay queued; health says why
            log.debug("worker %d: flush before an API read failed", self.index, exc_info=True)
        self.channel.reply(m, True)

    def _link_lost(self) -> None:
        if not self._stopping:
            log.error("worker %d: the control plane is gone; stopping", self.index)
            self._stop.set()

    def _on_stop_signal(self) -> None:
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    # -- stop ----------------------------------------------------------------------------
    def _drain(self, servers: list[StreamServer]) -> None:
        """As the single-process stop does: stop accepting, answer the held, let open
        connections finish for up to `drain_seconds`, close the rest, write what is queued."""
        rt = self.rt
        self._stopping = True
        for server in servers:
            server.close()
        rt.holds.release_all("shutting_down")
        rt.request_holds.release_all("shutting_down")
        pools = [s.pool for s in servers if s.pool is not None]
        drain(pools, rt.config.drain_seconds, self._hurry, f"worker {self.index}: ")
        rt.tracker.close_all()
        for pool in pools:
            pool.kill(block=True, timeout=1)
        for part in (rt.tracker, rt.sessions, rt.mitm, rt.middlewares, rt.writer):
            part.stop()
        self.channel.flush()
        self.channel.close()
        rt.db.close()
