"""decide(): the order of checks, silent mode, control plane (docs/decisions.md#the-control-plane-is-not-the-agents), per-container modes."""

from __future__ import annotations

import pytest

from greyproxy.policy.decide import (
    ConnectionRequest,
    Decision,
    ModeEntry,
    PolicyState,
    Verdict,
    container_mode,
    decide,
)
from greyproxy.policy.identity import container_from_username
from greyproxy.policy.index import LAYER_BUILTIN, RuleIndex, RuleSpec

NOW = 1_700_000_000.0

RULES = [
    RuleSpec(1, "*", "allowed.example", "*", "allow"),
    RuleSpec(2, "*", "blocked.example", "*", "deny"),
    RuleSpec(3, "*", "127.0.0.1", "*", "allow", LAYER_BUILTIN),
]
INDEX = RuleIndex(RULES)


def req(
    host: str, container: str = "myapp", control_plane: bool = False, resolved: str | None = None
) -> ConnectionRequest:
    return ConnectionRequest(container, host, 443, resolved, control_plane)


def state(
    silent: str | None = None, allow_all: frozenset[str] = frozenset(), modes: tuple = ()
) -> PolicyState:
    return PolicyState(INDEX, silent, allow_all, modes)


OPEN = (ModeEntry(1, "myapp", "open"),)
REPORT = (ModeEntry(1, "myapp", "report"),)

CASES = [
    # (name, request, state, verdict, reason, rule id, would)
    ("allowed by rule", req("allowed.example"), state(), Verdict.ALLOW, "allowed_by_rule", 1, None),
    ("denied by rule", req("blocked.example"), state(), Verdict.DENY, "denied_by_rule", 2, None),
    ("no rule holds", req("unknown.example"), state(), Verdict.HOLD, "no_matching_rule", None, None),
    (
        "resolved hostname used",
        req("203.0.113.9", resolved="blocked.example"),
        state(),
        Verdict.DENY,
        "denied_by_rule",
        2,
        None,
    ),
    ("builtin localhost", req("127.0.0.1"), state(), Verdict.ALLOW, "allowed_by_rule", 3, None),
    (
        "control plane",
        req("127.0.0.1", control_plane=True),
        state(),
        Verdict.DENY,
        "control_plane",
        None,
        None,
    ),
    (
        "control plane beats silent allow",
        req("127.0.0.1", control_plane=True),
        state(silent="allow"),
        Verdict.DENY,
        "control_plane",
        None,
        None,
    ),
    (
        "control plane beats session allow-all",
        req("127.0.0.1", control_plane=True),
        state(allow_all=frozenset({"myapp"})),
        Verdict.DENY,
        "control_plane",
        None,
        None,
    ),
    (
        "control plane beats open mode",
        req("127.0.0.1", control_plane=True),
        state(modes=OPEN),
        Verdict.DENY,
        "control_plane",
        None,
        None,
    ),
    (
        "control plane beats report mode",
        req("127.0.0.1", control_plane=True),
        state(modes=REPORT),
        Verdict.DENY,
        "control_plane",
        None,
        None,
    ),
    (
        "silent deny beats allow rule",
        req("allowed.example"),
        state(silent="deny"),
        Verdict.DENY,
        "silent_deny",
        None,
        None,
    ),
    (
        "silent allow beats deny rule",
        req("blocked.example"),
        state(silent="allow"),
        Verdict.ALLOW,
        "silent_allow",
        None,
        None,
    ),
    (
        "silent deny beats session allow-all",
        req("unknown.example"),
        state(silent="deny", allow_all=frozenset({"myapp"})),
        Verdict.DENY,
        "silent_deny",
        None,
        None,
    ),
    (
        "session allow-all beats deny rule",
        req("blocked.example"),
        state(allow_all=frozenset({"myapp"})),
        Verdict.ALLOW,
        "session_allow_all",
        None,
        None,
    ),
    (
        "allow-all is per container",
        req("unknown.example", container="other"),
        state(allow_all=frozenset({"myapp"})),
        Verdict.HOLD,
        "no_matching_rule",
        None,
        None,
    ),
    (
        "open mode turns deny into allow",
        req("blocked.example"),
        state(modes=OPEN),
        Verdict.ALLOW,
        "container_mode_open",
        None,
        None,
    ),
    (
        "open mode turns hold into allow",
        req("unknown.example"),
        state(modes=OPEN),
        Verdict.ALLOW,
        "container_mode_open",
        None,
        None,
    ),
    (
        "open mode keeps rule allow",
        req("allowed.example"),
        state(modes=OPEN),
        Verdict.ALLOW,
        "allowed_by_rule",
        1,
        None,
    ),
    (
        "report mode deny",
        req("blocked.example"),
        state(modes=REPORT),
        Verdict.ALLOW,
        "report_mode",
        2,
        "would_block",
    ),
    (
        "report mode hold",
        req("unknown.example"),
        state(modes=REPORT),
        Verdict.ALLOW,
        "report_mode",
        None,
        "would_hold",
    ),
    (
        "report mode allow unchanged",
        req("allowed.example"),
        state(modes=REPORT),
        Verdict.ALLOW,
        "allowed_by_rule",
        1,
        None,
    ),
    (
        "silent deny is a kill switch even in report mode",
        req("allowed.example"),
        state(silent="deny", modes=REPORT),
        Verdict.DENY,
        "silent_deny",
        None,
        None,
    ),
    (
        "mode for another container does not apply",
        req("blocked.example", container="other"),
        state(modes=OPEN),
        Verdict.DENY,
        "denied_by_rule",
        2,
        None,
    ),
    (
        "explicit enforce for container",
        req("blocked.example"),
        state(modes=(ModeEntry(1, "*", "open"), ModeEntry(2, "myapp", "enforce"))),
        Verdict.DENY,
        "denied_by_rule",
        2,
        None,
    ),
]


