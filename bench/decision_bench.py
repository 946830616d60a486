#!/usr/bin/env python3
"""In-process micro-benchmark of greyproxy's policy decision (no sockets, no gevent).

Builds a ``RuleIndex`` from N synthetic rules (default 10,000) with a realistic mix of
destination shapes, then times ``decide(ConnectionRequest, PolicyState)`` over Q queries
(default 200,000) that mix rule hits and misses.  The same query stream is also timed against
an empty index (0 rules), so the cost of the rules themselves is visible.

Prints one JSON line per rule count::

    {"bench": "decision", "rules": 10000, "build_ms": ..., "queries": 200000,
     "decide_us": {"p50": ..., "p90": ..., "p99": ..., "p999": ..., "max": ..., "mean": ...},
     "batch_mean_us": ..., "timer_overhead_us": ..., "verdicts": {...}, "reasons": {...}}

* ``decide_us`` comes from timing every call separately with ``perf_counter_ns``; the measured
  cost of an empty timed call (``timer_overhead_us``) has been subtracted from every sample.
* ``batch_mean_us`` is the mean from one tight loop over all queries (no per-call timer),
  the best estimate of the average cost.
* ``by_host_shape_us`` splits the per-call figures by the shape of the requested host
  (IP literal, IP with a DNS-learned name, hostname with 2 / 3 / 4 labels): the index's
  cost depends on it (label globs are bucketed by label count and literal tail or head).
* ``verdicts`` / ``reasons`` count the outcomes, to show the mix of hits (allow / deny by rule)
  and misses (hold, no matching rule) that was measured.

Usage: python3 bench/decision_bench.py [--rules 10000] [--queries 200000] [--seed 1]
Run from the repository root (or with greyproxy installed) so ``greyproxy.policy`` imports.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections import Counter

# Allow running from a checkout without installing: add the repo root (bench/..) to sys.path.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from greyproxy.policy.decide import ConnectionRequest, PolicyState, decide  # noqa: E402
from greyproxy.policy.index import RuleIndex, RuleSpec  # noqa: E402

TLDS = ("com", "net", "org", "io", "dev", "cloud", "internal")
WORDS = (
    "api",
    "cdn",
    "auth",
    "login",
    "static",
    "assets",
    "pkg",
    "registry",
    "mirror",
    "files",
    "media",
    "data",
    "metrics",
    "logs",
    "git",
    "ci",
    "build",
    "docs",
    "status",
    "edge",
)
PORT_PATTERNS = ("*", "443", "80,443", "8000-9000", "22", "5432", "443,8443", "1-1023", "6379", "9200-9300")


class Rng:
    """Deterministic helpers around random.Random."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def domain(self, i: int) -> str:
        return f"{self.r.choice(WORDS)}{i}-{self.r.randrange(1000)}.{self.r.choice(TLDS)}"

    def port_pattern(self) -> str:
        # Mostly a specific port list; some '*'.
        return self.r.choice(PORT_PATTERNS)


def port_in(pattern: str, r: random.Random) -> int:
    """A port that the pattern accepts."""
    if pattern == "*":
        return r.choice((443, 80, 8080, 22))
    item = r.choice(pattern.split(","))
    if "-" in item:
        lo, hi = (int(x) for x in item.split("-"))
        return r.randint(lo, hi)
    return int(item)


