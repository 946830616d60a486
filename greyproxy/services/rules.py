"""Rule service: every rule mutation goes through here, so the in-memory index, the events
and live-connection enforcement always follow the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import peewee

from greyproxy.events import Bus
from greyproxy.policy.canonical import display_fields
from greyproxy.policy.index import LAYER_BUILTIN, LAYER_SESSION, RuleSpec, layer_of
from greyproxy.policy.patterns import (
    PatternError,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.policy.request_rules import is_request_rule, normalize_method_pattern, normalize_path_pattern
from greyproxy.services.policy_state import RuleChange
from greyproxy.store.bulk import insert_rows
from greyproxy.store.executor import run_in_db
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
    method_pattern: str = ""  # request-level rules (policy/request_rules.py); '' = any
    path_pattern: str = ""


ACTIONS = ("allow", "deny", "hold")
PATTERN_NORMALIZERS = {
    "container_pattern": normalize_container_pattern,
    "destination_pattern": normalize_destination_pattern,
    "port_pattern": normalize_port_pattern,
    "method_pattern": normalize_method_pattern,
    "path_pattern": normalize_path_pattern,
}


def check_action(action: str, method_pattern: str, path_pattern: str) -> None:
    """'hold' is an action of request-level rules only: an unmatched connection is held anyway."""
    if action not in ACTIONS:
        raise PatternError(f"action: {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "hold" and not is_request_rule(method_pattern, path_pattern):
        raise PatternError("action: 'hold' needs a method_pattern or a path_pattern (a request-level rule); "
                           "a connection no rule allows is held anyway")


def validated(new: NewRule) -> NewRule:
    """The rule with its patterns in stored form; raises PatternError.

    Every write path (API, YAML import and ingest, pending decisions, sessions) ends here, so
    no rule reaches the database unvalidated. The normalizers are idempotent: patterns that
    were already validated come out unchanged."""
    out = replace(
        new,
        container_pattern=normalize_container_pattern(new.container_pattern),
        destination_pattern=normalize_destination_pattern(new.destination_pattern),
        port_pattern=normalize_port_pattern(new.port_pattern),
        method_pattern=normalize_method_pattern(new.method_pattern),
        path_pattern=normalize_path_pattern(new.path_pattern),
    )
    check_action(out.action, out.method_pattern, out.path_pattern)
    return out


def validated_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """An update's changes with every pattern field in stored form; raises PatternError."""
    out = dict(changes)
    for key, normalize in PATTERN_NORMALIZERS.items():
        if key in out:
            out[key] = normalize(out[key])
    if "action" in out and out["action"] not in ACTIONS:
        raise PatternError(f"action: {out['action']!r} is not one of {', '.join(ACTIONS)}")
    return out


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
        "method_pattern": rule.method_pattern or None,  # null: a connection rule
        "path_pattern": rule.path_pattern or None,
        "is_active": rule.expires_at is None or rule.expires_at > now,
        "enabled": bool(rule.enabled),
        "source": rule_source(rule),
        **display_fields(rule.destination_pattern),  # Unicode form and mixed scripts, display only
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
        method_pattern=rule.method_pattern or "",
        path_pattern=rule.path_pattern or "",
    )


def rule_key(r: Any) -> tuple[str, str, str, str, str, str]:
    """What makes two rules the same rule (the unique index)."""
    return (r.container_pattern, r.destination_pattern, r.port_pattern, r.action, r.method_pattern or "",
            r.path_pattern or "")


def rule_row(new: NewRule, now: dt.datetime) -> dict[str, Any]:
    """The columns of a rule about to be inserted (a duration becomes its expiry)."""
    expires = now + dt.timedelta(seconds=new.expires_in_seconds) if new.expires_in_seconds else None
    return {
        "container_pattern": new.container_pattern, "destination_pattern": new.destination_pattern,
        "port_pattern": new.port_pattern, "action": new.action,
        "rule_type": "temporary" if expires else new.rule_type, "created_at": now,
        "expires_at": expires, "created_by": new.created_by, "notes": new.notes,
        "session_id": new.session_id, "method_pattern": new.method_pattern,
        "path_pattern": new.path_pattern,
    }


