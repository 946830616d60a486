"""In-memory compiled rule index (docs/decisions.md#decisions-on-the-connection-path): the connection path never queries the database.

Every pattern is compiled once in ``RuleIndex.__init__``.  Rules are bucketed by the shape of
their destination pattern so that a lookup only looks at rules that can possibly match:

* exact hosts / IPs: dict keyed by the canonical host;
* ``*.x`` and ``**.x``: dicts keyed by the suffix ``x`` (the lookup walks the host's suffixes);
* CIDR: per IP version, per prefix length, dict keyed by the masked network bits;
* label globs: dict keyed by label count and the pattern's literal tail (or, when its last
  label is a wildcard, its literal head), so ``svc*.corp.example`` is only tried for
  three-label hosts ending in ``corp.example`` and ``api.github.*`` for ones starting ``api.github``;
* ``*``: a single bucket.

The index is patched in place by ``add`` / ``remove`` (one rule touches one bucket, kept sorted by
insertion) and ``extend_session`` (a heartbeat moves the expiry of a session's rules), so a rule
create/delete or a heartbeat costs one bucket instead of a rebuild of every rule. Patches run on
the hub between lookups (a lookup never yields), so no lookup sees a half-patched bucket.
``version`` changes with every patch, for caches derived from the rule set.

Inside a bucket, rules are split by exact container name (dict) vs. container glob (list), and
each list is pre-sorted by precedence, so a scan stops at the first eligible rule or as soon as
it cannot beat the best rule found so far.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .patterns import (
    DestinationKind,
    PatternError,
    container_matcher,
    parse_destination,
    parsed_matcher,
    port_matcher,
    specificity,
    try_canonical_host,
)
from .request_rules import RequestEntry, RequestQuery, best_request_rule, is_request_rule

LAYER_GLOBAL = 3
LAYER_SESSION = 2
LAYER_BUILTIN = 1

_ACTION_RANK = {"deny": 0, "allow": 1}  # deny sorts first at equal layer and score


def layer_of(created_by: str | None, session_id: str | None) -> int:
    """The computed `source`: builtin, then session, else global."""
    if created_by == "builtin":
        return LAYER_BUILTIN
    if session_id:
        return LAYER_SESSION
    return LAYER_GLOBAL


@dataclass(frozen=True, slots=True)
class RuleSpec:
    id: int
    container_pattern: str
    destination_pattern: str
    port_pattern: str
    action: str  # 'allow' | 'deny'
    layer: int = LAYER_GLOBAL
    expires_at: float | None = None  # epoch seconds; None = never
    session_id: str | None = None
    # Request-level rules (policy/request_rules.py) have one of these; '' = any. They are kept
    # out of the connection buckets: they judge requests on an already allowed connection.
    method_pattern: str = ""
    path_pattern: str = ""


SortKey = tuple[int, int, int, int]


def sort_key(rule: RuleSpec) -> SortKey:
    """Smaller wins: higher layer, higher specificity, deny before allow, lower id."""
    score = specificity(rule.container_pattern, rule.destination_pattern, rule.port_pattern)
    return (-rule.layer, -score, _ACTION_RANK[rule.action], rule.id)


class _Entry:
    """A compiled rule; its bucket already guarantees the destination matches."""

    __slots__ = ("spec", "key", "container_match", "port_match", "expires_at", "session_id")

    def __init__(self, spec: RuleSpec) -> None:
        self.spec = spec
        self.key = sort_key(spec)
        self.container_match = container_matcher(spec.container_pattern)
        self.port_match = port_matcher(spec.port_pattern)
        self.expires_at = spec.expires_at
        self.session_id = spec.session_id


class _Query:
    """The per-lookup inputs, bundled so the scan loops take one argument."""

    __slots__ = ("container", "port", "now", "session")

    def __init__(self, container: str, port: int, now: float, session: str | None) -> None:
        self.container = container
        self.port = port
        self.now = now
        self.session = session  # the container's current session id


def _scan(entries: list[_Entry], q: _Query, best: _Entry | None, check_container: bool) -> _Entry | None:
    """First eligible entry of a precedence-sorted list that beats `best`, else `best`."""
    for e in entries:
        if best is not None and e.key >= best.key:
            return best  # sorted: nothing further down can win
        if e.expires_at is not None and e.expires_at <= q.now:
            continue
        if e.session_id is not None and e.session_id != q.session:
            continue
        if not e.port_match(q.port):
            continue
        if check_container and not e.container_match(q.container):
            continue
        return e
    return best


def _literal_prefix(pattern: str) -> str:
    """The part of a container glob before its first wildcard ('web-*' -> 'web-')."""
    for i, c in enumerate(pattern):
        if c in "*?[":
            return pattern[:i]
    return pattern


class _Bucket:
    """Rules sharing one destination key, split by container pattern for cheap lookup.

    Exact container names are a dict; container globs are grouped by their literal prefix so
    that a glob like 'web-*' is only looked at for containers starting with 'web-'.
    """

    __slots__ = ("by_container", "by_prefix", "prefix_lens")

    def __init__(self) -> None:
        self.by_container: dict[str, list[_Entry]] = {}
        self.by_prefix: dict[str, list[_Entry]] = {}
        self.prefix_lens: tuple[int, ...] = ()

    def add(self, entry: _Entry) -> list[_Entry]:
        """Append (building: `finalize` sorts afterwards); returns the list it went into."""
        pattern = entry.spec.container_pattern
        if any(c in "*?[" for c in pattern):
            entries = self.by_prefix.setdefault(_literal_prefix(pattern), [])
        else:
            entries = self.by_container.setdefault(pattern, [])
        entries.append(entry)
        return entries

    def insert(self, entry: _Entry) -> list[_Entry]:
        """Patching a finalized bucket: insert in precedence order."""
        pattern = entry.spec.container_pattern
        if any(c in "*?[" for c in pattern):
            prefix = _literal_prefix(pattern)
            entries = self.by_prefix.setdefault(prefix, [])
            if len(prefix) not in self.prefix_lens:
                self.prefix_lens = tuple(sorted({*self.prefix_lens, len(prefix)}))
        else:
            entries = self.by_container.setdefault(pattern, [])
        bisect.insort(entries, entry, key=lambda e: e.key)
        return entries

    def finalize(self) -> None:
        for table in (self.by_container, self.by_prefix):
            for entries in table.values():
                entries.sort(key=lambda e: e.key)
        self.prefix_lens = tuple(sorted({len(p) for p in self.by_prefix}))

    def best(self, q: _Query, best: _Entry | None) -> _Entry | None:
        exact = self.by_container.get(q.container)
        if exact:
            best = _scan(exact, q, best, check_container=False)
        name = q.container
        for n in self.prefix_lens:
            if n > len(name):
                break
            entries = self.by_prefix.get(name[:n])
            if entries:
                best = _scan(entries, q, best, check_container=True)
        return best


def _bucket(table: dict, key: object) -> _Bucket:
    bucket = table.get(key)
    if bucket is None:
        bucket = table[key] = _Bucket()
    return bucket


def _is_literal(label: str) -> bool:
    return not any(c in "*?[" for c in label)


def _glob_key(labels: tuple[str, ...]) -> tuple[str, int, str]:
    """Where a label glob is filed: by its literal tail ('svc*.corp.example' → corp.example), or,
    when its last label is a wildcard, by its literal head ('api.github.*' → api.github)."""
    n = len(labels)
    i = n
    while i > 0 and _is_literal(labels[i - 1]):
        i -= 1
    if i < n:
        return ("tail", n, ".".join(labels[i:]))
    j = 0
    while j < n and _is_literal(labels[j]):
        j += 1
    return ("head", n, ".".join(labels[:j]))


class _GlobGroup:
    """All rules with one label-glob destination: the glob is tested once per lookup."""

    __slots__ = ("matches", "bucket")

    def __init__(self, matches: Callable[[str], bool]) -> None:
        self.matches = matches
        self.bucket = _Bucket()


class RuleIndex:
    def __init__(self, rules: Iterable[RuleSpec], current_sessions: Mapping[str, str] | None = None) -> None:
        self._rules: dict[int, RuleSpec] = {}
        self._rules_tuple: tuple[RuleSpec, ...] | None = None
        # rule id -> (its entry, the bucket list holding it); rules that cannot match have none
        self._where: dict[int, tuple[_Entry, list[_Entry]]] = {}
        self._by_session: dict[str, set[int]] = {}
        self._port_patterns: dict[str, int] = {}  # port pattern -> how many rules use it
        self.version = 0
        self._sessions: dict[str, str] = dict(current_sessions or {})
        self._exact: dict[str, _Bucket] = {}
        self._suffix: dict[str, _Bucket] = {}  # '*.x'
        self._apex: dict[str, _Bucket] = {}  # '**.x'
        # _glob_key(...) -> destination glob -> group
        self._glob: dict[tuple[str, int, str], dict[str, _GlobGroup]] = {}
        # version -> prefix length -> network bits -> bucket
        self._cidr: dict[int, dict[int, dict[int, _Bucket]]] = {4: {}, 6: {}}
        self._any = _Bucket()
        # Request-level rules by id, and where each is filed: under its exact destination (a
        # canonical host), or with the others (wildcards, CIDRs), so a lookup scans few of them.
        self._request: dict[int, RequestEntry] = {}
        self._request_exact: dict[str, dict[int, RequestEntry]] = {}
        self._request_other: dict[int, RequestEntry] = {}
        for rule in rules:
            if rule.id in self._rules:
                self._forget(rule.id)
            self._remember(rule)
            self._add(rule, building=True)
        for bucket in self._all_buckets():
            bucket.finalize()
        # Only the prefix lengths actually in use are probed on lookup.
        self._cidr_lens = {v: sorted(t) for v, t in self._cidr.items()}

    # ----------------------------------------------------------------- building

    def _add(self, rule: RuleSpec, building: bool) -> None:
        # Rules that cannot match are left out rather than raising: one bad database row must
        # not stop the proxy (patterns are validated on write).
        if is_request_rule(rule.method_pattern, rule.path_pattern):
            if rule.container_pattern:
                self._file_request(RequestEntry(rule))
            return
        if rule.action not in _ACTION_RANK or not rule.container_pattern:
            return
        try:
            parsed = parse_destination(rule.destination_pattern)
        except PatternError:
            return
        kind = parsed.kind
        entry = _Entry(rule)
        bucket: _Bucket
        if kind == DestinationKind.GLOB:
            groups = self._glob.setdefault(_glob_key(parsed.labels), {})
            glob = ".".join(parsed.labels)
            group = groups.get(glob)
            if group is None:
                group = groups[glob] = _GlobGroup(parsed_matcher(parsed))
            bucket = group.bucket
        elif kind == DestinationKind.ANY:
            bucket = self._any
        elif kind == DestinationKind.EXACT:
            bucket = _bucket(self._exact, parsed.value)
        elif kind == DestinationKind.SUFFIX:
            bucket = _bucket(self._suffix, parsed.value)
        elif kind == DestinationKind.APEX_SUFFIX:
            bucket = _bucket(self._apex, parsed.value)
        elif kind == DestinationKind.CIDR:
            net = parsed.network
            assert net is not None
            shift = net.max_prefixlen - net.prefixlen
            by_len = self._cidr[net.version].setdefault(net.prefixlen, {})
            bucket = _bucket(by_len, int(net.network_address) >> shift)
            if not building and net.prefixlen not in self._cidr_lens[net.version]:
                self._cidr_lens[net.version] = sorted({*self._cidr_lens[net.version], net.prefixlen})
        else:  # pragma: no cover - every kind is handled above
            return
        entries = bucket.add(entry) if building else bucket.insert(entry)
        self._where[rule.id] = (entry, entries)
        if rule.session_id is not None:
            self._by_session.setdefault(rule.session_id, set()).add(rule.id)

    def _unlink(self, rule_id: int) -> None:
        """Take a rule out of its bucket (an emptied list or bucket stays: it matches nothing)."""
        request = self._request.pop(rule_id, None)
        if request is not None:
            exact = self._request_exact.get(request.exact_host or "")
            (exact if exact is not None else self._request_other).pop(rule_id, None)
            if exact is not None and not exact:
                del self._request_exact[request.exact_host or ""]
        where = self._where.pop(rule_id, None)
        if where is None:
            return
        entry, entries = where
        for i, e in enumerate(entries):
            if e is entry:
                del entries[i]
                break
        sid = entry.session_id
        if sid is not None:
            ids = self._by_session.get(sid)
            if ids is not None:
                ids.discard(rule_id)
                if not ids:
                    del self._by_session[sid]

    # ----------------------------------------------------------------- patching

    def _remember(self, rule: RuleSpec) -> None:
        self._rules[rule.id] = rule
        self._port_patterns[rule.port_pattern] = self._port_patterns.get(rule.port_pattern, 0) + 1

    def _forget(self, rule_id: int) -> bool:
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            return False
        left = self._port_patterns[rule.port_pattern] - 1
        if left:
            self._port_patterns[rule.port_pattern] = left
        else:
            del self._port_patterns[rule.port_pattern]
        self._unlink(rule_id)
        return True

    def add(self, rule: RuleSpec) -> None:
        """Add a rule, or replace the rule with the same id."""
        self._forget(rule.id)
        self._remember(rule)
        self._add(rule, building=False)
        self._patched()

    def remove(self, rule_id: int) -> bool:
        if not self._forget(rule_id):
            return False
        self._patched()
        return True

    def port_patterns(self) -> tuple[str, ...]:
        """The distinct port patterns of the rules (DNS policy: its representative ports)."""
        return tuple(self._port_patterns)

    def extend_session(self, session_id: str, expires_at: float | None) -> int:
        """A session heartbeat: its rules now expire at `expires_at`; nothing is re-bucketed (the
        expiry takes no part in precedence). Returns how many rules moved."""
        ids = self._by_session.get(session_id, ())
        for rule_id in ids:
            entry, _ = self._where[rule_id]
            spec = dataclasses.replace(entry.spec, expires_at=expires_at)
            entry.spec = spec
            entry.expires_at = expires_at
            self._rules[rule_id] = spec
        if ids:
            self._patched()
        return len(ids)

    def set_sessions(self, current_sessions: Mapping[str, str]) -> None:
        """container → current session id, replaced whole (it is small)."""
        self._sessions = dict(current_sessions)

    def _patched(self) -> None:
        self._rules_tuple = None
        self.version += 1

    def get(self, rule_id: int) -> RuleSpec | None:
        return self._rules.get(rule_id)

    def _all_buckets(self) -> Iterable[_Bucket]:
        yield self._any
        yield from self._exact.values()
        yield from self._suffix.values()
        yield from self._apex.values()
        for groups in self._glob.values():
            yield from (group.bucket for group in groups.values())
        for by_len in self._cidr.values():
            for table in by_len.values():
                yield from table.values()

    # ----------------------------------------------------------------- lookup

    def _candidate_buckets(self, host: str) -> Iterable[_Bucket]:
        bucket = self._exact.get(host)
        if bucket is not None:
            yield bucket
        bucket = self._apex.get(host)
        if bucket is not None:
            yield bucket
        if self._suffix or self._apex:
            dot = host.find(".")
            while dot >= 0:
                suffix = host[dot + 1 :]
                for table in (self._suffix, self._apex):
                    bucket = table.get(suffix)
                    if bucket is not None:
                        yield bucket
                dot = host.find(".", dot + 1)
        if self._glob:
            labels = host.split(".")
            n = len(labels)
            # every literal tail and head the host could share with a pattern of its label count
            keys = [("tail", n, ".".join(labels[i:])) for i in range(1, n)]
            keys += [("head", n, ".".join(labels[:j])) for j in range(n)]
            for key in keys:
                groups = self._glob.get(key)
                if groups is not None:
                    for group in groups.values():
                        if group.matches(host):
                            yield group.bucket
        yield from self._cidr_buckets(host)
        yield self._any

    def _cidr_buckets(self, host: str) -> Iterable[_Bucket]:
        if not (self._cidr_lens[4] or self._cidr_lens[6]) or not host:
            return
        if not (host[0].isdigit() or ":" in host):
            return
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        bits = int(ip)
        tables = self._cidr[ip.version]
        for plen in self._cidr_lens[ip.version]:
            bucket = tables[plen].get(bits >> (ip.max_prefixlen - plen))
            if bucket is not None:
                yield bucket

    def match(
        self,
        container: str,
        host: str,
        port: int,
        resolved_hostname: str | None = None,
        now: float | None = None,
    ) -> RuleSpec | None:
        """The winning rule for a connection, or None when nothing matches."""
        first = try_canonical_host(host)
        if first is None:
            return None  # no canonical spelling: nothing can say it is this destination
        q = _Query(container, port, time.time() if now is None else now, self._sessions.get(container))
        candidates = [first]
        if resolved_hostname:
            resolved = try_canonical_host(resolved_hostname)
            if resolved is not None and resolved != first:
                candidates.append(resolved)
        best: _Entry | None = None
        for candidate in candidates:
            for bucket in self._candidate_buckets(candidate):
                best = bucket.best(q, best)
        return best.spec if best is not None else None

    def _file_request(self, entry: RequestEntry) -> None:
        self._request[entry.spec.id] = entry
        if entry.exact_host is not None:
            self._request_exact.setdefault(entry.exact_host, {})[entry.spec.id] = entry
        else:
            self._request_other[entry.spec.id] = entry

    def match_request(self, q: RequestQuery, now: float | None = None) -> RuleSpec | None:
        """The winning request-level rule for one HTTP request (policy/request_rules.py), or None.
        Only the rules filed under the request's host (and its resolved name) and the wildcard
        ones are looked at."""
        if not self._request:
            return None
        candidates: list[RequestEntry] = list(self._request_other.values())
        for host in {try_canonical_host(q.host), try_canonical_host(q.resolved_hostname or "")}:
            if host and host in self._request_exact:
                candidates += self._request_exact[host].values()
        return best_request_rule(candidates, q, time.time() if now is None else now, self._sessions.get(q.container))

    def restricting_request_rule(self, container: str, host: str, port: int, resolved_hostname: str | None = None,
                                 now: float | None = None) -> RuleSpec | None:
        """A request-level deny or hold rule that could apply to some request on this connection
        (any method, any path), or None: such a connection must not be piped uninspected."""
        if not self._request:
            return None
        now = time.time() if now is None else now
        hosts = [h for h in {try_canonical_host(host), try_canonical_host(resolved_hostname or "")} if h]
        candidates = list(self._request_other.values())
        for h in hosts:
            candidates += self._request_exact.get(h, {}).values()
        session = self._sessions.get(container)
        for entry in sorted(candidates, key=lambda e: e.key):
            spec = entry.spec
            if spec.action == "allow" or (spec.expires_at is not None and spec.expires_at <= now):
                continue
            if spec.session_id is not None and spec.session_id != session:
                continue
            if entry.port_match(port) and entry.container_match(container) and any(
                    entry.destination_match(h) for h in hosts):
                return spec
        return None

    @property
    def has_request_rules(self) -> bool:
        return bool(self._request)

    def __len__(self) -> int:
        return len(self._rules)

    def rules(self) -> tuple[RuleSpec, ...]:
        if self._rules_tuple is None:
            self._rules_tuple = tuple(self._rules.values())
        return self._rules_tuple

    @property
    def current_sessions(self) -> Mapping[str, str]:
        return dict(self._sessions)
