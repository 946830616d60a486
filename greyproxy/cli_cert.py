"""`greyproxy cert generate|install|uninstall|reload` (how each client trusts the CA: docs/clients.md).

install / uninstall change what every program on the machine trusts, so they print exactly
what they will run and ask first (`-f` skips the question); sudo is used only when not root.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from greyproxy.ca.authority import CAExists, CertificateAuthority, ca_paths, generate_ca, load_ca
from greyproxy.config import ConfigError, load_config
from greyproxy.trust import TrustError, TrustPlan, install_plan, installed_path, is_installed, uninstall_plan

CONSENT = (
    "Every program that uses the system trust store will then accept certificates signed by this CA,\n"
    "which is what lets greyproxy inspect HTTPS traffic. Anyone holding the CA key can do the same:\n"
    "keep {key} private (it is readable by its owner only)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    cert = sub.add_parser("cert", help="manage the interception CA")
    verbs = cert.add_subparsers(dest="cert_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-C", "--config", help="YAML configuration file (for data_dir and the API address)")
        p.add_argument("--data-dir", help="data directory (default: $GREYPROXY_DATA_HOME or ~/.local/share/greyproxy)")

    p = verbs.add_parser("generate", help="create the CA (ca-cert.pem 0644, ca-key.pem 0600)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing CA")
    common(p)
    p = verbs.add_parser("install", help="add the CA to the system trust store (asks first)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask; install again if already installed")
    common(p)
    p = verbs.add_parser("uninstall", help="remove the CA from the system trust store (asks first)")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    common(p)
    p = verbs.add_parser("reload", help="make the running greyproxy load the CA files again")
    common(p)


def trusted(ca: CertificateAuthority) -> bool:
    """Whether this very CA (not an older one) is in the system trust store."""
    if sys.platform == "darwin":
        return is_installed()
    path = installed_path()
    try:
        return path is not None and path.read_bytes().strip() == ca.cert_pem.strip()
    except OSError:
        return False


def trust_lines(cert_path: Path | None, generated: bool, installed: bool) -> list[str]:
    """What `serve` prints about the CA at start: where it is and how a client trusts it."""
    if cert_path is None:
        return ["  CA           none: HTTPS is not intercepted (create one: greyproxy cert generate)"]
    state = "generated now" if generated else "in the system trust store" if installed else "in use"
    lines = [f"  CA           {cert_path} ({state}; its key beside it, mode 0600)"]
    if not installed:  # FILE: the path above (docs/clients.md says what each client shows)
        lines += [
            "               trust it: greyproxy cert install (the system store), or per tool, FILE = the path above:",
            "               SSL_CERT_FILE=FILE (Python ssl, httpx, aiohttp)  CURL_CA_BUNDLE=FILE (curl)",
            "               REQUESTS_CA_BUNDLE=FILE (requests)  NODE_EXTRA_CA_CERTS=FILE (Node)",
            "               GIT_SSL_CAINFO=FILE (git)  pip --cert FILE (or PIP_CERT=FILE)",
        ]
    return lines


def _err(message: str) -> int:
    print(f"greyproxy: {message}", file=sys.stderr)
    return 1


def _describe(ca: CertificateAuthority) -> str:
    expires = ca.cert.not_valid_after_utc.strftime("%Y-%m-%d")
    return f"{ca.cert.subject.rfc4514_string()}, valid until {expires}"


def _ask(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:  # no terminal (a script): no consent
        print()
        return False
    if not sys.stdin.isatty():
        print()  # a piped answer is not echoed; end the prompt's line
    return answer.strip().lower() in ("y", "yes")


def _run_plan(plan: TrustPlan, force: bool, action: str) -> int:
    try:
        plan = plan.with_sudo()
    except TrustError as exc:
        return _err(str(exc))
    print(f"greyproxy cert {action} will {plan.summary}, by running:")
    for command in plan.commands:
        print(f"  $ {shlex.join(command)}")
    if not force and not _ask("Proceed? [y/N] "):
        print("Nothing changed.")
        return 1
    for command in plan.commands:
        try:
            done = subprocess.run(command, check=False)
        except OSError as exc:
            return _err(f"cannot run {command[0]}: {exc}")
        if done.returncode != 0:
            return _err(f"`{shlex.join(command)}` failed (exit {done.returncode})")
    return 0


def cmd_generate(data_dir: Path, force: bool) -> int:
    was_installed = is_installed()
    try:
        ca = generate_ca(data_dir, force=force)
    except CAExists:
        cert_path, _ = ca_paths(data_dir)
        return _err(f"a CA already exists ({cert_path}); use -f to replace it")
    except OSError as exc:
        return _err(f"cannot write the CA to {data_dir}: {exc}")
    print(f"CA generated: {_describe(ca)}")
    print(f"  certificate {ca.cert_path} (0644)")
    print(f"  private key {ca.key_path} (0600)")
    if (data_dir / "api-handshake.json").exists():
        print("A running greyproxy picks up the new CA within a second; `greyproxy cert reload` confirms it.")
    if force and was_installed:
        print("The system trust store still holds the previous CA: run `greyproxy cert install -f`.")
    return 0


def cmd_install(data_dir: Path, force: bool) -> int:
    try:
        ca = load_ca(data_dir)
    except (OSError, ValueError) as exc:
        return _err(f"cannot read the CA in {data_dir}: {exc}")
    if ca is None:
        print("No CA yet: generating one.")
        ca = generate_ca(data_dir)
        print(f"CA generated: {_describe(ca)}")
    if is_installed() and not force:
        where = installed_path()
        return _err(f"the greyproxy CA is already in the system trust store{f' ({where})' if where else ''}; "
                    "use -f to install it again")
    try:
        plan = install_plan(ca.cert_path)
    except TrustError as exc:
        return _err(str(exc))
    print(f"CA: {_describe(ca)}")
    print(CONSENT.format(key=ca.key_path))
    status = _run_plan(plan, force, "install")
    if status == 0:
        print("Installed. Programs with their own trust store (Firefox, Node, Python requests, Java) need it added there too.")
    return status


def cmd_uninstall(force: bool) -> int:
    try:
        plan = uninstall_plan()
    except TrustError as exc:
        print(str(exc))
        return 0
    status = _run_plan(plan, force, "uninstall")
    if status == 0:
        print("Removed from the system trust store.")
    return status


def cmd_reload(data_dir: Path, api_host: str) -> int:
    handshake = data_dir / "api-handshake.json"
    try:
        info = json.loads(handshake.read_text())
        port = int(info["port"])
    except FileNotFoundError:
        return _err(f"greyproxy is not running (no {handshake}); start it with `greyproxy serve`")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _err(f"cannot read {handshake}: {exc}")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(api_host, api_host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/api/cert/reload"
    request = urllib.request.Request(url, data=b"", method="POST",
                                     headers={"Content-Type": "application/json", "X-Greyproxy-Client": "cli"})
    if info.get("token"):
        request.add_header("Authorization", f"Bearer {info['token']}")
    # Never through an environment proxy: this is a call to our own control plane.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=15) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        return _err(f"reload failed ({exc.code}): {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return _err(f"cannot reach greyproxy at {url}: {reason} (is it running?)")
    print(body.get("message", ""))
    status = body.get("certStatus") or {}
    if status.get("generated"):
        print(f"  {status.get('subject')}, expires {status.get('expiresAt')}")
    return 0


def cmd_cert(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, flags={"data_dir": args.data_dir})
    except ConfigError as exc:
        return _err(str(exc))
    data_dir = config.data_dir
    if args.cert_command == "generate":
        return cmd_generate(data_dir, args.force)
    if args.cert_command == "install":
        return cmd_install(data_dir, args.force)
    if args.cert_command == "uninstall":
        return cmd_uninstall(args.force)
    return cmd_reload(data_dir, config.listen["api"].host)
