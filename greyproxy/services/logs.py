"""Read side of the connection log (`/api/logs`, `/api/logs/stats`, `/api/dashboard`).

Aggregates run in SQL (counts, GROUP BY); only the timeline's empty buckets are filled in
Python, so a large log table never travels into memory.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import Any

import peewee
from peewee import fn

from greyproxy.policy.canonical import display_fields
from greyproxy.store.models import RequestLog, Rule
from greyproxy.timeutil import iso, utcnow

GROUPS = ("hour", "day", "week")


@dataclass(frozen=True, slots=True)
class LogFilter:
    container: str | None = None
    destination: str | None = None  # substring of destination_host or resolved_hostname
    result: str | None = None  # 'allowed' | 'blocked'
    since: dt.datetime | None = None  # naive UTC, inclusive
    until: dt.datetime | None = None  # naive UTC, inclusive
    search: str | None = None  # substring of container, destination, resolved name, dialled IP, reason
    has_error: bool | None = None  # the connection failed on our side or upstream (ERROR_REASONS)
    reason: str | None = None  # exact


# Failures rather than decisions: the destination could not be resolved or reached (an allowed
# row the proxy could not dial has no dialled IP), or the client refused our certificate.
ERROR_REASONS = ("dns_failure", "upstream_unreachable")


def _errors() -> peewee.Expression:
    return (((RequestLog.result == "allowed") & RequestLog.dialed_ip.is_null())
            | RequestLog.reason.in_(ERROR_REASONS) | (RequestLog.mitm_skip_reason == "mitm_error"))


def _where(query: peewee.ModelSelect, f: LogFilter) -> peewee.ModelSelect:
    if f.container:
        query = query.where(RequestLog.container_name.contains(f.container))
    if f.destination:
        query = query.where(
            RequestLog.destination_host.contains(f.destination)
            | RequestLog.resolved_hostname.contains(f.destination)
        )
    if f.result:
        query = query.where(RequestLog.result == f.result)
    if f.since is not None:
        query = query.where(RequestLog.timestamp >= f.since)
    if f.until is not None:
        query = query.where(RequestLog.timestamp <= f.until)
    if f.search:
        query = query.where(
            RequestLog.container_name.contains(f.search) | RequestLog.destination_host.contains(f.search)
            | RequestLog.resolved_hostname.contains(f.search) | RequestLog.dialed_ip.contains(f.search)
            | RequestLog.reason.contains(f.search)
        )
    if f.has_error is not None:
        errors = _errors()
        # NULL reasons make IN unknown, not false: coalesce so "no error" rows are found too.
        query = query.where(errors if f.has_error else ~fn.COALESCE(errors, False))
    if f.reason:
        query = query.where(RequestLog.reason == f.reason)
    return query


def log_to_json(row: RequestLog, summary: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row.id,
        "timestamp": iso(row.timestamp),
        "container_name": row.container_name,
        "container_id": row.container_id,
        "destination_host": row.destination_host,
        "destination_port": row.destination_port,
        "resolved_hostname": row.resolved_hostname,
        "dialed_ip": row.dialed_ip,  # the address actually connected to (issue 6)
        "method": row.method,
        "result": row.result,
        "rule_id": row.rule_id,
        "response_time_ms": row.response_time_ms,
        "reason": row.reason,  # why, as the blocked client was told (docs/decisions.md#told-why)
        "would": row.would,  # report mode: what would have happened
        "mitm_skip_reason": row.mitm_skip_reason,  # why a tunnel was not intercepted
        "node_id": row.node_id,  # which node answered the connection (fleet mode, docs/fleet.md)
        # The Unicode form of the name shown (resolved_hostname, else destination_host) and
        # whether it mixes scripts; display only, rules match the punycode.
        **display_fields(row.resolved_hostname or row.destination_host),
    }
    if summary is not None:
        data["rule_summary"] = summary
    return data


def _with_summaries(rows: list[RequestLog]) -> list[dict[str, Any]]:
    """Serialize rows with `rule_summary` "<container> → <dest>:<port>" for rules that still exist."""
    ids = {r.rule_id for r in rows if r.rule_id is not None}
    rules = {r.id: r for r in Rule.select().where(Rule.id.in_(ids))} if ids else {}
    out = []
    for row in rows:
        rule = rules.get(row.rule_id) if row.rule_id is not None else None
        summary = (
            f"{rule.container_pattern} → {rule.destination_pattern}:{rule.port_pattern}"
            if rule is not None
            else None
        )
        out.append(log_to_json(row, summary))
    return out


def list_logs(f: LogFilter, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    query = _where(RequestLog.select(), f)
    total = query.count()
    rows = list(query.order_by(RequestLog.timestamp.desc(), RequestLog.id.desc()).limit(limit).offset(offset))
    return {
        "items": _with_summaries(rows),
        "total": total,
        "page": offset // limit + 1,
        "pages": math.ceil(total / limit) if total else 0,
    }


def _counts(f: LogFilter) -> tuple[int, int]:
    """(allowed, blocked) in the filter's range."""
    rows = _where(RequestLog.select(RequestLog.result, fn.COUNT(RequestLog.id).alias("n")), f).group_by(
        RequestLog.result
    )
    by_result = {r.result: r.n for r in rows}
    return by_result.get("allowed", 0), by_result.get("blocked", 0)


