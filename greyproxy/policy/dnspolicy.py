"""DNS policy `enforce` (issue 6): may this client learn the addresses of this name?

A lookup has no port, but rules do. The answer is "yes" exactly when some port exists for
which the connection decision on (container, name, port) would be an allow rule: a name the
client may reach on 443 resolves, a name denied on every port does not, a name no rule
mentions does not (that is what shuts exfiltration through lookups), and the usual precedence
decides between overlapping allow and deny rules, port by port.

Only finitely many ports need checking: the winner for a port depends only on which port
patterns match it, and that changes only at the edges of the ranges the rules name. One port
per stretch between edges represents the whole stretch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .canonical import try_canonical_host
from .decide import MODE_ENFORCE, PolicyState, container_mode
from .index import RuleIndex, RuleSpec
from .patterns import PatternError, parse_port_ranges

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class DnsVerdict:
    allowed: bool
    reason: str  # allowed_by_rule, denied_by_rule, no_matching_rule, silent_*, ...
    rule_id: int | None = None


def representative_ports(rules: Iterable[RuleSpec]) -> tuple[int, ...]:
    """One port from every stretch of ports on which all port patterns agree."""
    return representative_ports_of(rule.port_pattern for rule in rules)


def representative_ports_of(port_patterns: Iterable[str]) -> tuple[int, ...]:
    edges = {1}
    for pattern in port_patterns:
        try:
            ranges = parse_port_ranges(pattern)
        except PatternError:
            continue  # such a rule never matches (port_matcher), so it adds no edge
        for lo, hi in ranges or ():
            edges.add(lo)
            if hi < MAX_PORT:
                edges.add(hi + 1)
    return tuple(sorted(edges))


class DnsPolicy:
    """Remembers the representative ports of the current rule index (rebuilt on change)."""

    def __init__(self) -> None:
        self._index: RuleIndex | None = None
        self._version = -1
        self._ports: tuple[int, ...] = (1,)

    def ports_for(self, index: RuleIndex) -> tuple[int, ...]:
        if index is not self._index or index.version != self._version:  # the index is patched in place
            self._ports = representative_ports_of(index.port_patterns())  # distinct ones: a few
            self._index = index
            self._version = index.version
        return self._ports

    def verdict(self, state: PolicyState, container: str, name: str, now: float | None = None) -> DnsVerdict:
        if state.silent_mode == "deny":
            return DnsVerdict(False, "silent_deny")
        if state.silent_mode == "allow":
            return DnsVerdict(True, "silent_allow")
        if container in state.allow_all_containers:
            return DnsVerdict(True, "session_allow_all")
        if state.modes and container_mode(container, state.modes) != MODE_ENFORCE:
            return DnsVerdict(True, "container_mode")
        if try_canonical_host(name) is None:
            return DnsVerdict(False, "bad_destination")  # no canonical spelling: matches no rule
        denied: RuleSpec | None = None
        for port in self.ports_for(state.index):
            rule = state.index.match(container, name, port, None, now)
            if rule is None:
                continue
            if rule.action == "allow":
                return DnsVerdict(True, "allowed_by_rule", rule.id)
            denied = denied or rule
        if denied is not None:
            return DnsVerdict(False, "denied_by_rule", denied.id)
        return DnsVerdict(False, "no_matching_rule")
