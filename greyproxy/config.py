"""Configuration: embedded defaults < YAML file < environment < flags, into one frozen Config.

An unknown key or a bad value stops the start with a message naming the key.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from greyproxy.middleware.config import MiddlewareConfig, configs_from
from greyproxy.policy.durations import DurationError, parse_go_duration
from greyproxy.upstream_config import UpstreamConfig, parse_upstream

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "listen": {"http": ":43051", "socks5": ":43052", "dns": ":43053", "api": ":43080"},
    "data_dir": None,
    "database": {"url": None},
    # Fleet mode (docs/fleet.md): this node's id, and the credential key every node shares.
    "fleet": {"node_id": None, "credential_key_file": None},
    "hold_seconds": 30,
    "unanswered_seconds": 300,
    "silent_allow": False,
    "enforce_expiry_on_open": True,
    "api": {"auth": "token", "allowed_origins": [], "path_prefix": "/"},
    "mitm": {"enabled": True, "bypass": [], "extra_ca_bundle": None, "opaque": "allow", "generate_ca": True},
    "dns": {"upstream": [], "policy": "log"},
    "guard": {"private_ranges": "allow"},
    # A corporate proxy allowed traffic is chained through (docs/upstream-proxy.md); null = direct.
    "upstream": {"proxy_url": None, "bypass_hosts": [], "fail_open": False, "resolve": "local"},
    "identity": {"anonymous": "challenge"},
    "retention": {"logs_days": 30, "transactions_days": 7, "max_db_mb": 2048, "pending_ttl": "7d"},
    "notifications": {"enabled": True},
    "docker": {"enabled": False, "socket": "/var/run/docker.sock", "cache_ttl": "30s"},
    "container_modes": [],
    "rules_files": [],
    "middlewares": [],
    "log": {"level": "info", "format": "text"},
    "blocked_message": None,
    "drain_seconds": 5,
    "workers": "auto",
    # Limits against a hostile client (issue 13); see config/greyproxy.yml for what each means.
    "limits": {
        "head_seconds": 10,
        "idle_seconds": 60,
        "connections_per_address": 1000,
        "connections_total": 10000,
        "held_per_container": 256,
        "held_total": 4096,
        "requests_per_second": 200,
        "requests_burst": 400,
        "max_head_bytes": 65536,
        "max_headers": 200,
    },
}

LISTENERS = ("http", "socks5", "dns", "api")


class ConfigError(ValueError):
    """A configuration key is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """`limits:` (issue 13). Read at each use, so a reload (SIGHUP) applies them to new
    connections; only the listeners' pool size follows `connections_total` at start."""

    head_seconds: float = 10.0  # a whole request head / handshake, from its first byte
    idle_seconds: float = 60.0  # waiting for the first byte of a request
    connections_per_address: int = 1000  # HTTP and SOCKS5 listeners, each
    connections_total: int = 10000
    held_per_container: int = 256
    held_total: int = 4096
    requests_per_second: float = 200.0  # per container, plain HTTP proxy; 0 = off
    requests_burst: int = 400
    max_head_bytes: int = 65536
    max_headers: int = 200


