"""Issue 13: the index is patched in place (add / remove / a heartbeat's expiry) and must then
decide exactly like an index built from scratch on the same rules."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from greyproxy.policy.dnspolicy import representative_ports, representative_ports_of
from greyproxy.policy.index import RuleIndex, RuleSpec
from tests.unit.test_index import _CONTAINERS, NOW, _random_host, _random_rules

SESSIONS = {"myapp": "s1", "web-1": "s2", "worker": "s1"}


def _queries(rng: random.Random, n: int) -> list[tuple[str, str, int, str | None]]:
    return [
        (rng.choice(_CONTAINERS), _random_host(rng), rng.choice([22, 80, 443, 8080, 8050, 9000]),
         _random_host(rng) if rng.random() < 0.3 else None)
        for _ in range(n)
    ]


def _same_decisions(patched: RuleIndex, rules: dict[int, RuleSpec], rng: random.Random, now: float = NOW) -> None:
    fresh = RuleIndex(list(rules.values()), SESSIONS)
    assert len(patched) == len(fresh)
    assert sorted(r.id for r in patched.rules()) == sorted(rules)
    assert sorted(patched.port_patterns()) == sorted({r.port_pattern for r in rules.values()})
    assert representative_ports_of(patched.port_patterns()) == representative_ports(rules.values())
    for container, host, port, resolved in _queries(rng, 150):
        assert patched.match(container, host, port, resolved, now=now) == fresh.match(
            container, host, port, resolved, now=now), (container, host, port, resolved)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), start=st.integers(0, 60), ops=st.integers(1, 80))
def test_patched_index_decides_like_a_fresh_one(seed: int, start: int, ops: int) -> None:
    rng = random.Random(seed)
    pool = _random_rules(rng, start + ops)  # unique ids
    rules = {r.id: r for r in pool[:start]}
    index = RuleIndex(list(rules.values()), SESSIONS)
    spare = pool[start:]
    for _ in range(ops):
        roll = rng.random()
        if roll < 0.5 and spare:
            new = spare.pop()
            rules[new.id] = new
            index.add(new)
        elif roll < 0.8 and rules:
            victim = rng.choice(list(rules))
            del rules[victim]
            assert index.remove(victim)
        elif rules:  # replace a rule under the same id (an update)
            rid = rng.choice(list(rules))
            other = _random_rules(rng, 1)[0]
            changed = dataclasses.replace(other, id=rid)
            rules[rid] = changed
            index.add(changed)
    assert not index.remove(10**9)
    _same_decisions(index, rules, rng)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_extend_session_moves_expiry_like_a_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    rules = {r.id: r for r in _random_rules(rng, 80)}
    index = RuleIndex(list(rules.values()), SESSIONS)
    version = index.version
    moved = index.extend_session("s1", NOW + 100)
    for rid, r in list(rules.items()):
        if r.session_id == "s1":
            rules[rid] = dataclasses.replace(r, expires_at=NOW + 100)
    assert moved == sum(1 for r in rules.values() if r.session_id == "s1")
    assert (index.version != version) == (moved > 0)
    for rid, r in rules.items():
        assert index.get(rid) == r
    _same_decisions(index, rules, rng, now=NOW + 50)


def test_patching_keeps_10000_rules_equal_and_is_cheap() -> None:
    import time

    rng = random.Random(13)
    pool = _random_rules(rng, 10_200)
    rules = {r.id: r for r in pool[:10_000]}
    index = RuleIndex(list(rules.values()), SESSIONS)
    started = time.perf_counter()
    for r in pool[10_000:]:
        index.add(r)
        rules[r.id] = r
    for rid in list(rules)[:200]:
        index.remove(rid)
        del rules[rid]
    per_patch = (time.perf_counter() - started) / 400
    assert per_patch < 0.01  # generous: a patch touches one bucket (~µs), a rebuild takes ~100 ms
    _same_decisions(index, rules, rng)


def test_set_sessions_replaces_the_session_map() -> None:
    r = RuleSpec(1, "myapp", "example.com", "*", "allow", 2, None, "s9")
    index = RuleIndex([r], SESSIONS)
    assert index.match("myapp", "example.com", 443, now=NOW) is None
    index.set_sessions({"myapp": "s9"})
    assert index.match("myapp", "example.com", 443, now=NOW) == r
