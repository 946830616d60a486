"""Rule patterns created when a pending request is allowed or denied (docs/user-guide.md#rules-pending-requests-and-holds)."""

from __future__ import annotations

from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from greyproxy.policy.patterns import is_ip_literal

SCOPES = ("exact", "any_port", "subdomain_wildcard", "all_containers")


class ScopeError(ValueError):
    """Unknown scope name."""


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    # Built once from the list shipped inside the package: no network access at run time.
    return PublicSuffixList()


def registrable_domain(host: str) -> str | None:
    """'a.b.example.co.uk' -> 'example.co.uk'; None for IPs, single labels and public suffixes."""
    h = host.strip().lower().rstrip(".")
    if not h or "." not in h or is_ip_literal(h):
        return None
    return _psl().privatesuffix(h)


def _subdomain_pattern(display_host: str) -> str:
    host = display_host.strip().lower().rstrip(".")
    domain = registrable_domain(host)
    if domain is None:
        return host  # IP, localhost, bare suffix: nothing wider to allow safely
    if host == domain:
        # '*.x' excludes the apex, so the request being approved would not match: include it.
        return "**." + domain
    return "*." + domain


def patterns_for_scope(
    scope: str | None, container: str, display_host: str, port: int
) -> tuple[str, str, str]:
    """(container_pattern, destination_pattern, port_pattern) for a pending decision's scope."""
    scope = scope or "exact"
    if scope == "exact":
        return (container, display_host, str(port))
    if scope == "any_port":
        return (container, display_host, "*")
    if scope == "subdomain_wildcard":
        return (container, _subdomain_pattern(display_host), "*")
    if scope == "all_containers":
        return ("*", display_host, str(port))
    raise ScopeError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