def share_of(limits: LimitsConfig, workers: int) -> LimitsConfig:
    """One of `workers` processes' share of the caps (docs/workers.md#limits): together they
    never allow more than the configured values; each at least 1. Deadlines and sizes are
    per connection and stay as they are."""
    if workers <= 1:
        return limits

    def part(value: int) -> int:
        return max(1, value // workers)

    return replace(limits, connections_per_address=part(limits.connections_per_address),
                   connections_total=part(limits.connections_total),
                   held_per_container=part(limits.held_per_container), held_total=part(limits.held_total),
                   requests_per_second=limits.requests_per_second / workers,
                   requests_burst=part(limits.requests_burst))


# key: (type, lowest, highest); 0 is allowed only where the low bound is 0.
_LIMIT_RANGES: dict[str, tuple[type, float, float]] = {
    "head_seconds": (float, 0.1, 3600),
    "idle_seconds": (float, 0.1, 86400),
    "connections_per_address": (int, 1, 1_000_000),
    "connections_total": (int, 1, 1_000_000),
    "held_per_container": (int, 1, 1_000_000),
    "held_total": (int, 1, 1_000_000),
    "requests_per_second": (float, 0, 1_000_000),
    "requests_burst": (int, 1, 10_000_000),
    "max_head_bytes": (int, 1024, 16 * 1024 * 1024),
    "max_headers": (int, 8, 100_000),
}


def _limits(raw: Mapping[str, Any]) -> LimitsConfig:
    values: dict[str, Any] = {}
    for key, (kind, low, high) in _LIMIT_RANGES.items():
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ConfigError(f"'limits.{key}': {value!r} is not {'an integer' if kind is int else 'a number'}")
        if not low <= value <= high:
            raise ConfigError(f"'limits.{key}' must be between {low:g} and {high:g} (got {value!r})")
        values[key] = kind(value)
    return LimitsConfig(**values)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    listen: dict[str, ListenAddress]
    data_dir: Path
    database_url: str | None
    hold_seconds: float
    silent_allow: bool
    enforce_expiry_on_open: bool
    api_auth: str
    allowed_origins: tuple[str, ...]
    mitm_enabled: bool
    container_modes: tuple[tuple[str, str], ...]
    log_level: str
    log_format: str
    blocked_message: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    ignored: tuple[str, ...] = ()
    dns_upstream: tuple[tuple[str, int], ...] = ()  # () = the system resolver's servers
    dns_policy: str = "log"  # 'log' | 'enforce'
    guard_private_ranges: str = "allow"  # 'allow' | 'deny'
    identity_anonymous: str = "challenge"  # 'challenge' (407) | 'fallback' (unknown-<ip>)
    rules_files: tuple[Path, ...] = ()  # YAML rule files applied at start and on SIGHUP (reload.py)
    drain_seconds: float = 5.0  # on SIGTERM, how long open connections may finish
    workers: int = 1  # data-path processes (docs/workers.md); 1: one process does everything
    # After a hold times out unanswered, further attempts on that key are refused at once for this
    # long (reason pending_unanswered), until someone decides; 0 = every attempt is held.
    unanswered_seconds: float = 300.0
    source: Path | None = None  # the YAML file this came from (relative rules_files are beside it)
    middlewares: tuple[MiddlewareConfig, ...] = ()  # in cascade order
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    path_prefix: str = ""  # api.path_prefix: "" (none) or "/a/b", every API route and page under it
    upstream: UpstreamConfig | None = None  # `upstream:`; read at each dial, so a reload applies it

    @property
    def db_path(self) -> Path:
        return self.data_dir / "greyproxy.db"


def default_data_dir(env: Mapping[str, str]) -> Path:
    if env.get("GREYPROXY_DATA_HOME"):
        return Path(env["GREYPROXY_DATA_HOME"])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "greyproxy"
    return Path(env.get("HOME", str(Path.home()))) / ".local" / "share" / "greyproxy"


def _merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge override into a copy of base, refusing keys the defaults do not know."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"unknown configuration key '{name}'")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"'{name}' must be a mapping")
            out[key] = _merge(base[key], value, prefix=f"{name}.")
        else:
            out[key] = value
    return out


def parse_address(text: str, default_host: str, key: str) -> ListenAddress:
    """':PORT', 'HOST:PORT', '[v6]:PORT' or a bare port number."""
    text = str(text).strip()
    if text.isdigit():
        text = f":{text}"
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"'{key}': '{text}' is not an address like ':43051' or '127.0.0.1:43051'")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"'{key}': port {port} is out of range 0-65535")
    host = host.strip("[]") or default_host
    return ListenAddress(host, port)