def build_rules(n: int, seed: int) -> tuple[list[RuleSpec], list[tuple[str, str, int]]]:
    """N rules plus, for each rule, one (container, host, port) that the rule matches.

    Mix (fractions of N): exact hostnames 30 %, '*.x' 15 %, '**.x' 15 %, IPv4/IPv6 CIDRs 10 %,
    exact IPs 5 %, label globs 10 % ('api.*', '*.*.x', 'foo*.x', 'cdn-??.x'), destination '*'
    for a named container 5 %, and the rest (10 %) more exact hosts with container globs.
    Containers: ~2,000 distinct names ('agent-<k>'), globs ('team<k>-*', 'agent-1*', ...) and '*'.
    Port patterns: '*', single ports, lists and ranges.  About 25 % of rules are deny.
    """
    g = Rng(seed)
    r = g.r
    n_containers = max(10, n // 5)
    containers = [f"agent-{k}" for k in range(n_containers)]
    rules: list[RuleSpec] = []
    probes: list[tuple[str, str, int]] = []

    def container_choice() -> tuple[str, str]:
        """(pattern, a concrete name it matches)."""
        x = r.random()
        if x < 0.70:
            name = r.choice(containers)
            return name, name
        if x < 0.85:
            k = r.randrange(200)
            return f"team{k}-*", f"team{k}-worker{r.randrange(50)}"
        if x < 0.95:
            d = r.randrange(1, 10)
            return f"agent-{d}*", f"agent-{d}{r.randrange(1000)}"
        return "*", r.choice(containers)

    counts = {
        "exact": int(n * 0.30),
        "suffix": int(n * 0.15),
        "apex": int(n * 0.15),
        "cidr": int(n * 0.10),
        "ip": int(n * 0.05),
        "glob": int(n * 0.10),
        "any": int(n * 0.05),
    }
    counts["exact_glob_container"] = n - sum(counts.values())
    i = 0
    for kind, count in counts.items():
        for _ in range(count):
            i += 1
            cpat, cname = container_choice()
            ppat = g.port_pattern()
            if kind == "exact":
                host = g.domain(i)
                dest = host
            elif kind == "suffix":
                base = g.domain(i)
                dest = f"*.{base}"
                host = f"{r.choice(WORDS)}.{r.choice(WORDS)}.{base}"
            elif kind == "apex":
                base = g.domain(i)
                dest = f"**.{base}"
                host = base if r.random() < 0.5 else f"{r.choice(WORDS)}.{base}"
            elif kind == "cidr":
                if r.random() < 0.8:
                    plen = r.choice((8, 16, 20, 24, 28, 32))
                    addr = (10 << 24) | r.getrandbits(24)
                    net = addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
                    dest = f"{net >> 24}.{(net >> 16) & 255}.{(net >> 8) & 255}.{net & 255}/{plen}"
                    host = f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}"
                else:
                    plen = r.choice((32, 48, 64))
                    word = r.getrandbits(16)
                    dest = f"2001:db8:{word:x}::/{plen}"
                    host = f"2001:db8:{word:x}::{r.getrandbits(16):x}"
            elif kind == "ip":
                host = f"172.{16 + r.randrange(16)}.{r.randrange(256)}.{r.randrange(1, 255)}"
                dest = host
            elif kind == "glob":
                x = r.random()
                base = g.domain(i)
                if x < 0.25:
                    dest = f"api.{base.split('.')[0]}.*"
                    host = f"api.{base.split('.')[0]}.{r.choice(TLDS)}"
                elif x < 0.5:
                    dest = f"*.*.{base}"
                    host = f"{r.choice(WORDS)}.{r.choice(WORDS)}.{base}"
                elif x < 0.75:
                    word = r.choice(WORDS)
                    dest = f"{word}*.{base}"
                    host = f"{word}{r.randrange(100)}.{base}"
                else:
                    dest = f"cdn-??.{base}"
                    host = f"cdn-{r.randrange(10, 100)}.{base}"
            elif kind == "any":
                cpat = cname = r.choice(containers)
                dest = "*"
                host = g.domain(i)
            else:  # exact host, container glob
                k = r.randrange(200)
                cpat, cname = f"team{k}-*", f"team{k}-svc{r.randrange(20)}"
                host = g.domain(i)
                dest = host
            action = "deny" if r.random() < 0.25 else "allow"
            rules.append(RuleSpec(i, cpat, dest, ppat, action))
            probes.append((cname, host, port_in(ppat, r)))
    return rules, probes


