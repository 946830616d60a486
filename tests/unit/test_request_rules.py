"""Request-level rules: patterns, the canonical path, precedence and the request decision."""

from __future__ import annotations

import pytest

from greyproxy.policy.decide import ConnectionRequest, ModeEntry, PolicyState, Verdict, decide
from greyproxy.policy.index import RuleIndex, RuleSpec
from greyproxy.policy.patterns import PatternError
from greyproxy.policy.request_decide import decide_request
from greyproxy.policy.request_rules import (
    RequestQuery,
    canonical_path,
    normalize_method_pattern,
    normalize_path_pattern,
)
from greyproxy.services.rules import NewRule, validated


@pytest.mark.parametrize("spelling", [
    "/repos/a/delete", "/repos//a/delete", "/repos/./a/delete", "/repos/x/../a/delete", "/repos/a/delete/",
    "/repos%2Fa%2Fdelete", "/repos/a/%64elete", "/repos/a/%2564elete", "\\repos\\a\\delete", "/REPOS/A/Delete",
    "/repos/a;x=1/delete", "/repos/a/delete?force=1", "/repos/a/delete#frag", "http://h:1/repos/a/delete?q",
    "/repos/a/delete;jsessionid=1", "/%2e/repos/a/delete", "/repos/a/%2e%2e/a/delete",
])
def test_every_spelling_of_a_path_is_one_canonical_path(spelling):
    assert canonical_path(spelling) == "/repos/a/delete"


def test_dot_dot_never_climbs_above_the_root():
    assert canonical_path("/../../etc/passwd") == "/etc/passwd"
    assert canonical_path("http://h") == "/"


@pytest.mark.parametrize("raw,stored", [
    ("post", "POST"), (" post , PUT,post", "POST,PUT"), ("*", "*"), ("", ""), (None, ""),
])
def test_method_patterns(raw, stored):
    assert normalize_method_pattern(raw) == stored


@pytest.mark.parametrize("bad", ["PO ST", "GET,", "G\x00ET", "GET,*", "x" * 300])
def test_bad_method_patterns_are_refused(bad):
    with pytest.raises(PatternError, match="method_pattern"):
        normalize_method_pattern(bad)


@pytest.mark.parametrize("raw,stored", [
    ("/v1/x", "/v1/x"), ("/V1//x/", "/v1/x"), ("/repos/*/delete", "/repos/*/delete"), ("/v1/*", "/v1/*"),
    ("*", "*"), ("", ""), ("/a/%2e%2e/b", "/b"),
])
def test_path_patterns(raw, stored):
    assert normalize_path_pattern(raw) == stored


@pytest.mark.parametrize("bad", ["v1/x", "/v1/x?y=1", "/v1/\x00", "/v1 x", "/#", "/" + "a" * 3000])
def test_bad_path_patterns_are_refused(bad):
    with pytest.raises(PatternError, match="path_pattern"):
        normalize_path_pattern(bad)


def test_hold_needs_a_request_pattern():
    with pytest.raises(PatternError, match="hold"):
        validated(NewRule("agent", "api.example", "443", action="hold"))
    rule = validated(NewRule("agent", "api.example", "443", action="hold", method_pattern="post"))
    assert rule.method_pattern == "POST"


def spec(rule_id, action, method="", path="", container="agent", dest="api.example", port="*", layer=3):
    return RuleSpec(rule_id, container, dest, port, action, layer=layer, method_pattern=method, path_pattern=path)


def state(*rules, modes=()):
    return PolicyState(index=RuleIndex(rules), modes=modes)


def request_decision(st, method, path, container="agent"):
    conn = decide(ConnectionRequest(container, "api.example", 443), st)
    return decide_request(conn, RequestQuery(container, "api.example", 443, method, canonical_path(path)), st)


def test_request_rules_are_not_connection_rules():
    st = state(spec(1, "hold", method="POST"))
    # a request rule alone does not allow the host: the connection is held like any unmatched one
    assert decide(ConnectionRequest("agent", "api.example", 443), st).verdict is Verdict.HOLD
    assert request_decision(st, "POST", "/v1/x").verdict is Verdict.HOLD
    assert request_decision(st, "POST", "/v1/x").reason == "no_matching_rule"


