"""Pending queue (§4): rows for unmatched destinations, and their resolution into rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import peewee

from greyproxy.events import Bus
from greyproxy.policy.canonical import display_fields
from greyproxy.policy.durations import rule_duration
from greyproxy.policy.scopes import patterns_for_scope
from greyproxy.services.rules import NewRule, NotFound, RuleService, rule_to_json, validated
from greyproxy.store.models import PendingRequest
from greyproxy.store.records import Attempt
from greyproxy.timeutil import iso, utcnow

WaiterCount = Callable[[str, str, int], int]


def pending_to_json(row: PendingRequest, waiters: int | None = None, ptr_hostname: str | None = None) -> dict[str, Any]:
    data = {
        "id": row.id,
        "container_name": row.container_name,
        "container_id": row.container_id or "",
        "destination_host": row.destination_host,
        "destination_port": row.destination_port,
        "resolved_hostname": row.resolved_hostname,
        "ptr_hostname": ptr_hostname,  # display only (D13): whoever owns the IP block writes it
        "first_seen": iso(row.first_seen),
        "last_seen": iso(row.last_seen),
        "attempt_count": row.attempt_count,
        # D30: the Unicode form of the name a rule would be made for, and whether it mixes scripts
        # (a look-alike such as g\u0456thub.com); display only, rules match the punycode.
        **display_fields(display_host(row)),
    }
    if waiters is not None:
        data["waiter_count"] = waiters
    return data


def display_host(row: PendingRequest) -> str:
    return row.resolved_hostname or row.destination_host


class PendingService:
    def __init__(
        self,
        db: peewee.Database,
        bus: Bus,
        rules: RuleService,
        waiters: WaiterCount,
        dismiss_waiters: Callable[[str, Iterable[str], int], None],
        ptr_name: Callable[[str], str | None] = lambda host: None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.rules = rules
        self.waiters = waiters
        self.dismiss_waiters = dismiss_waiters
        self.ptr_name = ptr_name

    def to_json(self, row: PendingRequest) -> dict[str, Any]:
        ptr = self.ptr_name(row.destination_host) if not row.resolved_hostname else None
        return pending_to_json(row, self.waiters(row.container_name, row.destination_host, row.destination_port),
                               ptr)

    def ptr_found(self, ip: str) -> None:
        """A PTR name for `ip` arrived: dashboards showing its pending rows get them again."""
        for row in PendingRequest.select().where(PendingRequest.destination_host == ip):
            self.bus.publish("pending_request.updated", self.to_json(row))

    # -- written by the store writer, off the connection path ----------------------------
    def record_attempt(self, a: Attempt) -> None:
        with self.db.atomic():
            row = PendingRequest.get_or_none(
                (PendingRequest.container_name == a.container_name)
                & (PendingRequest.destination_host == a.destination_host)
                & (PendingRequest.destination_port == a.destination_port)
            )
            if row is None and a.resolved_hostname:
                # A different IP of a host that is already pending: bump that row (§4.2).
                row = PendingRequest.get_or_none(
                    (PendingRequest.container_name == a.container_name)
                    & (PendingRequest.resolved_hostname == a.resolved_hostname)
                    & (PendingRequest.destination_port == a.destination_port)
                )
            if row is None:
                row = PendingRequest.create(
                    container_name=a.container_name,
                    container_id=a.container_id,
                    destination_host=a.destination_host,
                    destination_port=a.destination_port,
                    resolved_hostname=a.resolved_hostname,
                    first_seen=a.when,
                    last_seen=a.when,
                )
                event = "pending_request.created"
            else:
                row.last_seen = max(row.last_seen, a.when)
                row.attempt_count += 1
                row.resolved_hostname = row.resolved_hostname or a.resolved_hostname
                row.save()
                event = "pending_request.updated"
        self.bus.publish(event, self.to_json(row))

    # -- reads ---------------------------------------------------------------------------
    def get(self, pending_id: int) -> PendingRequest:
        row = PendingRequest.get_or_none(PendingRequest.id == pending_id)
        if row is None:
            raise NotFound(f"pending request {pending_id} not found")
        return row

    def list(
        self, container: str | None = None, destination: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        query = PendingRequest.select()
        if container:
            query = query.where(PendingRequest.container_name.contains(container))
        if destination:
            query = query.where(
                PendingRequest.destination_host.contains(destination)
                | PendingRequest.resolved_hostname.contains(destination)
            )
        groups: dict[tuple[str, str, int], list[PendingRequest]] = {}
        for row in query:
            groups.setdefault((row.container_name, display_host(row), row.destination_port), []).append(row)
        items = []
        for rows in groups.values():
            newest = max(rows, key=lambda r: (r.last_seen, r.id))
            item = self.to_json(newest)
            item["attempt_count"] = sum(r.attempt_count for r in rows)
            item["first_seen"] = iso(min(r.first_seen for r in rows))
            item["waiter_count"] = sum(
                self.waiters(r.container_name, r.destination_host, r.destination_port) for r in rows
            )
            items.append(item)
        items.sort(key=lambda i: (i["last_seen"], i["id"]), reverse=True)
        return items[offset : offset + limit], len(items)

    def count(self) -> int:
        return len({(display_host(r), r.destination_port, r.container_name) for r in PendingRequest.select()})

    # -- resolution ----------------------------------------------------------------------
    def _siblings(self, row: PendingRequest) -> list[PendingRequest]:
        host = display_host(row)
        # The host test in SQL too (a superset of display_host(r) == host), so a container with
        # thousands of pending rows on one port is not read whole for every decision (issue 13).
        query = PendingRequest.select().where(
            (PendingRequest.container_name == row.container_name)
            & (PendingRequest.destination_port == row.destination_port)
            & ((PendingRequest.id == row.id) | (PendingRequest.resolved_hostname == host)
               | ((PendingRequest.resolved_hostname.is_null() | (PendingRequest.resolved_hostname == ""))
                  & (PendingRequest.destination_host == host)))
        )
        return [r for r in query if r.id == row.id or display_host(r) == host]

    def _remove_with_siblings(self, row: PendingRequest) -> list[PendingRequest]:
        """Call inside the caller's transaction."""
        siblings = self._siblings(row)
        PendingRequest.delete().where(PendingRequest.id.in_([s.id for s in siblings])).execute()
        return siblings

    def resolve(
        self, pending_id: int, action: str, scope: str | None, duration: str | None, notes: str | None,
        actor: str = "admin",
    ) -> dict[str, Any]:
        """Turn a pending request into an allow or deny rule; ScopeError/DurationError/PatternError
        propagate.

        One transaction (issue 13): the pending rows go, the rule is inserted and the audit
        entries (`rule.create`, `pending.allow|deny`) are written together, or nothing is. Only
        after the commit is the index rebuilt (which wakes the held connections) and are the
        events published (marked recorded, so the audit log does not write them twice). With
        WAL, a commit survives a crash of the process (kill -9) before any waiter is released."""
        row = self.get(pending_id)
        seconds = rule_duration(duration)
        container_p, dest_p, port_p = patterns_for_scope(scope, row.container_name, display_host(row), row.destination_port)
        # Validated like every other rule write (PatternError: a 400) before anything changes, so a
        # row holding a destination no rule may name stays pending instead of vanishing.
        new = validated(NewRule(
            container_pattern=container_p,
            destination_pattern=dest_p,
            port_pattern=port_p,
            action=action,
            rule_type="temporary" if seconds else "permanent",
            expires_in_seconds=seconds,
            notes=notes,
            created_by=actor,
        ))
        event = "pending_request.allowed" if action == "allow" else "pending_request.dismissed"
        now = utcnow()
        with self.db.atomic():
            row = self.get(pending_id)  # still there inside the transaction (NotFound otherwise)
            self._remove_with_siblings(row)
            # The insert only (RuleService.create would commit and publish on its own).
            rule, created = self.rules._insert(new, now)
            rule_json = rule_to_json(rule, now)
            payload = {"pending_id": pending_id, "rule": rule_json}
            if created:
                self.bus.record("rule.created", rule_json)
            self.bus.record(event, payload)
        if created:
            # Re-decides the held connections: they go through only now, with the rule committed.
            self.rules.on_change()
            self.bus.publish("rule.created", rule_json, recorded=True)
        self.bus.publish(event, payload, recorded=True)
        return rule_json

    def dismiss(self, pending_id: int) -> bool:
        with self.db.atomic():  # rows removed and the audit entry written together
            row = PendingRequest.get_or_none(PendingRequest.id == pending_id)
            if row is None:
                return False
            siblings = self._remove_with_siblings(row)
            payload = {"pending_id": pending_id}
            self.bus.record("pending_request.dismissed", payload)
        self.dismiss_waiters(row.container_name, {s.destination_host for s in siblings}, row.destination_port)
        self.bus.publish("pending_request.dismissed", payload, recorded=True)
        return True

    def prune_matching(self, matches_allow: Callable[[PendingRequest], bool]) -> int:
        """After an ingest: drop pending rows an allow rule now covers (§3.9)."""
        # One transaction: the rows go with their audit entries (issue 13); events after the commit.
        with self.db.atomic():
            gone = [row.id for row in PendingRequest.select().limit(10000) if matches_allow(row)]
            for start in range(0, len(gone), 500):
                PendingRequest.delete().where(PendingRequest.id.in_(gone[start : start + 500])).execute()
            payloads = [{"pending_id": pid} for pid in gone]
            for payload in payloads:
                self.bus.record("pending_request.dismissed", payload)
        for payload in payloads:
            self.bus.publish("pending_request.dismissed", payload, recorded=True)
        return len(gone)
