"""The operating system's trust store: is the greyproxy CA in it, and the exact commands that
add or remove it (`greyproxy cert install|uninstall`).

Nothing here runs a command by itself; the CLI prints the plan, asks, then runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TRUST_FILE_NAME = "greyproxy-ca.crt"
# Debian/Ubuntu/Alpine (update-ca-certificates), Arch (p11-kit trust anchors), Fedora/RHEL.
DEBIAN_DIR = Path("/usr/local/share/ca-certificates")
ARCH_DIR = Path("/etc/ca-certificates/trust-source/anchors")
FEDORA_DIR = Path("/etc/pki/ca-trust/source/anchors")
LINUX_DIRS = (DEBIAN_DIR, ARCH_DIR, FEDORA_DIR)
MACOS_KEYCHAIN = "/Library/Keychains/System.keychain"
MACOS_CA_NAME = "Greyproxy CA"


class TrustError(RuntimeError):
    """No supported trust store on this system; the message says what to do by hand."""


@dataclass(frozen=True)
class TrustPlan:
    """What `cert install` / `cert uninstall` will do, step by step, for the user to read."""

    summary: str
    commands: list[list[str]] = field(default_factory=list)

    def with_sudo(self) -> TrustPlan:
        """Prefix every command with sudo unless we already are root."""
        if os.geteuid() == 0:
            return self
        if shutil.which("sudo") is None:
            raise TrustError("changing the system trust store needs root, and sudo is not installed")
        return TrustPlan(self.summary, [["sudo", *c] for c in self.commands])


def installed_path() -> Path | None:
    """Where our certificate sits in a Linux trust-store directory, if it does."""
    for directory in LINUX_DIRS:
        path = directory / TRUST_FILE_NAME
        if path.exists():
            return path
    return None


def is_installed() -> bool:
    if sys.platform == "darwin":
        try:
            done = subprocess.run(
                ["security", "find-certificate", "-c", MACOS_CA_NAME, MACOS_KEYCHAIN],
                capture_output=True, timeout=5, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    return installed_path() is not None


def install_plan(cert_path: Path) -> TrustPlan:
    if sys.platform == "darwin":
        return TrustPlan(
            f"add {cert_path} to the System keychain as a trusted root for TLS",
            [["security", "add-trusted-cert", "-d", "-r", "trustRoot", "-k", MACOS_KEYCHAIN, str(cert_path)]],
        )
    if sys.platform.startswith("linux"):
        if shutil.which("update-ca-trust"):
            directory = FEDORA_DIR if FEDORA_DIR.is_dir() else ARCH_DIR
            dest = directory / TRUST_FILE_NAME
            return TrustPlan(
                f"copy {cert_path} to {dest} and rebuild the system CA bundle (update-ca-trust)",
                [["install", "-D", "-m", "0644", str(cert_path), str(dest)], ["update-ca-trust"]],
            )
        if shutil.which("update-ca-certificates"):
            dest = DEBIAN_DIR / TRUST_FILE_NAME
            return TrustPlan(
                f"copy {cert_path} to {dest} and rebuild the system CA bundle (update-ca-certificates)",
                [["install", "-D", "-m", "0644", str(cert_path), str(dest)], ["update-ca-certificates"]],
            )
    raise TrustError(
        f"no supported trust store tool found (update-ca-certificates, update-ca-trust, macOS security); "
        f"add {cert_path} to your system's or browser's trusted roots by hand"
    )


def uninstall_plan() -> TrustPlan:
    if sys.platform == "darwin":
        return TrustPlan(
            f"remove '{MACOS_CA_NAME}' from the System keychain",
            [["security", "delete-certificate", "-c", MACOS_CA_NAME, MACOS_KEYCHAIN]],
        )
    path = installed_path()
    if path is None:
        raise TrustError("the greyproxy CA is not in the system trust store")
    rebuild = ["update-ca-certificates", "--fresh"] if path.parent == DEBIAN_DIR else ["update-ca-trust"]
    return TrustPlan(
        f"delete {path} and rebuild the system CA bundle ({rebuild[0]})",
        [["rm", "-f", str(path)], rebuild],
    )
