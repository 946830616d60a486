"""Rules as YAML: what `greyproxy rules export` writes, `rules import` reads, and what the files
named in `rules_files:` hold. One list of entries:

    - container: agent1            # container pattern
      destination: "*.github.com"  # destination pattern
      ports: "443"                 # port pattern, default "*"
      action: allow                # allow | deny | hold (hold: request-level only), default allow
      methods: POST                # optional: a request-level rule (docs/request-rules.md)
      path: /v1/*                  # optional: a request-level rule
      notes: "why"                 # optional
      expires_at: 2030-01-01T00:00:00Z   # optional; a past time skips the entry

Built-in and session rules are never exported: the first come with every install, the
second with their session. Entries are validated here with the same normalizers the API uses,
so a bad file is refused with the entry's position before anything changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from greyproxy.policy.patterns import (
    PatternError,
    normalize_container_pattern,
    normalize_destination_pattern,
    normalize_port_pattern,
)
from greyproxy.policy.request_rules import normalize_method_pattern, normalize_path_pattern
from greyproxy.timeutil import iso, parse_iso, utcnow

KEYS = ("container", "destination", "ports", "action", "notes", "expires_at", "methods", "path")
# The API's own field names are accepted too, so `GET /api/rules` items can be pasted in.
ALIASES = {"container_pattern": "container", "destination_pattern": "destination", "port_pattern": "ports",
           "method_pattern": "methods", "path_pattern": "path"}
MAX_ENTRIES = 100_000
MAX_NOTES = 10_000


class RulesFileError(ValueError):
    """The file cannot be used; the message names the entry and field."""


@dataclass(frozen=True, slots=True)
class RuleEntry:
    container_pattern: str
    destination_pattern: str
    port_pattern: str
    action: str
    notes: str | None = None
    expires_at: dt.datetime | None = None  # naive UTC
    method_pattern: str = ""  # request-level rules (docs/request-rules.md); '' = any
    path_pattern: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.container_pattern, self.destination_pattern, self.port_pattern, self.action,
                self.method_pattern, self.path_pattern)

    def ingest_item(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The `POST /api/rules/ingest` form (an expiry becomes seconds from now)."""
        item: dict[str, Any] = {
            "container_pattern": self.container_pattern,
            "destination_pattern": self.destination_pattern,
            "port_pattern": self.port_pattern,
            "action": self.action,
        }
        if self.method_pattern or self.path_pattern:
            item["method_pattern"], item["path_pattern"] = self.method_pattern, self.path_pattern
        if self.notes is not None:
            item["notes"] = self.notes
        if self.expires_at is not None:
            seconds = (self.expires_at - (now or utcnow())).total_seconds()
            item["expires_in_seconds"] = max(1, int(seconds))
        return item


def _text(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = entry.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RulesFileError(f"{where}: '{key}' must be a string")
    return str(value)


def _expiry(value: Any, where: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp as a datetime
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date) or not isinstance(value, str):
        raise RulesFileError(f"{where}: 'expires_at' must be a time like 2030-01-01T00:00:00Z")
    try:
        return parse_iso(value)
    except (ValueError, OverflowError):
        raise RulesFileError(f"{where}: 'expires_at' must be a time like 2030-01-01T00:00:00Z") from None


def parse_entry(raw: Any, where: str) -> RuleEntry:
    if not isinstance(raw, Mapping):
        raise RulesFileError(f"{where}: must be a mapping with container, destination, ports, action")
    entry = {ALIASES.get(str(k), str(k)): v for k, v in raw.items()}
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise RulesFileError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    try:
        container = normalize_container_pattern(_text(entry, "container", where) or "")
        destination = normalize_destination_pattern(_text(entry, "destination", where) or "")
        ports = normalize_port_pattern(_text(entry, "ports", where, "*"))
        methods = normalize_method_pattern(_text(entry, "methods", where))
        path = normalize_path_pattern(_text(entry, "path", where))
    except PatternError as exc:
        raise RulesFileError(f"{where}: {exc}") from None
    action = _text(entry, "action", where, "allow")
    if action not in ("allow", "deny", "hold"):
        raise RulesFileError(f"{where}: 'action' must be allow or deny (or hold, for a request-level rule)")
    if action == "hold" and not (methods or path):
        raise RulesFileError(f"{where}: 'hold' needs 'methods' or 'path' (a request-level rule)")
    notes = _text(entry, "notes", where)
    if notes is not None and len(notes) > MAX_NOTES:
        raise RulesFileError(f"{where}: 'notes' is longer than {MAX_NOTES} characters")
    return RuleEntry(container, destination, ports, action, notes, _expiry(entry.get("expires_at"), where),
                     methods, path)


def parse_rules(text: str, name: str = "rules") -> tuple[list[RuleEntry], int]:
    """(entries still in force, number of entries skipped because they already expired)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesFileError(f"{name}: not valid YAML: {exc}") from None
    if doc is None:
        return [], 0
    if isinstance(doc, Mapping) and set(doc) == {"rules"}:
        doc = doc["rules"]  # also accept `rules: [...]`
    if not isinstance(doc, list):
        raise RulesFileError(f"{name}: must be a list of rules (or a mapping with one key 'rules')")
    if len(doc) > MAX_ENTRIES:
        raise RulesFileError(f"{name}: more than {MAX_ENTRIES} rules")
    now = utcnow()
    entries: dict[tuple[str, ...], RuleEntry] = {}
    expired = 0
    for i, raw in enumerate(doc):
        entry = parse_entry(raw, f"{name}: rule {i + 1}")
        if entry.expires_at is not None and entry.expires_at <= now:
            expired += 1
            continue
        entries.setdefault(entry.key, entry)  # the same rule twice is one rule
    return list(entries.values()), expired


def exportable(rule: Mapping[str, Any]) -> bool:
    """A `GET /api/rules` item that belongs in an export: global and still in force."""
    return rule.get("source", "global") == "global" and rule.get("is_active", True)


def dump_rules(rules: Iterable[Mapping[str, Any]], header: str | None = None) -> str:
    """YAML for API rule items (RuleJSON), oldest first so a re-import keeps their order."""
    out = []
    for rule in sorted(rules, key=lambda r: r.get("id") or 0):
        if not exportable(rule):
            continue
        entry: dict[str, Any] = {
            "container": rule["container_pattern"],
            "destination": rule["destination_pattern"],
            "ports": str(rule.get("port_pattern") or "*"),
            "action": rule.get("action", "allow"),
        }
        if rule.get("method_pattern"):
            entry["methods"] = rule["method_pattern"]
        if rule.get("path_pattern"):
            entry["path"] = rule["path_pattern"]
        if rule.get("notes"):
            entry["notes"] = rule["notes"]
        if rule.get("expires_at"):
            entry["expires_at"] = iso(parse_iso(rule["expires_at"]))
        out.append(entry)
    body = yaml.safe_dump(out, sort_keys=False, allow_unicode=True, default_flow_style=False) if out else "[]\n"
    return (f"# {header}\n" if header else "") + body
