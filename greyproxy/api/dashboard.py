"""`GET /api/dashboard`: the statistics behind the dashboard's front page, and the read-only
helpers the Pending page needs to show a decision precisely before it is made: the exact rule each
scope would create (patterns computed by the same code that creates them, so the preview cannot
drift from the result), the registrable domain for grouping bursts, and duration validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import gevent
import peewee
from flask import Blueprint

from greyproxy.api.context import runtime
from greyproxy.api.errors import ApiError
from greyproxy.api.logs import check_buckets
from greyproxy.api.parse import bool_arg, choice_arg, int_arg, json_object, str_arg, str_field, time_arg
from greyproxy.api.transactions import txn_filter
from greyproxy.capture.serialize import transaction_to_json
from greyproxy.policy.durations import DurationError, rule_duration, rule_type_for
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.scopes import SCOPES, patterns_for_scope, registrable_domain
from greyproxy.services.audit import verify
from greyproxy.services.logs import GROUPS, LogFilter, auto_group, dashboard_stats, today_start
from greyproxy.services.rules import ACTIONS, PATTERN_NORMALIZERS, NewRule, rule_to_json, validated
from greyproxy.services.transactions import _listing_columns, _where, list_transactions
from greyproxy.store.models import AuditEntry, HttpTransaction, RequestLog, Rule
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
    runtime().flush_writes()  # include rows logged a moment ago
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
    """{seconds, rule_type} a rule duration stands for (seconds null: no expiry, permanent or
    until_restart), or a 400 saying what is wrong."""
    text = str_arg("value")
    if text is None:
        raise ApiError(400, "'value' is required: a duration such as 90m, 36h or permanent")
    try:
        seconds = rule_duration(text)
    except DurationError as exc:
        raise ApiError(400, str(exc)) from None
    return {"value": text, "seconds": seconds, "rule_type": rule_type_for(text, seconds)}


# The Rules page's list: /api/rules plus a free-text search, a sort on any column and, per rule,
# `hits` (connections the log says it decided). Hits come from one GROUP BY over the log, joined
# to the page of rules, so sorting by hits costs one pass over the log, not one per rule.
RULE_SORTS = ("id", "created_at", "action", "container_pattern", "destination_pattern", "port_pattern", "expires_at",
              "last_used_at", "created_by", "hits")
MAX_SEARCH = 1000


@bp.get("/api/dashboard/rules")
def rules_with_hits() -> Any:
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    sort = choice_arg("sort", RULE_SORTS, default="created_at")
    descending = choice_arg("dir", ("asc", "desc"), default="desc") == "desc"
    hits_q = (RequestLog.select(RequestLog.rule_id, peewee.fn.COUNT(RequestLog.id).alias("n"))
              .where(RequestLog.rule_id.is_null(False)).group_by(RequestLog.rule_id))
    runtime().flush_writes()  # count connections logged a moment ago
    hits = hits_q.alias("hits")
    n = peewee.fn.COALESCE(hits.c.n, 0)
    query = (Rule.select(Rule, n.alias("hits"))
             .join(hits, peewee.JOIN.LEFT_OUTER, on=(hits.c.rule_id == Rule.id)))
    for name, field in (("container", Rule.container_pattern), ("destination", Rule.destination_pattern)):
        if text := str_arg(name):
            query = query.where(field.contains(text))
    if action := choice_arg("action", ACTIONS):
        query = query.where(Rule.action == action)
    if not bool_arg("include_expired"):
        query = query.where(Rule.expires_at.is_null() | (Rule.expires_at > utcnow()))
    if search := str_arg("search"):
        if len(search) > MAX_SEARCH:
            raise ApiError(400, f"'search' must be at most {MAX_SEARCH} characters")
        text = search.strip()
        where = (Rule.container_pattern.contains(text) | Rule.destination_pattern.contains(text)
                 | Rule.port_pattern.contains(text) | Rule.notes.contains(text) | Rule.created_by.contains(text)
                 | Rule.path_pattern.contains(text))
        if text.lstrip("#").isdigit():
            where = where | (Rule.id == int(text.lstrip("#")))
        query = query.where(where)
    total = query.count()
    key = n if sort == "hits" else getattr(Rule, sort)
    # Never-expiring and never-used rules sort after the dated ones in both directions.
    nulls = [key.is_null()] if sort in ("expires_at", "last_used_at") else []
    order = [*nulls, key.desc() if descending else key.asc(), Rule.id.desc() if descending else Rule.id.asc()]
    now = utcnow()
    items = [{**rule_to_json(r, now), "hits": r.hits} for r in query.order_by(*order).limit(limit).offset(offset)]
    # Provenance as the audit log has it (who created the rule: dashboard, token, cli, ws:…),
    # whatever `created_by` the creating call chose to write.
    targets = [f"rule:{item['id']}" for item in items]
    actors = {t: a for t, a in AuditEntry.select(AuditEntry.target, AuditEntry.actor)
              .where((AuditEntry.kind == "rule.create") & AuditEntry.target.in_(targets)).tuples()} if targets else {}
    for item in items:
        item["audit_actor"] = actors.get(f"rule:{item['id']}")
    return {"items": items, "total": total}


# The Audit page's "Verify" button: the same walk of the hash chain as `greyproxy audit verify`,
# over the stored text (what was hashed), read in slices with a pause between them so a long log
# does not hold up the proxy or the rest of the API.
AUDIT_SLICE = 2000


def _audit_rows() -> Any:
    # Every column is text or an integer in the model, so these are the stored values as hashed.
    e = AuditEntry
    columns = (e.id, e.timestamp, e.actor, e.kind, e.target, e.before, e.after, e.prev_hash, e.hash)
    last = 0
    while True:
        rows = list(e.select(*columns).where(e.id > last).order_by(e.id).limit(AUDIT_SLICE).tuples())
        yield from rows
        if len(rows) < AUDIT_SLICE:
            return
        last = rows[-1][0]
        gevent.sleep(0.001)


@bp.post("/api/dashboard/audit-verify")
def audit_verify() -> Any:
    count, problem = verify(_audit_rows())
    return {"intact": problem is None, "checked": count, "problem": problem}


# The rule forms check every field before saving and show every problem at once; the messages
# are the ones POST /api/rules would give, field by field (it stops at the first).
FIELD_LIMITS = {"container_pattern": 1024, "destination_pattern": 1024, "port_pattern": 1024, "method_pattern": 256,
                "path_pattern": 4096}
OPTIONAL = ("port_pattern", "method_pattern", "path_pattern")


@bp.post("/api/dashboard/check-rule")
def check_rule() -> Any:
    body = json_object()
    errors: dict[str, str] = {}
    for name, normalize in PATTERN_NORMALIZERS.items():
        if name in OPTIONAL and name not in body:
            continue
        try:
            value = str_field(body, name, max_length=FIELD_LIMITS[name])
            normalize(value if value is not None or name not in OPTIONAL else "")
        except PatternError as exc:
            errors[name] = str(exc)
        except ApiError as exc:
            errors[name] = exc.message
    return {"errors": errors}


# The Activity page's traffic list: /api/transactions plus `body`, a substring of the stored
# request or response body (text-like bodies, at most 2 MiB each, as captured). The other filters
# narrow the rows first; the bodies are searched by the database, never loaded here.
MAX_BODY_SEARCH = 1000


def _body_contains(column: peewee.Field, needle: str) -> peewee.Node:
    if isinstance(getattr(HttpTransaction._meta.database, "obj", None), peewee.PostgresqlDatabase):
        return peewee.fn.STRPOS(peewee.fn.CONVERT_FROM(column, "UTF8"), needle) > 0
    return peewee.fn.INSTR(column, needle.encode()) > 0


@bp.get("/api/dashboard/transactions")
def transactions_with_body_search() -> Any:
    f = txn_filter()
    limit = int_arg("limit", 50, minimum=1, maximum=1000)
    offset = int_arg("offset", 0)
    needle = str_arg("body")
    if not needle:
        return list_transactions(f, limit, offset)
    if len(needle) > MAX_BODY_SEARCH or "\x00" in needle:
        raise ApiError(400, f"'body' must be at most {MAX_BODY_SEARCH} characters, without NUL")
    t = HttpTransaction
    query = _where(t.select(*_listing_columns()), f).where(
        _body_contains(t.request_body, needle) | _body_contains(t.response_body, needle))
    total = query.count()
    rows = query.order_by(t.timestamp.desc(), t.id.desc()).limit(limit).offset(offset)
    return {"items": [transaction_to_json(r) for r in rows], "total": total, "page": offset // limit + 1,
            "pages": -(-total // limit) if total else 0}