def test_host_allowed_then_request_rules_judge_each_request():
    st = state(spec(1, "allow"), spec(2, "hold", method="POST", path="/v1/*"), spec(3, "deny", path="/admin"))
    assert request_decision(st, "GET", "/v1/x").verdict is Verdict.ALLOW
    assert request_decision(st, "GET", "/v1/x").reason == "allowed_by_rule"
    held = request_decision(st, "POST", "/v1/x")
    assert (held.verdict, held.reason, held.rule.id) == (Verdict.HOLD, "held_by_request_rule", 2)
    assert request_decision(st, "post", "/V1//x/").verdict is Verdict.HOLD
    assert request_decision(st, "GET", "/ADMIN/").verdict is Verdict.DENY


def test_host_deny_is_never_overridden_by_a_request_allow():
    st = state(spec(1, "deny"), spec(2, "allow", method="GET"))
    assert request_decision(st, "GET", "/").verdict is Verdict.DENY
    assert request_decision(st, "GET", "/").reason == "denied_by_rule"


def test_precedence_is_deterministic():
    # more specific path wins; at equal specificity deny < allow < hold; then the lower id
    st = state(spec(1, "allow"), spec(2, "hold", path="/v1/*"), spec(3, "allow", method="POST", path="/v1/x"),
               spec(4, "hold", method="POST", path="/v1/x"), spec(5, "deny", method="POST", path="/v1/x"),
               spec(6, "hold", method="DELETE", path="/v1/*"), spec(7, "allow", method="DELETE", path="/v1/*"))
    assert request_decision(st, "POST", "/v1/x").rule.id == 5
    assert request_decision(st, "GET", "/v1/y").rule.id == 2
    assert request_decision(st, "DELETE", "/v1/y").rule.id == 7
    reversed_st = state(*reversed([spec(1, "allow"), spec(2, "hold", path="/v1/*"), spec(7, "allow", method="DELETE",
                                                                                              path="/v1/*"),
                                   spec(6, "hold", method="DELETE", path="/v1/*")]))
    assert request_decision(reversed_st, "DELETE", "/v1/y").rule.id == 7


def test_patching_the_index_adds_and_removes_request_rules():
    st = state(spec(1, "allow"))
    assert request_decision(st, "POST", "/v1/x").verdict is Verdict.ALLOW
    st.index.add(spec(2, "hold", method="POST"))
    assert request_decision(st, "POST", "/v1/x").verdict is Verdict.HOLD
    st.index.remove(2)
    assert request_decision(st, "POST", "/v1/x").verdict is Verdict.ALLOW


def test_report_mode_lets_a_held_request_through_and_says_so():
    st = state(spec(1, "allow"), spec(2, "hold", method="POST"), modes=(ModeEntry(1, "agent", "report"),))
    d = request_decision(st, "POST", "/")
    assert (d.verdict, d.would) == (Verdict.ALLOW, "would_hold")


def test_rules_yaml_round_trips_request_rules():
    from greyproxy.rulesyaml import RulesFileError, dump_rules, parse_rules

    text = dump_rules([{"id": 1, "container_pattern": "agent", "destination_pattern": "api.example",
                        "port_pattern": "443", "action": "hold", "method_pattern": "POST", "path_pattern": "/v1/*"},
                       {"id": 2, "container_pattern": "agent", "destination_pattern": "api.example",
                        "port_pattern": "443", "action": "allow"}])
    entries, _ = parse_rules(text)
    assert [(e.action, e.method_pattern, e.path_pattern) for e in entries] == [("hold", "POST", "/v1/*"),
                                                                              ("allow", "", "")]
    assert entries[0].ingest_item()["path_pattern"] == "/v1/*"
    assert "method_pattern" not in entries[1].ingest_item()
    with pytest.raises(RulesFileError, match="hold"):
        parse_rules("- {container: a, destination: b.example, action: hold}\n")
    with pytest.raises(RulesFileError, match="path_pattern"):
        parse_rules("- {container: a, destination: b.example, path: nope}\n")


def test_wildcard_and_exact_request_rules_are_both_found_and_removed():
    st = state(spec(1, "allow"), spec(2, "hold", method="POST", dest="*.example"),
               spec(3, "deny", method="POST", path="/x", dest="api.example"))
    assert request_decision(st, "POST", "/y").rule.id == 2
    assert request_decision(st, "POST", "/x").rule.id == 3
    st.index.remove(3)
    assert request_decision(st, "POST", "/x").rule.id == 2
    st.index.remove(2)
    assert request_decision(st, "POST", "/x").verdict is Verdict.ALLOW
    assert not st.index.has_request_rules