def build_queries(probes: list[tuple[str, str, int]], q: int, seed: int) -> list[ConnectionRequest]:
    """Q requests: ~60 % rule hits, ~40 % misses (unknown host, unknown container, wrong port)."""
    r = random.Random(seed + 1)
    out: list[ConnectionRequest] = []
    for k in range(q):
        x = r.random()
        if probes and x < 0.60:
            c, h, p = r.choice(probes)
            if r.random() < 0.1 and not h[0].isdigit() and ":" not in h:
                # the SOCKS "IP + DNS-learned name" path: the host is an IP, the name rides along
                out.append(ConnectionRequest(c, f"198.51.100.{r.randrange(1, 255)}", p, resolved_hostname=h))
            else:
                out.append(ConnectionRequest(c, h, p))
        elif x < 0.75:  # unknown host, plausible container
            c = probes[r.randrange(len(probes))][0] if probes else "agent-1"
            out.append(ConnectionRequest(c, f"miss{k}.{r.choice(WORDS)}.example.{r.choice(TLDS)}", 443))
        elif x < 0.85:  # unknown IP
            c = probes[r.randrange(len(probes))][0] if probes else "agent-1"
            out.append(ConnectionRequest(c, f"203.0.113.{r.randrange(1, 255)}", r.choice((80, 443))))
        elif x < 0.95:  # known host, unknown container
            h = probes[r.randrange(len(probes))][1] if probes else "example.com"
            out.append(ConnectionRequest(f"stranger-{r.randrange(100000)}", h, 443))
        else:  # known host + container, port nobody allowed
            c, h, _ = r.choice(probes) if probes else ("agent-1", "example.com", 0)
            out.append(ConnectionRequest(c, h, 31337))
    return out


def shape(req: ConnectionRequest) -> str:
    """Coarse class of a query's host, for the per-shape breakdown."""
    h = req.host
    if h[0].isdigit() or ":" in h:
        return "ip+name" if req.resolved_hostname else "ip"
    n = h.count(".") + 1
    return f"name{n}" if n < 5 else "name5+"


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[k]


