"""The decision flow shared by both proxy listeners (docs/user-guide.md#rules-pending-requests-and-holds): identity → decide → hold →
dial under the guard → log, then track the tunnel under the rule that allowed it.

One log row per admission: a blocked one is logged by `admit`; an allowed one by `dial` (or
`admitted` when an HTTP keep-alive upstream is reused), once the IP actually dialled is known.
A raw-IP destination is enriched with the name this client resolved to that IP through our DNS
listener (proxy/dnscache.py: keyed by the connection's source IP, never by PTR)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.policy.identity import container_from_username
from greyproxy.policy.patterns import canonical_host
from greyproxy.proxy.dnscache import canonical_ip
from greyproxy.proxy.relay import closer, relay
from greyproxy.proxy.tracker import TrackedConnection
from greyproxy.proxy.tunnel import DialError, dial, peer_ip
from greyproxy.store.records import Attempt
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    from greyproxy.capture.recorder import Exchange
    from greyproxy.capture.redact import Redactor
    from greyproxy.config import Config
    from greyproxy.credentials.vault import Vault
    from greyproxy.metrics import Metrics
    from greyproxy.proxy.dnscache import HostnameCache
    from greyproxy.proxy.docker import DockerResolver
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.hold import HoldManager
    from greyproxy.proxy.limits import Limits
    from greyproxy.proxy.mitm.intercept import Interceptor
    from greyproxy.proxy.resolver import Resolver
    from greyproxy.proxy.tracker import ConnectionTracker
    from greyproxy.proxy.upstream_proxy import UpstreamHolder
    from greyproxy.proxy.views import PolicyView, SessionView
    from greyproxy.store.writer import StoreWriter

log = logging.getLogger("greyproxy.decision")

DEFAULT_BLOCKED_TEXT = (
    "greyproxy blocked this connection.\n"
    "Container: {container}\nDestination: {host}:{port}\nReason: {reason}\n"
    "A human decides what this container may reach; ask them to approve it at {dashboard} "
    "(Pending requests). Retrying or trying other routes will not help.\n"
)


@dataclass(slots=True)
class Admission:
    container: str
    host: str
    port: int
    decision: Decision
    resolved_hostname: str | None = None
    method: str = ""
    elapsed_ms: int = 0  # decision time, hold included
    container_id: str = ""  # set only when the Docker resolver named the container

    @property
    def allowed(self) -> bool:
        return self.decision.verdict is Verdict.ALLOW

    @property
    def reason(self) -> str:
        return self.decision.reason


class Gatekeeper:
    def __init__(self, *, config: Callable[[], Config], docker: Callable[[], DockerResolver | None],
                 sessions: SessionView, policy: PolicyView, dnscache: HostnameCache, guard: ControlPlaneGuard,
                 resolver: Resolver, upstream: UpstreamHolder, holds: HoldManager, tracker: ConnectionTracker,
                 writer: StoreWriter, metrics: Metrics, vault: Vault, redactor: Callable[[], Redactor],
                 dashboard_url: Callable[[], str]) -> None:
        # Read at each use, as they are replaced while running: the config and the Docker
        # resolver on reload, the redactor on a settings change; the dashboard URL needs the
        # API's port, known once it listens.
        self.config = config
        self.docker = docker
        self.redactor = redactor
        self.dashboard_url = dashboard_url
        self.sessions = sessions
        self.policy = policy
        self.dnscache = dnscache
        self.guard = guard
        self.resolver = resolver
        self.upstream = upstream
        self.holds = holds
        self.tracker = tracker
        self.writer = writer
        self.metrics = metrics
        self.vault = vault
        self.limits: Limits | None = None  # set when the listeners start (proxy/limits.py)
        self.interceptor: Interceptor | None = None  # set once built: it refuses through this gate

    def challenges(self, source_ip: str) -> bool:
        """Whether an HTTP-proxy client that sent no usable credentials is answered 407
        instead of becoming `unknown-<ip>`: yes with `identity.anonymous: challenge`, unless
        Docker names this source (then the container's name is its identity anyway)."""
        if self.config().identity_anonymous != "challenge":
            return False
        docker = self.docker()
        return docker is None or docker.lookup(source_ip) is None

    def admit(
        self,
        *,
        username: str | None,
        password: str | None = None,
        source_ip: str,
        host: str,
        port: int,
        method: str,
        client: socket.socket | None,
    ) -> Admission:
        started = time.monotonic()
        # A container the engine knows by this source IP, else the username, else unknown-<ip>.
        docker = self.docker()
        found = docker.lookup(source_ip) if docker is not None else None
        claimed = found.name if found is not None else container_from_username(username, source_ip)
        container, refusal = self.sessions.identity(username, password, claimed)
        container_id = found.id if found is not None and container == found.name else ""
        host = canonical_host(host)  # the form the rule index matches, so rows and rules agree
        # Only a raw IP needs a name, and only this client's own lookups may supply it.
        resolved = self.dnscache.lookup(source_ip, host) if canonical_ip(host) is not None else None
        request = ConnectionRequest(
            container=container,
            host=host,
            port=port,
            resolved_hostname=resolved,
            control_plane=self.guard.is_control_plane(host, port),
        )
        if refusal is not None:  # this container's session requires its proxy token
            decision = Decision(Verdict.DENY, refusal)
        else:
            decision = self.policy.decide(request)
        decided = time.monotonic()
        held_seconds = None
        if decision.verdict is Verdict.HOLD:
            self.writer.attempt(Attempt(container, container_id, host, port, resolved, utcnow()))
            limits = self.limits
            over = limits.hold_refusal(self.holds, container) if limits is not None else None
            if limits is not None and over is not None:  # refused at once (still pending for a human)
                limits.hit(over, container, f"{host}:{port} not held, {self.holds.held_by(container)} held "
                                                 f"for this container, {self.holds.total} in total")
                decision = Decision(Verdict.DENY, "hold_limit")
            else:
                config = self.config()
                decision = self.holds.hold(request, config.hold_seconds, client, config.unanswered_seconds)
                held_seconds = time.monotonic() - decided
        else:
            self.holds.forget((container, host, port))  # decided: a later hold waits again
        self.metrics.timing(decided - started, held_seconds)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        admission = Admission(container, host, port, decision, resolved, method, elapsed_ms, container_id)
        if not admission.allowed:
            self.record(container, host, port, method, decision, elapsed_ms, resolved_hostname=resolved,
                        container_id=container_id)
        return admission

    def record(
        self,
        container: str,
        host: str,
        port: int,
        method: str,
        decision: Decision,
        elapsed_ms: int,
        *,
        resolved_hostname: str | None = None,
        dialed_ip: str | None = None,
        container_id: str = "",
    ) -> None:
        allowed = decision.verdict is Verdict.ALLOW
        rule_id = decision.rule.id if decision.rule is not None else None
        self.writer.log(
            container_name=container,
            container_id=container_id or None,
            destination_host=host,
            destination_port=port,
            resolved_hostname=resolved_hostname,
            dialed_ip=dialed_ip,
            method=method,
            result="allowed" if allowed else "blocked",
            rule_id=rule_id,
            response_time_ms=elapsed_ms,
            reason=decision.reason,
            would=decision.would,
        )
        if allowed and rule_id is not None:
            self.writer.used(rule_id)
        # Counted where the log row is written, so the metrics always agree with /api/logs.
        self.metrics.decided("allowed" if allowed else "blocked", decision.reason)
        if log.isEnabledFor(logging.INFO):
            # One structured line per decision: key=value as text, top-level fields as JSON.
            log.info("decision", extra={"fields": {
                "container": container, "destination": host, "port": port,
                "decision": "allow" if allowed else "block", "reason": decision.reason, "rule_id": rule_id,
                "hold_ms": elapsed_ms, "resolved": resolved_hostname, "dialed_ip": dialed_ip,
                "method": method, "would": decision.would,
            }})

    def refused(self, admission: Admission, reason: str, method: str | None = None, elapsed_ms: int = 0) -> None:
        """The blocked log row of an admitted connection refused later (guard at dial time, a
        request naming another host, a TLS hello, an opaque stream, …)."""
        a = admission
        self.record(a.container, a.host, a.port, method or a.method or "HTTP", Decision(Verdict.DENY, reason),
                    elapsed_ms, resolved_hostname=a.resolved_hostname, container_id=a.container_id)

    def admitted(self, admission: Admission, dialed_ip: str | None) -> None:
        """The log row of an allowed admission (called once, after the dial attempt)."""
        a = admission
        self.record(a.container, a.host, a.port, a.method, a.decision, a.elapsed_ms,
                    resolved_hostname=a.resolved_hostname, dialed_ip=dialed_ip, container_id=a.container_id)

    def substitute(
        self, exchange: Exchange, headers: list[tuple[str, str]], target: str, host: str
    ) -> tuple[list[tuple[str, str]], str]:
        """Swap credential placeholders for secrets in what goes upstream; the
        exchange keeps the original request for storage and learns which labels were used, the
        real values it carries (`reverse`, for the response) and the values redaction removes
        from it (`redacted_values`, scrubbed from storage). Only the connection's own secrets are
        swapped: a session's for its container (a connection naming the session has that
        container as its identity), a global one for the containers it is bound to."""
        new_headers, new_target, result = self.vault.substitute_request(headers, target, host,
                                                                           container=exchange.container)
        exchange.redacted_values = self.redactor().redacted_values(exchange.request.headers, exchange.url)
        if result.changed:
            exchange.reverse = result.reverse
            exchange.substituted = result.labels
            exchange.session_id = result.session_id
            self.sessions.count_substitutions(result.per_session)
        return new_headers, new_target

    def blocked_text(self, admission: Admission, reason: str | None = None) -> str:
        template = self.config().blocked_message or DEFAULT_BLOCKED_TEXT
        dashboard = self.dashboard_url().split("?", 1)[0].replace("/dashboard", "/pending")
        return template.format(
            container=admission.container,
            host=admission.host,
            port=admission.port,
            reason=reason or admission.reason,
            dashboard=dashboard,
        )

    def dial(self, admission: Admission) -> socket.socket:
        """Connect upstream for an allowed admission and write its log row; a guard refusal at
        dial time (control_plane, private_range) is logged as blocked with that reason."""
        rule = admission.decision.rule
        # Only an allow rule can name a private address into reach; in report mode the
        # decision may carry the deny rule that would have applied.
        pattern = rule.destination_pattern if rule is not None and rule.action == "allow" else None
        try:
            sock = dial(admission.host, admission.port, self.guard, resolver=self.resolver, rule_pattern=pattern,
                        upstream=self.upstream.get())
        except DialError as exc:
            if exc.reason in ("control_plane", "private_range"):
                self.refused(admission, exc.reason, elapsed_ms=admission.elapsed_ms)
            else:
                self.admitted(admission, None)
            raise
        self.admitted(admission, peer_ip(sock))
        return sock

    def tunnel(self, admission: Admission, client: socket.socket, upstream: socket.socket, sniff: bool = True,
               early: bytes = b"") -> None:
        """Serve an allowed connection (sniffed: intercepted, parsed or piped), registered so
        revoking its rule tears it down."""
        # A connection let through by a session's allow-all has no rule: it ends with the session.
        session_id = (self.sessions.current_sessions().get(admission.container)
                      if admission.reason == "session_allow_all" else None)
        tracked = self.tracker.add(
            TrackedConnection(admission.decision.rule, closer(client, upstream), session_id=session_id)
        )
        try:
            if sniff:
                assert self.interceptor is not None, "runtime.py sets it before the listeners start"
                self.interceptor.serve(admission, client, upstream, early)
            else:
                if early:
                    upstream.sendall(early)
                self.metrics.relayed(*relay(client, upstream))
        finally:
            self.tracker.remove(tracked)
