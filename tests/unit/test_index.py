"""RuleIndex: candidate set (docs/user-guide.md#rules-pending-requests-and-holds), precedence, expiry."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from greyproxy.policy.index import (
    LAYER_BUILTIN,
    LAYER_GLOBAL,
    LAYER_SESSION,
    RuleIndex,
    RuleSpec,
    layer_of,
)
from greyproxy.policy.patterns import container_matcher, destination_matcher, port_matcher, specificity

NOW = 1_700_000_000.0


def rule(
    rid: int,
    container: str,
    destination: str,
    port: str = "*",
    action: str = "allow",
    layer: int = LAYER_GLOBAL,
    expires_at: float | None = None,
    session_id: str | None = None,
) -> RuleSpec:
    return RuleSpec(rid, container, destination, port, action, layer, expires_at, session_id)


def _compile(
    r: RuleSpec,
) -> tuple[RuleSpec, Callable[[str], bool], Callable[[str], bool], Callable[[int], bool]]:
    return (
        r,
        container_matcher(r.container_pattern),
        destination_matcher(r.destination_pattern),
        port_matcher(r.port_pattern),
    )


def naive_match(
    rules: list[RuleSpec],
    container: str,
    host: str,
    port: int,
    resolved: str | None,
    now: float,
    sessions: dict[str, str],
    compiled: list | None = None,
) -> RuleSpec | None:
    """Linear reference implementation straight from the spec text."""
    hosts = [host] + ([resolved] if resolved else [])
    matching = [
        r
        for r, cmatch, dmatch, pmatch in (compiled or [_compile(r) for r in rules])
        if (r.expires_at is None or r.expires_at > now)
        and (r.session_id is None or sessions.get(container) == r.session_id)
        and cmatch(container)
        and pmatch(port)
        and any(dmatch(h) for h in hosts)
    ]
    if not matching:
        return None
    return min(
        matching,
        key=lambda r: (
            -r.layer,
            -specificity(r.container_pattern, r.destination_pattern, r.port_pattern),
            0 if r.action == "deny" else 1,
            r.id,
        ),
    )


def winner_id(rules: list[RuleSpec], container: str, host: str, port: int, **kw: object) -> int | None:
    sessions = kw.pop("sessions", None)
    found = RuleIndex(rules, sessions).match(container, host, port, now=NOW, **kw)  # type: ignore[arg-type]
    return found.id if found is not None else None


# --------------------------------------------------------------------------- layer_of


@pytest.mark.parametrize(
    ("created_by", "session_id", "layer"),
    [
        ("builtin", None, LAYER_BUILTIN),
        ("builtin", "s1", LAYER_BUILTIN),
        ("admin", "s1", LAYER_SESSION),
        ("session:s1", "s1", LAYER_SESSION),
        ("admin", None, LAYER_GLOBAL),
        (None, None, LAYER_GLOBAL),
        ("admin", "", LAYER_GLOBAL),
    ],
)
def test_layer_of(created_by: str | None, session_id: str | None, layer: int) -> None:
    assert layer_of(created_by, session_id) == layer


# --------------------------------------------------------------------------- precedence

SESSIONS = {"myapp": "s1"}

PRECEDENCE_CASES = [
    # (name, rules, container, host, port, expected winner id)
    (
        "more specific container wins",
        [rule(1, "*", "example.com"), rule(2, "myapp", "example.com", action="deny")],
        "myapp",
        "example.com",
        443,
        2,
    ),
    (
        "exact destination beats wildcard destination",
        [rule(1, "*", "*.example.com", action="deny"), rule(2, "*", "api.example.com")],
        "x",
        "api.example.com",
        443,
        2,
    ),
    (
        "container score outweighs destination score",
        [rule(1, "myapp", "*", action="deny"), rule(2, "*", "example.com", "443")],
        "myapp",
        "example.com",
        443,
        1,
    ),
    (
        "port adds one point",
        [rule(1, "*", "example.com", action="deny"), rule(2, "*", "example.com", "443")],
        "x",
        "example.com",
        443,
        2,
    ),
    (
        "container glob scores between * and exact",
        [rule(1, "my*", "*"), rule(2, "*", "*", action="deny")],
        "myapp",
        "example.com",
        443,
        1,
    ),
    (
        "221 beats 220",
        [rule(1, "myapp", "example.com", action="deny"), rule(2, "myapp", "example.com", "443")],
        "myapp",
        "example.com",
        443,
        2,
    ),
    (
        "deny before allow at equal score",
        [rule(1, "*", "example.com"), rule(2, "*", "example.com", action="deny")],
        "x",
        "example.com",
        443,
        2,
    ),
    (
        "lowest id wins a full tie",
        [rule(7, "*", "*.example.com"), rule(3, "*", "**.example.com")],
        "x",
        "api.example.com",
        443,
        3,
    ),
    (
        "global wildcard allow beats specific session deny",
        [
            rule(1, "*", "*"),
            rule(2, "myapp", "example.com", "443", "deny", LAYER_SESSION, session_id="s1"),
        ],
        "myapp",
        "example.com",
        443,
        1,
    ),
    (
        "global deny beats session allow",
        [
            rule(1, "*", "**.example.com", action="deny"),
            rule(2, "myapp", "example.com", "443", "allow", LAYER_SESSION, session_id="s1"),
        ],
        "myapp",
        "example.com",
        443,
        1,
    ),
    (
        "session beats builtin",
        [
            rule(1, "*", "localhost", action="allow", layer=LAYER_BUILTIN),
            rule(2, "myapp", "*", action="deny", layer=LAYER_SESSION, session_id="s1"),
        ],
        "myapp",
        "localhost",
        80,
        2,
    ),
    (
        "builtin localhost allow overridden by global deny",
        [
            rule(1, "*", "127.0.0.1", layer=LAYER_BUILTIN),
            rule(2, "*", "localhost", layer=LAYER_BUILTIN),
            rule(3, "*", "*", action="deny"),
        ],
        "x",
        "127.0.0.1",
        8080,
        3,
    ),
    (
        "builtin applies when nothing else matches",
        [rule(1, "*", "127.0.0.1", layer=LAYER_BUILTIN), rule(3, "*", "example.com", action="deny")],
        "x",
        "127.0.0.1",
        8080,
        1,
    ),
    (
        "no match",
        [rule(1, "*", "example.com"), rule(2, "other", "*")],
        "x",
        "example.org",
        443,
        None,
    ),
    (
        "port mismatch excludes",
        [rule(1, "*", "example.com", "80,8000-9000")],
        "x",
        "example.com",
        443,
        None,
    ),
]


@pytest.mark.parametrize(
    ("rules", "container", "host", "port", "expected"),
    [case[1:] for case in PRECEDENCE_CASES],
    ids=[case[0] for case in PRECEDENCE_CASES],
)
def test_precedence(
    rules: list[RuleSpec], container: str, host: str, port: int, expected: int | None
) -> None:
    assert winner_id(rules, container, host, port, sessions=SESSIONS) == expected
    # order-independence: any input order gives the same winner
    rng = random.Random(1234)
    for _ in range(5):
        shuffled = list(rules)
        rng.shuffle(shuffled)
        assert winner_id(shuffled, container, host, port, sessions=SESSIONS) == expected


# --------------------------------------------------------------------------- expiry and sessions


@pytest.mark.parametrize(
    ("expires_at", "matches"),
    [(None, True), (NOW + 1, True), (NOW, False), (NOW - 1, False)],
)
def test_expired_rules_ignored(expires_at: float | None, matches: bool) -> None:
    rules = [rule(1, "*", "example.com", expires_at=expires_at)]
    assert (winner_id(rules, "x", "example.com", 443) == 1) is matches


def test_expired_specific_rule_falls_back_to_general() -> None:
    rules = [rule(1, "*", "*"), rule(2, "x", "example.com", action="deny", expires_at=NOW - 5)]
    assert winner_id(rules, "x", "example.com", 443) == 1


def test_now_defaults_to_wall_clock() -> None:
    index = RuleIndex(
        [rule(1, "*", "example.com", expires_at=1.0), rule(2, "*", "example.org", expires_at=4e9)]
    )
    assert index.match("x", "example.com", 443) is None
    assert index.match("x", "example.org", 443) is not None


@pytest.mark.parametrize(
    ("sessions", "container", "expected"),
    [
        ({"myapp": "s2"}, "myapp", 2),  # s2 is current: only its rules count
        ({"myapp": "s1"}, "myapp", 1),
        ({}, "myapp", None),  # session gone
        ({"myapp": "s3"}, "myapp", None),  # superseded by a newer session with no rules
        ({"other": "s1"}, "myapp", None),  # current for another container only
    ],
)
def test_session_supersession(sessions: dict[str, str], container: str, expected: int | None) -> None:
    rules = [
        rule(1, "myapp", "example.com", layer=LAYER_SESSION, session_id="s1"),
        rule(2, "myapp", "example.com", layer=LAYER_SESSION, session_id="s2"),
    ]
    assert winner_id(rules, container, "example.com", 443, sessions=sessions) == expected


def test_session_rule_with_glob_container_uses_connecting_container_session() -> None:
    rules = [rule(1, "my*", "example.com", layer=LAYER_SESSION, session_id="s1")]
    assert winner_id(rules, "myapp", "example.com", 443, sessions={"myapp": "s1"}) == 1
    assert winner_id(rules, "mybot", "example.com", 443, sessions={"myapp": "s1"}) is None


# --------------------------------------------------------------------------- resolved hostname


@pytest.mark.parametrize(
    ("rules", "host", "resolved", "expected"),
    [
        ([rule(1, "*", "api.github.com")], "140.82.112.5", "api.github.com", 1),
        ([rule(1, "*", "api.github.com")], "140.82.112.5", None, None),
        ([rule(1, "*", "*.github.com")], "140.82.112.5", "API.github.com.", 1),
        ([rule(1, "*", "140.82.0.0/16")], "140.82.112.5", "api.github.com", 1),
        # both candidates match different rules: the better one wins
        (
            [rule(1, "*", "140.82.112.5"), rule(2, "*", "*.github.com", action="deny")],
            "140.82.112.5",
            "api.github.com",
            1,
        ),
        (
            [rule(1, "*", "140.82.112.5"), rule(2, "*", "api.github.com", action="deny")],
            "140.82.112.5",
            "api.github.com",
            2,
        ),
        ([rule(1, "*", "example.com")], "example.com", "example.com", 1),
    ],
)
def test_resolved_hostname(
    rules: list[RuleSpec], host: str, resolved: str | None, expected: int | None
) -> None:
    assert winner_id(rules, "x", host, 443, resolved_hostname=resolved) == expected


# --------------------------------------------------------------------------- bucket kinds


@pytest.mark.parametrize(
    ("destination", "host", "matches"),
    [
        ("api.*", "api.github", True),
        ("api.*", "api.github.com", False),
        ("*.*.npmjs.org", "a.b.npmjs.org", True),
        ("*.*.npmjs.org", "b.npmjs.org", False),
        ("foo*.example.com", "foobar.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("**.example.com", "example.com", True),
        ("**.example.com", "a.b.example.com", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "172.16.0.1", False),
        ("0.0.0.0/0", "8.8.8.8", True),
        ("::/0", "2001:db8::1", True),
        ("::/0", "8.8.8.8", False),
        ("2001:db8::/32", "2001:DB8::5", True),
        ("::1", "[::1]", True),
        ("EXAMPLE.com", "example.COM", True),
        ("bad pattern", "bad pattern", False),
    ],
)
def test_index_destination_kinds(destination: str, host: str, matches: bool) -> None:
    assert (winner_id([rule(1, "*", destination)], "x", host, 443) == 1) is matches


@pytest.mark.parametrize(
    "bad",
    [
        rule(1, "", "example.com"),  # empty container matches nothing
        rule(2, "*", "example.com", action="maybe"),  # unknown action is never an allow
        rule(3, "*", "example.com", port="abc"),
    ],
)
def test_unusable_rules_never_match(bad: RuleSpec) -> None:
    index = RuleIndex([bad])
    assert index.match("", "example.com", 443, now=NOW) is None
    assert len(index) == 1
    assert index.rules() == (bad,)


# --------------------------------------------------------------------------- randomized equivalence

_DOMAINS = ["example.com", "github.com", "npmjs.org", "example.co.uk", "corp.internal", "svc.local"]
_SUBS = ["api", "www", "a", "b", "cdn", "registry", "foo", "foobar", "x1"]
_CONTAINERS = ["myapp", "web-1", "web-2", "worker", "claude", "codex", "unknown-10.0.0.2", ""]
_CONTAINER_PATTERNS = [
    "*",
    "*",
    "*",
    "myapp",
    "web-*",
    "web-?",
    "worker",
    "claude",
    "c*",
    "unknown-*",
    "[cw]*",
]


def _random_host(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return f"10.{rng.randrange(4)}.{rng.randrange(4)}.{rng.randrange(8)}"
    if kind < 0.2:
        return f"192.168.{rng.randrange(3)}.{rng.randrange(5)}"
    if kind < 0.27:
        return rng.choice(["2001:db8::1", "2001:db8:1::5", "::1", "fe80::1", "2001:DB8::A"])
    depth = rng.randrange(4)
    labels = [rng.choice(_SUBS) for _ in range(depth)]
    host = ".".join([*labels, rng.choice(_DOMAINS)])
    return host.upper() if rng.random() < 0.05 else host


def _random_destination(rng: random.Random) -> str:
    kind = rng.random()
    host = _random_host(rng)
    if kind < 0.4:
        return host
    if kind < 0.55:
        return "*." + rng.choice(_DOMAINS + ["com", "org"])
    if kind < 0.65:
        return "**." + rng.choice(_DOMAINS + ["github.com", "api.github.com"])
    if kind < 0.75:
        return rng.choice(
            ["10.0.0.0/8", "10.1.0.0/16", "10.2.3.0/24", "10.0.0.5/32", "192.168.0.0/16", "0.0.0.0/0"]
            + ["2001:db8::/32", "2001:db8:1::/48", "::/0", "fe80::/10", "10.3.0.0/15"]
        )
    if kind < 0.9:
        return rng.choice(
            ["api.*", "*.*.npmjs.org", "foo*.example.com", "*.*.example.com", "a.*.*", "10.0.0.*"]
            + ["?.github.com", "x?.*", "*.corp.*", "cdn.*.com", "*.*"]
        )
    return "*"


def _random_rules(rng: random.Random, n: int) -> list[RuleSpec]:
    ids = rng.sample(range(1, n * 3), n)  # ids not in insertion order
    rules = []
    for rid in ids:
        layer = rng.choice([LAYER_GLOBAL, LAYER_GLOBAL, LAYER_SESSION, LAYER_BUILTIN])
        session = rng.choice(["s1", "s2"]) if layer == LAYER_SESSION else None
        container = rng.choice(_CONTAINER_PATTERNS + _CONTAINERS[:-1])
        port = rng.choice(["*", "*", "443", "80", "80,443", "8000-9000", "22,8000-8100"])
        expires = rng.choice([None, None, None, NOW - 10, NOW + 10])
        action = rng.choice(["allow", "allow", "deny"])
        rules.append(rule(rid, container, _random_destination(rng), port, action, layer, expires, session))
    return rules


def test_index_agrees_with_linear_reference_on_10000_rules() -> None:
    rng = random.Random(20240601)
    rules = _random_rules(rng, 10_000)
    sessions = {"myapp": "s1", "web-1": "s2", "worker": "s1", "claude": "s3"}
    index = RuleIndex(rules, sessions)
    compiled = [_compile(r) for r in rules]
    assert len(index) == 10_000
    hits = 0
    for _ in range(400):
        container = rng.choice(_CONTAINERS)
        host = _random_host(rng)
        resolved = _random_host(rng) if rng.random() < 0.3 else None
        port = rng.choice([22, 80, 443, 8080, 8050, 9000, 9001])
        expected = naive_match(rules, container, host, port, resolved, NOW, sessions, compiled)
        got = index.match(container, host, port, resolved, now=NOW)
        assert got == expected, (container, host, port, resolved)
        hits += got is not None
    assert hits > 100  # the queries really exercise matching, not just misses


@pytest.mark.parametrize("seed", range(5))
def test_index_agrees_with_linear_reference_small(seed: int) -> None:
    # Small rule sets make near-ties (same score, same layer) much more likely.
    rng = random.Random(seed)
    rules = _random_rules(rng, 40)
    sessions = {"myapp": "s1", "web-1": "s2"}
    index = RuleIndex(rules, sessions)
    for _ in range(300):
        container = rng.choice(_CONTAINERS)
        host = _random_host(rng)
        resolved = _random_host(rng) if rng.random() < 0.3 else None
        port = rng.choice([22, 80, 443, 8080, 9000])
        assert index.match(container, host, port, resolved, now=NOW) == naive_match(
            rules, container, host, port, resolved, NOW, sessions
        )