def _by_container(f: LogFilter, limit: int) -> list[dict[str, Any]]:
    allowed = fn.SUM(peewee.Case(None, [(RequestLog.result == "allowed", 1)], 0))
    blocked = fn.SUM(peewee.Case(None, [(RequestLog.result == "blocked", 1)], 0))
    total = fn.COUNT(RequestLog.id)
    query = (
        _where(
            RequestLog.select(
                RequestLog.container_name,
                total.alias("total"),
                allowed.alias("allowed"),
                blocked.alias("blocked"),
            ),
            f,
        )
        .group_by(RequestLog.container_name)
        .order_by(total.desc(), RequestLog.container_name)
        .limit(limit)
    )
    return [
        {"name": r.container_name, "total": r.total, "allowed": r.allowed or 0, "blocked": r.blocked or 0}
        for r in query
    ]


def _top_blocked(f: LogFilter, limit: int) -> list[dict[str, Any]]:
    blocked = replace(f, result="blocked")
    count = fn.COUNT(RequestLog.id)
    query = (
        _where(
            RequestLog.select(
                RequestLog.destination_host,
                RequestLog.destination_port,
                fn.MAX(RequestLog.resolved_hostname).alias("resolved"),
                count.alias("count"),
            ),
            blocked,
        )
        .group_by(RequestLog.destination_host, RequestLog.destination_port)
        .order_by(count.desc(), RequestLog.destination_host)
        .limit(limit)
    )
    out = []
    for r in query:
        containers = (
            _where(RequestLog.select(RequestLog.container_name).distinct(), blocked)
            .where(
                (RequestLog.destination_host == r.destination_host)
                & (RequestLog.destination_port == r.destination_port)
            )
            .order_by(RequestLog.container_name)
        )
        out.append(
            {
                "host": r.destination_host,
                "port": r.destination_port,
                "resolved_hostname": r.resolved,
                "count": r.count,
                "containers": [c.container_name for c in containers],
            }
        )
    return out


def _bucket_start(when: dt.datetime, group: str) -> dt.datetime:
    if group == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - dt.timedelta(days=day.weekday()) if group == "week" else day  # weeks start Monday


def bucket_span(group: str) -> dt.timedelta:
    return {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}[group]


