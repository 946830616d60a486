"""The audit log (docs/decisions.md#audit-observability-traffic-tools): every control-plane change, who made it, before and after, in a
tamper-evident hash chain.

Where the entries come from: every change already goes through a service that publishes one
event on the bus (rule.*, pending_request.*, settings.changed, allowall.changed, credential.*,
session.*, container_mode.*, cert.reloaded, config.reloaded). The audit log is a bus recorder, so
a new route or a WebSocket command that changes something is audited without remembering to. A
service that wants its entry in the same transaction as the change (a pending decision, issue 13)
calls `bus.record()` inside `db.atomic()` and publishes with `recorded=True` after the commit.

Who made it: `current_actor`, a context variable each API request, WebSocket command, CLI call
and signal sets for its own greenlet (`token`, `dashboard`, `cli`, `ws:<client>`, `signal`);
background work (expiry, file watchers) is `system`.

The chain: each entry stores `prev_hash` (the previous entry's hash, "" for the first) and
`hash` = SHA-256 over prev_hash and the entry's stored text. The previous hash is read from the
database inside the writing transaction, so an entry rolled back with its change leaves no gap. Editing, inserting or deleting an
entry in the database breaks the link at that point; `greyproxy audit verify` finds it.
Secrets never reach an entry: credential values are not in the events, and keys that could hold
one are dropped anyway.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import peewee

from greyproxy.events import Bus, Event
from greyproxy.store.bulk import insert_rows
from greyproxy.store.models import AuditEntry

current_actor: contextvars.ContextVar[str] = contextvars.ContextVar("greyproxy_actor", default="system")

SECRET_KEYS = frozenset({"value", "secret", "proxy_token", "token", "password", "mappings"})
AUDIT_LOCK = 0x61756474  # "audt": the advisory lock key the chain's writers take (fleet mode)
SILENT_EVENTS = frozenset({"session.heartbeat", "session.substitution"})  # not changes of policy

Change = tuple[str, str | None, Any, Any]  # kind, target, before, after


def scrub(value: Any) -> Any:
    """A copy without any key that could carry a secret."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def canonical(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, at: str, actor: str, kind: str, target: str | None, before: str | None,
               after: str | None) -> str:
    """The link of one entry: what `greyproxy audit verify` recomputes from the stored text."""
    fields = [prev_hash, at, actor, kind, target or "", before or "", after or ""]
    return hashlib.sha256("\x1f".join(fields).encode("utf-8")).hexdigest()


def now_text() -> str:
    # Fixed width (always microseconds) so stored times also sort and filter as text.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _target(prefix: str, ident: Any) -> str | None:
    return f"{prefix}:{ident}" if ident is not None else None


