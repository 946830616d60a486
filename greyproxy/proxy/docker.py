"""Container identity from the Docker (or Podman) Engine API (docs/user-guide.md#identity-who-is-the-client).

A connection's source IP is looked up among the IP addresses of running containers
(`GET /containers/json` on the engine's unix socket); the container's name becomes the client
identity. This runs on the connection path, so it must never hold a connection for long:

- a hit is answered from memory for `cache_ttl` (default 30 s);
- the engine is asked at most once per MISS_TTL (5 s), whatever the number of unknown sources:
  an address that was not in the last listing stays a miss until then (greyproxy listed every
  container again on every connection from a non-container source);
- one listing at a time: concurrent lookups wait for the listing in flight;
- a listing is bounded by `timeout` (1 s) and MAX_RESPONSE bytes; an engine that is down, slow or
  answering garbage counts as a miss (the username / `unknown-<ip>` identity applies) and is
  not asked again before MISS_TTL;
- with `serve --workers N`, a worker's resolver gets its listing from the control plane's
  (`lister`, `shared_listing`), so the engine is asked once per MISS_TTL for all the processes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult

from greyproxy.proxy.dnscache import canonical_ip

log = logging.getLogger("greyproxy.docker")

DEFAULT_TIMEOUT = 1.0
MISS_TTL = 5.0
MAX_RESPONSE = 16 * 1024 * 1024  # a listing of thousands of containers is a few MiB
MAX_ENTRIES = 65_536  # addresses kept from one listing


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    name: str
    id: str  # the first 12 characters, as `docker ps` shows it


class EngineError(Exception):
    """The engine could not be asked or gave an answer we cannot use."""


def _decode_chunked(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    for _ in range(1_000_000):  # bounded: each round consumes at least one chunk-size line
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            raise EngineError("truncated chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise EngineError("bad chunk size") from None
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]
    raise EngineError("too many chunks")


def parse_http_response(raw: bytes) -> bytes:
    """The body of a complete HTTP/1.x 200 response (the connection was read to its end)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise EngineError("no HTTP response head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise EngineError(f"not an HTTP response: {lines[0][:80]!r}")
    if parts[1] != "200":
        raise EngineError(f"engine answered {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _decode_chunked(body)
    if headers.get("content-length", "").isdigit():
        return body[: int(headers["content-length"])]
    return body


def containers_by_ip(listing: Any) -> dict[str, ContainerInfo]:
    """IP → container from a `/containers/json` answer; malformed entries are skipped."""
    out: dict[str, ContainerInfo] = {}
    if not isinstance(listing, list):
        raise EngineError("the container list is not a JSON array")
    for item in listing:
        if not isinstance(item, dict):
            continue
        cid = str(item.get("Id") or "")[:12]
        names = item.get("Names")
        name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
        name = name.lstrip("/") or cid
        if not name:
            continue
        networks = ((item.get("NetworkSettings") or {}).get("Networks") or {}) if isinstance(
            item.get("NetworkSettings"), dict) else {}
        if not isinstance(networks, dict):
            continue
        for net in networks.values():
            if not isinstance(net, dict):
                continue
            for key in ("IPAddress", "GlobalIPv6Address"):
                ip = canonical_ip(str(net.get(key) or ""))
                if ip is not None and len(out) < MAX_ENTRIES:
                    out.setdefault(ip, ContainerInfo(name, cid))
    return out


def list_containers(socket_path: str, timeout: float) -> dict[str, ContainerInfo]:
    """One `GET /containers/json` over the engine's unix socket, within `timeout` seconds."""
    sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
    chunks: list[bytes] = []
    try:
        with gevent.Timeout(timeout, EngineError(f"no answer within {timeout:g} s")):
            sock.connect(socket_path)
            # HTTP/1.0: the engine answers with the whole body and closes; no keep-alive to manage.
            sock.sendall(b"GET /containers/json HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n")
            size = 0
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                size += len(data)
                if size > MAX_RESPONSE:
                    raise EngineError(f"the container list is larger than {MAX_RESPONSE} bytes")
                chunks.append(data)
    except OSError as exc:
        raise EngineError(f"cannot talk to {socket_path}: {exc}") from None
    finally:
        sock.close()
    body = parse_http_response(b"".join(chunks))
    try:
        listing = json.loads(body)
    except ValueError as exc:
        raise EngineError(f"the container list is not JSON: {exc}") from None
    return containers_by_ip(listing)


Lister = Callable[[], Mapping[str, ContainerInfo]]  # IP → container; raises EngineError


class DockerResolver:
    def __init__(self, socket_path: str, cache_ttl: float, timeout: float = DEFAULT_TIMEOUT,
                 miss_ttl: float = MISS_TTL, on_result: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, lister: Lister | None = None) -> None:
        """`lister`: where a listing comes from, the engine's socket unless given (a worker
        process asks the control plane)."""
        self.socket_path = socket_path
        self.lister = lister or (lambda: list_containers(self.socket_path, self.timeout))
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        # A miss must not outlive a hit, or a known container would read as unknown for a while.
        self.miss_ttl = min(miss_ttl, cache_ttl)
        self.on_result = on_result or (lambda _result: None)
        self.clock = clock
        self._hits: dict[str, tuple[ContainerInfo, float]] = {}  # ip -> (container, expires)
        self._next_listing = 0.0  # no listing before this time (misses are cached until then)
        self._inflight: AsyncResult | None = None
        self._last_error: str | None = None
        self.listings = 0

    def lookup(self, source_ip: str) -> ContainerInfo | None:
        ip = canonical_ip(source_ip)
        if ip is None:
            return None
        now = self.clock()
        hit = self._hits.get(ip)
        if hit is not None and hit[1] > now:
            self.on_result("hit")
            return hit[0]
        if now < self._next_listing:
            self.on_result("miss")
            return None
        if not self._refresh():
            self.on_result("error")
            return None
        hit = self._hits.get(ip)
        self.on_result("hit" if hit is not None else "miss")
        return hit[0] if hit is not None else None

    def _refresh(self) -> bool:
        """List the containers (or wait for the listing in flight); True if it succeeded."""
        if self._inflight is not None:
            try:
                return bool(self._inflight.get(timeout=self.timeout + 0.5))
            except gevent.Timeout:
                return False
        self._inflight = result = AsyncResult()
        ok = False
        try:
            found = self.lister()
            now = self.clock()
            expires = now + self.cache_ttl
            self._hits = {ip: (info, expires) for ip, info in found.items()}
            self.listings += 1
            if self._last_error is not None:
                log.info("docker: %s answers again (%d container addresses)", self.socket_path, len(found))
            self._last_error = None
            ok = True
        except EngineError as exc:
            # Said once per outage, not once per connection.
            if str(exc) != self._last_error:
                log.warning("docker: container lookup failed, using proxy usernames: %s", exc)
            self._last_error = str(exc)
            now = self.clock()
            # Hits already known stay valid until they expire; only the listing failed.
            self._hits = {ip: v for ip, v in self._hits.items() if v[1] > now}
        finally:
            self._next_listing = self.clock() + self.miss_ttl
            self._inflight = None
            result.set(ok)
        return ok

    def shared_listing(self) -> dict[str, ContainerInfo]:
        """The containers as last listed, for a worker process's resolver: listed again only
        once MISS_TTL has passed since the last listing, whichever process asked for it.
        Raises EngineError when the engine cannot be asked."""
        if self.clock() >= self._next_listing and not self._refresh():
            raise EngineError(self._last_error or "the container list could not be read")
        now = self.clock()
        return {ip: info for ip, (info, expires) in self._hits.items() if expires > now}


# -- the listing between processes (serve --workers N): one wire format, both ends here ----------
def listing_message(resolver: DockerResolver | None) -> dict[str, Any]:
    """The control plane's answer to a worker's ask: the shared listing, or why there is none."""
    try:
        if resolver is None:
            raise EngineError("Docker lookups are off")
        return {"c": {ip: [c.name, c.id] for ip, c in resolver.shared_listing().items()}}
    except EngineError as exc:
        return {"error": str(exc)}


def listing_from_message(answer: Any) -> dict[str, ContainerInfo]:
    """A worker's `Lister` result from that answer (None: the control plane did not answer).
    Raises EngineError, as a listing from the engine would."""
    if not isinstance(answer, dict) or not isinstance(answer.get("c"), dict):
        reason = answer.get("error") if isinstance(answer, dict) else None
        raise EngineError(str(reason or "the control plane did not answer"))
    return {str(ip): ContainerInfo(str(c[0]), str(c[1])) for ip, c in answer["c"].items()
            if isinstance(c, list) and len(c) == 2}
