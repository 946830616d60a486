"""`GET /api/dashboard`: the statistics behind the dashboard's front page (§5), and the read-only
helpers the Pending page needs to show a decision precisely before it is made: the exact rule each
scope would create (patterns computed by the same code that creates them, so the preview cannot
drift from the result), the registrable domain for grouping bursts, and duration validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.logs import check_buckets
from greyproxy.api.parse import choice_arg, int_arg, str_arg, time_arg
from greyproxy.policy.durations import DurationError, rule_duration
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import SCOPES, patterns_for_scope, registrable_domain
from greyproxy.services.logs import GROUPS, LogFilter, auto_group, dashboard_stats, today_start
from greyproxy.services.rules import NewRule, validated
from greyproxy.timeutil import utcnow

bp = Blueprint("dashboard", __name__)

PERIODS = {"today": None, "7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30)}


@bp.get("/api/dashboard")
def get_dashboard() -> Any:
    now = utcnow()
    period = choice_arg("period", tuple(PERIODS), default="today")
    span = PERIODS[period]
    since = time_arg("from_date") or (today_start(now) if span is None else now - span)
    until = time_arg("to_date") or now
    if since > until:
        raise ApiError(400, "'from_date' must not be after 'to_date'")
    group = choice_arg("group_by", ("auto", *GROUPS), default="auto")
    if group == "auto":
        group = auto_group(since, until)
    check_buckets(since, until, group)
    recent = int_arg("recent_limit", 10, minimum=0, maximum=100)
    runtime().writer.flush()  # include rows logged a moment ago
    return dashboard_stats(LogFilter(since=since, until=until), group, recent)


def scope_rules(container: str, host: str, port: int) -> dict[str, Any]:
    """{scope: {container_pattern, destination_pattern, port_pattern} or {error}} for one request."""
    out: dict[str, Any] = {}
    for scope in SCOPES:
        c, d, p = patterns_for_scope(scope, container, host, port)
        try:
            rule = validated(NewRule(container_pattern=c, destination_pattern=d, port_pattern=p, action="allow"))
        except PatternError as exc:  # the decision would be refused: say so before the click
            out[scope] = {"error": str(exc)}
            continue
        out[scope] = {"container_pattern": rule.container_pattern, "destination_pattern": rule.destination_pattern,
                      "port_pattern": rule.port_pattern}
    return out


@bp.get("/api/dashboard/pending")
def pending_with_previews() -> Any:
    """`/api/pending` plus, per item, `registrable_domain` and `scope_rules` (see scope_rules)."""
    limit = int_arg("limit", 100, minimum=1, maximum=1000)
    items, total = runtime().pending.list(str_arg("container"), str_arg("destination"), limit, int_arg("offset", 0))
    for item in items:
        host = item.get("resolved_hostname") or item["destination_host"]
        item["registrable_domain"] = registrable_domain(host)
        item["scope_rules"] = scope_rules(item["container_name"], host, item["destination_port"])
    return {"items": items, "total": total}


@bp.get("/api/dashboard/duration")
def check_duration() -> Any:
    """{seconds} a rule duration stands for (null = permanent), or a 400 saying what is wrong."""
    text = str_arg("value")
    if text is None:
        raise ApiError(400, "'value' is required: a duration such as 90m, 36h or permanent")
    try:
        seconds = rule_duration(text)
    except DurationError as exc:
        raise ApiError(400, str(exc)) from None
    return {"value": text, "seconds": seconds}