def _timeline(f: LogFilter, group: str) -> list[dict[str, Any]]:
    """[{timestamp, allowed, blocked}] per bucket from `since` to `until`, empty buckets included."""
    # SQL groups by hour or day (strftime on the stored UTC text); weeks fold days in Python.
    fmt = "%Y-%m-%d %H:00:00" if group == "hour" else "%Y-%m-%d 00:00:00"
    key = fn.strftime(fmt, RequestLog.timestamp)
    database = RequestLog._meta.database  # noqa: SLF001 - the bound database, or its proxy
    if not isinstance(getattr(database, "obj", database), peewee.SqliteDatabase):  # PostgreSQL (fleet)
        key = fn.to_char(RequestLog.timestamp, fmt.replace("%Y", "YYYY").replace("%m", "MM").replace(
            "%d", "DD").replace("%H", "HH24")).coerce(False)  # text, like strftime's
    rows = _where(
        RequestLog.select(key.alias("bucket"), RequestLog.result, fn.COUNT(RequestLog.id).alias("n")), f
    ).group_by(key, RequestLog.result)
    counts: dict[dt.datetime, dict[str, int]] = {}
    for r in rows:
        start = _bucket_start(dt.datetime.fromisoformat(r.bucket), group)
        slot = counts.setdefault(start, {"allowed": 0, "blocked": 0})
        if r.result in slot:
            slot[r.result] += r.n
    if f.since is None or f.until is None:
        starts = sorted(counts)
    else:
        starts, cursor = [], _bucket_start(f.since, group)
        while cursor <= f.until:
            starts.append(cursor)
            cursor += bucket_span(group)
    return [{"timestamp": iso(s), **counts.get(s, {"allowed": 0, "blocked": 0})} for s in starts]


def _period(f: LogFilter) -> dict[str, str | None]:
    return {"from": iso(f.since), "to": iso(f.until)}


def data_bounds(f: LogFilter) -> tuple[dt.datetime, dt.datetime] | None:
    """The first and last timestamp of the rows the filter selects (None when there are none):
    a timeline over decades need only cover the years that hold rows."""
    row = _where(RequestLog.select(fn.MIN(RequestLog.timestamp).alias("lo"), fn.MAX(RequestLog.timestamp).alias("hi")),
                 f).dicts().first()
    if not row or row["lo"] is None:
        return None
    return _as_datetime(row["lo"]), _as_datetime(row["hi"])


def _as_datetime(value: Any) -> dt.datetime:
    # SQLite hands aggregates back as text.
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def log_stats(f: LogFilter, top: int = 10, group: str = "hour") -> dict[str, Any]:
    allowed, blocked = _counts(f)
    return {
        "period": _period(f),
        "total_requests": allowed + blocked,
        "allowed": allowed,
        "blocked": blocked,
        "top_containers": _by_container(f, top),
        "top_destinations": _top_blocked(f, top),
        "timeline": _timeline(f, group),
        "group_by": group,
    }


def auto_group(since: dt.datetime, until: dt.datetime) -> str:
    """Hours up to 48 h, else days; weeks beyond a year so long ranges stay readable."""
    span = until - since
    if span <= dt.timedelta(hours=48):
        return "hour"
    return "day" if span <= dt.timedelta(days=366) else "week"


def dashboard_stats(f: LogFilter, group: str, recent_limit: int = 10) -> dict[str, Any]:
    allowed, blocked = _counts(f)
    total = allowed + blocked
    by_container = _by_container(f, 20)
    for item in by_container:
        item["percentage"] = round(item["total"] * 100 / total, 1) if total else 0.0
    recent = list(
        _where(RequestLog.select(), f)
        .order_by(RequestLog.timestamp.desc(), RequestLog.id.desc())
        .limit(recent_limit)
    )
    return {
        "period": _period(f),
        "total_requests": total,
        "allowed": allowed,
        "blocked": blocked,
        "allow_rate": round(allowed * 100 / total, 1) if total else 0.0,
        "by_container": by_container,
        "top_blocked": _top_blocked(f, 10),
        "timeline": _timeline(f, group),
        "recent": _with_summaries(recent),
    }


def today_start(now: dt.datetime | None = None) -> dt.datetime:
    now = now or utcnow()
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