@pytest.mark.parametrize(
    ("request_", "state_", "verdict", "reason", "rule_id", "would"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    request_: ConnectionRequest,
    state_: PolicyState,
    verdict: Verdict,
    reason: str,
    rule_id: int | None,
    would: str | None,
) -> None:
    decision = decide(request_, state_, now=NOW)
    assert (decision.verdict, decision.reason, decision.rule_id, decision.would) == (
        verdict,
        reason,
        rule_id,
        would,
    )


def test_decision_rule_id_property() -> None:
    assert Decision(Verdict.HOLD, "no_matching_rule").rule_id is None
    assert Decision(Verdict.ALLOW, "allowed_by_rule", RULES[0]).rule_id == 1
    assert Verdict.ALLOW == "allow" and Verdict("hold") is Verdict.HOLD


def test_decide_respects_now_for_expiry() -> None:
    index = RuleIndex([RuleSpec(1, "*", "temp.example", "*", "allow", expires_at=NOW + 30)])
    st = PolicyState(index)
    assert decide(req("temp.example"), st, now=NOW).verdict is Verdict.ALLOW
    assert decide(req("temp.example"), st, now=NOW + 30).verdict is Verdict.HOLD


@pytest.mark.parametrize(
    ("container", "modes", "expected"),
    [
        ("myapp", (), "enforce"),
        ("myapp", (ModeEntry(1, "*", "report"),), "report"),
        ("myapp", (ModeEntry(1, "*", "report"), ModeEntry(2, "my*", "open")), "open"),
        ("myapp", (ModeEntry(1, "my*", "open"), ModeEntry(2, "myapp", "report")), "report"),
        ("myapp", (ModeEntry(5, "my*", "open"), ModeEntry(3, "m*", "report")), "report"),  # tie: lowest id
        ("myapp", (ModeEntry(3, "m*", "report"), ModeEntry(5, "my*", "open")), "report"),  # order-independent
        ("other", (ModeEntry(1, "myapp", "open"),), "enforce"),
        ("myapp", (ModeEntry(1, "myapp", "bogus"),), "enforce"),  # unknown modes never loosen policy
        ("web-3", (ModeEntry(1, "web-[0-9]", "open"),), "open"),
    ],
)
def test_container_mode(container: str, modes: tuple[ModeEntry, ...], expected: str) -> None:
    assert container_mode(container, modes) == expected


@pytest.mark.parametrize(
    ("username", "source_ip", "expected"),
    [
        ("myapp", "10.0.0.2", "myapp"),
        ("", "10.0.0.2", "unknown-10.0.0.2"),
        (None, "10.0.0.2", "unknown-10.0.0.2"),
        ("proxy", "127.0.0.1", "unknown-127.0.0.1"),
        ("Proxy", "127.0.0.1", "Proxy"),  # only the exact literal is anonymous
        ("claude", "::1", "claude"),
        (None, "::1", "unknown-::1"),
    ],
)
def test_container_from_username(username: str | None, source_ip: str, expected: str) -> None:
    assert container_from_username(username, source_ip) == expected