def parse_dns_server(text: str, key: str) -> tuple[str, int]:
    """'IP', 'IP:PORT', '[v6]:PORT' (an optional udp:// tcp:// dns:// prefix is ignored).

    Only IP literals: the resolver of last resort cannot depend on resolving a name.
    """
    value = str(text).strip()
    for scheme in ("udp://", "tcp://", "dns://"):
        if value.lower().startswith(scheme):
            value = value[len(scheme) :]
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(f"'{key}': '{text}' is not like '9.9.9.9:53' or '[2620:fe::fe]:53'")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text.isdigit():
            raise ConfigError(f"'{key}': '{text}' is not like '9.9.9.9:53' or '[2620:fe::fe]:53'")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"'{key}': '{text}' must be an IP address with an optional port") from None
    if not 0 < port <= 65535:
        raise ConfigError(f"'{key}': port {port} is out of range 1-65535")
    return host, port


def _from_gost(doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Translate a greyproxy (GOST-style) file: listener addresses, greyproxy block, DNS forwarder."""
    ours: dict[str, Any] = {"listen": {}}
    ignored: list[str] = []
    names = {"http-proxy": "http", "socks5-proxy": "socks5", "dns-proxy-udp": "dns", "dns-proxy-tcp": "dns"}
    for svc in doc.get("services") or []:
        name = svc.get("name", "")
        if name in names and svc.get("addr"):
            ours["listen"][names[name]] = svc["addr"]
            nodes = (svc.get("forwarder") or {}).get("nodes") or []
            if names[name] == "dns" and nodes:
                ours["dns"] = {"upstream": [n["addr"] for n in nodes if n.get("addr")]}
        else:
            ignored.append(f"services[{name}]")
    block = doc.get("greyproxy") or {}
    if block.get("addr"):
        ours["listen"]["api"] = block["addr"]
    for key in ("notifications",):
        if key in block:
            ours[key] = block[key]
    if "docker" in block:
        docker = dict(block["docker"])
        if "cacheTTL" in docker:
            docker["cache_ttl"] = docker.pop("cacheTTL")
        ours["docker"] = docker
    if "middlewares" in block:
        ours["middlewares"] = block["middlewares"]
    if "pathPrefix" in block:
        ours["api"] = {"path_prefix": block["pathPrefix"]}
    if "host" in doc:
        ours["host"] = doc["host"]
    known = {"services", "greyproxy", "host"}
    ignored += [k for k in doc if k not in known]
    ignored += [f"greyproxy.{k}" for k in block
                if k not in {"addr", "notifications", "docker", "middlewares", "pathPrefix"}]
    return ours, ignored


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    env = os.environ if env is None else env
    merged = copy.deepcopy(DEFAULTS)
    ignored: list[str] = []
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(doc, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping")
        if "services" in doc:
            doc, ignored = _from_gost(doc)
        merged = _merge(merged, doc)
        source: Path | None = Path(path).resolve()
    else:
        source = None

    if env.get("GREYPROXY_DATABASE_URL"):
        merged["database"]["url"] = env["GREYPROXY_DATABASE_URL"]
    if env.get("GREYPROXY_NODE_ID"):
        merged["fleet"]["node_id"] = env["GREYPROXY_NODE_ID"]
    if env.get("GREYPROXY_CREDENTIAL_KEY_FILE"):
        merged["fleet"]["credential_key_file"] = env["GREYPROXY_CREDENTIAL_KEY_FILE"]
    if env.get("GREYPROXY_DOCKER_ENABLED"):
        merged["docker"]["enabled"] = env["GREYPROXY_DOCKER_ENABLED"].lower() in ("1", "true", "yes")
    if env.get("GREYPROXY_WORKERS"):
        merged["workers"] = env["GREYPROXY_WORKERS"]
    if env.get("GREYPROXY_DOCKER_SOCKET"):
        merged["docker"]["socket"] = env["GREYPROXY_DOCKER_SOCKET"]

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    for key in ("host", "hold_seconds", "data_dir", "workers"):
        if key in flags:
            merged[key] = flags[key]
    for name in LISTENERS:
        if f"listen_{name}" in flags:
            merged["listen"][name] = flags[f"listen_{name}"]
    if "database_url" in flags:
        merged["database"]["url"] = flags["database_url"]
    if flags.get("silent_allow"):
        merged["silent_allow"] = True
    if flags.get("no_auth"):
        merged["api"]["auth"] = "none"
    # Cascade order: --middleware URLs, then --middleware-cmd commands, then the YAML list.
    cli_middlewares = [{"url": u} for u in flags.get("middleware") or []]
    cli_middlewares += [{"command": c} for c in flags.get("middleware_cmd") or []]
    if cli_middlewares:
        merged["middlewares"] = cli_middlewares + list(merged["middlewares"] or [])
    return _build(merged, env, tuple(ignored), source)


def build_config(merged: dict[str, Any], env: Mapping[str, str] | None = None, ignored: tuple[str, ...] = (),
                 source: Path | None = None) -> Config:
    """A Config from an already merged raw dict (a reload keeps some keys at their old values)."""
    return _build(copy.deepcopy(merged), os.environ if env is None else env, ignored, source)


MAX_AUTO_WORKERS = 8  # `workers: auto` takes the cores, up to this many
MAX_WORKERS = 64


def _workers(value: Any) -> int:
    """`auto` (the number of cores, capped at MAX_AUTO_WORKERS) or a count."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                          MAX_AUTO_WORKERS))
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"'workers': {value!r} is neither 'auto' nor a number") from None
    if isinstance(value, bool) or not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"'workers' must be 'auto' or between 1 and {MAX_WORKERS}")
    return count


