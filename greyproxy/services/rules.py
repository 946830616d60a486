"""Rule service: every rule mutation goes through here, so the in-memory index, the events
and live-connection enforcement always follow the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import peewee

from greyproxy.events import Bus
from greyproxy.policy.index import LAYER_BUILTIN, LAYER_SESSION, RuleSpec, layer_of
from greyproxy.store.models import Rule
from greyproxy.timeutil import epoch, iso, utcnow


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class NewRule:
    container_pattern: str
    destination_pattern: str
    port_pattern: str = "*"
    action: str = "allow"
    rule_type: str = "permanent"
    expires_in_seconds: int | None = None
    notes: str | None = None
    created_by: str = "admin"
    session_id: str | None = None


def rule_source(rule: Rule) -> str:
    layer = layer_of(rule.created_by, rule.session_id)
    return {LAYER_BUILTIN: "builtin", LAYER_SESSION: "session"}.get(layer, "global")


def rule_to_json(rule: Rule, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    return {
        "id": rule.id,
        "container_pattern": rule.container_pattern,
        "destination_pattern": rule.destination_pattern,
        "port_pattern": rule.port_pattern,
        "rule_type": rule.rule_type,
        "action": rule.action,
        "created_at": iso(rule.created_at),
        "expires_at": iso(rule.expires_at),
        "last_used_at": iso(rule.last_used_at),
        "created_by": rule.created_by,
        "notes": rule.notes,
        "session_id": rule.session_id,
        "is_active": rule.expires_at is None or rule.expires_at > now,
        "source": rule_source(rule),
    }


def rule_to_spec(rule: Rule) -> RuleSpec:
    return RuleSpec(
        id=rule.id,
        container_pattern=rule.container_pattern,
        destination_pattern=rule.destination_pattern,
        port_pattern=rule.port_pattern,
        action=rule.action,
        layer=layer_of(rule.created_by, rule.session_id),
        expires_at=epoch(rule.expires_at),
        session_id=rule.session_id,
    )


class RuleService:
    """`on_change` is called after every committed change (the runtime rebuilds the index and
    re-decides held connections there)."""

    def __init__(self, db: peewee.Database, bus: Bus, on_change: Callable[[], None]) -> None:
        self.db = db
        self.bus = bus
        self.on_change = on_change

    # -- reads ---------------------------------------------------------------------------
    def all_specs(self) -> list[RuleSpec]:
        return [rule_to_spec(r) for r in Rule.select()]

    def get(self, rule_id: int) -> Rule:
        rule = Rule.get_or_none(Rule.id == rule_id)
        if rule is None:
            raise NotFound(f"rule {rule_id} not found")
        return rule

    def list(
        self,
        container: str | None = None,
        destination: str | None = None,
        action: str | None = None,
        include_expired: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Rule], int]:
        query = Rule.select()
        if container:
            query = query.where(Rule.container_pattern.contains(container))
        if destination:
            query = query.where(Rule.destination_pattern.contains(destination))
        if action:
            query = query.where(Rule.action == action)
        if not include_expired:
            query = query.where(Rule.expires_at.is_null() | (Rule.expires_at > utcnow()))
        total = query.count()
        rows = list(query.order_by(Rule.created_at.desc(), Rule.id.desc()).limit(limit).offset(offset))
        return rows, total

    # -- writes --------------------------------------------------------------------------
    def _find_same(self, new: NewRule) -> Rule | None:
        return Rule.get_or_none(
            (Rule.container_pattern == new.container_pattern)
            & (Rule.destination_pattern == new.destination_pattern)
            & (Rule.port_pattern == new.port_pattern)
            & (Rule.action == new.action)
        )

    def _insert(self, new: NewRule, now: dt.datetime) -> tuple[Rule, bool]:
        """Insert or return the existing unexpired duplicate; (rule, created)."""
        existing = self._find_same(new)
        if existing is not None:
            if existing.expires_at is None or existing.expires_at > now:
                return existing, False
            existing.delete_instance()  # an expired duplicate makes way (§3.1)
        expires = now + dt.timedelta(seconds=new.expires_in_seconds) if new.expires_in_seconds else None
        rule = Rule.create(
            container_pattern=new.container_pattern,
            destination_pattern=new.destination_pattern,
            port_pattern=new.port_pattern,
            rule_type="temporary" if expires else new.rule_type,
            action=new.action,
            created_at=now,
            expires_at=expires,
            created_by=new.created_by,
            notes=new.notes,
            session_id=new.session_id,
        )
        return rule, True

    def create(self, new: NewRule) -> tuple[Rule, bool]:
        now = utcnow()
        with self.db.atomic():
            rule, created = self._insert(new, now)
        if created:
            self.on_change()
            self.bus.publish("rule.created", rule_to_json(rule, now))
        return rule, created

    def ingest(self, items: Iterable[NewRule]) -> tuple[list[Rule], int]:
        """Bulk import in one transaction (all or nothing); returns (imported, skipped)."""
        now = utcnow()
        imported: list[Rule] = []
        skipped = 0
        with self.db.atomic():
            for new in items:
                rule, created = self._insert(new, now)
                if created:
                    imported.append(rule)
                else:
                    skipped += 1
        if imported:
            self.on_change()
            for rule in imported:
                self.bus.publish("rule.created", rule_to_json(rule, now))
        return imported, skipped

    def update(self, rule_id: int, changes: dict[str, Any]) -> Rule:
        """changes: any of container_pattern, destination_pattern, port_pattern, action, notes,
        expires_at (naive UTC datetime or None), already validated."""
        with self.db.atomic():
            rule = self.get(rule_id)
            before = rule_to_json(rule)
            for key, value in changes.items():
                setattr(rule, key, value)
            if "expires_at" in changes:
                rule.rule_type = "permanent" if rule.expires_at is None else "temporary"
            try:
                rule.save()
            except peewee.IntegrityError:
                raise Conflict("another rule already has these patterns and action") from None
        self.on_change()
        after = rule_to_json(rule)
        self.bus.publish("rule.updated", {**after, "previous": before})
        return rule

    def delete(self, rule_id: int) -> bool:
        rule = Rule.get_or_none(Rule.id == rule_id)
        if rule is None:
            return False
        data = rule_to_json(rule)
        rule.delete_instance()
        self.on_change()
        self.bus.publish("rule.deleted", data)
        return True

    def touch_used(self, rule_ids: Iterable[int], when: dt.datetime) -> None:
        """Batched last_used_at bump (§3.7), called by the store writer, never per connection."""
        ids = list(set(rule_ids))
        if ids:
            Rule.update(last_used_at=when).where(Rule.id.in_(ids)).execute()
