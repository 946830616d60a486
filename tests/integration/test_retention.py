"""Retention (docs/decisions.md#operations) in a running proxy: old logs, transactions and pending rows go; a size cap
removes the oldest transactions first."""

from __future__ import annotations

import datetime as dt

import pytest

from greyproxy.store.models import HttpTransaction, PendingRequest, RequestLog
from tests.integration.test_transactions_api import seed, transactions, txn_row


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def log_row(when: dt.datetime, host: str) -> dict:
    return {"timestamp": when, "container_name": "agent1", "destination_host": host, "destination_port": 443,
            "result": "allowed"}


def pending_row(seen: dt.datetime, host: str) -> dict:
    return {"container_name": "agent1", "destination_host": host, "destination_port": 443, "first_seen": seen,
            "last_seen": seen}


def test_prune_by_age(gp_factory):
    gp = gp_factory(config_yaml="retention: {logs_days: 1, transactions_days: 2, pending_ttl: 1h}\n")
    t = now()
    seed(gp, RequestLog, [log_row(t - dt.timedelta(days=3), "old.example"), log_row(t, "new.example")])
    seed(gp, HttpTransaction, [txn_row(timestamp=t - dt.timedelta(days=3), url="https://old.example/"),
                               txn_row(timestamp=t - dt.timedelta(days=1), url="https://new.example/")])
    seed(gp, PendingRequest, [pending_row(t - dt.timedelta(hours=2), "stale.example"),
                              pending_row(t, "fresh.example")])
    resp = gp.api("POST", "/api/maintenance/prune")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok" and body["db_used_mb"] > 0
    assert {"deleted_request_logs", "deleted_transactions", "deleted_pending"} <= set(body)

    logs = gp.api("GET", "/api/logs").json()["items"]
    assert [r["destination_host"] for r in logs] == ["new.example"]
    assert [i["url"] for i in transactions(gp)["items"]] == ["https://new.example/"]
    pending = gp.api("GET", "/api/pending").json()["items"]
    assert [p["destination_host"] for p in pending] == ["fresh.example"]
    # a second run finds nothing more
    again = gp.api("POST", "/api/maintenance/prune").json()
    assert again["deleted_request_logs"] == again["deleted_transactions"] == again["deleted_pending"] == 0


def test_size_cap_removes_the_oldest_transactions(gp_factory):
    gp = gp_factory(config_yaml="retention: {max_db_mb: 1, transactions_days: 0}\n")
    body = b"x" * 100_000
    seed(gp, HttpTransaction, [txn_row(url=f"https://seed.example/{i}", response_body=body) for i in range(40)])
    result = gp.api("POST", "/api/maintenance/prune").json()
    assert result["deleted_transactions_for_size"] > 0 and result["db_used_mb"] <= 1
    left = transactions(gp, limit=100)["items"]
    assert 0 < len(left) < 40
    kept = sorted(int(i["url"].rsplit("/", 1)[1]) for i in left)
    assert kept == list(range(40 - len(left), 40))  # the newest stay


@pytest.mark.parametrize("bad", ["{logs_days: -1}", "{max_db_mb: lots}", "{pending_ttl: soon}"])
def test_bad_retention_values_stop_the_start(gp_factory, bad):
    with pytest.raises(RuntimeError, match="retention"):
        gp_factory(config_yaml=f"retention: {bad}\n")
