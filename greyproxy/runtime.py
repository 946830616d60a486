"""Composition root: builds the store, bus, policy, services, listeners and API, and owns
their start and stop order. Nothing else creates long-lived objects."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer

from greyproxy import __version__, sdnotify
from greyproxy.ca.state import MitmState
from greyproxy.capture.recorder import TransactionRecorder
from greyproxy.capture.recordings import ActiveRecordings
from greyproxy.capture.redact import Redactor
from greyproxy.capture.scrub import Scrubber
from greyproxy.config import Config, LimitsConfig, ListenAddress, load_config, share_of
from greyproxy.conversations.assembler import ConversationAssembler
from greyproxy.credentials.crypto import KeyFileError
from greyproxy.credentials.vault import Vault
from greyproxy.drain import drain
from greyproxy.events import Bus
from greyproxy.files import write_file
from greyproxy.fleet.key import credential_key
from greyproxy.fleet.link import FleetLink, notifier
from greyproxy.fleet.node import node_id
from greyproxy.fleet.sync import FleetSync
from greyproxy.gcpolicy import freeze_startup_objects
from greyproxy.metrics import Metrics
from greyproxy.middleware import MiddlewareEngine
from greyproxy.notify import DesktopNotifier, pending_link
from greyproxy.policy.durations import parse_go_duration
from greyproxy.proxy.dns import DnsAnswerer, DnsService, bind_dns_sockets, without_own_address
from greyproxy.proxy.dnscache import CacheRow, HostnameCache
from greyproxy.proxy.dnsupstream import Upstream, system_servers
from greyproxy.proxy.docker import DockerResolver, Lister
from greyproxy.proxy.exchange import ExchangePipeline
from greyproxy.proxy.gate import Gatekeeper
from greyproxy.proxy.guard import ControlPlaneGuard
from greyproxy.proxy.hold import HoldManager
from greyproxy.proxy.http import HttpProxyHandler
from greyproxy.proxy.http import refuse_connection as refuse_http
from greyproxy.proxy.limits import Limits, wsgi_handler
from greyproxy.proxy.mitm.intercept import Interceptor
from greyproxy.proxy.mwhooks import MiddlewareHooks
from greyproxy.proxy.ptr import ReverseNames
from greyproxy.proxy.request_hold import RequestScreen, make_request_holds
from greyproxy.proxy.resolver import Resolver
from greyproxy.proxy.socks5 import Socks5Handler
from greyproxy.proxy.socks5 import refuse_connection as refuse_socks5
from greyproxy.proxy.tracker import ConnectionTracker
from greyproxy.proxy.upstream_proxy import UpstreamHolder
from greyproxy.reload import Reloader, sync_rules_files
from greyproxy.services.audit import AuditLog, current_actor
from greyproxy.services.credentials import CredentialService
from greyproxy.services.maintenance import RedactionJob, Retention, RetentionPolicy, ScrubJob
from greyproxy.services.modes import ModeService
from greyproxy.services.pending import PendingService
from greyproxy.services.policy_state import Extras, PolicyHolder, RuleChange
from greyproxy.services.recordings import RecordingService
from greyproxy.services.replay import Replayer
from greyproxy.services.rules import RuleService
from greyproxy.services.sessions import SessionService
from greyproxy.services.settings import SettingsStore
from greyproxy.services.silent import SilentMode
from greyproxy.store.db import open_database
from greyproxy.store.dnscache import load_dns_cache
from greyproxy.store.executor import run_in_db
from greyproxy.store.migrate import apply_migrations
from greyproxy.store.writer import StoreWriter
from greyproxy.trust import is_installed
from greyproxy.workers.child import WorkerProcess
from greyproxy.workers.control import WorkersControl
from greyproxy.workers.pool import WorkerPool

log = logging.getLogger("greyproxy")
# Held connections are re-decided at most this often (seconds) during a burst of policy changes.
REEVALUATE_TICK = 0.05


def load_or_create_token(data_dir: Path) -> str:
    path = data_dir / "api-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)
            return token
    token = secrets.token_urlsafe(32)
    write_file(path, token + "\n")
    return token


def _bind(addr: ListenAddress, reuse_port: bool = False) -> Any:
    """A listening socket. `reuse_port`: one of several on the same port, one per worker
    (SO_REUSEPORT: the kernel spreads new connections over them)."""
    from gevent import socket as gsocket

    family = gsocket.AF_INET6 if ":" in addr.host else gsocket.AF_INET
    sock = gsocket.socket(family, gsocket.SOCK_STREAM)
    sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEPORT, 1)
    sock.bind((addr.host, addr.port))
    sock.listen(1024)
    return sock


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.version = __version__
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(config.data_dir, 0o700)

        self.db = open_database(config.database_url, config.db_path)
        apply_migrations(self.db)
        # Fleet mode (docs/fleet.md): this node's id, and what follows the other nodes' changes.
        self.node_id = node_id(config.raw["fleet"]["node_id"], config.data_dir)
        self.fleet: FleetSync | None = None  # built below, once what it follows exists
        self.fleet_link: FleetLink | None = None

        self.bus = Bus()
        self.metrics = Metrics()
        self.policy = PolicyHolder()
        self._reevaluate_pending = False
        self._last_reevaluate = 0.0
        self.silent = SilentMode(self.bus, self.policy_refresh)
        self.rules = RuleService(self.db, self.bus, self.policy_changed)
        self.modes = ModeService(self.db, self.bus, lambda: self.policy_refresh(modes=True), config.container_modes)
        self.holds = HoldManager(self.bus, self.policy.decide)
        self.guard = ControlPlaneGuard(deny_private=config.guard_private_ranges == "deny")
        # single HTTP requests held (docs/request-rules.md)
        self.request_holds = make_request_holds(self.bus, self.policy, self.guard)
        # DNS: the upstream servers, also asked for the PTR names shown beside raw IPs.
        self.dns_upstream = Upstream(config.dns_upstream or system_servers())
        self.reverse = ReverseNames(self.dns_upstream, on_found=lambda ip, _name: self.pending.ptr_found(ip))
        self.pending = PendingService(self.db, self.bus, self.rules, self.holds.count, self.holds.dismiss,
                                      self.reverse.peek)
        self.writer = StoreWriter(self.db, self.pending.record_attempt, self.rules.touch_used)
        self.writer.observe_batch = self.metrics.db_batch
        self.writer.node_id = self.node_id
        self.tracker = ConnectionTracker(self.policy.rule, config.enforce_expiry_on_open)
        # The dial-time resolver, and the per-client IP → name cache, loaded from the previous
        # run (rows keep their absolute expiry).
        self.resolver = Resolver(self.dns_upstream)
        # The corporate upstream proxy, if any, read from self.config at each dial (live on reload).
        self.upstream = UpstreamHolder(lambda: self.config.upstream)
        self.dnscache = HostnameCache(persist=self._dns_learned)
        self.dnscache.load(CacheRow(*row) for row in load_dns_cache(time.time()))
        self.dns: DnsService | None = None
        # Settings first: the MITM toggle, bypass list and redaction patterns saved there win over YAML.
        self.settings = SettingsStore.for_config(config, self.bus)
        saved = self.settings.values()
        mitm_cfg = config.raw["mitm"]
        self.mitm = MitmState(config.data_dir, self.bus, enabled=saved["mitmEnabled"], bypass=saved["mitmBypass"],
                              extra_ca_bundle=mitm_cfg["extra_ca_bundle"])
        # First start makes the CA (mitm.generate_ca); serve says where it is and how to trust it.
        self.ca_generated = bool(mitm_cfg["generate_ca"]) and self.mitm.ensure()
        self.redactor = Redactor(saved["redactedHeaders"])
        self.settings.cert_info = lambda: self.mitm.status(is_installed())
        self.settings.on_change(self.apply_settings)
        # From here on every change published on the bus is an audit entry.
        self.audit = AuditLog(self.db, self.bus, {"settings": lambda: self.settings.to_json(None),
                                                  "silent": self.silent.status})
        # Rules made "until restart" end here, before the index is built (docs/user-guide.md#until-restart).
        self.restart_rules_removed = self.rules.purge_until_restart()
        if self.restart_rules_removed:
            self.audit.record("rule.purge", None, None, {"rule_type": "until_restart", "removed":
                              self.restart_rules_removed, "reason": "greyproxy started"}, actor="system")
        self.redaction = RedactionJob(self.db, self.bus, lambda: self.redactor)
        self.retention = Retention(self.db, self.bus, RetentionPolicy.from_config(config.raw["retention"]))
        self._setup_sessions()
        self.scrub_job = ScrubJob(self.db, self.bus, lambda: self.redactor, self.scrubber, self.vault, self.audit)
        self.recordings = ActiveRecordings()  # which running capture recording takes an exchange
        self.recorder = TransactionRecorder(self.bus, lambda: self.redactor, self.scrubber, self.recordings,
                                            self.writer, self.metrics)
        self.assembler = ConversationAssembler(self.db, self.bus,
                                               lambda: bool(self.settings.values()["conversationsEnabled"]))
        self.recording_service = RecordingService(self.db, self.bus, self.writer, self.recordings,
                                                  lambda: self.redactor, self.scrubber, self.assembler.wake)
        self.recording_service.load()
        self.replayer = Replayer(self.policy, self.guard, self.resolver, self.upstream,
                                 lambda: self.config.raw["mitm"]["extra_ca_bundle"], self.writer,
                                 lambda: self.redactor, self.scrubber, self.recordings, self.bus,
                                 vault=self.vault, on_substituted=self.sessions.count_substitutions)
        self.writer.on_transactions = self.assembler.wake
        self.middlewares = MiddlewareEngine(list(config.middlewares))  # inactive when empty
        self._build_proxy_path()
        # Where the Docker resolver gets its listings: the engine, unless a worker process says
        # the control plane (greyproxy/workers/child.py).
        self.docker_lister: Lister | None = None
        self.docker = self.build_docker_resolver(config)
        self.bus.add_hook(self._enforce_rule_events)
        # Worker processes (docs/workers.md) follow the control plane with the fleet's sync.
        self.workers: WorkerPool | None = None
        self.workers_control: WorkersControl | None = None
        if config.database_url or config.workers > 1:  # changes go out; waiter counts and dismissals span them
            self.fleet = FleetSync(bus=self.bus, policy_changed=self.policy_changed,
                                   policy_refresh=self.policy_refresh, rules=self.rules, modes=self.modes,
                                   holds=self.holds, pending=self.pending, sessions=self.sessions,
                                   credentials=self.credentials, vault=self.vault, silent=self.silent,
                                   settings=self.settings)
            self.bus.add_hook(self.fleet.outbound)
            self.pending.waiters, self.pending.dismiss_waiters = self.fleet.waiters, self.fleet.dismissed_here
        if config.silent_allow:
            self.silent.mode = "allow"
        self.modes.reload()
        self.policy_changed()
        if config.rules_files:  # a bad rules file stops the start, like a bad config key
            log.info("rules files: %s", sync_rules_files(self.rules, config.rules_files))
        # SIGHUP; the CLI replaces `load` with one that also re-applies its command-line flags.
        # The reloader swaps the config, token and Docker resolver held here (reload.ReloadHost).
        self.reloader = Reloader(self, lambda: load_config(config.source), metrics=self.metrics, bus=self.bus,
                                 mitm=self.mitm, rules=self.rules, dns_upstream=self.dns_upstream,
                                 tracker=self.tracker, guard=self.guard, retention=self.retention,
                                 modes=self.modes, settings=self.settings, middlewares=self.middlewares)

        self.api_token: str | None = load_or_create_token(config.data_dir) if config.api_auth == "token" else None
        self.ports: dict[str, int | None] = {}
        self._servers: list[Any] = []
        self._proxies: list[StreamServer] = []
        self.limits_share = 1  # N in each of N worker processes: each enforces 1/N of the caps
        self._limits_cache: tuple[LimitsConfig, int, LimitsConfig] | None = None
        self._stopped = Event()
        self.notifier = DesktopNotifier(self.bus, lambda: bool(self.settings.values()["notificationsEnabled"]),
                                        pending_link(lambda: self.dashboard_url))
        self.settings.notifier_info = self.notifier.status
        self.metrics.bind(version=self.version, held=lambda: self.holds.total + self._workers_gauge("held"),
                          pending=self.pending.count,
                          tunnels=lambda: len(self.tracker) + self._workers_gauge("tunnels"))
        self._stopping = False
        self._hurry = Event()

    def _build_proxy_path(self) -> None:
        """The gate, the exchange pipeline and the interceptor. What a reload or a settings change
        replaces (the config, the Docker resolver, the redactor) they read through a function."""
        def redactor() -> Redactor:
            return self.redactor

        self.gate = Gatekeeper(
            config=lambda: self.config, docker=lambda: self.docker, sessions=self.sessions, policy=self.policy,
            dnscache=self.dnscache, guard=self.guard, resolver=self.resolver, upstream=self.upstream,
            holds=self.holds, tracker=self.tracker, writer=self.writer, metrics=self.metrics, vault=self.vault,
            redactor=redactor, dashboard_url=lambda: self.dashboard_url)
        screen = RequestScreen(self.policy, self.guard, self.gate, self.request_holds, redactor, self.scrubber,
                               lambda: self.config.hold_seconds)
        hooks = MiddlewareHooks(self.middlewares, redactor, self.writer)
        self.exchanges = ExchangePipeline(self.gate, self.policy, self.guard, screen, hooks, self.recorder)
        self.interceptor = Interceptor(
            gate=self.gate, exchanges=self.exchanges, mitm=self.mitm, mitm_config=lambda: self.config.raw["mitm"],
            policy=self.policy, guard=self.guard, resolver=self.resolver, upstream=self.upstream,
            writer=self.writer, metrics=self.metrics)
        self.gate.interceptor = self.interceptor

    def build_docker_resolver(self, config: Config) -> DockerResolver | None:
        """Only when enabled; the gate asks it for the identity of each source IP."""
        docker = config.raw["docker"]
        if not docker["enabled"]:
            return None
        return DockerResolver(str(docker["socket"]), parse_go_duration(str(docker["cache_ttl"])),
                              on_result=self.metrics.docker, lister=self.docker_lister)

    def _setup_sessions(self) -> None:
        """Sessions and credentials: a key of the wrong size turns credential support off
        with a clear error instead of silently replacing the key (which would lose every secret)."""
        self.vault = Vault()
        # Nothing stored holds a real value (transactions, frames, logs, audit entries).
        self.scrubber = Scrubber(self.vault)
        self.audit.scrub = self.scrubber.text
        self.writer.scrub_row = self.scrubber.row
        key_error, created = None, False
        try:
            key, created = credential_key(self.config.data_dir, self.config.raw["fleet"]["credential_key_file"],
                                          fleet=bool(self.config.database_url))
        except KeyFileError as exc:
            key, key_error = None, str(exc)
            log.error("%s", exc)
        self.credentials = CredentialService(self.db, self.bus, self.vault, key, key_error)
        self.sessions = SessionService(self.db, self.bus, self.rules, self.credentials, self.vault,
                                       self.policy_refresh, self.tracker.cancel_session)
        self.credentials.load(created)
        self.sessions.load(created)

    # -- policy ------------------------------------------------------------------------
    def flush_writes(self) -> None:
        """Before an API read: what was logged a moment ago is written, by this process and by
        each worker process (docs/workers.md), which is asked and waited for a bounded time."""
        self.writer.flush()
        if self.workers_control is not None:
            self.workers_control.flush_writers()

    def policy_changed(self, change: RuleChange | None = None) -> None:
        """A committed rule change (issue 13): patch the index in place (synchronous and cheap, so
        the very next decision sees it), or rebuild it from the store when asked to (start,
        ingest) or when nothing says what changed; then re-decide held connections, once a tick."""
        if change is None or change.full:
            self.policy.rebuild(lambda: run_in_db(self.db, self.rules.all_specs), self._policy_extras)
        else:
            self.policy.apply(change)
        self._reevaluate_soon()

    def _policy_extras(self) -> Extras:
        sessions = getattr(self, "sessions", None)  # None while the runtime is being built
        return (self.silent.mode, self.modes.entries(), sessions.current_sessions() if sessions else None,
                sessions.allow_all_containers() if sessions else frozenset())

    def policy_refresh(self, modes: bool = False) -> None:
        """Silent mode, sessions (supersession, allow-all) or container modes changed: the rules
        did not, so the index is kept and only the small parts are swapped."""
        if modes:
            self.modes.reload()
        sessions = getattr(self, "sessions", None)
        self.policy.refresh(
            self.silent.mode, self.modes.entries(),
            current_sessions=sessions.current_sessions() if sessions else None,
            allow_all=sessions.allow_all_containers() if sessions else frozenset(),
        )
        self._reevaluate_soon()

    def _reevaluate_soon(self) -> None:
        """Held connections are re-decided by one greenlet at most once per REEVALUATE_TICK, so a
        burst of changes (a bulk allow, a heartbeat storm) costs one pass over the waiters. It
        runs after the change that scheduled it is in the index, so a waiter woken by an
        approval always sees the new rule."""
        if self._reevaluate_pending:
            return
        self._reevaluate_pending = True
        gevent.spawn(self._reevaluate_held)

    def _reevaluate_held(self) -> None:
        wait = self._last_reevaluate + REEVALUATE_TICK - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        self._reevaluate_pending = False
        self._last_reevaluate = time.monotonic()
        self.holds.reevaluate()
        self.request_holds.reevaluate()

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Settings the proxy acts on apply to the next connection (the recorder reads self.redactor)."""
        self.mitm.enabled = values["mitmEnabled"]
        self.mitm.set_bypass(values["mitmBypass"])
        self.redactor = Redactor(values["redactedHeaders"])
        if values["conversationsEnabled"] and getattr(self, "assembler", None) is not None:
            self.assembler.wake()  # turned back on: assemble what was captured meanwhile

    def _enforce_rule_events(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "rule.deleted" or (kind == "rule.updated" and data.get("action") == "deny"):
            self.tracker.cancel_rule(data["id"])

    # -- listeners ---------------------------------------------------------------------
    @property
    def dashboard_url(self) -> str:
        addr = self.config.listen["api"]
        host = "127.0.0.1" if addr.host in ("0.0.0.0", "") else ("[::1]" if addr.host == "::" else addr.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"http://{host}:{self.ports['api']}{self.config.path_prefix}/dashboard"
        return f"{url}?token={self.api_token}" if self.api_token else url

    def start(self) -> None:
        from greyproxy.api.app import create_app

        cfg = self.config.listen
        count = self.config.workers
        # With worker processes, the control plane takes the proxy ports only until each worker
        # has bound its own socket on them (docs/workers.md); it never accepts on them.
        sockets = {name: _bind(cfg[name], reuse_port=count > 1) for name in ("http", "socks5")}
        sockets["api"] = _bind(cfg["api"])
        for name, sock in sockets.items():
            host, port = sock.getsockname()[:2]
            self.ports[name] = port
            self.guard.add(ListenAddress(cfg[name].host, port))
        udp, tcp = bind_dns_sockets(cfg["dns"])
        self.ports["dns"] = udp.getsockname()[1]
        self.guard.add(ListenAddress(cfg["dns"].host, self.ports["dns"]))
        self.dns_upstream.servers = without_own_address(self.dns_upstream.servers, cfg["dns"], self.ports["dns"])
        answerer = DnsAnswerer(self.dns_upstream, self.dnscache, lambda: self.policy.state, self.config.dns_policy)
        # limits: read from self.config at each use, so a reload applies them (issue 13).
        limits = self.limits = Limits(self._limits_config, self.metrics)
        self.gate.limits = self.interceptor.limits = limits
        self.dns = DnsService(udp, tcp, answerer, limits)
        self._proxy_sockets = {name: sockets[name] for name in ("http", "socks5")}
        self._control_sockets = [sockets["api"], udp, tcp]
        if count > 1:  # forked now, before anything here runs: a worker starts from this state
            pool = self.workers = WorkerPool(count, self.node_id, self.fleet.apply,  # type: ignore[union-attr]
                                             self.fleet.resync)  # type: ignore[union-attr]
            pool.fork(lambda index, sock: WorkerProcess(self, index, count, sock).run())
            pool.wait_ready()
            for sock in self._proxy_sockets.values():
                sock.close()
            control = self.workers_control = WorkersControl(pool, self.bus, self.metrics, self.request_holds,
                                                            self.assembler.wake, lambda: self.docker)
            self.request_holds = control.request_holds  # the API lists and answers every worker's
        self._proxies = self.proxy_servers() if count == 1 else []
        api = WSGIServer(sockets["api"], create_app(self), log=None, error_log=logging.getLogger("greyproxy.api"),
                         handler_class=wsgi_handler(limits))
        api.set_handle(limits.guard("api", api.handle, refuse_http))  # the same connection caps
        self._servers = [*self._proxies, api, self.dns]
        self.writer.start()
        self.sessions.start()
        self.tracker.start()
        self.mitm.watch()
        self.retention.start()
        self.notifier.start()
        self.middlewares.start()  # hello handshakes, at most 5 s; failures are retried, not fatal
        self.assembler.start()
        if self.fleet is not None and self.config.database_url:
            pool = self.workers
            self.fleet_link = FleetLink(self.config.database_url, self.node_id, notifier(self.db),
                                        pool.from_fleet if pool else self.fleet.apply,
                                        pool.fleet_resync if pool else self.fleet.resync)
            if pool is not None:
                pool.fleet_link = self.fleet_link
            self.fleet.start(pool or self.fleet_link)
            self.fleet_link.start()
            if self.restart_rules_removed:  # the other nodes drop them from their index too
                self.fleet_link.send({"t": "resync"})
        elif self.fleet is not None and self.workers is not None:
            self.fleet.start(self.workers)
        for server in self._servers:
            server.start()
        freeze_startup_objects()  # before the handshake says we are up: no pause once clients come
        self.write_handshake()

    def _limits_config(self) -> LimitsConfig:
        """The `limits:` this process enforces: in one of N workers its share, so the workers
        together never allow more than the configured caps (docs/workers.md#limits)."""
        current = self.config.limits
        cached = self._limits_cache
        if cached is None or cached[0] is not current or cached[1] != self.limits_share:
            cached = self._limits_cache = (current, self.limits_share, share_of(current, self.limits_share))
        return cached[2]

    def proxy_servers(self, reuse_port: bool = False) -> list[StreamServer]:
        """The HTTP and SOCKS5 proxy servers: on the sockets bound at start, or, in a worker,
        on sockets of its own on the same ports (`reuse_port`)."""
        limits = self.limits
        if reuse_port:
            sockets = {name: _bind(ListenAddress(self.config.listen[name].host, int(self.ports[name] or 0)),
                                   reuse_port=True) for name in ("http", "socks5")}
        else:
            sockets = self._proxy_sockets
        http_handler = HttpProxyHandler(self.gate, self.exchanges, self.mitm, limits)
        socks_handler = Socks5Handler(self.gate, self.mitm, limits)
        # The pool leaves room above the total cap so refusals over it are answered, not queued.
        pool = self.config.limits.connections_total + 1024
        return [
            StreamServer(sockets["http"], limits.guard("http", http_handler.handle, refuse_http), spawn=pool),
            StreamServer(sockets["socks5"], limits.guard("socks5", socks_handler.handle, refuse_socks5),
                         spawn=pool),
        ]

    def close_control_plane_sockets(self) -> None:
        """In a worker: the API and DNS sockets, and the ports the control plane holds, are not its own."""
        for sock in [*self._control_sockets, *self._proxy_sockets.values()]:
            sock.close()

    def gather_metrics(self) -> None:
        """Before a scrape: the workers' counters too (greyproxy/workers/metrics_feed.py)."""
        if self.workers_control is not None:
            self.workers_control.gather_metrics()

    def _workers_gauge(self, name: str) -> float:
        return self.workers_control.gauge(name) if self.workers_control is not None else 0.0

    def _dns_learned(self, row: CacheRow) -> None:
        """An IP → name attribution from a DNS answer given here (the workers get it too)."""
        self.writer.dns_cache(row)
        if self.workers_control is not None:
            self.workers_control.dns_learned(row)

    def status_line(self) -> str:
        p = self.ports
        return (f"http :{p.get('http')} socks5 :{p.get('socks5')} dns :{p.get('dns')} api :{p.get('api')}; "
                f"{self.holds.total} held, {len(self.tracker)} open")

    def write_handshake(self) -> None:
        info = {
            "port": self.ports["api"],
            "token": self.api_token,
            "pid": os.getpid(),
            "version": self.version,
            "started_at": self.started_at,
            "ports": self.ports,
            "path_prefix": self.config.path_prefix,  # api.path_prefix: the CLI puts it before /api
        }
        write_file(self.config.data_dir / "api-handshake.json", json.dumps(info) + "\n")

    def stop(self, grace: float | None = None) -> None:
        """Graceful: stop accepting, answer held connections, let open ones finish for up to
        `drain_seconds` (a second SIGTERM/SIGINT cuts it short), then close what is left."""
        self._stopping = True
        grace = self.config.drain_seconds if grace is None else grace
        sdnotify.notify("STOPPING=1\nSTATUS=draining connections")
        proxies = self._proxies
        others = [s for s in self._servers if s not in proxies]
        for server in proxies:
            server.close()
        self.holds.release_all("shutting_down")
        self.request_holds.release_all("shutting_down")
        if self.workers is not None:  # each drains its own connections meanwhile
            self.workers.stop(grace)
        pools = [s.pool for s in proxies if s.pool is not None]
        drain(pools, grace, self._hurry)
        self.tracker.close_all()  # their handlers end on the closed sockets
        for pool in pools:
            pool.kill(block=True, timeout=1)
        for server in others:
            server.stop(timeout=1.0)
        self.tracker.stop()
        self.sessions.stop()
        self.mitm.stop()
        self.retention.stop()
        self.notifier.stop()
        self.middlewares.stop()
        self.assembler.stop()
        self.tracker.close_all()
        self.writer.stop()
        if self.fleet_link is not None and self.fleet is not None:
            self.fleet_link.stop()  # after the writer: its last pending rows are announced too
            self.fleet.stop()
        (self.config.data_dir / "api-handshake.json").unlink(missing_ok=True)
        self.db.close()
        self._stopped.set()

    def _on_reload_signal(self) -> None:
        current_actor.set("signal")  # this greenlet's own context: audit entries say who
        self.reloader.reload()
        if self.workers is not None:  # they re-read the same file for the data path's keys
            self.workers.broadcast({"t": "reload"})

    def _on_stop_signal(self) -> None:
        if self._stopping:
            self._hurry.set()
        else:
            self._stopped.set()

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        self.start()
        if on_ready:
            on_ready()
        gevent.signal_handler(signal.SIGTERM, self._on_stop_signal)
        gevent.signal_handler(signal.SIGINT, self._on_stop_signal)
        gevent.signal_handler(signal.SIGHUP, self._on_reload_signal)  # config, rules files, token, CA
        # Every listener is bound and serving: tell systemd (Type=notify), if it is watching.
        sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.status_line()}")
        self._stopped.wait()
        self._stopped.clear()
        self.stop()