_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def _path_prefix(value: Any) -> str:
    """`api.path_prefix` (greyproxy's `pathPrefix`): '/' or '' for none, else '/seg/seg' (no
    trailing slash, no '.' or '..' segments), so a reverse proxy can mount the API and dashboard."""
    text = str(value or "/").strip()
    if text == "/":
        return ""
    text = text.rstrip("/")
    if len(text) > 128 or not _PREFIX.fullmatch(text) or any(seg in (".", "..") for seg in text.split("/")):
        raise ConfigError(f"'api.path_prefix': {value!r} must be '/' or a path like /greyproxy "
                          "(letters, digits, '.', '_', '~', '-' between slashes)")
    return text


def _rules_files(value: Any, source: Path | None) -> tuple[Path, ...]:
    if not isinstance(value or [], list) or not all(isinstance(v, str) and v.strip() for v in value or []):
        raise ConfigError("'rules_files' must be a list of file paths")
    base = source.parent if source is not None else Path.cwd()
    return tuple((base / Path(v).expanduser()).resolve() for v in value or [])


def _build(merged: dict[str, Any], env: Mapping[str, str], ignored: tuple[str, ...],
           source: Path | None = None) -> Config:
    host = str(merged["host"])
    listen = {name: parse_address(merged["listen"][name], host, f"listen.{name}") for name in LISTENERS}
    try:
        hold = float(merged["hold_seconds"])
    except (TypeError, ValueError):
        raise ConfigError(f"'hold_seconds': '{merged['hold_seconds']}' is not a number") from None
    if not 0 < hold <= 3600:
        raise ConfigError("'hold_seconds' must be between 0 and 3600")
    unanswered = merged["unanswered_seconds"]
    if isinstance(unanswered, bool) or not isinstance(unanswered, (int, float)) or not 0 <= unanswered <= 86400:
        raise ConfigError(f"'unanswered_seconds' must be a number between 0 and 86400 (got {unanswered!r})")
    if merged["api"]["auth"] not in ("token", "none"):
        raise ConfigError("'api.auth' must be 'token' or 'none'")
    path_prefix = _path_prefix(merged["api"]["path_prefix"])
    level = str(merged["log"]["level"]).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("'log.level' must be one of debug, info, warning, error")
    if merged["log"]["format"] not in ("text", "json"):
        raise ConfigError("'log.format' must be 'text' or 'json'")
    modes = []
    for i, entry in enumerate(merged["container_modes"] or []):
        if not isinstance(entry, Mapping) or set(entry) != {"container", "mode"}:
            raise ConfigError(f"'container_modes[{i}]' must be {{container: GLOB, mode: enforce|report|open}}")
        if entry["mode"] not in ("enforce", "report", "open"):
            raise ConfigError(f"'container_modes[{i}].mode' must be enforce, report or open")
        modes.append((str(entry["container"]), str(entry["mode"])))
    for key in ("retention.pending_ttl", "docker.cache_ttl"):
        section, sub = key.split(".")
        try:
            parse_go_duration(str(merged[section][sub]))
        except DurationError as exc:
            raise ConfigError(f"'{key}': {exc}") from None
    dns, guard = merged["dns"], merged["guard"]
    if not isinstance(dns["upstream"] or [], list):
        raise ConfigError("'dns.upstream' must be a list of 'IP:PORT' entries")
    upstream = tuple(parse_dns_server(e, f"dns.upstream[{i}]") for i, e in enumerate(dns["upstream"] or []))
    if dns["policy"] not in ("log", "enforce"):
        raise ConfigError("'dns.policy' must be 'log' or 'enforce'")
    if merged["mitm"]["opaque"] not in ("allow", "deny"):
        raise ConfigError("'mitm.opaque' must be 'allow' or 'deny'")
    if not isinstance(merged["mitm"]["generate_ca"], bool):
        raise ConfigError("'mitm.generate_ca' must be true or false")
    if guard["private_ranges"] not in ("allow", "deny"):
        raise ConfigError("'guard.private_ranges' must be 'allow' or 'deny'")
    anonymous = merged["identity"]["anonymous"]
    if anonymous not in ("challenge", "fallback"):
        raise ConfigError(f"'identity.anonymous' must be 'challenge' or 'fallback' (got {anonymous!r})")
    try:
        upstream_proxy = parse_upstream(merged["upstream"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data_dir = Path(merged["data_dir"]) if merged["data_dir"] else default_data_dir(env)
    try:
        drain = float(merged["drain_seconds"])
    except (TypeError, ValueError):
        raise ConfigError(f"'drain_seconds': '{merged['drain_seconds']}' is not a number") from None
    if not 0 <= drain <= 3600:
        raise ConfigError("'drain_seconds' must be between 0 and 3600")
    workers = _workers(merged["workers"])
    if not isinstance(merged["middlewares"] or [], list):
        raise ConfigError("'middlewares' must be a list of {command: ...} or {url: ...} entries")
    try:
        middlewares = tuple(configs_from([], [], merged["middlewares"] or []))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        listen=listen,
        data_dir=data_dir.expanduser(),
        database_url=merged["database"]["url"],
        hold_seconds=hold,
        silent_allow=bool(merged["silent_allow"]),
        enforce_expiry_on_open=bool(merged["enforce_expiry_on_open"]),
        api_auth=merged["api"]["auth"],
        allowed_origins=tuple(merged["api"]["allowed_origins"] or ()),
        path_prefix=path_prefix,
        mitm_enabled=bool(merged["mitm"]["enabled"]),
        container_modes=tuple(modes),
        log_level=level,
        log_format=merged["log"]["format"],
        blocked_message=merged["blocked_message"],
        raw=merged,
        ignored=ignored,
        dns_upstream=upstream,
        dns_policy=dns["policy"],
        guard_private_ranges=guard["private_ranges"],
        identity_anonymous=anonymous,
        rules_files=_rules_files(merged["rules_files"], source),
        drain_seconds=drain,
        workers=workers,
        unanswered_seconds=float(unanswered),
        source=source,
        middlewares=middlewares,
        limits=_limits(merged["limits"]),
        upstream=upstream_proxy,
    )
