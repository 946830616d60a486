"""`greyproxy status`, `rules export|import`, `token show|rotate` (issue 8), `audit verify` (docs/decisions.md#audit-observability-traffic-tools).

They talk to the running instance through its API, found with `<data>/api-handshake.json`
(port + token): a change made here goes through the same services as the dashboard's, so
held connections, events and dashboards follow it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greyproxy.cli_rules_test import rules_test
from greyproxy.config import Config, ConfigError, load_config
from greyproxy.files import write_file
from greyproxy.rulesyaml import RulesFileError, dump_rules, parse_rules
from greyproxy.services.audit import verify
from greyproxy.timeutil import iso, utcnow

TOKEN_FILE = "api-token"
HANDSHAKE_FILE = "api-handshake.json"
PAGE = 1000  # rules per request when exporting


class NotRunning(RuntimeError):
    """No instance answers; the message says why (no handshake file, stale file, refused)."""


class ApiFailure(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def err(message: str) -> int:
    print(f"greyproxy: {message}", file=sys.stderr)
    return 1


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-C", "--config", help="YAML configuration file (for data_dir and addresses)")
    p.add_argument("--data-dir", help="data directory (default: $GREYPROXY_DATA_HOME or ~/.local/share/greyproxy)")


def config_of(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), flags={"data_dir": getattr(args, "data_dir", None)})


def _client_host(host: str) -> str:
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


@dataclass
class Instance:
    """The running greyproxy as its handshake file describes it."""

    info: dict[str, Any]
    api_host: str
    handshake: Path

    @classmethod
    def find(cls, config: Config) -> Instance:
        path = config.data_dir / HANDSHAKE_FILE
        try:
            info = json.loads(path.read_text())
            int(info["port"])
        except FileNotFoundError:
            raise NotRunning(f"greyproxy is not running (no {path}); start it with `greyproxy serve`") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NotRunning(f"cannot read {path}: {exc}") from None
        return cls(info, config.listen["api"].host, path)

    @property
    def base(self) -> str:
        prefix = self.info.get("path_prefix") or ""  # api.path_prefix of the running instance
        return f"http://{_client_host(self.api_host)}:{int(self.info['port'])}{prefix}"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        request.add_header("X-Greyproxy-Client", "cli")  # the audit log's actor
        if self.info.get("token"):
            request.add_header("Authorization", f"Bearer {self.info['token']}")
        # Never through an environment proxy: this is a call to our own control plane.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            raise ApiFailure(exc.code, f"{method} {path} failed ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotRunning(f"greyproxy does not answer at {self.base} ({reason}); "
                             f"{self.handshake} is stale if it is not running") from None


# -- status ------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s"]
    return "".join(p for p in parts if p)


def cmd_status(args: argparse.Namespace) -> int:
    config = config_of(args)
    try:
        instance = Instance.find(config)
        health = instance.call("GET", "/api/health")
        pending = instance.call("GET", "/api/pending/count")["count"]
        rules = instance.call("GET", "/api/rules?limit=1")["total"]
        metrics = instance.call("GET", "/api/metrics")
    except NotRunning as exc:
        if args.json:
            print(json.dumps({"running": False, "error": str(exc)}))
        return err(str(exc))
    except ApiFailure as exc:
        return err(str(exc))
    info = instance.info
    summary = {
        "running": True, "healthy": health.get("status") == "ok", "version": health.get("version"),
        "pid": info.get("pid"), "uptime_seconds": metrics.get("uptime_seconds"), "data_dir": str(config.data_dir),
        "ports": info.get("ports"), "rules": rules, "pending": pending,
        "held": metrics.get("held_connections"), "open_tunnels": metrics.get("open_tunnels"),
        "connections": {k: metrics["connections"].get(k, 0) for k in ("allowed", "blocked")},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0 if summary["healthy"] else 1
    ports = info.get("ports") or {}
    listen = config.listen
    print(f"greyproxy {summary['version']}: running, pid {summary['pid']}, up "
          f"{_duration(summary['uptime_seconds'] or 0)}, health {health.get('status')}")
    print(f"  data dir     {config.data_dir}")
    for label, name in (("HTTP proxy", "http"), ("SOCKS5 proxy", "socks5"), ("DNS", "dns"), ("API", "api")):
        print(f"  {label:<12} {_client_host(listen[name].host)}:{ports.get(name)}")
    print(f"  rules        {rules} active")
    print(f"  pending      {pending} (held open now: {summary['held']})")
    print(f"  connections  {summary['connections']['allowed']} allowed, {summary['connections']['blocked']} "
          f"blocked since start; {summary['open_tunnels']} open")
    return 0 if summary["healthy"] else 1


# -- rules export / import -----------------------------------------------------------------
def cmd_rules(args: argparse.Namespace) -> int:
    config = config_of(args)
    try:
        instance = Instance.find(config)
        if args.rules_command == "test":  # which rule decides (docs/request-rules.md)
            return rules_test(instance, args.container, args.url, args.method, args.json)
        if args.rules_command == "export":
            return _export(instance, args.output)
        return _import(instance, Path(args.file))
    except (NotRunning, ApiFailure) as exc:
        hint = "" if not isinstance(exc, NotRunning) else (
            " (rules are exported and imported through the running instance, so held connections"
            " and dashboards see the change)")
        return err(f"{exc}{hint}")


def _export(instance: Instance, output: str | None) -> int:
    items: list[dict[str, Any]] = []
    for page in range(10_000):  # bounded: 10 million rules is far beyond any real rule set
        found = instance.call("GET", f"/api/rules?limit={PAGE}&offset={page * PAGE}")
        items += found["items"]
        if len(found["items"]) < PAGE or len(items) >= found["total"]:
            break
    text = dump_rules(items, header=f"greyproxy rules, exported {iso(utcnow())}; "
                                  "`greyproxy rules import FILE` reads this back")
    count = sum(1 for line in text.splitlines() if line.startswith("- "))
    if output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(f"exported {count} rule(s) to {output}", file=sys.stderr)
    return 0


def _import(instance: Instance, path: Path) -> int:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        entries, expired = parse_rules(text, str(path))
    except OSError as exc:
        return err(f"cannot read {path}: {exc.strerror or exc}")
    except RulesFileError as exc:
        return err(str(exc))
    result = instance.call("POST", "/api/rules/ingest", [e.ingest_item() for e in entries]) if entries else {
        "imported": 0, "skipped": 0, "pending_cleaned": 0}
    print(f"imported {result['imported']} rule(s), {result['skipped']} already present"
          + (f", {expired} expired entr{'y' if expired == 1 else 'ies'} skipped" if expired else "")
          + (f"; {result['pending_cleaned']} pending request(s) now allowed" if result.get("pending_cleaned") else ""))
    return 0


# -- token show / rotate -------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> int:
    config = config_of(args)
    path = config.data_dir / TOKEN_FILE
    if args.token_command == "show":
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            return err(f"no token yet ({path}); `greyproxy serve` creates one")
        except OSError as exc:
            return err(f"cannot read {path}: {exc.strerror or exc}")
        if not args.url:
            print(token)
            return 0
        try:
            base = Instance.find(config).base
        except NotRunning as exc:
            return err(str(exc))
        print(f"{base}/dashboard?token={token}")
        return 0
    return _rotate(config, path)


def _rotate(config: Config, path: Path) -> int:
    token = secrets.token_urlsafe(32)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(path, token + "\n")
    except OSError as exc:
        return err(f"cannot write {path}: {exc.strerror or exc}")
    print(token)
    try:
        instance = Instance.find(config)
        pid = int(instance.info["pid"])
    except (NotRunning, KeyError, TypeError, ValueError):
        print(f"New token written to {path}; greyproxy uses it from its next start.", file=sys.stderr)
        return 0
    if not instance.info.get("token"):
        print(f"New token written to {path}; the running greyproxy has API authentication off "
              "(api.auth: none) and uses it only once that is turned on.", file=sys.stderr)
        return 0
    try:
        os.kill(pid, signal.SIGHUP)  # the reload re-reads the token file (reload.py)
    except ProcessLookupError:
        print(f"New token written to {path} (the handshake names pid {pid}, which is gone).", file=sys.stderr)
        return 0
    except PermissionError:
        return err(f"token written to {path}, but greyproxy (pid {pid}) runs as another user: "
                   f"reload it (`systemctl reload greyproxy` or `kill -HUP {pid}`) to use the new token")
    for _ in range(100):  # up to 5 s for the reload to rewrite the handshake
        try:
            if json.loads(instance.handshake.read_text()).get("token") == token:
                print(f"The running greyproxy (pid {pid}) now accepts only the new token; "
                      "dashboards must log in again.", file=sys.stderr)
                return 0
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return err(f"token written to {path}, but greyproxy (pid {pid}) did not confirm the reload within 5 s")


# -- audit verify ------------------------------------------------------------------------------
AUDIT_COLUMNS = "id, timestamp, actor, kind, target, before, after, prev_hash, hash"


def cmd_audit(args: argparse.Namespace) -> int:
    """Walk the audit log's hash chain in the database file itself (also while greyproxy runs:
    WAL lets a reader in), so a tampered log is found even when the API is not reachable.
    In fleet mode (database.url / GREYPROXY_DATABASE_URL) the one chain in PostgreSQL."""
    config = config_of(args)
    if config.database_url:
        return _audit_postgres(config.database_url)
    path = config.db_path
    if not path.exists():
        return err(f"no database at {path}")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            count, problem = verify(db.execute(f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id"))
    except sqlite3.Error as exc:
        return err(f"cannot read the audit log in {path}: {exc}")
    if problem is not None:
        print(f"audit log BROKEN: {problem} ({count} entries before it are intact)", file=sys.stderr)
        return 1
    print(f"audit log intact: {count} entr{'y' if count == 1 else 'ies'}, each linked to the one before")
    return 0


def _audit_postgres(url: str) -> int:
    import psycopg2

    from greyproxy.store.postgres import connect_params, safe_url

    try:
        conn = psycopg2.connect(**connect_params(url))
        try:
            conn.set_session(readonly=True)
            with conn.cursor() as cur:
                cur.execute(f"SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id")
                count, problem = verify(cur)
        finally:
            conn.close()
    except (psycopg2.Error, ValueError) as exc:
        return err(f"cannot read the audit log in {safe_url(url)}: {str(exc).strip()}")
    if problem is not None:
        print(f"audit log BROKEN: {problem} ({count} entries before it are intact)", file=sys.stderr)
        return 1
    print(f"audit log intact: {count} entr{'y' if count == 1 else 'ies'}, each linked to the one before")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="is greyproxy running: ports, rules, pending, health")
    add_common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)

    rules = sub.add_parser("rules", help="export or import rules as YAML, or test which rule decides")
    verbs = rules.add_subparsers(dest="rules_command", required=True)
    p = verbs.add_parser("export", help="write global rules (not built-in or session ones) as YAML")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    add_common(p)
    p = verbs.add_parser("import", help="add the rules of a YAML file (identical rules are skipped)")
    p.add_argument("file", help="YAML file, or - for stdin")
    add_common(p)
    p = verbs.add_parser("test", help="which rule decides a connection, or a request, and why")
    p.add_argument("container", help="the container (proxy user name) asking")
    p.add_argument("url", help="https://host[:port][/path], or host[:port]")
    p.add_argument("method", nargs="?", help="HTTP method: judge the request (default: the connection, "
                   "or GET when the URL has a path)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    add_common(p)
    rules.set_defaults(func=cmd_rules)

    token = sub.add_parser("token", help="show or rotate the API token")
    verbs = token.add_subparsers(dest="token_command", required=True)
    p = verbs.add_parser("show", help="print the API token")
    p.add_argument("--url", action="store_true", help="print the running dashboard's login URL instead")
    add_common(p)
    p = verbs.add_parser("rotate", help="write a new API token; a running greyproxy switches to it at once")
    add_common(p)
    token.set_defaults(func=cmd_token)

    audit = sub.add_parser("audit", help="check the audit log")
    verbs = audit.add_subparsers(dest="audit_command", required=True)
    add_common(verbs.add_parser("verify", help="walk the hash chain; exit 1 at the first broken link"))
    audit.set_defaults(func=cmd_audit)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return err(str(exc))
