"""`greyproxy install|uninstall` and `greyproxy service ...` (docs/decisions.md#operations): a user-level install.

`install` puts a launcher at ~/.local/bin/greyproxy (a two-line script that runs this Python
with `-m greyproxy`: a Python package cannot copy itself like a single binary), writes the
systemd user unit, makes sure the interception CA exists, offers to add it to the system trust
store, and starts the service. It first prints every step and asks (`-f` skips the question).
Without systemctl it does the rest and prints the commands to run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from greyproxy.ca.authority import ca_paths, generate_ca
from greyproxy.cli_cert import CONSENT, _ask
from greyproxy.cli_ops import add_common, config_of, err
from greyproxy.config import ConfigError
from greyproxy.trust import TrustError, install_plan, is_installed, uninstall_plan

UNIT_NAME = "greyproxy.service"
LAUNCHER_MARK = "# greyproxy launcher, written by `greyproxy install`"
SYSTEMCTL_TIMEOUT = 60.0

USER_UNIT = """\
# greyproxy as a systemd user service: `greyproxy service install` writes this file to
# ~/.config/systemd/user/greyproxy.service (systemd/greyproxy-user.service is the same text).
[Unit]
Description=greyproxy egress firewall proxy for AI agents
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# SIGTERM drains open connections for drain_seconds (default 5) before exiting.
KillMode=mixed
TimeoutStopSec=30
NoNewPrivileges=yes

[Install]
WantedBy=default.target
"""


def home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def launcher_path() -> Path:
    return home() / ".local" / "bin" / "greyproxy"


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def user_unit(exec_start: str) -> str:
    return USER_UNIT.format(exec_start=exec_start)


def launcher_text() -> str:
    return f"#!/bin/sh\n{LAUNCHER_MARK}\nexec {shlex.quote(sys.executable)} -m greyproxy \"$@\"\n"


def is_our_launcher(path: Path) -> bool:
    try:
        return not path.is_symlink() and LAUNCHER_MARK in path.read_text(errors="replace")[:500]
    except OSError:
        return False


def exec_start(config_path: str | None) -> str:
    """The service's command: the launcher if there is one, else whatever runs us now."""
    if launcher_path().exists():
        command = "%h/.local/bin/greyproxy serve"
    elif shutil.which("greyproxy"):
        command = f"{shutil.which('greyproxy')} serve"
    else:
        command = f"{sys.executable} -m greyproxy serve"
    if config_path:
        command += f" -C {Path(config_path).resolve()}"  # absolute: the service runs from /
    return command


# -- systemctl -----------------------------------------------------------------------------
def systemctl(*args: str, check: bool = True) -> int | None:
    """`systemctl --user ARGS`; None when systemctl is not installed."""
    command = shutil.which("systemctl")
    if command is None:
        return None
    try:
        done = subprocess.run([command, "--user", *args], check=False, timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"greyproxy: systemctl --user {' '.join(args)} failed: {exc}", file=sys.stderr)
        return 1
    if check and done.returncode != 0:
        print(f"greyproxy: `systemctl --user {' '.join(args)}` exited with {done.returncode}", file=sys.stderr)
    return done.returncode


@dataclass
class Plan:
    steps: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.steps.append(text)

    def show(self, title: str) -> None:
        print(title)
        for i, step in enumerate(self.steps, 1):
            print(f"  {i}. {step}")


# -- install / uninstall -----------------------------------------------------------------
def cmd_install(args: argparse.Namespace) -> int:
    config = config_of(args)
    launcher, unit = launcher_path(), unit_path()
    have_systemctl = shutil.which("systemctl") is not None
    cert_path, key_path = ca_paths(config.data_dir)
    plan = Plan()
    if launcher.is_symlink():
        plan.add(f"keep {launcher} (a symlink: another tool manages it)")
    else:
        plan.add(f"{'replace' if launcher.exists() else 'write'} {launcher} (0755), which runs "
                 f"`{sys.executable} -m greyproxy`")
    plan.add(f"write the systemd user unit {unit} (runs `greyproxy serve`, restarts it on failure)")
    if not cert_path.exists():
        plan.add(f"generate the interception CA in {config.data_dir} (ca-cert.pem 0644, ca-key.pem 0600)")
    trust_commands: list[list[str]] = []
    if args.no_trust:
        plan.add("not touch the system trust store (--no-trust; later: `greyproxy cert install`)")
    elif is_installed():
        plan.add("leave the system trust store as it is (the greyproxy CA is already in it)")
    else:
        try:
            trust = install_plan(cert_path).with_sudo()
            trust_commands = trust.commands
            plan.add(f"trust the CA system-wide (what `greyproxy cert install` does): {trust.summary}, running "
                     + "; ".join(f"`{shlex.join(c)}`" for c in trust.commands))
        except TrustError as exc:
            plan.add(f"not trust the CA automatically ({exc})")
    if have_systemctl:
        plan.add("run `systemctl --user daemon-reload` and `systemctl --user enable --now greyproxy.service`")
    else:
        plan.add("not start anything: systemctl is not installed (the commands to run are printed at the end)")
    plan.show("greyproxy install will:")
    if trust_commands:
        print(CONSENT.format(key=key_path))
    if not args.force and not _ask("Proceed? [y/N] "):
        print("Nothing changed.")
        return 1

    try:
        if not launcher.is_symlink():
            launcher.parent.mkdir(parents=True, exist_ok=True)
            tmp = launcher.with_suffix(".tmp")
            tmp.write_text(launcher_text())
            os.chmod(tmp, 0o755)
            os.replace(tmp, launcher)
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(user_unit(exec_start(None)))
        if not cert_path.exists():
            generate_ca(config.data_dir)
            print(f"CA generated: {cert_path}")
    except OSError as exc:
        return err(f"install failed: {exc}")
    if trust_commands:
        for command in trust_commands:
            try:
                code = subprocess.run(command, check=False).returncode
            except OSError as exc:
                code = 127
                print(f"greyproxy: cannot run {command[0]}: {exc}", file=sys.stderr)
            if code != 0:
                print("The CA is not trusted yet; run `greyproxy cert install` later to do it.")
                break
    return _enable(have_systemctl, launcher)


