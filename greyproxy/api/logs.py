"""`GET /api/logs` and `GET /api/logs/stats` (§5)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import choice_arg, int_arg, str_arg, time_arg
from greyproxy.services.logs import LogFilter, bucket_span, list_logs, log_stats, today_start
from greyproxy.timeutil import utcnow

bp = Blueprint("logs", __name__)

RESULTS = ("allowed", "blocked")
MAX_BUCKETS = 2000  # timeline points per answer; a wider range needs a coarser grouping


def check_buckets(since: dt.datetime, until: dt.datetime, group: str) -> str:
    if (until - since) / bucket_span(group) > MAX_BUCKETS:
        raise ApiError(400, f"that range has more than {MAX_BUCKETS} {group} buckets; use a coarser group_by")
    return group


def log_filter(since: dt.datetime | None, until: dt.datetime | None) -> LogFilter:
    """The filter query parameters shared by the log routes, for the given time range."""
    if since is not None and until is not None and since > until:
        raise ApiError(400, "'from_date' must not be after 'to_date'")
    # Rows the proxy logged a moment ago sit in the writer's queue; readers expect to see them.
    runtime().writer.flush()
    return LogFilter(
        container=str_arg("container"),
        destination=str_arg("destination"),
        result=choice_arg("result", RESULTS),
        since=since,
        until=until,
    )


@bp.get("/api/logs")
def get_logs() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    page = list_logs(log_filter(time_arg("from_date"), time_arg("to_date")), limit, offset)
    reverse = runtime().reverse
    for item in page["items"]:  # display only (D13); unknown ones are looked up for the next read
        item["ptr_hostname"] = None if item["resolved_hostname"] else reverse.peek(item["destination_host"])
    return page


@bp.get("/api/logs/stats")
def get_log_stats() -> Any:
    # Default range: today (UTC midnight until now); the timeline is hourly.
    since = time_arg("from_date") or today_start()
    until = time_arg("to_date") or utcnow()
    f = log_filter(since, until)
    check_buckets(since, until, "hour")
    return log_stats(f)
