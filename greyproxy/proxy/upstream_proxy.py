"""Dialling through a corporate upstream proxy (docs/upstream-proxy.md): HTTP CONNECT or SOCKS5,
with their authentication, after the decision and the guard.

What the upstream is asked for is decided by `tunnel.dial`: with `resolve: local` (the default)
greyproxy resolves the name itself, runs the guard on every address, and asks the upstream for
the checked IP, so a name that resolves to one of our listeners or a private address is refused
exactly as without an upstream. The upstream proxy's own address is not guarded: it is where the
operator told us to send traffic (often on loopback or a private network).

The HTTP CONNECT answer is read with the strict head parser (llhttp) and never past its blank
line, so no byte of the tunnel is lost or mistaken for the answer; SOCKS5 (RFC 1928, 1929) is
spoken by python-socks.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket as gsocket
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.sync import Proxy

from greyproxy.policy.patterns import destination_matcher
from greyproxy.proxy.httpwire import WireError, parse_head
from greyproxy.upstream_config import UpstreamConfig

log = logging.getLogger("greyproxy.upstream")

MAX_CONNECT_HEAD = 16 * 1024


class UpstreamDown(OSError):
    """The upstream proxy itself cannot be reached (fail_open decides what happens)."""


class UpstreamRefused(OSError):
    """The upstream answered, but did not open the tunnel (its policy, auth, or the origin)."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise UpstreamRefused("the upstream proxy closed the connection during CONNECT")
        data += chunk
    return bytes(data)


def read_connect_head(sock: socket.socket) -> bytes:
    """The upstream's answer to CONNECT, up to and including its blank line and not a byte
    further (bytes after it belong to the tunnel): peek, then consume what belongs to the head."""
    head = b""
    while True:
        peek = sock.recv(MAX_CONNECT_HEAD, socket.MSG_PEEK)
        if not peek:
            raise UpstreamRefused("the upstream proxy closed the connection during CONNECT")
        seen = head + peek
        end = seen.find(b"\r\n\r\n")
        if end >= 0:
            return head + _recv_exact(sock, end + 4 - len(head))
        head += _recv_exact(sock, len(peek))
        if len(head) > MAX_CONNECT_HEAD:
            raise UpstreamRefused("the upstream proxy's answer to CONNECT is too large")


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class UpstreamProxy:
    """One configured upstream and what is known of its state (shown by /api/health)."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self.cfg = cfg
        self._bypass = [destination_matcher(p) for p in cfg.bypass_hosts]
        self.state = "unknown"  # 'up' once a connection to it worked, 'down' when one failed
        self.last_error: str | None = None
        self.changed_at: float | None = None
        self.tunnels = 0  # tunnels opened through it
        self.failures = 0  # times it could not be reached

    def bypassed(self, host: str) -> bool:
        """The destination (a canonical name or IP) is dialled directly (`bypass_hosts`)."""
        return any(match(host) for match in self._bypass)

    @property
    def remote_dns(self) -> bool:
        return self.cfg.resolve == "upstream"

    def _mark(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.changed_at = time.time()
            if state == "down":
                log.warning("upstream proxy %s unreachable: %s", self.cfg.display_url, error)
            elif self.state == "down":
                log.info("upstream proxy %s reachable again", self.cfg.display_url)
        self.state = state
        if error is not None:
            self.last_error = error

    def open(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket tunnelled to host:port through the upstream; UpstreamDown when the upstream
        cannot be reached, UpstreamRefused when it would not open the tunnel."""
        if self.cfg.scheme == "http":
            sock = self._open_http(host, port, timeout)
        else:
            sock = self._open_socks5(host, port, timeout)
        sock.settimeout(None)
        self.tunnels += 1
        return sock

    def _connect_upstream(self, timeout: float) -> socket.socket:
        cfg = self.cfg
        try:
            with gevent.Timeout(timeout, TimeoutError("no connection in time")):  # the name lookup too
                return gsocket.create_connection((cfg.host, cfg.port), timeout=timeout)
        except OSError as exc:
            self.failures += 1
            self._mark("down", f"cannot connect to {authority(cfg.host, cfg.port)}: {exc}")
            raise UpstreamDown(str(exc)) from None

    def _open_http(self, host: str, port: int, timeout: float) -> socket.socket:
        cfg = self.cfg
        sock = self._connect_upstream(timeout)
        target = authority(host, port)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if cfg.username is not None:
            token = base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = parse_head(read_connect_head(sock), is_request=False)
        except (OSError, WireError) as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                self._mark("up")  # it accepted us; the origin is slow
                raise UpstreamRefused(f"the upstream proxy did not answer CONNECT {target} in time") from None
            self.failures += 1
            self._mark("down", f"CONNECT {target}: {exc}")
            raise UpstreamDown(str(exc)) from None
        self._mark("up")
        code = int(head.start[1])
        if not 200 <= code < 300:
            sock.close()
            if code == 407:
                self.last_error = "the upstream proxy refused our credentials (407)"
            raise UpstreamRefused(f"the upstream proxy answered CONNECT {target} with {code} {head.start[2]}")
        return sock

    def _open_socks5(self, host: str, port: int, timeout: float) -> socket.socket:
        cfg = self.cfg
        proxy = Proxy(ProxyType.SOCKS5, cfg.host, cfg.port, username=cfg.username, password=cfg.password,
                      rdns=True)  # a name given here is meant for the upstream (resolve: upstream)
        try:
            # One deadline over the name lookup, the connect and the handshake.
            with gevent.Timeout(timeout * 2, ProxyTimeoutError("the SOCKS5 handshake took too long")):
                sock = proxy.connect(host, port, timeout=timeout)
        except ProxyConnectionError as exc:
            self.failures += 1
            self._mark("down", str(exc))
            raise UpstreamDown(str(exc)) from None
        except ProxyTimeoutError:
            self._mark("up")
            raise UpstreamRefused(f"the upstream proxy did not open {authority(host, port)} in time") from None
        except ProxyError as exc:
            self._mark("up")
            raise UpstreamRefused(f"the upstream proxy would not open {authority(host, port)}: {exc}") from None
        except OSError as exc:  # the handshake broke off
            self.failures += 1
            self._mark("down", str(exc))
            raise UpstreamDown(str(exc)) from None
        self._mark("up")
        return sock

    def status(self) -> dict[str, Any]:
        return {"proxy_url": self.cfg.display_url, "state": self.state, "fail_open": self.cfg.fail_open,
                "resolve": self.cfg.resolve, "bypass_hosts": list(self.cfg.bypass_hosts),
                "last_error": self.last_error, "changed_at": self.changed_at, "tunnels": self.tunnels,
                "failures": self.failures}


class UpstreamHolder:
    """The upstream of the configuration in force: `config.upstream` is read at each dial, so a
    reload (SIGHUP) that changes `upstream:` applies to the next connection (live)."""

    def __init__(self, current: Callable[[], UpstreamConfig | None]) -> None:
        self._current = current
        self._proxy: UpstreamProxy | None = None

    def get(self) -> UpstreamProxy | None:
        cfg = self._current()
        if cfg is None:
            return None
        if self._proxy is None or self._proxy.cfg != cfg:
            self._proxy = UpstreamProxy(cfg)
        return self._proxy