def _enable(have_systemctl: bool, launcher: Path) -> int:
    path_dirs = os.environ.get("PATH", "").split(os.pathsep)
    if str(launcher.parent) not in path_dirs:
        print(f"Note: {launcher.parent} is not on your PATH; add it to run `greyproxy` by name.")
    if not have_systemctl:
        print("Start it with:\n  systemctl --user daemon-reload && systemctl --user enable --now greyproxy.service")
        print(f"or run it in the foreground: {launcher} serve")
        return 0
    if systemctl("daemon-reload") or systemctl("enable", "--now", UNIT_NAME):
        return err("the unit is written but could not be started; see `systemctl --user status greyproxy`")
    print("greyproxy is installed and running; `greyproxy status` shows its ports and health.")
    print("The dashboard URL (with its token) is printed by `journalctl --user -u greyproxy | grep Dashboard`.")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    config = config_of(args)
    launcher, unit = launcher_path(), unit_path()
    have_systemctl = shutil.which("systemctl") is not None
    plan = Plan()
    if have_systemctl:
        plan.add("run `systemctl --user disable --now greyproxy.service`")
    if unit.exists():
        plan.add(f"delete {unit}")
    if is_our_launcher(launcher):
        plan.add(f"delete {launcher}")
    elif launcher.exists() or launcher.is_symlink():
        plan.add(f"keep {launcher} (not written by `greyproxy install`)")
    trust_commands: list[list[str]] = []
    if is_installed():
        try:
            trust = uninstall_plan().with_sudo()
            trust_commands = trust.commands
            plan.add(f"remove the CA from the system trust store: {trust.summary}")
        except TrustError as exc:
            plan.add(f"leave the system trust store as it is ({exc})")
    plan.add(f"keep the data directory {config.data_dir} (rules, logs, CA); delete it by hand if you want")
    plan.show("greyproxy uninstall will:")
    if not args.force and not _ask("Proceed? [y/N] "):
        print("Nothing changed.")
        return 1
    if have_systemctl:
        systemctl("disable", "--now", UNIT_NAME, check=False)
    try:
        unit.unlink(missing_ok=True)
        if is_our_launcher(launcher):
            launcher.unlink()
    except OSError as exc:
        return err(f"uninstall failed: {exc}")
    if have_systemctl:
        systemctl("daemon-reload", check=False)
    for command in trust_commands:
        try:
            if subprocess.run(command, check=False).returncode != 0:
                print("The CA is still trusted; `greyproxy cert uninstall` removes it.")
                break
        except OSError as exc:
            print(f"greyproxy: cannot run {command[0]}: {exc}", file=sys.stderr)
            break
    print("greyproxy is uninstalled.")
    return 0


# -- service -------------------------------------------------------------------------------
def cmd_service(args: argparse.Namespace) -> int:
    verb = args.service_command
    unit = unit_path()
    if verb == "install":
        text = user_unit(exec_start(args.config))
        try:
            unit.parent.mkdir(parents=True, exist_ok=True)
            unit.write_text(text)
        except OSError as exc:
            return err(f"cannot write {unit}: {exc}")
        print(f"wrote {unit}")
        if systemctl("daemon-reload") is None:
            print("systemctl is not installed; with systemd: systemctl --user daemon-reload && "
                  "systemctl --user enable greyproxy.service")
            return 0
        if systemctl("enable", UNIT_NAME):
            return 1
        print("enabled; start it with `greyproxy service start`")
        return 0
    if shutil.which("systemctl") is None:
        return err("systemctl is not installed: the service commands need systemd")
    if verb == "uninstall":
        systemctl("disable", "--now", UNIT_NAME, check=False)
        unit.unlink(missing_ok=True)
        systemctl("daemon-reload", check=False)
        print(f"removed {unit}")
        return 0
    if verb == "status":
        command = shutil.which("systemctl")
        assert command is not None
        try:
            done = subprocess.run([command, "--user", "is-active", UNIT_NAME], capture_output=True, text=True,
                                  timeout=SYSTEMCTL_TIMEOUT, check=False)
            state = done.stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired):
            state = "unknown"
        label = {"active": "running", "inactive": "stopped", "failed": "stopped (failed)"}.get(state, state)
        print(label)
        return 0 if state == "active" else 3
    return 1 if systemctl(verb, UNIT_NAME) else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for name, text in (("install", "install for this user: launcher, systemd user service, CA (asks first)"),
                       ("uninstall", "undo `greyproxy install` (asks first; the data directory is kept)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-f", "--force", action="store_true", help="do not ask")
        if name == "install":
            p.add_argument("--no-trust", action="store_true", help="do not add the CA to the system trust store")
        add_common(p)
        p.set_defaults(func=cmd_install if name == "install" else cmd_uninstall)
    service = sub.add_parser("service", help="manage the systemd user service")
    verbs = service.add_subparsers(dest="service_command", required=True)
    for verb in ("install", "uninstall", "start", "stop", "restart", "status"):
        p = verbs.add_parser(verb, help=f"{verb} the greyproxy user service")
        if verb == "install":
            p.add_argument("-C", "--config", help="YAML file the service runs with (made absolute)")
    service.set_defaults(func=cmd_service)


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return err(str(exc))

