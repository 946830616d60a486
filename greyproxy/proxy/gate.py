"""The decision flow shared by both proxy listeners (§1.3, §4): identity → decide → hold →
log, then dial under the guard and track the tunnel under the rule that allowed it."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.policy.identity import container_from_username
from greyproxy.proxy.tracker import TrackedConnection
from greyproxy.proxy.tunnel import closer, dial, relay
from greyproxy.services.pending import Attempt
from greyproxy.timeutil import utcnow

if TYPE_CHECKING:
    from greyproxy.runtime import Runtime

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

    @property
    def allowed(self) -> bool:
        return self.decision.verdict is Verdict.ALLOW

    @property
    def reason(self) -> str:
        return self.decision.reason


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class Gatekeeper:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def admit(
        self,
        *,
        username: str | None,
        source_ip: str,
        host: str,
        port: int,
        method: str,
        client: socket.socket | None,
    ) -> Admission:
        rt = self.rt
        started = time.monotonic()
        container = container_from_username(username, source_ip)
        host = normalize_host(host)
        request = ConnectionRequest(
            container=container, host=host, port=port, control_plane=rt.guard.is_control_plane(host, port)
        )
        decision = rt.policy.decide(request)
        if decision.verdict is Verdict.HOLD:
            rt.writer.attempt(Attempt(container, "", host, port, None, utcnow()))
            decision = rt.holds.hold(request, rt.config.hold_seconds, client)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        self.record(container, host, port, method, decision, elapsed_ms)
        return Admission(container, host, port, decision)

    def record(self, container: str, host: str, port: int, method: str, decision: Decision, elapsed_ms: int) -> None:
        allowed = decision.verdict is Verdict.ALLOW
        rule_id = decision.rule.id if decision.rule is not None else None
        self.rt.writer.log(
            container_name=container,
            destination_host=host,
            destination_port=port,
            method=method,
            result="allowed" if allowed else "blocked",
            rule_id=rule_id,
            response_time_ms=elapsed_ms,
            reason=decision.reason,
            would=decision.would,
        )
        if allowed and rule_id is not None:
            self.rt.writer.used(rule_id)
        log.info(
            "decision container=%s destination=%s port=%s decision=%s reason=%s rule_id=%s hold_ms=%s",
            container, host, port, "allow" if allowed else "block", decision.reason, rule_id, elapsed_ms,
        )

    def blocked_text(self, admission: Admission, reason: str | None = None) -> str:
        template = self.rt.config.blocked_message or DEFAULT_BLOCKED_TEXT
        dashboard = self.rt.dashboard_url.split("?", 1)[0].replace("/dashboard", "/pending")
        return template.format(
            container=admission.container,
            host=admission.host,
            port=admission.port,
            reason=reason or admission.reason,
            dashboard=dashboard,
        )

    def dial(self, host: str, port: int) -> socket.socket:
        return dial(host, port, self.rt.guard)

    def tunnel(self, admission: Admission, client: socket.socket, upstream: socket.socket, sniff: bool = True) -> None:
        """Serve an allowed connection (sniffed: intercepted, parsed or piped), registered so
        revoking its rule tears it down."""
        tracked = self.rt.tracker.add(TrackedConnection(admission.decision.rule, closer(client, upstream)))
        try:
            if sniff:
                self.rt.interceptor.serve(admission, client, upstream)
            else:
                relay(client, upstream)
        finally:
            self.rt.tracker.remove(tracked)
