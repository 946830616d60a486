"""`GET /api/dashboard`: the statistics behind the dashboard's front page (§5)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.logs import check_buckets
from greyproxy.api.parse import choice_arg, int_arg, time_arg
from greyproxy.services.logs import GROUPS, LogFilter, auto_group, dashboard_stats, today_start
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