class RuleService:
    """`on_change` is called after every committed change with what changed (a `RuleChange`):
    the runtime patches the index with it and re-decides held connections (issue 13)."""

    def __init__(self, db: peewee.Database, bus: Bus, on_change: Callable[[RuleChange], None]) -> None:
        self.db = db
        self.bus = bus
        self._apply = on_change
        self._touched: set[int] = set()  # rule ids written by _insert since the last on_change

    def on_change(self, change: RuleChange | None = None) -> None:
        """After a commit: hand the runtime what changed. The rules `_insert` wrote since the last
        call are read back by id (a handful of rows), so a rolled-back insert is simply absent
        (and removed from the index if it was ever there)."""
        touched, self._touched = self._touched, set()
        if change is None and not touched:
            return  # what this caller wrote was already handed over by a concurrent caller's call
        if touched:
            ids = sorted(touched)
            present: dict[int, RuleSpec] = {}
            for start in range(0, len(ids), 500):
                for row in Rule.select().where(Rule.id.in_(ids[start : start + 500])):
                    if row.enabled:  # a disabled rule leaves the index like a deleted one
                        present[row.id] = rule_to_spec(row)
            base = change or RuleChange()
            change = RuleChange(
                added=(*base.added, *present.values()),
                removed=(*base.removed, *(i for i in ids if i not in present)),
                extend_session=base.extend_session,
                full=base.full,
            )
        self._apply(change if change is not None else RuleChange(full=True))

    # -- reads ---------------------------------------------------------------------------
    def all_specs(self) -> list[RuleSpec]:
        return [rule_to_spec(r) for r in Rule.select().where(Rule.enabled == True)]  # noqa: E712 - SQL

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
            & (Rule.method_pattern == new.method_pattern)
            & (Rule.path_pattern == new.path_pattern)
        )

    def _insert(self, new: NewRule, now: dt.datetime) -> tuple[Rule, bool]:
        """Insert or return the existing unexpired duplicate; (rule, created)."""
        return self._insert_many([new], now)[0]

    def _insert_many(self, news: list[NewRule], now: dt.datetime) -> list[tuple[Rule, bool]]:
        """`_insert` for each of `news`, in order, in a handful of statements whatever their
        number (a bulk decision makes thousands): the duplicates are read with one query and
        the new rules written with one insert. Call inside the caller's transaction."""
        news = [validated(new) for new in news]
        keys = list(dict.fromkeys(rule_key(new) for new in news))
        existing: dict[tuple[str, ...], Rule] = {}
        for start in range(0, len(keys), 500):
            # The unique index's columns as they are (NOT NULL, '' = any): the lookup goes along
            # it, not through every rule (a bulk decision with 100,000 rules did the latter).
            same = peewee.Tuple(Rule.container_pattern, Rule.destination_pattern, Rule.port_pattern, Rule.action,
                                Rule.method_pattern, Rule.path_pattern)
            for rule in Rule.select().where(same.in_(peewee.ValuesList(keys[start : start + 500]))):
                existing[rule_key(rule)] = rule
        # An expired duplicate makes way, and so does a switched-off one: allowing or creating the
        # same rule again means it should decide now (returning the disabled row would not).
        expired = [r.id for r in existing.values()
                   if (r.expires_at is not None and r.expires_at <= now) or not r.enabled]
        if expired:
            self._touched.update(expired)
            Rule.delete().where(Rule.id.in_(expired)).execute()
            existing = {k: r for k, r in existing.items() if r.id not in expired}
        fresh: dict[tuple[str, ...], dict[str, Any]] = {}
        for new in news:
            key = rule_key(new)
            if key in existing or key in fresh:
                continue
            fresh[key] = rule_row(new, now)
        made = dict(zip(fresh, insert_rows(self.db, Rule, list(fresh.values())), strict=True))
        created: dict[tuple[str, ...], Rule] = {key: Rule(id=made[key], **fresh[key]) for key in fresh}
        self._touched.update(made.values())
        out: list[tuple[Rule, bool]] = []
        for new in news:
            key = rule_key(new)
            if key in created:
                out.append((created.pop(key), True))  # the first of equal items creates it
                existing[key] = out[-1][0]
            else:
                out.append((existing[key], False))
        return out

    def create(self, new: NewRule) -> tuple[Rule, bool]:
        now = utcnow()
        with self.db.atomic():
            rule, created = self._insert(new, now)
        if created:
            self.on_change()
            self.bus.publish("rule.created", rule_to_json(rule, now))
        return rule, created

    def ingest(self, items: Iterable[NewRule]) -> tuple[int, int]:
        """Bulk import in one transaction (all or nothing); returns (imported, skipped).

        Existing rules are read once and new ones inserted in batches, so 10,000 rules take
        well under a second; one `rule.ingested` event replaces thousands of `rule.created`.
        Every item is validated before anything is written (PatternError: nothing changes)."""
        items = [validated(new) for new in items]
        # The whole of it (reading every rule, thousands of inserts) in the database thread.
        rows, skipped = run_in_db(self.db, lambda: self._ingest(items))
        if rows:
            self.on_change(RuleChange(full=True))  # thousands at once: one rebuild
            self.bus.publish("rule.ingested", {"imported": rows, "skipped": skipped})
        return rows, skipped

    def _ingest(self, items: list[NewRule]) -> tuple[int, int]:
        now = utcnow()
        existing = {
            rule_key(r): r
            for r in Rule.select(Rule.id, Rule.container_pattern, Rule.destination_pattern, Rule.port_pattern,
                                 Rule.action, Rule.expires_at, Rule.method_pattern, Rule.path_pattern, Rule.enabled)
        }
        rows: dict[tuple[str, ...], dict[str, Any]] = {}
        expired_ids: list[int] = []
        skipped = 0
        for new in items:
            key = rule_key(new)
            old = existing.get(key)
            if key in rows or (old is not None and old.enabled and (old.expires_at is None or old.expires_at > now)):
                skipped += 1
                continue
            if old is not None:
                expired_ids.append(old.id)  # an expired (or switched-off) duplicate makes way
            rows[key] = rule_row(new, now)
        with self.db.atomic():
            if expired_ids:
                Rule.delete().where(Rule.id.in_(expired_ids)).execute()
            batch = list(rows.values())
            for start in range(0, len(batch), 500):
                Rule.insert_many(batch[start : start + 500]).execute()
        return len(rows), skipped

    def update(self, rule_id: int, changes: dict[str, Any]) -> Rule:
        """changes: any of container_pattern, destination_pattern, port_pattern, action, notes,
        expires_at (naive UTC datetime or None), enabled; patterns are validated again here."""
        changes = validated_changes(changes)
        with self.db.atomic():
            rule = self.get(rule_id)
            before = rule_to_json(rule)
            for key, value in changes.items():
                setattr(rule, key, value)
            if "expires_at" in changes:
                rule.rule_type = "permanent" if rule.expires_at is None else "temporary"
            check_action(rule.action, rule.method_pattern, rule.path_pattern)  # 'hold' stays request-level
            try:
                rule.save()
            except peewee.IntegrityError:
                raise Conflict("another rule already has these patterns and action") from None
        self._touched.add(rule.id)
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
        self.on_change(RuleChange(removed=(rule_id,)))
        self.bus.publish("rule.deleted", data)
        return True

    def purge_until_restart(self) -> int:
        """At start, before the index is built: the rules made 'until restart' go (how many).
        No per-rule event: the caller writes one audit entry for them all."""
        with self.db.atomic():
            return Rule.delete().where(Rule.rule_type == "until_restart").execute()

    def touch_used(self, rule_ids: Iterable[int], when: dt.datetime) -> None:
        """Batched last_used_at bump, called by the store writer, never per connection."""
        ids = list(set(rule_ids))
        if ids:
            Rule.update(last_used_at=when).where(Rule.id.in_(ids)).execute()

    # -- session rules ----------------------------------------------------------
    def set_session_rules(self, session_id: str, items: list[NewRule]) -> int:
        """Replace a session's rules; a clash with an existing identical rule is skipped."""
        items = [validated(new) for new in items]
        now = utcnow()
        with self.db.atomic():
            old = list(Rule.select().where(Rule.session_id == session_id))
            Rule.delete().where(Rule.session_id == session_id).execute()
            created = []
            for new in items:
                if self._find_same(new) is None:
                    rule, _ = self._insert(new, now)
                    created.append(rule)
        self.on_change(RuleChange(removed=tuple(r.id for r in old)))
        for rule in old:
            self.bus.publish("rule.deleted", rule_to_json(rule, now))
        for rule in created:
            self.bus.publish("rule.created", rule_to_json(rule, now))
        return len(created)

    def delete_session_rules(self, session_id: str) -> int:
        rows = list(Rule.select().where(Rule.session_id == session_id))
        if not rows:
            return 0
        Rule.delete().where(Rule.session_id == session_id).execute()
        self.on_change(RuleChange(removed=tuple(r.id for r in rows)))
        for rule in rows:
            self.bus.publish("rule.deleted", rule_to_json(rule))
        return len(rows)

    def extend_session_rules(self, session_id: str, expires_at: dt.datetime) -> None:
        """A heartbeat: the session's rules live longer. The index only moves their expiry."""
        Rule.update(expires_at=expires_at).where(Rule.session_id == session_id).execute()
        self.on_change(RuleChange(extend_session=(session_id, epoch(expires_at))))
