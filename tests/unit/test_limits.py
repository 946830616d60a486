"""proxy/limits.py in memory: connection caps, the token bucket, the rate-limited log, and the
`limits:` configuration section (issue 13)."""

from __future__ import annotations

import logging

import pytest

from greyproxy.config import ConfigError, LimitsConfig, load_config
from greyproxy.metrics import Metrics
from greyproxy.proxy import limits as lim


def test_connection_limiter_per_address_and_total():
    cfg = LimitsConfig(connections_per_address=2, connections_total=3)
    limiter = lim.ConnectionLimiter(lambda: cfg)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    assert limiter.acquire("a") == lim.CONNECTIONS_PER_ADDRESS
    assert limiter.acquire("b") is None
    assert limiter.acquire("c") == lim.CONNECTIONS_TOTAL
    limiter.release("a")
    assert limiter.acquire("c") is None
    for address in ("a", "b", "c"):
        limiter.release(address)
    assert limiter.total == 0 and limiter._counts == {}  # nothing kept for gone addresses


def test_token_bucket_rate_burst_and_off():
    now = [100.0]
    cfg = [LimitsConfig(requests_per_second=2, requests_burst=3)]
    rates = lim.RateLimiter(lambda: cfg[0], clock=lambda: now[0])
    assert [rates.take("c1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rates.take("c1")
    assert wait == pytest.approx(0.5)
    assert rates.take("c2") == 0.0  # its own bucket
    now[0] += 0.5
    assert rates.take("c1") == 0.0
    cfg[0] = LimitsConfig(requests_per_second=0)
    assert all(rates.take("c1") == 0.0 for _ in range(100))


def test_token_buckets_are_bounded(monkeypatch):
    monkeypatch.setattr(lim, "MAX_BUCKETS", 10)
    rates = lim.RateLimiter(lambda: LimitsConfig())
    for i in range(50):
        rates.take(f"c{i}")
    assert len(rates._buckets) == 10


def test_hits_are_counted_every_time_but_logged_once_per_interval(caplog):
    metrics = Metrics()
    limits = lim.Limits(lambda: LimitsConfig(), metrics)
    with caplog.at_level(logging.WARNING, logger="greyproxy.limits"):
        for _ in range(500):
            limits.hit(lim.HEAD_DEADLINE, "127.0.0.1", "test")
    assert len(caplog.records) == 1
    assert metrics.snapshot()["limit_hits"][lim.HEAD_DEADLINE] == 500
    assert metrics.snapshot()["limit_hits"][lim.RATE] == 0
    assert b'greyproxy_limit_hits_total{limit="head_deadline"} 500.0' in metrics.prometheus_text()


def test_limits_section_is_validated(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("limits: {head_seconds: 3, requests_per_second: 0}\n")
    cfg = load_config(path, env={}).limits
    assert cfg.head_seconds == 3.0 and cfg.requests_per_second == 0.0
    for bad in ("limits: {head_seconds: 0}", "limits: {connections_total: 1.5}", "limits: {max_headers: true}",
                "limits: {nope: 1}", "limits: {held_total: '5'}"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match="limits"):
            load_config(path, env={})
