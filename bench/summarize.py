#!/usr/bin/env python3
"""Turn the JSONL written by run_bench.sh into a compact markdown summary.

    python3 bench/summarize.py RESULTS_DIR_OR_FILES...

Reads every ``*.jsonl`` file (or the files given).  load generator lines are grouped by their
``label`` ("<proxy> <path>", e.g. "greyproxy socks5"); for each scenario the ``"run": "median"``
line is used, or the single run when a scenario ran once.  Lines with ``"bench": "decision"``
(bench/decision_bench.py) and ``"bench": "ingest"`` (bench/gp_api.py) are summarised too.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

ORDER = ("greyproxy socks5", "greyproxy http", "tinyproxy http", "direct -")


def load(paths: list[str]) -> list[dict[str, Any]]:
    files: list[str] = []
    for p in paths:
        files.extend(sorted(glob.glob(os.path.join(p, "*.jsonl"))) if os.path.isdir(p) else [p])
    lines = []
    for f in files:
        with open(f) as fh:
            for raw in fh:
                raw = raw.strip()
                if raw.startswith("{"):
                    try:
                        lines.append(json.loads(raw))
                    except ValueError:
                        pass
    return lines


def box_for(lines: list[dict[str, Any]], label: str) -> tuple[str, str]:
    """(box busy %, CPU % of other processes) during the rate call of `label`, as text.

    box busy % comes from /proc/stat over the whole load generator call (200 = both cores of a
    2-core box); "others" subtracts the CPU that the load generator attributed to client, origins and
    proxy in every run of that call (median lines excluded).
    """
    box = [
        x
        for x in lines
        if "box_busy_pct" in x and x.get("label") == label and str(x.get("box_for", "")).endswith("rate")
    ]
    if not box:
        return "—", "—"
    b = box[-1]
    wall = b.get("wall_s") or 0
    ours = sum(
        float(x.get(k) or 0)
        for x in lines
        if x.get("label") == label
        and x.get("scenario") in ("connrate", "plainhttp")
        and isinstance(x.get("run"), int)
        for k in ("client_cpu_s", "origin_cpu_s", "proxy_cpu_s")
    )
    others = f"{max(0.0, b['box_busy_pct'] - 100.0 * ours / wall):.0f}" if wall else "—"
    return f"{b['box_busy_pct']}", others


def pick(lines: list[dict[str, Any]], label: str, scenario: str) -> dict[str, Any] | None:
    """The median line of (label, scenario), else its only / last run, else None."""
    runs = [x for x in lines if x.get("label") == label and x.get("scenario") == scenario]
    med = [x for x in runs if x.get("run") == "median"]
    if med:
        return med[-1]
    return runs[-1] if runs else None


def fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return f"{v:,.{nd}f}"
    return str(v)


def status(line: dict[str, Any] | None) -> str | None:
    """A short reason when a scenario produced no figure."""
    if line is None:
        return None
    for key in ("skipped", "probe_failed", "error"):
        if key in line:
            return f"{key}: {line[key]}"
    return None


def cell(line: dict[str, Any] | None, *keys: str, nd: int = 0) -> str:
    if line is None:
        return "—"
    v: Any = line
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            s = status(line)
            return "n/a" if s and s.startswith("skipped") else ("FAIL" if s else "—")
        v = v[k]
    return fmt(v, nd)


def errors(*lines: dict[str, Any] | None) -> str:
    out = []
    for line in lines:
        if line is None:
            continue
        s = status(line)
        if s and not s.startswith("skipped"):
            out.append(f"{line.get('scenario')}: {s}")
        elif line.get("errors"):
            kinds = line.get("error_kinds") or {}
            out.append(f"{line.get('scenario')}: {line['errors']} {kinds if kinds else ''}".strip())
    return "; ".join(out) or "0"


def table(lines: list[dict[str, Any]]) -> list[str]:
    runs = [x for x in lines if x.get("scenario") and x.get("label")]
    labels = [lab for lab in ORDER if any(x["label"] == lab for x in runs)]
    labels += sorted({x["label"] for x in runs if x["label"] not in labels})
    out = [
        "| proxy | path | connrate/s | p50 ms | p99 ms | plainhttp/s | p50 ms | p99 ms | bulk MB/s "
        "| proxy CPU % (conn / plain / bulk) | client CPU % (conn) | box busy % / others % (rate runs) | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for label in labels:
        proxy, _, path = label.partition(" ")
        c = pick(lines, label, "connrate")
        p = pick(lines, label, "plainhttp")
        b = pick(lines, label, "bulk")
        cpu = " / ".join(cell(x, "proxy_cpu_pct") if x is not None else "—" for x in (c, p, b))
        if proxy == "direct":
            cpu = "(no proxy)"
        out.append(
            f"| {proxy} | {path} | {cell(c, 'rate_per_s')} | {cell(c, 'lat_ms', 'p50', nd=2)} "
            f"| {cell(c, 'lat_ms', 'p99', nd=2)} | {cell(p, 'rate_per_s')} | {cell(p, 'lat_ms', 'p50', nd=2)} "
            f"| {cell(p, 'lat_ms', 'p99', nd=2)} | {cell(b, 'mb_s')} | {cpu} | {cell(c, 'client_cpu_pct')} "
            f"| {' / '.join(box_for(lines, label))} | {errors(c, p, b)} |"
        )
    return out


def hold_lines(lines: list[dict[str, Any]]) -> list[str]:
    out = []
    for x in lines:
        if x.get("scenario") != "hold" or x.get("run") == "median":
            continue
        s = status(x)
        if s:
            out.append(f"* hold ({x.get('label')}): {s}")
            continue
        rss = x.get("proxy_rss_kb") or {}
        out.append(
            f"* hold ({x.get('label')}): {x.get('opened')} opened, {x.get('survived')} survived "
            f"{x.get('idle_s', '?')} s idle, dead {x.get('dead')}, no_reply {x.get('no_reply')}; "
            f"proxy RSS {fmt(rss.get('before'))} → {fmt(rss.get('open'))} → {fmt(rss.get('after_idle'))} kB "
            f"(before / {x.get('opened')} open / after idle), {fmt(x.get('proxy_rss_kb_per_conn'), 1)} kB per conn"
        )
    return out


def decision_lines(lines: list[dict[str, Any]]) -> list[str]:
    out = []
    box = [x for x in lines if x.get("box_for") == "decision"]
    busy = (
        f"; box {box[-1]['box_busy_pct']} % busy of {100 * box[-1].get('ncpu', 1)} % meanwhile (the benchmark itself uses 100)"
        if box
        else ""
    )
    for x in lines:
        if x.get("bench") == "decision":
            d = x["decide_us"]
            shapes = x.get("by_host_shape_us") or {}
            shape_txt = ", ".join(f"{k} {v['p50']}/{v['p99']}" for k, v in shapes.items())
            v = x.get("verdicts", {})
            out.append(
                f"* decision, {x['rules']:,} rules: p50 {d['p50']} µs, p99 {d['p99']} µs, p99.9 {d['p999']} µs, "
                f"mean {x['batch_mean_us']} µs (≈{fmt(x.get('decisions_per_s'))} decisions/s on one core); "
                f"index build {x['build_ms']} ms; {x['queries']:,} queries "
                f"(allow {v.get('allow', 0):,} / deny {v.get('deny', 0):,} / hold {v.get('hold', 0):,}); "
                f"p50/p99 µs by host shape: {shape_txt}{busy}"
            )
        elif x.get("bench") == "ingest":
            r = x.get("response") or {}
            out.append(
                f"* ingest: POST /api/rules/ingest with {x['rules_sent']:,} rules → HTTP {x['status']} in "
                f"{x['seconds']} s (imported {r.get('imported')}, skipped {r.get('skipped')}); "
                f"rules listed afterwards: {x.get('rules_listed', '?')}"
            )
    return out


def machine_line(lines: list[dict[str, Any]]) -> list[str]:
    out = []
    for x in lines:
        if x.get("meta") == "code":
            out.append(
                f"code: git {x.get('git_head')} + {x.get('uncommitted_paths')} uncommitted paths, "
                f"greyproxy/*.py sha256 {x.get('greyproxy_src_sha256')}"
            )
    for x in lines:
        if "loadgen" in x or "proxybench" in x:
            return out + [
                f"{x.get('loadgen') or 'proxybench ' + str(x['proxybench'])}, Python {x.get('python')}, {x.get('ncpu')} CPUs "
                f"(client, origins and proxy share them), nofile {x.get('nofile')}"
            ]
    return out


def brief(lines: list[dict[str, Any]]) -> list[str]:
    """One progress line per finished scenario (median, or the single run)."""
    out = []
    for x in lines:
        sc = x.get("scenario")
        if not sc and "box_busy_pct" not in x:
            continue
        if x.get("run") != "median" and any(
            y.get("scenario") == sc and y.get("label") == x.get("label") and y.get("run") == "median"
            for y in lines
        ):
            continue
        if "box_busy_pct" in x:
            out.append(
                f"    {x.get('label')} box: {x['box_busy_pct']} % busy of {100 * x.get('ncpu', 1)} % "
                f"over {x.get('wall_s')} s, loadavg {x.get('loadavg_before')} -> {x.get('loadavg_after')}"
            )
            continue
        head = f"    {x.get('label')} {sc} [{x.get('run')}]"
        s = status(x)
        if s:
            out.append(f"{head}: {s} {x.get('detail', '')}".rstrip())
        elif sc == "bulk":
            out.append(f"{head}: {fmt(x.get('mb_s'))} MB/s, proxy CPU {fmt(x.get('proxy_cpu_pct'))} %")
        elif sc == "hold":
            out.append(
                f"{head}: opened {x.get('opened')} survived {x.get('survived')} dead {x.get('dead')} "
                f"no_reply {x.get('no_reply')} rss/conn {x.get('proxy_rss_kb_per_conn')} kB"
            )
        else:
            lat = x.get("lat_ms") or {}
            out.append(
                f"{head}: {fmt(x.get('rate_per_s'))}/s p50 {lat.get('p50')} p99 {lat.get('p99')} ms, "
                f"errors {x.get('errors')}, CPU proxy {fmt(x.get('proxy_cpu_pct'))} % "
                f"client {fmt(x.get('client_cpu_pct'))} % origin {fmt(x.get('origin_cpu_pct'))} %"
            )
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--brief":
        print("\n".join(brief(load(argv[1:]))))
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    lines = load(argv)
    if not lines:
        print("no JSON lines found", file=sys.stderr)
        return 1
    out = table(lines)
    extra = hold_lines(lines) + decision_lines(lines)
    if extra:
        out += [""] + extra
    out += [""] + machine_line(lines)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
