"""SIGHUP: read the configuration again and apply what can change while running.

Nothing is rebound and no connection is touched: listeners, held connections and open tunnels
carry on. Each changed key is either applied at once or reported as needing a restart (and
then keeps its old value, so the running process never half-applies a key):

- applied: log level/format, DNS upstream and policy, rules files (re-read even when their
  list is unchanged), hold_seconds, blocked_message, enforce_expiry_on_open,
  guard.private_ranges, identity.anonymous, retention, docker, container_modes, the YAML defaults of settings
  (notifications, mitm) where settings.json does not override them, mitm.extra_ca_bundle,
  drain_seconds, and middlewares (an unchanged one keeps its process or connection);
- restart needed: host, listen.*, data_dir, database.url, api.*, silent_allow.

The API token file is read again too (`greyproxy token rotate` writes it, then signals), and
the CA files (as before). A config that does not load is reported and nothing changes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from greyproxy import sdnotify
from greyproxy.config import Config, ConfigError, build_config
from greyproxy.logsetup import setup_logging
from greyproxy.policy.decide import ModeEntry
from greyproxy.proxy.dns import without_own_address
from greyproxy.proxy.dnsupstream import system_servers
from greyproxy.rulesyaml import RuleEntry, RulesFileError, parse_rules
from greyproxy.services.maintenance import RetentionPolicy
from greyproxy.services.policy_state import RuleChange
from greyproxy.services.rules import NewRule, RuleService

if TYPE_CHECKING:
    from greyproxy.ca.state import MitmState
    from greyproxy.events import Bus
    from greyproxy.metrics import Metrics
    from greyproxy.middleware import MiddlewareEngine
    from greyproxy.proxy.dns import DnsService
    from greyproxy.proxy.dnsupstream import Upstream
    from greyproxy.proxy.docker import DockerResolver
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.tracker import ConnectionTracker
    from greyproxy.services.maintenance import Retention
    from greyproxy.services.modes import ModeService
    from greyproxy.services.settings import SettingsStore

log = logging.getLogger("greyproxy")

RULES_FILE_CREATOR = "rules-file"  # created_by of rules that come from `rules_files:`
# Keys whose new value only a restart can apply (a prefix covers its sub-keys).
RESTART_KEYS = ("host", "listen", "data_dir", "database", "api", "silent_allow", "workers")
MAX_RULES_FILE_BYTES = 16 * 1024 * 1024


@dataclass
class ReloadReport:
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rules: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "applied": self.applied, "restart_required": self.restart_required,
                "unsupported": self.unsupported, "errors": self.errors, "rules": self.rules}


def flatten(raw: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """('dns.upstream', [...]) pairs: nested mappings become dotted keys; lists stay whole."""
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        else:
            yield name, value


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _needs_restart(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESTART_KEYS)


# -- rules files ---------------------------------------------------------------------------
def read_rules_files(paths: tuple[Path, ...]) -> tuple[list[RuleEntry], int]:
    """Every entry of every file (first one wins on duplicates); RulesFileError names the file."""
    entries: dict[tuple[str, ...], RuleEntry] = {}
    expired = 0
    for path in paths:
        try:
            if path.stat().st_size > MAX_RULES_FILE_BYTES:
                raise RulesFileError(f"{path}: larger than {MAX_RULES_FILE_BYTES} bytes")
            text = path.read_text()
        except OSError as exc:
            raise RulesFileError(f"cannot read rules file {path}: {exc.strerror or exc}") from None
        found, skipped = parse_rules(text, str(path))
        expired += skipped
        for entry in found:
            entries.setdefault(entry.key, entry)
    return list(entries.values()), expired


def sync_rules_files(rules: RuleService, paths: tuple[Path, ...]) -> dict[str, int]:
    """Make the rules created from files equal to what the files say now: new entries are
    added (an identical rule made by hand counts as present), entries gone from the files are
    deleted (which also ends the connections they allowed). All files are read and checked
    before anything changes."""
    from greyproxy.store.models import Rule

    entries, expired = read_rules_files(paths)
    wanted = {e.key: e for e in entries}
    current = {
        (r.container_pattern, r.destination_pattern, r.port_pattern, r.action, r.method_pattern or "",
         r.path_pattern or ""): r.id
        for r in Rule.select(Rule.id, Rule.container_pattern, Rule.destination_pattern, Rule.port_pattern,
                             Rule.action, Rule.method_pattern, Rule.path_pattern)
        .where(Rule.created_by == RULES_FILE_CREATOR)
    }
    removed = 0
    for key, rule_id in current.items():
        if key not in wanted and rules.delete(rule_id):
            removed += 1
    new = [
        NewRule(e.container_pattern, e.destination_pattern, e.port_pattern, e.action,
                expires_in_seconds=item.get("expires_in_seconds"), notes=e.notes, created_by=RULES_FILE_CREATOR,
                method_pattern=e.method_pattern, path_pattern=e.path_pattern)
        for e in entries if e.key not in current
        for item in (e.ingest_item(),)
    ]
    added, present = rules.ingest(new) if new else (0, 0)
    return {"files": len(paths), "rules": len(entries), "added": added, "removed": removed,
            "already_present": present + (len(entries) - len(new)), "expired_skipped": expired}


# -- the reloader ----------------------------------------------------------------------------
class ReloadHost(Protocol):
    """What a reload changes on the composition root itself: the configuration the components
    read at each use, the API token (and the handshake file naming it), and the parts the root
    builds from the configuration (the Docker resolver) or after binding (the DNS service)."""

    config: Config
    api_token: str | None
    docker: DockerResolver | None
    dns: DnsService | None
    ports: dict[str, int | None]

    def write_handshake(self) -> None: ...

    def status_line(self) -> str: ...

    def build_docker_resolver(self, config: Config) -> DockerResolver | None: ...

    def apply_settings(self, values: dict[str, Any]) -> None: ...

    def policy_changed(self, change: RuleChange | None = None) -> None: ...


class Reloader:
    def __init__(self, host: ReloadHost, load: Callable[[], Config], *, metrics: Metrics, bus: Bus, mitm: MitmState,
                 rules: RuleService, dns_upstream: Upstream, tracker: ConnectionTracker, guard: ControlPlaneGuard,
                 retention: Retention, modes: ModeService, settings: SettingsStore,
                 middlewares: MiddlewareEngine) -> None:
        self.host = host
        self.load = load
        self.metrics = metrics
        self.bus = bus
        self.mitm = mitm
        self.rules = rules
        self.dns_upstream = dns_upstream
        self.tracker = tracker
        self.guard = guard
        self.retention = retention
        self.modes = modes
        self.settings = settings
        self.middlewares = middlewares
        self.last: ReloadReport | None = None

    def reload(self, data_path_only: bool = False) -> ReloadReport:
        """`data_path_only`: a worker process (docs/workers.md) re-reads the same file after the
        control plane did; the API token and the rules files are the control plane's business."""
        sdnotify.notify("RELOADING=1\nSTATUS=reloading configuration")
        report = ReloadReport()
        try:
            self._reload(report, data_path_only)
        except Exception as exc:  # a reload must never take the running proxy down
            log.exception("reload failed")
            report.errors.append(f"reload failed: {exc}")
        self.last = report
        self._log(report)
        self.metrics.reloads.labels("ok" if report.ok else "error").inc()
        self.bus.publish("config.reloaded", report.to_json())
        sdnotify.notify("READY=1\nSTATUS=" + self.host.status_line())
        return report

    def _log(self, report: ReloadReport) -> None:
        log.info("reload: applied %s", ", ".join(report.applied) or "nothing (no change)")
        if report.restart_required:
            log.warning("reload: changed but only applied after a restart: %s", ", ".join(report.restart_required))
        if report.unsupported:
            log.warning("reload: changed but not supported by this build: %s", ", ".join(report.unsupported))
        for error in report.errors:
            log.error("reload: %s", error)

    def _reload(self, report: ReloadReport, data_path_only: bool = False) -> None:
        host = self.host
        if not data_path_only:
            self._reload_token(report)
        self.mitm.reload()  # the CA files, as a SIGHUP always did
        try:
            new = self.load()
        except ConfigError as exc:
            report.errors.append(f"configuration not reloaded: {exc}")
            return
        old = host.config
        old_flat, new_flat = dict(flatten(old.raw)), dict(flatten(new.raw))
        changed = sorted(k for k in new_flat if new_flat[k] != old_flat.get(k))
        effective = copy.deepcopy(new.raw)
        for key in changed:
            if _needs_restart(key):
                report.restart_required.append(key)
                _set(effective, key, old_flat.get(key))
        try:
            config = build_config(effective, ignored=new.ignored, source=new.source)
        except ConfigError as exc:
            report.errors.append(f"configuration not reloaded: {exc}")
            return
        # Rules files first: a bad file stops the reload before any other key changes.
        try:
            if not data_path_only:
                report.rules = sync_rules_files(self.rules, config.rules_files)
            if config.rules_files or old.rules_files:
                report.applied.append("rules_files")
        except RulesFileError as exc:
            report.errors.append(str(exc))
            return
        host.config = config
        live = [k for k in changed if not _needs_restart(k)]
        for section, apply in self._appliers().items():
            keys = [k for k in live if k == section or k.startswith(section + ".")]
            if not keys:
                continue
            if apply(old, config):
                report.applied.extend(keys)
            else:
                report.unsupported.extend(keys)
        # Keys read from the config at each use (hold_seconds, blocked_message, ...) apply as is.
        handled = tuple(self._appliers())
        report.applied.extend(
            k for k in live if not any(k == s or k.startswith(s + ".") for s in handled) and k != "rules_files"
        )

    def _reload_token(self, report: ReloadReport) -> None:
        host = self.host
        if host.api_token is None:
            return
        path = host.config.data_dir / "api-token"
        try:
            token = path.read_text().strip()
        except OSError as exc:
            report.errors.append(f"cannot read {path}: {exc.strerror or exc}; the API token is unchanged")
            return
        if len(token) < 16:
            report.errors.append(f"{path} holds no usable token (at least 16 characters); unchanged")
            return
        if token != host.api_token:
            host.api_token = token
            host.write_handshake()
            report.applied.append("api_token")

    # -- one function per section; True = applied ----------------------------------------
    def _appliers(self) -> dict[str, Callable[[Config, Config], bool]]:
        return {
            "log": self._log_settings,
            "dns": self._dns,
            "docker": self._docker,
            "enforce_expiry_on_open": self._expiry,
            "guard": self._guard,
            "retention": self._retention,
            "container_modes": self._modes,
            "notifications": self._settings_defaults,
            "mitm.enabled": self._settings_defaults,
            "mitm.bypass": self._settings_defaults,
            "middlewares": self._middlewares,
        }

    def _log_settings(self, _old: Config, new: Config) -> bool:
        setup_logging(new.log_level, new.log_format)
        return True

    def _dns(self, _old: Config, new: Config) -> bool:
        host = self.host
        servers = list(new.dns_upstream or system_servers())
        dns_addr = new.listen["dns"]
        self.dns_upstream.servers = without_own_address(servers, dns_addr, host.ports.get("dns") or dns_addr.port)
        if host.dns is not None:
            host.dns.answerer.mode = new.dns_policy
        return True

    def _docker(self, _old: Config, new: Config) -> bool:
        self.host.docker = self.host.build_docker_resolver(new)
        return True

    def _expiry(self, _old: Config, new: Config) -> bool:
        self.tracker.enforce_expiry = new.enforce_expiry_on_open
        return True

    def _guard(self, _old: Config, new: Config) -> bool:
        self.guard.deny_private = new.guard_private_ranges == "deny"
        return True

    def _retention(self, _old: Config, new: Config) -> bool:
        try:
            self.retention.policy = RetentionPolicy.from_config(new.raw["retention"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return True

    def _modes(self, _old: Config, new: Config) -> bool:
        modes = new.container_modes
        self.modes.from_config = tuple(
            ModeEntry(id=i - len(modes), container_pattern=c, mode=m) for i, (c, m) in enumerate(modes)
        )
        self.host.policy_changed()
        return True

    def _settings_defaults(self, _old: Config, new: Config) -> bool:
        """The YAML gives settings their defaults; a value saved in settings.json still wins."""
        store = self.settings
        store.defaults["notificationsEnabled"] = bool(new.raw["notifications"]["enabled"])
        store.defaults["mitmEnabled"] = new.mitm_enabled
        store.defaults["mitmBypass"] = [str(p) for p in (new.raw["mitm"].get("bypass") or [])]
        self.host.apply_settings(store.values())
        return True

    def _middlewares(self, _old: Config, new: Config) -> bool:
        self.middlewares.reload(list(new.middlewares))  # unchanged ones keep their connection
        return True