class AuditLog:
    def __init__(self, db: peewee.Database, bus: Bus, current: dict[str, Callable[[], Any]]) -> None:
        """`current` gives the present value of the whole-object settings (settings, silent
        mode), so their entries can say what they were before."""
        self.db = db
        self.current = current
        self._last = {name: get() for name, get in current.items()}
        last = AuditEntry.select(AuditEntry.hash).order_by(AuditEntry.id.desc()).first()
        self._prev_hash = last.hash if last is not None else ""
        # Text scrubber applied to every entry before it is hashed and stored: no
        # real credential value, whatever an event carried. The runtime sets it once the vault exists.
        self.scrub: Callable[[str], str] | None = None
        # A recorder, not a plain hook: a service can have its entry written inside the
        # transaction that makes the change (Bus.record), so a decision and its entry commit
        # together (a pending approval: rows removed, rule inserted, entries written).
        bus.add_recorder(self.on_events)

    def on_events(self, events: list[Event]) -> None:
        changes = [change for event in events if (change := self._change(event["type"], event["data"]))]
        self.record_many(changes)

    def resume(self, head_hash: str) -> None:
        """The chain was recomputed (the scrub job): new entries follow this head."""
        self._prev_hash = head_hash

    def head(self) -> str:
        """The hash of the last entry in the database, as seen by the current transaction: a
        transaction that wrote entries and rolled back leaves no gap in the chain."""
        last = AuditEntry.select(AuditEntry.hash).order_by(AuditEntry.id.desc()).first()
        return last.hash if last is not None else ""

    def record(self, kind: str, target: str | None, before: Any, after: Any, actor: str | None = None) -> None:
        self.record_many([(kind, target, before, after)], actor)

    def record_many(self, changes: list[Change], actor: str | None = None) -> None:
        """The entries for `changes`, in order, in one step: the head is read and the entries
        inserted in one transaction (a savepoint when nested), with one statement for all of
        them (a bulk decision writes thousands)."""
        if not changes:
            return
        with self.db.atomic():
            if isinstance(self.db, peewee.PostgresqlDatabase):
                # Fleet mode: nodes write entries concurrently. A transaction-scoped advisory lock
                # makes "read the head, insert after it" one step across nodes, held until the
                # writing transaction commits or rolls back: the chain stays one line.
                self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            prev = self.head()
            rows = []
            for kind, target, before, after in changes:
                rows.append(self._entry(prev, kind, target, before, after, actor))
                prev = rows[-1]["hash"]
            insert_rows(self.db, AuditEntry, rows)
        self._prev_hash = prev

    def _entry(self, prev_hash: str, kind: str, target: str | None, before: Any, after: Any,
               actor: str | None) -> dict[str, Any]:
        at, who = now_text(), actor or current_actor.get()
        before_text, after_text = canonical(scrub(before)), canonical(scrub(after))
        if self.scrub is not None:
            target = self.scrub(target) if target else target
            before_text = self.scrub(before_text) if before_text else before_text
            after_text = self.scrub(after_text) if after_text else after_text
        digest = entry_hash(prev_hash, at, who, kind, target, before_text, after_text)
        return {"timestamp": at, "actor": who, "kind": kind, "target": target, "before": before_text,
                "after": after_text, "prev_hash": prev_hash, "hash": digest}

    def _swap(self, name: str, new: Any) -> Any:
        before, self._last[name] = self._last.get(name), new
        return before

    def _change(self, kind: str, data: Any) -> Change | None:
        if kind in SILENT_EVENTS:
            return None
        family, _, verb = kind.partition(".")
        if family == "rule":
            if verb == "ingested":
                return "rule.ingest", None, None, data
            if verb == "updated":
                after = {k: v for k, v in data.items() if k != "previous"}
                return "rule.update", _target("rule", data.get("id")), data.get("previous"), after
            if verb not in ("created", "deleted"):
                return None
            before, after = (data, None) if verb == "deleted" else (None, data)
            return f"rule.{verb[:-1]}", _target("rule", data.get("id")), before, after
        if family == "pending_request" and verb in ("allowed", "dismissed"):
            target = _target("pending", data.get("pending_id"))
            if verb == "allowed":
                return "pending.allow", target, None, data
            if data.get("rule"):  # a deny decision creates a deny rule
                return "pending.deny", target, None, data
            return ("pending.expire" if data.get("reason") == "expired" else "pending.dismiss"), target, None, data
        if family == "pending_http" and verb in ("allowed", "denied") and isinstance(data, dict) \
                and data.get("decided_by"):  # a human's answer to a held request (docs/request-rules.md)
            kind_ = "pending_http.allow" if verb == "allowed" else "pending_http.deny"
            return kind_, _target("pending_http", data.get("id")), None, data
        if kind == "settings.changed":
            return "settings.update", None, self._swap("settings", data), data
        if kind == "allowall.changed":
            return "silent_mode.change", None, self._swap("silent", data), data
        if family == "container_mode":
            ident = data.get("container_pattern") if isinstance(data, dict) else None
            deleted = verb == "deleted"
            return (f"container_mode.{'delete' if deleted else 'set'}", _target("container_mode", ident),
                    data if deleted else None, None if deleted else data)
        if family == "credential":
            deleted = verb == "deleted"
            return (f"credential.{'delete' if deleted else 'create'}", _target("credential", data.get("id")),
                    data if deleted else None, None if deleted else data)
        if family == "session":
            return f"session.{verb}", _target("session", data), None, None
        if kind == "cert.reloaded":
            return "ca.load", None, None, data
        if kind == "config.reloaded":
            return "config.reload", None, None, data
        return None


def verify(rows: Iterable[tuple[int, str, str, str, str | None, str | None, str | None, str, str]]) -> tuple[int, str | None]:
    """Walk (id, timestamp, actor, kind, target, before, after, prev_hash, hash) rows in id
    order; (entries checked, None) or (the count up to the break, what is wrong)."""
    prev, count = "", 0
    for row_id, at, actor, kind, target, before, after, prev_hash, digest in rows:
        if prev_hash != prev:
            return count, f"entry #{row_id} ({kind}, {at}) does not follow the entry before it: one was removed or inserted"
        if entry_hash(prev_hash, at, actor, kind, target, before, after) != digest:
            return count, f"entry #{row_id} ({kind}, {at}) was changed after it was written"
        prev, count = digest, count + 1
    return count, None
