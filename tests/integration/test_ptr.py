"""PTR names for display (docs/decisions.md#what-a-connection-may-carry): looked up in the background through the DNS upstream, cached,
bounded, never blocking the caller. Driven in-process against the test's authoritative server."""

from __future__ import annotations

import gevent
import pytest

from greyproxy.proxy.dnsupstream import Upstream
from greyproxy.proxy.ptr import ReverseNames
from tests.integration.dnsutil import AuthServer

ZONE = {
    ("5.0.0.127.in-addr.arpa", "PTR"): (30, ["svc.test."]),
    ("6.0.0.127.in-addr.arpa", "PTR"): (7200, ["Other.Test."]),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", "PTR"): (60, ["six.test."]),
}


@pytest.fixture
def auth():
    server = AuthServer(zone=ZONE)
    yield server
    server.close()


def settle(reverse: ReverseNames, host: str, timeout: float = 5.0) -> str | None:
    """Peek until the background lookup has finished (gevent runs it while we sleep)."""
    deadline = gevent.get_hub().loop.now() + timeout
    name = reverse.peek(host)
    while reverse._asking and gevent.get_hub().loop.now() < deadline:
        gevent.sleep(0.01)
        name = reverse.peek(host)
    return name


def test_names_are_looked_up_once_in_the_background_and_cached(auth):
    found: list[tuple[str, str]] = []
    reverse = ReverseNames(Upstream([("127.0.0.1", auth.port)]), on_found=lambda ip, name: found.append((ip, name)))
    assert reverse.peek("127.0.0.5") is None  # not known yet: the caller never waits
    assert settle(reverse, "127.0.0.5") == "svc.test"
    assert settle(reverse, "[::1]") == "six.test"
    assert settle(reverse, "127.0.0.6") == "other.test"  # canonical: lower case, no final dot
    for _ in range(3):
        assert reverse.peek("127.0.0.5") == "svc.test"
    assert auth.names().count("5.0.0.127.in-addr.arpa") == 1
    assert found == [("127.0.0.5", "svc.test"), ("::1", "six.test"), ("127.0.0.6", "other.test")]


def test_no_name_is_remembered_too_and_names_are_never_asked_about(auth):
    reverse = ReverseNames(Upstream([("127.0.0.1", auth.port)]))
    assert settle(reverse, "127.0.0.9") is None  # NXDOMAIN
    assert reverse.peek("127.0.0.9") is None
    assert auth.names().count("9.0.0.127.in-addr.arpa") == 1
    assert reverse.peek("svc.test") is None and reverse.peek("") is None and reverse.peek(None) is None
    assert all(name.endswith(".arpa") for name in auth.names())


def test_memory_is_bounded_and_a_dead_upstream_only_means_no_name():
    reverse = ReverseNames(Upstream([("127.0.0.1", 9)], timeout=0.3), max_entries=2)  # discard port: no answer
    for ip in ("127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"):
        assert settle(reverse, ip) is None
    assert len(reverse._names) == 2 and "127.0.0.24" in reverse._names
