"""What crosses between fleet nodes, and what a node does with another node's change.

Outbound (`outbound`, a bus hook): a change this node made becomes a message naming its kind
and ids. Inbound (`apply`): the rows are read from the shared database and this node's memory
follows: the rule index is patched (held connections are re-decided at once, so an approval on
any node releases the connection held here), sessions and credentials are reloaded into the
vault, container modes and silent mode are taken over, and the event is published again on
the local bus, marked as already recorded (the node that made the change wrote its audit
entry), so this node's dashboards and WebSocket clients see it too.

Waiter counts are per node (the held sockets are here): each node announces its counts, and the
counts of the others are added to its own for the pending list (`remote_waiters`); an
announcement lives WAITERS_TTL seconds and is repeated while it holds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent

from greyproxy.credentials.crypto import DecryptError, decrypt
from greyproxy.credentials.vault import Secret
from greyproxy.events import Event, from_other_node
from greyproxy.services.policy_state import RuleChange
from greyproxy.services.rules import rule_to_json, rule_to_spec
from greyproxy.store.models import GlobalCredential, PendingRequest, Rule, Session
from greyproxy.timeutil import epoch

if TYPE_CHECKING:
    from greyproxy.credentials.vault import Vault
    from greyproxy.events import Bus
    from greyproxy.fleet.link import FleetLink, Message
    from greyproxy.proxy.hold import HoldManager
    from greyproxy.services.credentials import CredentialService
    from greyproxy.services.modes import ModeService
    from greyproxy.services.pending import PendingService
    from greyproxy.services.rules import RuleService
    from greyproxy.services.sessions import SessionService
    from greyproxy.services.settings import SettingsStore
    from greyproxy.services.silent import SilentMode

log = logging.getLogger("greyproxy.fleet")

# Set while this greenlet applies another node's change: what it publishes is neither sent back
# nor recorded again (the bus skips its recorders, e.g. the audit log, meanwhile).
applying_remote = from_other_node

WAITERS_TTL = 30.0
WAITERS_REPEAT = 10.0
RULE_EVENTS = ("rule.created", "rule.updated", "rule.deleted")
PENDING_EVENTS = ("pending_request.created", "pending_request.updated", "pending_request.allowed",
                  "pending_request.dismissed")
SESSION_EVENTS = ("session.created", "session.heartbeat", "session.deleted", "session.expired")
OTHER_EVENTS = ("rule.ingested", "credential.created", "credential.deleted", "container_mode.changed",
                "container_mode.deleted", "allowall.changed", "settings.changed")

WaiterKey = tuple[str, str, int]


class FleetSync:
    def __init__(self, *, bus: Bus, policy_changed: Callable[[RuleChange | None], None],
                 policy_refresh: Callable[..., None], rules: RuleService, modes: ModeService, holds: HoldManager,
                 pending: PendingService, sessions: SessionService, credentials: CredentialService, vault: Vault,
                 silent: SilentMode, settings: SettingsStore) -> None:
        self.bus = bus
        self.policy_changed = policy_changed  # patch (or rebuild) the index, then re-decide held connections
        self.policy_refresh = policy_refresh  # modes / silent / sessions changed: swap those, keep the index
        self.rules = rules
        self.modes = modes
        self.holds = holds
        self.pending = pending
        self.sessions = sessions
        self.credentials = credentials
        self.vault = vault
        self.silent = silent
        self.settings = settings
        self.link: FleetLink | None = None
        self._remote_waiters: dict[str, dict[WaiterKey, tuple[int, float]]] = {}
        self._announcer: gevent.Greenlet | None = None
        self.resyncs = 0

    # -- outbound ------------------------------------------------------------------------
    def outbound(self, event: Event) -> None:
        if self.link is None or applying_remote.get():
            return
        kind = event["type"]
        if kind == "allowall.changed":  # silent mode lives in memory: its state goes along
            message: dict[str, Any] | None = {"t": kind, "mode": self.silent.mode,
                                              "until": self.silent.expires_at}
        elif kind == "settings.changed":  # settings live in each node's data dir: the values go along
            message = {"t": kind, "stored": self.settings.stored}
        else:
            message = to_message(kind, event["data"])
        if message is not None:
            self.link.send(message)

    def dismissed_here(self, container: str, hosts: Iterable[str], port: int) -> None:
        """A pending request was dismissed on this node: its waiters on the others are blocked too."""
        hosts = list(hosts)
        self.holds.dismiss(container, hosts, port)
        if self.link is not None and not applying_remote.get():
            self.link.send({"t": "waiters.dismiss", "c": container, "h": hosts, "p": port})

    def _announce_loop(self) -> None:
        """Repeat this node's non-zero waiter counts, so the others' views do not expire."""
        while True:
            gevent.sleep(WAITERS_REPEAT)
            if self.link is None:
                continue
            for (container, host, port), waiters in list(self.holds._waiters.items()):  # noqa: SLF001
                if waiters:
                    self.link.send({"t": "waiters", "c": container, "h": host, "p": port, "k": len(waiters)})

    # -- the aggregated view -------------------------------------------------------------
    def remote_waiters(self, container: str, host: str, port: int) -> int:
        now, total = time.monotonic(), 0
        for counts in self._remote_waiters.values():
            count, until = counts.get((container, host, port), (0, 0.0))
            if until > now:
                total += count
        return total

    def waiters(self, container: str, host: str, port: int) -> int:
        return self.holds.count(container, host, port) + self.remote_waiters(container, host, port)

    # -- inbound -------------------------------------------------------------------------
    def apply(self, message: Message) -> None:
        token = applying_remote.set(True)
        try:
            self._apply(message)
        finally:
            applying_remote.reset(token)

    def _apply(self, m: Message) -> None:
        kind = m.get("t")
        if kind in RULE_EVENTS:
            self._rules(kind, [int(i) for i in m.get("ids", [])], m.get("data"))
        elif kind in ("rule.ingested", "resync"):
            self.resync()
        elif kind in PENDING_EVENTS:
            self._pending(kind, m)
        elif kind == "waiters":
            key = (str(m["c"]), str(m["h"]), int(m["p"]))
            counts = self._remote_waiters.setdefault(str(m["n"]), {})
            previous = counts.get(key, (0, 0.0))[0]
            if int(m["k"]) > 0:
                counts[key] = (int(m["k"]), time.monotonic() + WAITERS_TTL)
            else:
                counts.pop(key, None)
            self.bus.publish("waiters.changed", {"container_name": key[0], "host": key[1], "port": key[2],
                                               "previous_count": previous, "current_count": int(m["k"]),
                                               "node": m["n"]}, recorded=True)
        elif kind == "waiters.dismiss":
            self.holds.dismiss(str(m["c"]), [str(h) for h in m["h"]], int(m["p"]))
        elif kind in SESSION_EVENTS:
            self._session(kind, str(m["id"]))
        elif kind in ("credential.created", "credential.deleted"):
            self.reload_credentials()
            self.bus.publish(kind, m.get("data") or {"id": m.get("id")}, recorded=True)
        elif kind in ("container_mode.changed", "container_mode.deleted"):
            self.policy_refresh(modes=True)
            self.bus.publish(kind, m.get("data") or {}, recorded=True)
        elif kind == "allowall.changed":
            self._silent(m)
        elif kind == "settings.changed":
            stored = m.get("stored")
            if isinstance(stored, dict):
                self.settings.update({k: v for k, v in stored.items() if k in self.settings.defaults})

    def _rules(self, kind: str, ids: list[int], data: Any) -> None:
        rows = {r.id: r for r in Rule.select().where(Rule.id.in_(ids))} if ids else {}
        # A disabled rule leaves the index like a deleted one (it stays in the store and the lists).
        self.policy_changed(RuleChange(added=tuple(rule_to_spec(r) for r in rows.values() if r.enabled),
                                          removed=tuple(i for i in ids if i not in rows or not rows[i].enabled)))
        for rule_id in ids:
            row = rows.get(rule_id)
            if kind == "rule.deleted" or row is None:
                self.bus.publish("rule.deleted", data if isinstance(data, dict) else {"id": rule_id},
                                    recorded=True)
            else:
                self.bus.publish(kind, rule_to_json(row), recorded=True)

    def _pending(self, kind: str, m: Message) -> None:
        if kind in ("pending_request.created", "pending_request.updated"):
            row = PendingRequest.get_or_none(PendingRequest.id == int(m["id"]))
            if row is not None:
                self.bus.publish(kind, self.pending.to_json(row), recorded=True)
            return
        data = m.get("data")
        self.bus.publish(kind, data if isinstance(data, dict) else {"pending_id": m.get("id")}, recorded=True)

    def _session(self, kind: str, session_id: str) -> None:
        row = Session.get_or_none(Session.session_id == session_id)
        self.sessions.follow(session_id, row)
        if row is not None and kind == "session.heartbeat":
            self.policy_changed(RuleChange(extend_session=(session_id, epoch(row.expires_at))))
        self.bus.publish(kind, session_id, recorded=True)

    def _silent(self, m: Message) -> None:
        mode, until = m.get("mode"), m.get("until")
        if isinstance(mode, str) and mode and (until is None or float(until) > time.time()):
            self.silent.enable(mode, None if until is None else max(1, int(float(until) - time.time())))
        else:
            self.silent.disable()

    # -- full resync ---------------------------------------------------------------------
    def reload_credentials(self) -> None:
        """The global credentials in the vault become exactly those stored (decrypted with
        this node's key); new ones are put before stale ones go, so nothing is ever missing."""
        key = self.credentials.key
        if key is None:
            return
        fresh: dict[str, Secret] = {}
        for row in GlobalCredential.select():
            try:
                value = decrypt(key, bytes(row.value_enc)).decode()
            except DecryptError:
                log.error("fleet: global credential %s cannot be decrypted with this node's key "
                          "(every node needs the same credential key)", row.label)
                continue
            fresh[row.placeholder] = Secret(row.placeholder, value, row.label, None,
                                            tuple(json.loads(row.hosts_json or "[]")),
                                            tuple(json.loads(row.containers_json or "[]")))
        for secret in fresh.values():
            if self.vault.get(secret.placeholder) != secret:
                self.vault.put(secret)
        self.vault.remove([s.placeholder for s in self.vault.secrets()
                           if s.session_id is None and s.placeholder not in fresh])

    def resync(self) -> None:
        """After a reconnect (or a change too big to describe): read everything again."""
        token = applying_remote.set(True)
        try:
            self.resyncs += 1
            self.sessions.follow_all()
            self.reload_credentials()
            self.modes.reload()
            # One rebuild from the store; a patch landing while it reads is replayed onto the new
            # index (PolicyHolder.rebuild), and held connections are re-decided.
            self.policy_changed(None)
            self.bus.publish("fleet.resynced", {"node": self.link.node if self.link else None}, recorded=True)
        finally:
            applying_remote.reset(token)

    def start(self, link: FleetLink) -> None:
        self.link = link
        self._announcer = gevent.spawn(self._announce_loop)

    def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.kill(block=False)


def to_message(kind: str, data: Any) -> dict[str, Any] | None:
    """The message for a local event, or None for what does not cross nodes."""
    if kind in RULE_EVENTS and isinstance(data, dict):
        # The deleted row is gone: its last form goes along when it fits (else the id alone).
        return {"t": kind, "ids": [data.get("id")], **({"data": data} if kind == "rule.deleted" else {})}
    if kind in ("pending_request.created", "pending_request.updated") and isinstance(data, dict):
        return {"t": kind, "id": data.get("id")}
    if kind in ("pending_request.allowed", "pending_request.dismissed") and isinstance(data, dict):
        return {"t": kind, "id": data.get("pending_id"), "data": data}
    if kind == "waiters.changed" and isinstance(data, dict) and "node" not in data:
        return {"t": "waiters", "c": data["container_name"], "h": data["host"], "p": data["port"],
                "k": data["current_count"]}
    if kind in SESSION_EVENTS:
        return {"t": kind, "id": data}
    if kind in OTHER_EVENTS:
        return {"t": kind, "data": data}
    return None
