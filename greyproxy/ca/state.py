"""The interception state the listeners consult: the CA, its leaf cache, the runtime toggle
and the bypass list. Reloads when the CA files change (watcher) or on request."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from pathlib import Path

import gevent

from greyproxy.ca.authority import CAExists, CertificateAuthority, ca_mtime, ca_status, generate_ca, load_ca
from greyproxy.ca.leaf import LeafCache
from greyproxy.events import Bus

log = logging.getLogger("greyproxy.mitm")


class MitmState:
    def __init__(self, data_dir: Path, bus: Bus, enabled: bool, bypass: Iterable[str] = (),
                 extra_ca_bundle: str | None = None) -> None:
        self.data_dir = data_dir
        self.bus = bus
        self.enabled = enabled
        self.bypass: tuple[str, ...] = tuple(p.lower() for p in bypass)
        self.extra_ca_bundle = extra_ca_bundle
        self.ca: CertificateAuthority | None = None
        self.leaves: LeafCache | None = None
        self._watcher: gevent.Greenlet | None = None
        self.reload()

    def is_bypassed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(
            host == p or fnmatch.fnmatchcase(host, p) or (p.startswith("*.") and host == p[2:]) for p in self.bypass
        )

    def set_bypass(self, patterns: Iterable[str]) -> None:
        self.bypass = tuple(p.strip().lower() for p in patterns if p.strip())

    def reload(self, force: bool = False) -> bool:
        """Load the CA again if its files changed; True when a new CA is in use."""
        mtime = ca_mtime(self.data_dir)
        if mtime is None:
            changed = self.ca is not None
            self.ca, self.leaves = None, None
            return changed
        if not force and self.ca is not None and mtime <= self.ca.loaded_mtime:
            return False
        try:
            ca = load_ca(self.data_dir)
        except (OSError, ValueError) as exc:
            log.error("cannot load the CA from %s: %s", self.data_dir, exc)
            return False
        self.ca = ca
        self.leaves = LeafCache(ca) if ca is not None else None
        log.info("MITM CA loaded: %s", ca.cert.subject.rfc4514_string() if ca else None)
        return True

    def ensure(self) -> bool:
        """First start: generate the CA when the data dir has neither file, so interception,
        credential substitution and the SNI check work out of the box (docs/design.md). A
        lone or broken file is never overwritten (load errors are logged). True if generated."""
        if ca_mtime(self.data_dir) is not None:
            return False
        try:
            self.generate()
        except CAExists:  # one of the two files exists: leave it to `greyproxy cert generate --force`
            return False
        log.info("generated the interception CA in %s", self.data_dir)
        return True

    def generate(self, force: bool = False) -> CertificateAuthority:
        ca = generate_ca(self.data_dir, force=force)
        self.reload(force=True)
        return ca

    def status(self, installed: bool = False) -> dict:
        return ca_status(self.data_dir, self.ca, installed)

    def watch(self, interval: float = 1.0) -> None:
        """Pick up a regenerated CA without a restart (the files' mtime is polled)."""

        def loop() -> None:
            while True:
                gevent.sleep(interval)
                if self.reload():
                    self.bus.publish("cert.reloaded", self.status())

        self._watcher = gevent.spawn(loop)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.kill(block=False)
