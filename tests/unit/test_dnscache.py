"""The per-client IP → hostname cache (greyproxy/proxy/dnscache.py), on a fake clock."""

from __future__ import annotations

import pytest

from greyproxy.proxy.dnscache import MAX_TTL, MIN_TTL, CacheRow, HostnameCache, canonical_ip, clamp_ttl


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_entries_are_per_client(clock):
    cache = HostnameCache(clock=clock)
    cache.record("10.0.0.1", "93.184.216.34", "example.com", 60)
    assert cache.lookup("10.0.0.1", "93.184.216.34") == "example.com"
    assert cache.lookup("10.0.0.2", "93.184.216.34") is None
    assert cache.lookup("10.0.0.1", "93.184.216.35") is None


@pytest.mark.parametrize(
    ("ttl", "lifetime"), [(0, MIN_TTL), (1, MIN_TTL), (60, 60), (86400, MAX_TTL), (-5, MIN_TTL)]
)
def test_ttl_is_clamped(clock, ttl, lifetime):
    cache = HostnameCache(clock=clock)
    cache.record("10.0.0.1", "1.2.3.4", "a.example", ttl)
    clock.now += lifetime - 0.001
    assert cache.lookup("10.0.0.1", "1.2.3.4") == "a.example"
    clock.now += 0.002
    assert cache.lookup("10.0.0.1", "1.2.3.4") is None, "an expired entry is never used"


def test_clamp_ttl_bounds():
    assert clamp_ttl(3) == 10 and clamp_ttl(7200) == 3600 and clamp_ttl(300) == 300


def test_last_answer_wins_and_refreshes_expiry(clock):
    cache = HostnameCache(clock=clock)
    cache.record("10.0.0.1", "1.2.3.4", "one.example", 10)
    clock.now += 5
    cache.record("10.0.0.1", "1.2.3.4", "two.example", 10)
    clock.now += 8
    assert cache.lookup("10.0.0.1", "1.2.3.4") == "two.example"


def test_addresses_are_canonical(clock):
    cache = HostnameCache(clock=clock)
    cache.record("::ffff:127.0.0.10", "[2001:DB8::1]", "Six.Example.", 60)
    assert cache.lookup("127.0.0.10", "2001:db8::1") == "six.example"
    cache.record("127.0.0.10", "::ffff:192.0.2.1", "mapped.example", 60)
    assert cache.lookup("127.0.0.10", "192.0.2.1") == "mapped.example"
    assert canonical_ip("2001:0db8:0:0::1") == "2001:db8::1"
    assert canonical_ip("not-an-ip") is None


@pytest.mark.parametrize(
    ("client", "ip", "name"),
    [("nope", "1.2.3.4", "a.example"), ("10.0.0.1", "nope", "a.example"), ("10.0.0.1", "1.2.3.4", ""),
     ("10.0.0.1", "1.2.3.4", "1.2.3.4"), ("10.0.0.1", "1.2.3.4", "a" * 300)],
)
def test_bad_input_is_ignored(clock, client, ip, name):
    rows: list[CacheRow] = []
    cache = HostnameCache(persist=rows.append, clock=clock)
    cache.record(client, ip, name, 60)
    assert len(cache) == 0 and rows == []
    assert cache.lookup(client, ip) is None


def test_records_are_handed_to_persist_with_absolute_expiry(clock):
    rows: list[CacheRow] = []
    cache = HostnameCache(persist=rows.append, clock=clock)
    cache.record("10.0.0.1", "1.2.3.4", "a.example", 60)
    assert rows == [CacheRow("10.0.0.1", "1.2.3.4", "a.example", clock.now + 60)]


def test_load_keeps_expiry_and_skips_expired_rows(clock):
    rows: list[CacheRow] = []
    cache = HostnameCache(persist=rows.append, clock=clock)
    kept = cache.load([
        CacheRow("10.0.0.1", "1.2.3.4", "live.example", clock.now + 30),
        CacheRow("10.0.0.1", "1.2.3.5", "dead.example", clock.now - 1),
        CacheRow("garbage", "1.2.3.6", "x.example", clock.now + 30),
    ])
    assert kept == 1 and rows == [], "loading does not write the rows back"
    assert cache.lookup("10.0.0.1", "1.2.3.4") == "live.example"
    assert cache.lookup("10.0.0.1", "1.2.3.5") is None
    clock.now += 31
    assert cache.lookup("10.0.0.1", "1.2.3.4") is None, "a loaded row keeps its original expiry"


def test_one_client_cannot_evict_another(clock):
    cache = HostnameCache(clock=clock, max_per_client=100, max_clients=10)
    cache.record("10.0.0.2", "9.9.9.9", "victim.example", 60)
    for i in range(10_000):  # a flood of answers for one client
        cache.record("10.0.0.1", f"10.1.{i // 256}.{i % 256}", f"n{i}.example", 60)
    assert cache.lookup("10.0.0.2", "9.9.9.9") == "victim.example"
    assert len(cache) == 101
    assert cache.lookup("10.0.0.1", "10.1.39.15") == "n9999.example"  # newest kept, oldest evicted
    assert cache.lookup("10.0.0.1", "10.1.0.0") is None


def test_number_of_clients_is_bounded(clock):
    cache = HostnameCache(clock=clock, max_per_client=10, max_clients=3)
    for i in range(50):
        cache.record(f"10.0.1.{i}", "1.2.3.4", "a.example", 60)
    assert len(cache) == 3
    assert cache.lookup("10.0.1.49", "1.2.3.4") == "a.example"
    assert cache.lookup("10.0.1.0", "1.2.3.4") is None


def test_purge_expired_frees_memory(clock):
    cache = HostnameCache(clock=clock)
    cache.record("10.0.0.1", "1.2.3.4", "short.example", 10)
    cache.record("10.0.0.1", "1.2.3.5", "long.example", 100)
    cache.record("10.0.0.2", "1.2.3.4", "short.example", 10)
    clock.now += 50
    assert cache.purge_expired() == 2
    assert len(cache) == 1 and cache.lookup("10.0.0.1", "1.2.3.5") == "long.example"
