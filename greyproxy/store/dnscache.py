"""SQL for the `dns_cache` table (the per-client IP → hostname attribution, proxy/dnscache.py).

Rows travel as plain tuples (client_ip, ip, hostname, expires_at epoch seconds) so the store
does not depend on the proxy package.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import peewee

from greyproxy.store.models import DnsCacheEntry
from greyproxy.timeutil import UTC, epoch, utcnow

DnsRow = tuple[str, str, str, float]
MAX_LOADED = 1_000_000  # the in-memory cache keeps far fewer; this only bounds the start-up read


def _naive_utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def load_dns_cache(now: float, limit: int = MAX_LOADED) -> list[DnsRow]:
    """Unexpired rows, oldest first (so the newest win when the memory cache evicts)."""
    query = (
        DnsCacheEntry.select()
        .where(DnsCacheEntry.expires_at > _naive_utc(now))
        .order_by(DnsCacheEntry.updated_at)
        .limit(limit)
    )
    return [(r.client_ip, r.ip, r.hostname, epoch(r.expires_at) or 0.0) for r in query]


def save_dns_cache(db: peewee.Database, rows: Sequence[DnsRow]) -> None:
    """Upsert rows; the caller passes at most one row per (client_ip, ip)."""
    if not rows:
        return
    now = utcnow()
    data = [
        {"client_ip": c, "ip": ip, "hostname": name, "expires_at": _naive_utc(exp), "updated_at": now}
        for c, ip, name, exp in rows
    ]
    with db.atomic():
        (
            DnsCacheEntry.insert_many(data)
            .on_conflict(
                conflict_target=[DnsCacheEntry.client_ip, DnsCacheEntry.ip],
                preserve=[DnsCacheEntry.hostname, DnsCacheEntry.expires_at, DnsCacheEntry.updated_at],
            )
            .execute()
        )


def prune_dns_cache(now: float) -> int:
    return DnsCacheEntry.delete().where(DnsCacheEntry.expires_at <= _naive_utc(now)).execute()

