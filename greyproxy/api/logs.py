"""`GET /api/logs` and `GET /api/logs/stats`."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from flask import Blueprint, request

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.parse import bool_arg, choice_arg, int_arg, str_arg, time_arg
from greyproxy.services.logs import (
    GROUPS,
    LogFilter,
    auto_group,
    bucket_span,
    data_bounds,
    list_logs,
    log_stats,
    today_start,
)
from greyproxy.timeutil import iso, utcnow

bp = Blueprint("logs", __name__)

RESULTS = ("allowed", "blocked")
MAX_BUCKETS = 2000  # timeline points per answer; a wider range needs a coarser grouping
MAX_SEARCH = 256
# Filters of captured HTTP exchanges: a connection log row has no status, path or frames. Asking
# for them here is a 400 that says where they work, not a filter silently dropped.
TRANSACTION_ONLY = ("status_min", "status_max", "is_websocket", "path_contains")


def _buckets(since: dt.datetime, until: dt.datetime, group: str) -> float:
    return (until - since) / bucket_span(group)


def check_buckets(since: dt.datetime, until: dt.datetime, group: str) -> str:
    if _buckets(since, until, group) > MAX_BUCKETS:
        raise ApiError(400, f"that range has more than {MAX_BUCKETS} {group} buckets; use a coarser group_by")
    return group


def log_filter(since: dt.datetime | None, until: dt.datetime | None) -> LogFilter:
    """The filter query parameters shared by the log routes, for the given time range."""
    if since is not None and until is not None and since > until:
        raise ApiError(400, "'from_date' must not be after 'to_date'")
    for name in TRANSACTION_ONLY:
        if name in request.args:
            raise ApiError(400, f"query parameter '{name}' filters captured exchanges (GET /api/transactions), "
                                "not connection logs")
    search = str_arg("search")
    if search is not None and (len(search) > MAX_SEARCH or "\x00" in search):
        raise ApiError(400, f"query parameter 'search' must be at most {MAX_SEARCH} characters, without NUL")
    # Rows the proxy logged a moment ago sit in the writer's queue; readers expect to see them.
    runtime().flush_writes()
    return LogFilter(
        container=str_arg("container"),
        destination=str_arg("destination"),
        result=choice_arg("result", RESULTS),
        since=since,
        until=until,
        search=search,
        has_error=bool_arg("has_error") if "has_error" in request.args else None,
        reason=str_arg("reason"),
    )


@bp.get("/api/logs")
def get_logs() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    page = list_logs(log_filter(time_arg("from_date"), time_arg("to_date")), limit, offset)
    reverse = runtime().reverse
    for item in page["items"]:  # display only; unknown ones are looked up for the next read
        item["ptr_hostname"] = None if item["resolved_hostname"] else reverse.peek(item["destination_host"])
    return page


@bp.get("/api/logs/stats")
def get_log_stats() -> Any:
    # Default range: today (UTC midnight until now).
    since = time_arg("from_date") or today_start()
    until = time_arg("to_date") or utcnow()
    f = log_filter(since, until)
    # `group_by`: auto (the default) picks hours up to 48 h, then days, then weeks, so any
    # range has a timeline; an explicit grouping too fine for the range is a 400.
    group = choice_arg("group_by", ("auto", *GROUPS), "auto")
    asked = {"from": iso(since), "to": iso(until)}
    if group == "auto":
        group = auto_group(since, until)
        if _buckets(since, until, group) > MAX_BUCKETS:
            # Weeks over decades: the rows cover far less, and counts outside them are all zero.
            bounds = data_bounds(f)
            since, until = bounds if bounds is not None else (until, until)
            f = replace(f, since=since, until=until)
            group = auto_group(since, until)
    return {**log_stats(f, group=check_buckets(since, until, group)), "period": asked}
