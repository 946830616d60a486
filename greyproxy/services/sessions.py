"""Sessions (docs/sessions.md): a sandbox launcher registers each agent run with its
network rules, a learning-mode switch and credential placeholders. Everything the
connection path needs is mirrored in memory (`SessionInfo`); SQL happens only here."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import peewee

from greyproxy.credentials.crypto import DecryptError, decrypt, encrypt
from greyproxy.credentials.vault import Secret, Vault
from greyproxy.events import Bus
from greyproxy.services.credentials import CredentialService, UnknownCredentials
from greyproxy.services.policy_state import RuleChange
from greyproxy.services.rules import NewRule, NotFound, RuleService
from greyproxy.store.models import Session
from greyproxy.timeutil import epoch, iso, utcnow

log = logging.getLogger("greyproxy.sessions")

DEFAULT_TTL = 900
MAX_TTL = 3600
SWEEP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Mapping:
    placeholder: str
    value: str
    label: str | None = None
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """A validated POST /api/sessions body."""

    session_id: str
    container_name: str
    mappings: tuple[Mapping, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    ttl_seconds: int = DEFAULT_TTL
    global_credentials: tuple[str, ...] = ()
    network_rules: tuple[NewRule, ...] = ()
    allow_all: bool = False
    proxy_token: str | None = None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    container_name: str
    created_at: float
    expires_at: float
    allow_all: bool
    proxy_token_hash: str | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clamp_ttl(ttl: int | None) -> int:
    if not ttl or ttl <= 0:
        return DEFAULT_TTL
    return min(ttl, MAX_TTL)


def session_to_json(row: Session) -> dict[str, Any]:
    labels = json.loads(row.labels_json or "{}")
    globals_ = json.loads(row.global_labels_json or "[]")
    return {
        "session_id": row.session_id,
        "container_name": row.container_name,
        "credential_count": len(labels) + len(globals_),
        "credential_labels": sorted(set(labels.values()) | set(globals_)),
        "metadata": json.loads(row.metadata_json or "{}"),
        "ttl_seconds": row.ttl_seconds,
        "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at),
        "last_heartbeat": iso(row.last_heartbeat),
        "substitution_count": row.substitution_count,
        "allow_all": bool(row.allow_all),
        "identity_bound": row.proxy_token_hash is not None,
    }


class SessionService:
    def __init__(
        self,
        db: peewee.Database,
        bus: Bus,
        rules: RuleService,
        credentials: CredentialService,
        vault: Vault,
        on_change: Callable[[], None],
        on_end: Callable[[str], None],
    ) -> None:
        self.db = db
        self.bus = bus
        self.rules = rules
        self.credentials = credentials
        self.vault = vault
        self.on_change = on_change
        self.on_end = on_end  # tears down connections the session allowed without a rule (allow-all)
        self._live: dict[str, SessionInfo] = {}
        self._current: dict[str, str] = {}
        self._substitutions: dict[str, int] = {}
        self._sweeper: gevent.Greenlet | None = None

    # -- memory the connection path reads -----------------------------------------------
    def _info(self, row: Session) -> SessionInfo:
        return SessionInfo(row.session_id, row.container_name, epoch(row.created_at) or 0.0,
                           epoch(row.expires_at) or 0.0, bool(row.allow_all), row.proxy_token_hash)

    def live(self, now: float | None = None) -> list[SessionInfo]:
        now = time.time() if now is None else now
        return [s for s in self._live.values() if s.expires_at > now]

    def current_sessions(self) -> dict[str, str]:
        """container → its most recently created unexpired session (a newer one supersedes it).
        Kept up to date when a session starts, beats or ends, so a connection only reads it."""
        return self._current

    def _set_live(self, info: SessionInfo | None, session_id: str) -> None:
        if info is None:
            self._live.pop(session_id, None)
        else:
            self._live[session_id] = info
        newest: dict[str, SessionInfo] = {}
        for live in self.live():
            best = newest.get(live.container_name)
            if best is None or (live.created_at, live.session_id) > (best.created_at, best.session_id):
                newest[live.container_name] = live
        self._current = {c: s.session_id for c, s in newest.items()}

    def allow_all_containers(self) -> frozenset[str]:
        current = self.current_sessions()
        return frozenset(c for c, sid in current.items() if self._live[sid].allow_all)

    def get_live(self, session_id: str) -> SessionInfo | None:
        info = self._live.get(session_id)
        return info if info is not None and info.expires_at > time.time() else None

    def identity(self, username: str | None, password: str | None, container: str) -> tuple[str, str | None]:
        """(container, refusal reason or None) for a connection's proxy credentials."""
        if username:
            bound = self.get_live(username)
            if bound is not None:  # username = session id: that session's container, explicitly
                if bound.proxy_token_hash and not self._token_ok(bound, password):
                    return bound.container_name, "bad_credentials"
                return bound.container_name, None
        sid = self.current_sessions().get(container)
        if sid is not None:
            info = self._live[sid]
            if info.proxy_token_hash and not self._token_ok(info, password):
                return container, "bad_credentials"
        return container, None

    @staticmethod
    def _token_ok(info: SessionInfo, password: str | None) -> bool:
        return password is not None and hmac.compare_digest(token_hash(password), info.proxy_token_hash or "")

    def count_substitutions(self, per_session: dict[str, int]) -> None:
        for sid, n in per_session.items():
            self._substitutions[sid] = self._substitutions.get(sid, 0) + n

    # -- start ---------------------------------------------------------------------------
    def load(self, key_was_created: bool) -> None:
        now = utcnow()
        for row in Session.select():
            if row.expires_at <= now:
                continue
            if not self._load_mappings(row) and key_was_created:
                log.warning("dropping session %s: its credentials were encrypted with a lost key", row.session_id)
                self.rules.delete_session_rules(row.session_id)
                row.delete_instance()
                continue
            self._set_live(self._info(row), row.session_id)

    def _load_mappings(self, row: Session) -> bool:
        if not row.mappings_enc:
            return True
        if self.credentials.key is None:
            return False
        try:
            mappings = json.loads(decrypt(self.credentials.key, bytes(row.mappings_enc)))
        except (DecryptError, ValueError):
            return False
        for m in mappings:
            self.vault.put(Secret(m["placeholder"], m["value"], m.get("label") or m["placeholder"][-8:],
                                  row.session_id, tuple(m.get("hosts") or ()), (row.container_name,)))
        return True

    # -- fleet mode: another node changed a session (greyproxy/fleet/sync.py) ---------------
    def follow(self, session_id: str, row: Session | None) -> None:
        """Memory follows the stored row: loaded (mappings into the vault) while it lives,
        dropped here when it is gone or expired. Its rules are the rule events' business."""
        if row is None or row.expires_at <= utcnow():
            if session_id in self._live:
                self._set_live(None, session_id)
                self.on_end(session_id)
                self.vault.remove_session(session_id)
                self.on_change()
            return
        # Replaced mappings must not linger: drop the old ones and load the stored ones at once
        # (nothing in between yields, so no connection sees the session without its secrets).
        self.vault.remove_session(session_id)
        self._load_mappings(row)
        self._set_live(self._info(row), session_id)
        # Its rules live as long as it does (a heartbeat taken elsewhere): the index moves their expiry.
        self.rules.on_change(RuleChange(extend_session=(session_id, epoch(row.expires_at))))
        self.on_change()

    def follow_all(self) -> None:
        rows = {r.session_id: r for r in Session.select().where(Session.expires_at > utcnow())}
        for sid in [s for s in self._live if s not in rows]:
            self.follow(sid, None)
        for sid, row in rows.items():
            self.follow(sid, row)

    # -- lifecycle ---------------------------------------------------------------------
    def create(self, spec: SessionSpec) -> dict[str, Any]:
        """Create or replace (upsert by session_id); UnknownCredentials for unknown global labels."""
        globals_map, unknown = self.credentials.placeholders_for(spec.global_credentials)
        if unknown:
            raise UnknownCredentials(f"unknown global credentials: {', '.join(unknown)}")
        mappings_enc = None
        if spec.mappings:
            key = self.credentials.require_key()
            mappings_enc = encrypt(key, json.dumps([
                {"placeholder": m.placeholder, "value": m.value, "label": m.label, "hosts": list(m.hosts)}
                for m in spec.mappings
            ]).encode())
        now = utcnow()
        ttl = clamp_ttl(spec.ttl_seconds)
        expires = now + dt.timedelta(seconds=ttl)
        labels = {m.placeholder: m.label or m.placeholder[-8:] for m in spec.mappings}
        with self.db.atomic():
            Session.delete().where(Session.session_id == spec.session_id).execute()
            row = Session.create(
                session_id=spec.session_id,
                container_name=spec.container_name,
                mappings_enc=mappings_enc,
                labels_json=json.dumps(labels),
                global_labels_json=json.dumps(list(spec.global_credentials)),
                ttl_seconds=ttl,
                created_at=now,
                expires_at=expires,
                last_heartbeat=now,
                metadata_json=json.dumps(spec.metadata),
                allow_all=spec.allow_all,
                proxy_token_hash=token_hash(spec.proxy_token) if spec.proxy_token else None,
            )
        self.vault.remove_session(spec.session_id)
        for m in spec.mappings:
            # Only the session's own container (or a connection naming the session) gets it.
            self.vault.put(Secret(m.placeholder, m.value, labels[m.placeholder], spec.session_id, m.hosts,
                                  (spec.container_name,)))
        self._set_live(self._info(row), spec.session_id)
        rules = [
            NewRule(container_pattern=spec.container_name, destination_pattern=r.destination_pattern,
                    port_pattern=r.port_pattern, action=r.action, rule_type="temporary", notes=r.notes,
                    created_by=f"session:{spec.session_id}", session_id=spec.session_id, expires_in_seconds=ttl)
            for r in spec.network_rules
        ]
        created = self.rules.set_session_rules(spec.session_id, rules)
        self.on_change()  # supersession and allow-all change the policy even without rules
        self.bus.publish("session.created", spec.session_id)
        response: dict[str, Any] = {
            "session_id": spec.session_id,
            "expires_at": iso(expires),
            "credential_count": len(spec.mappings) + len(globals_map),
            "rules_created": created,
        }
        if spec.global_credentials:
            response["global_credentials"] = globals_map
        return response

    def list(self) -> list[dict[str, Any]]:
        now = utcnow()
        rows = Session.select().where(Session.expires_at > now).order_by(Session.created_at.desc())
        return [self._with_pending_count(session_to_json(r)) for r in rows]

    def _with_pending_count(self, data: dict[str, Any]) -> dict[str, Any]:
        data["substitution_count"] += self._substitutions.get(data["session_id"], 0)
        return data

    def heartbeat(self, session_id: str) -> dict[str, Any]:
        now = utcnow()
        row = Session.get_or_none(Session.session_id == session_id)
        if row is None or row.expires_at <= now:
            raise NotFound(f"session {session_id} not found or expired")
        row.expires_at = now + dt.timedelta(seconds=row.ttl_seconds)
        row.last_heartbeat = now
        row.save()
        before = self._current
        self._set_live(self._info(row), session_id)
        # Issue 13: a heartbeat moves the expiry of the session's rules in the index (no rebuild);
        # the small session maps are swapped only when the beat changed them.
        self.rules.extend_session_rules(session_id, row.expires_at)
        if self._current != before:
            self.on_change()
        self.bus.publish("session.heartbeat", session_id)
        return {"session_id": session_id, "expires_at": iso(row.expires_at)}

    def delete(self, session_id: str, event: str = "session.deleted") -> bool:
        deleted = Session.delete().where(Session.session_id == session_id).execute() > 0
        self._end(session_id)
        if deleted:
            self.bus.publish(event, session_id)
        return deleted

    def _end(self, session_id: str) -> None:
        self._set_live(None, session_id)
        self.on_end(session_id)
        self.vault.remove_session(session_id)
        self._substitutions.pop(session_id, None)
        # Deleting the rules tears down the connections they allowed (via rule.deleted).
        self.rules.delete_session_rules(session_id)
        self.on_change()

    # -- background ----------------------------------------------------------------------
    def expire_live(self) -> None:
        """Every second: a session past its expiry ends now, not at the next DB sweep."""
        now = time.time()
        for sid in [s for s, info in self._live.items() if info.expires_at <= now]:
            if self._beaten_elsewhere(sid):
                continue
            self._end(sid)
            self.bus.publish("session.expired", sid)

    def _beaten_elsewhere(self, session_id: str) -> bool:
        """Fleet mode (docs/fleet.md): another node may have taken the heartbeat while this one
        did not hear of it; the stored row says. Then memory follows it and nothing ends. The
        database unreachable: the expiry known here holds."""
        try:
            row = Session.get_or_none(Session.session_id == session_id)
        except peewee.DatabaseError:
            return False
        if row is None or row.expires_at <= utcnow():
            return False
        self.follow(session_id, row)
        return True

    def sweep(self) -> None:
        self.flush_substitutions()
        for row in Session.select(Session.session_id).where(Session.expires_at <= utcnow()):
            Session.delete().where(Session.session_id == row.session_id).execute()
            self._end(row.session_id)

    def flush_substitutions(self) -> None:
        counts, self._substitutions = self._substitutions, {}
        for sid, n in counts.items():
            Session.update(substitution_count=Session.substitution_count + n).where(
                Session.session_id == sid).execute()
            self.bus.publish("session.substitution", sid)

    def start(self, interval: float = SWEEP_SECONDS) -> None:
        def loop() -> None:
            last_sweep = time.monotonic()
            while True:
                gevent.sleep(1.0)
                try:
                    self.expire_live()
                    if time.monotonic() - last_sweep >= interval:
                        last_sweep = time.monotonic()
                        self.sweep()
                except Exception:
                    log.exception("session sweep failed")

        self._sweeper = gevent.spawn(loop)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
        self.flush_substitutions()
