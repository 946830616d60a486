#!/usr/bin/env python3
"""Tiny stdlib client for the bits of greyproxy's API that run_bench.sh needs.

    gp_api.py handshake DATA_DIR [--wait S] [--pid PID]
        wait (bounded) for DATA_DIR/api-handshake.json, print shell assignments:
        GP_API_PORT=.. GP_TOKEN=.. GP_PID=.. GP_HTTP_PORT=.. GP_SOCKS_PORT=..
    gp_api.py health DATA_DIR [--wait S]
        poll GET /api/health until it answers 200 (bounded), print the body
    gp_api.py ingest DATA_DIR RULES.json
        POST /api/rules/ingest with the file's JSON array, print one JSON line with the timing
    gp_api.py count DATA_DIR
        print the number of rules the API lists (GET /api/rules)

Only 127.0.0.1 is contacted.  Exit status 1 on any failure, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request


def load_handshake(data_dir: str) -> dict:
    with open(os.path.join(data_dir, "api-handshake.json")) as fh:
        return json.load(fh)


def request(
    hs: dict, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{hs['port']}{path}", data=body, method=method)
    if hs.get("token"):
        req.add_header("Authorization", f"Bearer {hs['token']}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_handshake(args: argparse.Namespace) -> int:
    path = os.path.join(args.data_dir, "api-handshake.json")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if not pid_alive(args.pid):
            print(f"greyproxy (pid {args.pid}) exited before writing {path}", file=sys.stderr)
            return 1
        try:
            hs = load_handshake(args.data_dir)
            ports = hs["ports"]
            print(
                f"GP_API_PORT={int(hs['port'])} GP_TOKEN={shlex.quote(hs.get('token') or '')} GP_PID={int(hs['pid'])} "
                f"GP_HTTP_PORT={int(ports['http'])} GP_SOCKS_PORT={int(ports['socks5'])}"
            )
            return 0
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.1)
    print(f"no usable {path} after {args.wait} s", file=sys.stderr)
    return 1


def cmd_health(args: argparse.Namespace) -> int:
    hs = load_handshake(args.data_dir)
    deadline = time.monotonic() + args.wait
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = request(hs, "GET", "/api/health", timeout=5)
            if status == 200:
                print(body.decode(errors="replace").strip())
                return 0
            last = f"HTTP {status}: {body[:300]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    print(f"/api/health not OK after {args.wait} s: {last}", file=sys.stderr)
    return 1


def cmd_ingest(args: argparse.Namespace) -> int:
    hs = load_handshake(args.data_dir)
    with open(args.rules_file, "rb") as fh:
        body = fh.read()
    n = len(json.loads(body))
    t0 = time.perf_counter()
    try:
        status, resp = request(hs, "POST", "/api/rules/ingest", body, timeout=args.timeout)
    except OSError as exc:
        print(f"POST /api/rules/ingest failed after {time.perf_counter() - t0:.1f} s: {exc}", file=sys.stderr)
        return 1
    secs = time.perf_counter() - t0
    try:
        parsed = json.loads(resp)
    except ValueError:
        parsed = {"raw": resp[:500].decode(errors="replace")}
    line = {
        "bench": "ingest",
        "status": status,
        "rules_sent": n,
        "seconds": round(secs, 3),
        "response": parsed,
    }
    try:
        line["rules_listed"] = rule_total(hs)
    except (OSError, ValueError) as exc:
        line["rules_listed"] = f"error: {exc}"
    print(json.dumps(line))
    return 0 if status in (200, 201) else 1


def rule_total(hs: dict) -> int:
    """Rules the API lists (GET /api/rules 'total'); raises ValueError on a non-200."""
    status, resp = request(hs, "GET", "/api/rules?limit=1", timeout=30)
    if status != 200:
        raise ValueError(f"GET /api/rules: HTTP {status}: {resp[:300]!r}")
    data = json.loads(resp)
    if isinstance(data, dict):
        total = data.get("total", data.get("count"))
        if total is None:
            total = len(data.get("items") or data.get("rules") or [])
        return int(total)
    return len(data)


def cmd_count(args: argparse.Namespace) -> int:
    try:
        print(rule_total(load_handshake(args.data_dir)))
    except (OSError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="greyproxy API helper for run_bench.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("handshake")
    p.add_argument("data_dir")
    p.add_argument("--wait", type=float, default=30)
    p.add_argument("--pid", type=int)
    p.set_defaults(func=cmd_handshake)
    p = sub.add_parser("health")
    p.add_argument("data_dir")
    p.add_argument("--wait", type=float, default=30)
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("ingest")
    p.add_argument("data_dir")
    p.add_argument("rules_file")
    p.add_argument("--timeout", type=float, default=300)
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("count")
    p.add_argument("data_dir")
    p.set_defaults(func=cmd_count)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