def timer_overhead_ns(n: int = 200_000) -> float:
    """Median cost of an empty timed section (perf_counter_ns pair + loop)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    samples.sort()
    return float(samples[len(samples) // 2])


def run(n_rules: int, queries: list[ConnectionRequest], rules: list[RuleSpec], overhead_ns: float) -> dict:
    t0 = time.perf_counter()
    index = RuleIndex(rules[:n_rules])
    build_ms = (time.perf_counter() - t0) * 1000.0
    state = PolicyState(index=index)

    # warm-up (regex caches, branch predictors, dict resizes)
    for req in queries[:5000]:
        decide(req, state)

    # 1) per-call latency distribution
    clock = time.perf_counter_ns
    samples = [0] * len(queries)
    verdicts: Counter = Counter()
    reasons: Counter = Counter()
    for k, req in enumerate(queries):
        t0 = clock()
        d = decide(req, state)
        samples[k] = clock() - t0
        verdicts[d.verdict.value] += 1
        reasons[d.reason] += 1
    us = sorted(max(0.0, (s - overhead_ns) / 1000.0) for s in samples)
    per_shape: dict[str, list[float]] = {}
    for req, s in zip(queries, samples, strict=True):
        per_shape.setdefault(shape(req), []).append(max(0.0, (s - overhead_ns) / 1000.0))
    by_shape = {}
    for name, vals in sorted(per_shape.items()):
        vals.sort()
        by_shape[name] = {"n": len(vals), "p50": round(pct(vals, 50), 2), "p99": round(pct(vals, 99), 2)}

    # 2) tight loop mean (no per-call timer)
    t0 = time.perf_counter_ns()
    for req in queries:
        decide(req, state)
    batch_mean_us = (time.perf_counter_ns() - t0) / 1000.0 / len(queries)

    return {
        "bench": "decision",
        "rules": len(index),
        "build_ms": round(build_ms, 1),
        "queries": len(queries),
        "decide_us": {
            "p50": round(pct(us, 50), 2),
            "p90": round(pct(us, 90), 2),
            "p99": round(pct(us, 99), 2),
            "p999": round(pct(us, 99.9), 2),
            "max": round(us[-1], 1),
            "mean": round(statistics.fmean(us), 2),
        },
        "by_host_shape_us": by_shape,
        "batch_mean_us": round(batch_mean_us, 2),
        "decisions_per_s": int(1e6 / batch_mean_us) if batch_mean_us > 0 else None,
        "timer_overhead_us": round(overhead_ns / 1000.0, 3),
        "verdicts": dict(verdicts),
        "reasons": dict(reasons),
    }


def emit_rules(path: str, n: int, seed: int, container: str, host: str, ports: str) -> dict:
    """Write N rules as a JSON array for POST /api/rules/ingest.

    N-1 synthetic rules (the same mix as the micro-benchmark, de-duplicated) that must not match
    `container` -> `host`, plus one allow rule `container` -> `host` on `ports`.
    """
    want = max(0, n - 1)
    seen: set[tuple[str, str, str]] = set()
    chosen: list[RuleSpec] = []
    for attempt in range(5):  # the first batch has the mix; later ones only replace duplicates
        if len(chosen) >= want:
            break
        rules, _ = build_rules(want, seed + attempt)
        for rule in rules:
            key = (rule.container_pattern, rule.destination_pattern.lower(), rule.port_pattern)
            if key not in seen:
                seen.add(key)
                chosen.append(rule)
            if len(chosen) == want:
                break
    if len(chosen) < want:
        raise SystemExit(f"could only generate {len(chosen)} distinct rules")
    index = RuleIndex(chosen)
    lo, _, hi = ports.partition("-")
    for port in range(int(lo), int(hi or lo) + 1):
        hit = index.match(container, host, port)
        if hit is not None:
            raise SystemExit(f"synthetic rule {hit} would match the benchmark traffic")
    items = [
        {
            "container_pattern": r.container_pattern,
            "destination_pattern": r.destination_pattern,
            "port_pattern": r.port_pattern,
            "action": r.action,
        }
        for r in chosen
    ]
    items.append(
        {
            "container_pattern": container,
            "destination_pattern": host,
            "port_pattern": ports,
            "action": "allow",
        }
    )
    with open(path, "w") as fh:
        json.dump(items, fh)
    return {"rules_file": path, "rules": len(items), "allow": f"{container} -> {host}:{ports}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", type=int, default=10_000, help="rule count (default 10000)")
    ap.add_argument(
        "--queries", type=int, default=200_000, help="decide() calls per rule count (default 200000)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-zero", action="store_true", help="skip the 0-rule baseline")
    ap.add_argument(
        "--no-gc",
        action="store_true",
        help="disable the cyclic GC while timing (default: enabled, as in the proxy)",
    )
    ap.add_argument(
        "--emit-rules", metavar="FILE", help="only write an ingest JSON array of --rules rules and exit"
    )
    ap.add_argument(
        "--allow",
        default="bench-client,127.0.0.1,47000-47003",
        help="with --emit-rules: CONTAINER,HOST,PORTS of the one rule that matches the benchmark traffic",
    )
    args = ap.parse_args(argv)
    if args.emit_rules:
        container, host, ports = args.allow.split(",", 2)
        print(json.dumps(emit_rules(args.emit_rules, args.rules, args.seed, container, host, ports)))
        return 0
    if args.rules < 0 or args.queries <= 0:
        ap.error("--rules must be >= 0 and --queries > 0")

    rules, probes = build_rules(args.rules, args.seed) if args.rules else ([], [])
    queries = build_queries(probes, args.queries, args.seed)
    if args.no_gc:
        gc.disable()
    overhead = timer_overhead_ns()
    counts = [args.rules] + ([] if args.no_zero or args.rules == 0 else [0])
    for n in counts:
        result = run(n, queries, rules, overhead)
        result["python"] = sys.version.split()[0]
        result["gc"] = not args.no_gc
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
