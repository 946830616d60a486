"""The 407 that makes clients name themselves.

git, Chromium, Playwright and Java send proxy credentials only after a `407` with a
`Proxy-Authenticate` challenge. An HTTP-proxy request without usable credentials (none, a
scheme other than Basic, or a value that does not decode), from a source no other identity
source names (Docker), is answered with one when `identity.anonymous` is `challenge`
(the default); `fallback` lets it through as `unknown-<source ip>` as before.

The answer is connection-safe, so clients retry on the same connection: it is kept open when
the request carried no body and the client did not ask to close (HTTP/1.1); otherwise it says
`Connection: close` and the client retries on a new one. SOCKS5 is not challenged: a client
offering only "no auth" has no credentials to give, and refusing its method would only end the
connection, so it keeps the fallback identity (see socks5.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from greyproxy.proxy.httpwire import Head

REALM = "greyproxy"
REASON = "proxy_auth_required"

TEXT = (
    "greyproxy needs to know which container this is (proxy authentication required).\n"
    "Use the proxy URL http://NAME:x@{proxy}, where NAME is this container's name: the identity\n"
    "greyproxy's rules, pending requests and logs use for it (for example agent1). The password is\n"
    "not checked, unless a session gave NAME a proxy token: then the token goes in the password.\n"
    "curl: -x http://NAME:x@{proxy} (--proxy-anyauth works too); git: git config http.proxy http://NAME:x@{proxy}\n"
)


def proxy_address(sockname: tuple) -> str:
    """host:port of the listener as this client reached it ([v6]:port for IPv6)."""
    host, port = str(sockname[0]), int(sockname[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def may_keep_open(head: Head, buffered: bool) -> bool:
    """Whether the client can send its retry on this connection after the 407.

    Only when nothing of this request is left to read: no body (a body we do not read would be
    taken for the next request), and for CONNECT no bytes sent early behind the head (they were
    meant for the tunnel). HTTP/1.0 and `Connection: close` clients close anyway."""
    method, _target, version = head.start
    if version.upper() != "HTTP/1.1" or "close" in head.tokens("connection") | head.tokens("proxy-connection"):
        return False
    if head.get("transfer-encoding") is not None:
        return False
    length = head.get("content-length")
    if length is not None and length.strip() != "0":
        return False
    return not (method.upper() == "CONNECT" and buffered)


def response(head: Head, sockname: tuple, buffered: bool) -> tuple[bytes, bool]:
    """The 407 for this request, and whether the connection stays open after it."""
    keep = may_keep_open(head, buffered)
    body = TEXT.format(proxy=proxy_address(sockname)).encode("utf-8")
    connection = "keep-alive" if keep else "close"
    lines = [
        "HTTP/1.1 407 Proxy Authentication Required",
        f'Proxy-Authenticate: Basic realm="{REALM}"',
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"Connection: {connection}",
        f"Proxy-Connection: {connection}",
        "Proxy-Agent: greyproxy",
        f"X-Greyproxy-Reason: {REASON}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body, keep


class ChallengeSent(Exception):
    """Raised after the 407 went out: this request is over; `keep` says whether the client's
    retry may come on the same connection."""

    def __init__(self, keep: bool) -> None:
        super().__init__("407 sent")
        self.keep = keep
