"""Pending queue (docs/user-guide.md#rules-pending-requests-and-holds): rows for unmatched destinations, and their resolution into rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import gevent
import peewee

from greyproxy.events import Bus
from greyproxy.policy.canonical import display_fields
from greyproxy.policy.durations import rule_duration, rule_type_for
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import patterns_for_scope
from greyproxy.services.rules import NewRule, NotFound, RuleService, rule_to_json, validated
from greyproxy.store.executor import run_in_db
from greyproxy.store.models import PendingRequest
from greyproxy.store.records import Attempt
from greyproxy.timeutil import iso, utcnow

WaiterCount = Callable[[str, str, int], int]

# Bulk decisions (issue 13) go in chunks of BULK_CHUNK ids, one transaction each, with a real
# timer pause between them (sleep(0) would only run greenlets already ready, not poll sockets).
BULK_CHUNK = 200
BULK_PAUSE = 0.002


class Decided(NamedTuple):
    rule: dict[str, Any]
    created: bool
    payload: dict[str, Any]


def _decision_event(action: str) -> str:
    return "pending_request.allowed" if action == "allow" else "pending_request.dismissed"


def pending_to_json(row: PendingRequest, waiters: int | None = None, ptr_hostname: str | None = None) -> dict[str, Any]:
    data = {
        "id": row.id,
        "container_name": row.container_name,
        "container_id": row.container_id or "",
        "destination_host": row.destination_host,
        "destination_port": row.destination_port,
        "resolved_hostname": row.resolved_hostname,
        "ptr_hostname": ptr_hostname,  # display only: whoever owns the IP block writes it
        "first_seen": iso(row.first_seen),
        "last_seen": iso(row.last_seen),
        "attempt_count": row.attempt_count,
        # The Unicode form of the name a rule would be made for, and whether it mixes scripts
        # (a look-alike such as g\u0456thub.com); display only, rules match the punycode.
        **display_fields(display_host(row)),
    }
    if waiters is not None:
        data["waiter_count"] = waiters
    return data


def display_host(row: PendingRequest) -> str:
    return row.resolved_hostname or row.destination_host


Key = tuple[str, int, str]  # (container, port, shown host): the rows one decision covers


def _key(row: PendingRequest) -> Key:
    return row.container_name, row.destination_port, display_host(row)


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
        try:
            self._record_attempt(a)
        except peewee.IntegrityError:
            # Fleet mode (docs/fleet.md): another node inserted this very row a moment ago (the
            # unique index refused ours, and the transaction rolled back): bump it instead.
            self._record_attempt(a)

    def _existing(self, where: Any) -> PendingRequest | None:
        query = PendingRequest.select().where(where)
        if self.db.for_update:  # PostgreSQL: nodes bumping one row at once queue, no count is lost
            query = query.for_update()
        return query.first()

    def _record_attempt(self, a: Attempt) -> None:
        with self.db.atomic():
            row = self._existing(
                (PendingRequest.container_name == a.container_name)
                & (PendingRequest.destination_host == a.destination_host)
                & (PendingRequest.destination_port == a.destination_port)
            )
            if row is None and a.resolved_hostname:
                # A different IP of a host that is already pending: bump that row.
                row = self._existing(
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
                    first_seen=a.first or a.when,
                    last_seen=a.when,
                    attempt_count=a.count,
                )
                event = "pending_request.created"
            else:
                row.last_seen = max(row.last_seen, a.when)
                row.attempt_count += a.count  # the writer merges the attempts queued together
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
    def _new_rule(self, row: PendingRequest, action: str, scope: str | None, duration: str | None,
                  notes: str | None, actor: str) -> NewRule:
        seconds = rule_duration(duration)
        container_p, dest_p, port_p = patterns_for_scope(scope, row.container_name, display_host(row), row.destination_port)
        # Validated like every other rule write (PatternError: a 400) before anything changes, so a
        # row holding a destination no rule may name stays pending instead of vanishing.
        return validated(NewRule(
            container_pattern=container_p,
            destination_pattern=dest_p,
            port_pattern=port_p,
            action=action,
            rule_type=rule_type_for(duration, seconds),
            expires_in_seconds=seconds,
            notes=notes,
            created_by=actor,
        ))

    def _remove_with_siblings(self, rows: Sequence[PendingRequest]) -> dict[Key, list[PendingRequest]]:
        """Inside the caller's transaction: remove each row with its siblings (the rows of the
        same container, port and shown host: other addresses of one name), in a few statements
        whatever the number of rows. Returns the removed rows by (container, port, host)."""
        keys = list(dict.fromkeys(_key(r) for r in rows))
        P = PendingRequest
        # A row is shown by its resolved name, or its address when it has none: two lookups,
        # each along an index (the unique one, and migration 0013's), filtered here.
        by_address = peewee.Tuple(P.container_name, P.destination_host, P.destination_port)
        by_name = peewee.Tuple(P.container_name, P.resolved_hostname, P.destination_port)
        removed: dict[Key, list[PendingRequest]] = {key: [] for key in keys}
        seen: set[int] = set()
        for start in range(0, len(keys), 300):
            wanted = peewee.ValuesList([(c, host, port) for c, port, host in keys[start : start + 300]])
            for column in (by_address, by_name):
                for sibling in P.select().where(column.in_(wanted)):
                    if _key(sibling) in removed and sibling.id not in seen:
                        seen.add(sibling.id)
                        removed[_key(sibling)].append(sibling)
        ids = [r.id for group in removed.values() for r in group]
        for start in range(0, len(ids), 500):
            P.delete().where(P.id.in_(ids[start : start + 500])).execute()
        return removed

    def _decide(self, rows: Sequence[PendingRequest], news: Sequence[NewRule], now: dt.datetime) -> list[Decided]:
        """Inside the caller's transaction: the rows go (with their siblings), their rules are
        inserted (the insert only: RuleService.create would commit and publish on its own) and
        the audit entries written, in a handful of statements for all of them."""
        self._remove_with_siblings(rows)
        decided, events = [], []
        for row, new, (rule, created) in zip(rows, news, self.rules._insert_many(list(news), now), strict=True):
            rule_json = rule_to_json(rule, now)
            payload = {"pending_id": row.id, "rule": rule_json}
            if created:
                events.append(("rule.created", rule_json))
            events.append((_decision_event(new.action), payload))
            decided.append(Decided(rule_json, created, payload))
        self.bus.record_many(events)
        return decided

    def _announce(self, decided: list[Decided], action: str) -> None:
        """After the commit: the index is patched (which re-decides the held connections: they go
        through only now, with the rule durable), then the events go out, marked recorded so the
        audit log does not write them twice."""
        if any(d.created for d in decided):
            self.rules.on_change()
        for d in decided:
            if d.created:
                self.bus.publish("rule.created", d.rule, recorded=True)
            self.bus.publish(_decision_event(action), d.payload, recorded=True)

    def resolve(
        self, pending_id: int, action: str, scope: str | None, duration: str | None, notes: str | None,
        actor: str = "admin",
    ) -> dict[str, Any]:
        """Turn a pending request into an allow or deny rule; ScopeError/DurationError/PatternError
        propagate.

        One transaction (issue 13): the pending rows go, the rule is inserted and the audit
        entries (`rule.create`, `pending.allow|deny`) are written together, or nothing is. With
        WAL, a commit survives a crash of the process (kill -9) before any waiter is released."""
        new = self._new_rule(self.get(pending_id), action, scope, duration, notes, actor)

        def decide() -> list[Decided]:
            with self.db.atomic():
                row = self.get(pending_id)  # still there inside the transaction (NotFound otherwise)
                return self._decide([row], [new], utcnow())

        decided = run_in_db(self.db, decide)
        self._announce(decided, action)
        return decided[0].rule

    def _chunk(self, ids: Sequence[int]) -> list[PendingRequest]:
        """The rows of `ids` still there, one per (container, port, host): a later id that is a
        sibling of an earlier one goes with it, as if it had been decided already."""
        found = {r.id: r for r in PendingRequest.select().where(PendingRequest.id.in_(list(ids)))}
        first: dict[Key, PendingRequest] = {}
        for pid in ids:
            if pid in found:
                first.setdefault(_key(found[pid]), found[pid])
        return list(first.values())

    def resolve_many(self, ids: Sequence[int], action: str, duration: str | None,
                     actor: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A bulk decision with scope `exact`: (rules, refused). Ids already gone are skipped; a
        row no rule may name stays pending and is listed in `refused`. Each chunk of BULK_CHUNK ids
        is one transaction of a few statements run whole in the database thread, announced
        after its commit, with a pause between chunks for the other callers."""
        rule_duration(duration)  # a bad duration fails before any chunk
        rules: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []

        def decide(chunk: Sequence[int]) -> list[Decided]:
            with self.db.atomic():
                rows, news = [], []
                for row in self._chunk(chunk):
                    try:
                        news.append(self._new_rule(row, action, "exact", duration, None, actor))
                    except PatternError as exc:  # a row no rule may name: it stays, the rest go on
                        refused.append({"pending_id": row.id, "error": str(exc)})
                        continue
                    rows.append(row)
                return self._decide(rows, news, utcnow())

        for start in range(0, len(ids), BULK_CHUNK):
            decided = run_in_db(self.db, lambda chunk=ids[start:start + BULK_CHUNK]: decide(chunk))
            self._announce(decided, action)
            rules.extend(d.rule for d in decided)
            if len(ids) > BULK_CHUNK:
                gevent.sleep(BULK_PAUSE)
        return rules, refused

    def dismiss(self, pending_id: int) -> bool:
        return self.dismiss_many([pending_id]) == 1

    def dismiss_many(self, ids: Sequence[int]) -> int:
        """Remove pending rows (and their siblings) with their audit entries, chunk by chunk as
        `resolve_many`; the held connections are told after each commit. Returns how many rows
        were dismissed (an id that went with an earlier sibling is not counted again)."""
        removed = 0

        def dismiss(chunk: Sequence[int]) -> list[tuple[PendingRequest, list[PendingRequest]]]:
            with self.db.atomic():  # rows removed and the audit entries written together
                rows = self._chunk(chunk)
                gone = self._remove_with_siblings(rows)
                self.bus.record_many([("pending_request.dismissed", {"pending_id": row.id}) for row in rows])
                return [(row, gone[_key(row)]) for row in rows]

        for start in range(0, len(ids), BULK_CHUNK):
            done = run_in_db(self.db, lambda chunk=ids[start:start + BULK_CHUNK]: dismiss(chunk))
            for row, siblings in done:
                self.dismiss_waiters(row.container_name, {s.destination_host for s in siblings}, row.destination_port)
                self.bus.publish("pending_request.dismissed", {"pending_id": row.id}, recorded=True)
            removed += len(done)
            if len(ids) > BULK_CHUNK:
                gevent.sleep(BULK_PAUSE)
        return removed

    def prune_matching(self, matches_allow: Callable[[PendingRequest], bool]) -> int:
        """After an ingest: drop pending rows an allow rule now covers."""
        # One transaction: the rows go with their audit entries (issue 13); events after the commit.
        with self.db.atomic():
            gone = [row.id for row in PendingRequest.select().limit(10000) if matches_allow(row)]
            for start in range(0, len(gone), 500):
                PendingRequest.delete().where(PendingRequest.id.in_(gone[start : start + 500])).execute()
            payloads = [{"pending_id": pid} for pid in gone]
            self.bus.record_many([("pending_request.dismissed", payload) for payload in payloads])
        for payload in payloads:
            self.bus.publish("pending_request.dismissed", payload, recorded=True)
        return len(gone)
