"""Command line: `greyproxy serve` here; the other verbs live in small modules (cli_cert: the CA,
cli_ops: status / rules / token, cli_install: install / uninstall / service)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from greyproxy import __version__, cli_cert, cli_install, cli_ops, gcpolicy
from greyproxy.logsetup import setup_logging

if TYPE_CHECKING:
    from greyproxy.runtime import Runtime


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the proxy, DNS and API listeners in the foreground")
    p.add_argument("-C", "--config", help="YAML configuration file")
    p.add_argument("--host", help="bind address for listeners given as ':PORT'")
    for name in ("http", "socks5", "dns", "api"):
        p.add_argument(f"--listen-{name}", metavar="ADDR", help=f"{name} listener address (':0' = any free port)")
    p.add_argument("--data-dir", help="data directory (default: $GREYPROXY_DATA_HOME or ~/.local/share/greyproxy)")
    p.add_argument("--database-url", help="database URL (default: SQLite in the data dir)")
    p.add_argument("--workers", metavar="N",
                   help="data-path processes sharing the proxy ports ('auto': one per core, at most 8; "
                        "1: one process does everything); docs/workers.md")
    p.add_argument("--hold-seconds", type=float, help="how long an unmatched connection is held (default 30)")
    p.add_argument("--silent-allow", action="store_true", help="start in silent allow-all mode until restart")
    p.add_argument("--no-auth", action="store_true", help="no API token (for greyproxy-era clients; unsafe)")
    p.add_argument("--middleware", action="append", metavar="URL",
                   help="a WebSocket middleware (ws://, wss://; http(s):// is rewritten); repeatable")
    p.add_argument("--middleware-cmd", action="append", metavar="CMD",
                   help="a stdio middleware command, split like a shell would (not run through one); repeatable")


def _raise_fd_limit() -> None:
    """Each proxied connection holds two sockets; the default soft limit (1024) is too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1_048_576), hard))
        except (ValueError, OSError):
            pass


def cmd_serve(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()

    from greyproxy.config import ConfigError, load_config
    from greyproxy.runtime import Runtime

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func")}
    try:
        config = load_config(args.config, flags=flags)
    except ConfigError as exc:
        print(f"greyproxy: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    _raise_fd_limit()
    gcpolicy.tune()
    log = logging.getLogger("greyproxy")
    for name in config.ignored:
        log.warning("config: '%s' is not used by greyproxy and was ignored", name)
    if config.api_auth == "none":
        log.warning("API authentication is OFF (api.auth: none): anyone who can reach the API controls the proxy")
    try:
        runtime = Runtime(config)
    except (OSError, ValueError) as exc:
        print(f"greyproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    # SIGHUP re-reads the same file with the same flags (flags still win over the file).
    runtime.reloader.load = lambda: load_config(args.config, flags=flags)

    def ready() -> None:
        ports = runtime.ports
        print(f"greyproxy {__version__}: data in {config.data_dir}", flush=True)
        print(f"  HTTP proxy   {config.listen['http'].host}:{ports['http']}", flush=True)
        print(f"  SOCKS5 proxy {config.listen['socks5'].host}:{ports['socks5']}", flush=True)
        print(f"  DNS          {config.listen['dns'].host}:{ports['dns']} (UDP+TCP, policy {config.dns_policy})",
              flush=True)
        print(f"  API          {config.listen['api'].host}:{ports['api']}", flush=True)
        print(f"  Dashboard    {_dashboard_line(runtime)}", flush=True)
        ca = runtime.mitm.ca
        for line in cli_cert.trust_lines(ca.cert_path if ca else None, runtime.ca_generated,
                                         ca is not None and cli_cert.trusted(ca)):
            print(line, flush=True)

    try:
        runtime.serve_forever(on_ready=ready)
    except OSError as exc:
        print(f"greyproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _dashboard_line(runtime: Runtime) -> str:
    """The login URL carries the API token: print it to a terminal, never into a log file
    or the journal, where whoever reads the logs would get control of the proxy."""
    url = runtime.dashboard_url
    if "?token=" not in url or sys.stdout.isatty():
        return url
    return f"{url.split('?', 1)[0]}  (log in with the URL `greyproxy token show --url` prints)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greyproxy", description="A policy-enforcing egress firewall proxy for sandboxed AI agents.")
    parser.add_argument("-V", "--version", action="version", version=f"greyproxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    _serve_parser(sub)
    cli_cert.add_parser(sub)
    cli_ops.add_parsers(sub)
    cli_install.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "cert":
        return cli_cert.cmd_cert(args)
    if args.command in ("status", "rules", "token", "audit"):
        return cli_ops.run(args)
    if args.command in ("install", "uninstall", "service"):
        return cli_install.run(args)
    parser.print_help()
    return 2
