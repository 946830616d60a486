"""What happens inside an allowed tunnel (docs/design.md, What a tunnel carries): the first bytes decide.

- TLS ClientHello → interception when enabled, a CA is loaded and the host is not bypassed
  (else a blind pipe, with the skip reason recorded on the connection's log row);
- plain HTTP → the same request loop, in clear;
- anything else, or a server that speaks first → a blind pipe.

In the request loop every request is re-checked, its Host must name the server the
tunnel was allowed for, and each exchange is recorded as a transaction. A client that
chooses h2 in ALPN is served by h2server.py instead, one exchange per stream; the origin side
is whatever the origin chose (h2upstream.py)."""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket as gsocket
from gevent.hub import Waiter, get_hub
from gevent.local import local as greenlet_local

from greyproxy.policy.patterns import is_ip_literal
from greyproxy.proxy.exchange import REQUEST_TIMEOUT, bad_request, destination_for, simple_response
from greyproxy.proxy.httpwire import BufferedSocket, WireError, parse_head
from greyproxy.proxy.limits import HEAD_DEADLINE, REFUSE_SECONDS, DeadlineExceeded
from greyproxy.proxy.mitm.h2server import H2Server
from greyproxy.proxy.mitm.h2upstream import H1Pool, H2Upstream, Single, Upstreams
from greyproxy.proxy.mitm.upstream import OriginSessions, upstream_ssl_context, wrap_origin
from greyproxy.proxy.relay import relay
from greyproxy.proxy.request_hold import uninspectable_refusal
from greyproxy.proxy.tlshello import Hello, alert_record, peek_hello
from greyproxy.proxy.tunnel import dial

if TYPE_CHECKING:
    from greyproxy.ca.leaf import LeafCache
    from greyproxy.ca.state import MitmState
    from greyproxy.metrics import Metrics
    from greyproxy.proxy.exchange import ExchangePipeline
    from greyproxy.proxy.gate import Admission, Gatekeeper
    from greyproxy.proxy.guard import ControlPlaneGuard
    from greyproxy.proxy.limits import Limits
    from greyproxy.proxy.resolver import Resolver
    from greyproxy.proxy.upstream_proxy import UpstreamHolder
    from greyproxy.proxy.views import PolicyView
    from greyproxy.store.writer import StoreWriter

log = logging.getLogger("greyproxy.mitm")

SNIFF_TIMEOUT = 30.0  # if neither side speaks by then, it is an idle pipe
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 120.0
# A request line as any HTTP/1 server would take it: a method token, a target, a version. Lenient
# on purpose (lower case, odd methods, extra blanks, bare LF): whatever an origin might read as
# HTTP is parsed by the strict engine, and refused there if it is not clean HTTP/1.1.
_REQUEST_LINE = re.compile(rb"^[\r\n \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}[ \t]+\S+[ \t]+HTTP/", re.IGNORECASE)
_TOKEN_PREFIX = re.compile(
    rb"^[\r\n \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]{0,32}([ \t]+(\S+([ \t]+(H(T(T(P)?)?)?)?)?)?)?$", re.IGNORECASE)
CLIENT_ALPN = ("h2", "http/1.1")  # offered to intercepted clients; HTTP/2 streams: h2server.py
SNIFF_BYTES = 8192  # a request line longer than this is not one we pass on unparsed
_PLAIN = gsocket.socket  # gevent's plain socket, whose C socket can be peeked without waiting


def classify(first: bytes) -> str | None:
    """'tls', 'http', 'other', or None when more bytes are needed to tell."""
    if not first:
        return None
    if first[0] == 0x16:
        return "tls" if len(first) < 2 or first[1] == 0x03 else "other"
    if _REQUEST_LINE.match(first):
        return "http"
    rest = first.lstrip(b"\r\n \t")
    if not rest and len(first) < SNIFF_BYTES:
        return None  # only blank lines so far
    if b"\n" not in rest and len(first) < SNIFF_BYTES and _TOKEN_PREFIX.match(first):
        return None  # the first line may still become a request line
    return "other"


class FirstLineWatch:
    """For a tunnel piped before its first bytes could be judged (a silent client, a server
    that speaks first, a short token protocol): the client's first line is still classified as
    it passes. Bytes go on only while they cannot be the start of a request line the sniffer
    would have parsed; once they become HTTP (or a late TLS hello), the tunnel is cut before the
    line is complete, so no unchecked request reaches the origin."""

    def __init__(self, interceptor: Interceptor, admission: Admission, early: bytes = b"") -> None:
        self.interceptor = interceptor
        self.admission = admission
        self.seen = early[:SNIFF_BYTES]

    def __call__(self, data: bytes) -> bool | None:
        self.seen += data[: SNIFF_BYTES - len(self.seen)]
        kind = classify(self.seen)
        if kind == "other":
            return True
        if kind is None and len(self.seen) < SNIFF_BYTES:
            return None
        self.interceptor.gate.refused(self.admission, "late_tls" if kind == "tls" else "unparsed_http")
        return False


def _peek_now(sock: socket.socket) -> bytes | None:
    """What the client has sent so far, without consuming it or waiting; None when nothing has
    arrived yet. b"" is its EOF."""
    if type(sock) is not _PLAIN:
        return None
    try:
        return sock._sock.recv(SNIFF_BYTES, socket.MSG_PEEK)  # type: ignore[attr-defined]  # non-blocking
    except BlockingIOError:
        return None


def _client_speaks(client: socket.socket, upstream: socket.socket) -> bool:
    """Wait until the client or the server has something to read, at most SNIFF_TIMEOUT: True
    when the client does. It waits on the sockets' own read watchers and one loop timer, so a
    sniff starts no watcher of its own (gevent's poll() made two per call), and a close from
    another greenlet (a revoked rule's closer) ends the wait with EBADF, as a read would."""
    hub = get_hub()
    waiter = Waiter(hub)
    theirs = client._read_event  # type: ignore[attr-defined]
    ours = upstream._read_event  # type: ignore[attr-defined]
    if theirs is None or ours is None:
        raise OSError(errno.EBADF, "the socket was closed")
    timer = hub.loop.timer(SNIFF_TIMEOUT)
    theirs.start(waiter.switch, True)
    ours.start(waiter.switch, False)
    timer.start(waiter.switch, None)
    try:
        ready = waiter.get()
    finally:
        theirs.stop()
        ours.stop()
        timer.close()
    if ready is False:  # the server spoke: the client may have too, meanwhile
        return _peek_now(client) is not None
    return bool(ready)


class _Handshake(greenlet_local):
    """The client handshake under way in this greenlet: the SNI callback runs inside
    do_handshake, in the greenlet that called it, and finds its connection here."""

    host: str | None = None
    sni: str | None = None
    leaves: LeafCache | None = None  # the CA generation this handshake is served from


class Interceptor:
    def __init__(self, *, gate: Gatekeeper, exchanges: ExchangePipeline, mitm: MitmState,
                 mitm_config: Callable[[], dict[str, Any]], policy: PolicyView, guard: ControlPlaneGuard,
                 resolver: Resolver, upstream: UpstreamHolder, writer: StoreWriter, metrics: Metrics) -> None:
        self.gate = gate
        self.exchanges = exchanges
        self.mitm = mitm
        self.mitm_config = mitm_config  # the config's `mitm` section, read at each use (a reload may change it)
        self.policy = policy
        self.guard = guard
        self.resolver = resolver
        self.upstream = upstream
        self.writer = writer
        self.metrics = metrics
        self.limits: Limits | None = None  # set when the listeners start (proxy/limits.py)
        self._handshake = _Handshake()
        # One server context for the life of the process, shared by every intercepted connection:
        # making one per connection cost more than the rest of the setup. It holds no
        # certificate (the SNI callback hands each handshake its leaf's context), only the keys
        # that seal session tickets, which are what lets a returning client resume. Made here,
        # before `serve --workers N` forks, so every worker holds the same keys and a client
        # resumes in whichever worker its next connection lands (docs/workers.md).
        self._server = self._make_server_context()
        self.origin_sessions = OriginSessions()

    def _make_server_context(self) -> ssl.SSLContext:
        state = self._handshake

        def pick_leaf(tls_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
            host, leaves = state.host, state.leaves
            if host is None or leaves is None:  # not one of ours: refuse rather than guess a name
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            state.sni = server_name
            tls_obj.context = leaves.context_for(server_name or host, CLIENT_ALPN)
            return None

        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        base.sni_callback = pick_leaf
        base.set_alpn_protocols(list(CLIENT_ALPN))
        return base

    # -- entry -------------------------------------------------------------------------
    def serve(self, admission: Admission, client: socket.socket, upstream: socket.socket, early: bytes = b"") -> None:
        """`early`: bytes the client sent before the tunnel was set up (right behind its CONNECT
        head), already read off the socket, so they are judged here rather than peeked."""
        kind = (classify(early[:SNIFF_BYTES]) or "watch") if early else self._sniff(client, upstream)
        if kind == "http":
            buffered = BufferedSocket(client)
            buffered.buf += early  # parsed, re-checked and recorded like every later request
            try:
                self._loop(admission, buffered, Single(BufferedSocket(upstream)), "http")
            finally:
                upstream.close()
            return
        if kind == "tls":
            self._tls(admission, client, upstream, early)
            return
        if self.mitm_config().get("opaque", "allow") == "deny":
            self.gate.refused(admission, "opaque_refused")
            for sock in (client, upstream):  # nothing went upstream
                sock.close()
            return
        self._skipped(admission, "non_tls")
        if early:
            upstream.sendall(early)
        watch = FirstLineWatch(self, admission, early) if kind == "watch" else None
        self.metrics.relayed(*relay(client, upstream, watch))

    def _skipped(self, admission: Admission, reason: str) -> None:
        self.writer.skip_reason(admission.container, admission.host, admission.port, reason)

    def _sniff(self, client: socket.socket, upstream: socket.socket) -> str:
        for _ in range(16):  # bounded: a handful of short reads settle it
            try:
                peeked = _peek_now(client)
                if peeked is None:  # nothing from the client yet: wait for either side
                    if not _client_speaks(client, upstream):
                        return "watch"  # the server speaks first (SSH, SMTP, ...), or nobody does: watch the client
                    peeked = client.recv(SNIFF_BYTES, socket.MSG_PEEK)
            except OSError:
                return "other"
            kind = classify(peeked)
            if kind is not None:
                return kind
            if not peeked:
                return "other"
            gevent.sleep(0.01)
        # Still a possible request line after all that (a short token protocol, or a client
        # dribbling bytes): pipe it, watching the first line; it is cut if it becomes HTTP or TLS.
        return "watch"

    def _skip_reason(self, admission: Admission) -> str | None:
        mitm = self.mitm
        if not mitm.enabled:
            return "mitm_disabled"
        if mitm.is_bypassed(admission.host):
            return "mitm_bypass"
        if mitm.leaves is None:
            return "no_cert"
        return None

    # -- TLS ---------------------------------------------------------------------------
    def _tls(self, admission: Admission, client: socket.socket, upstream: socket.socket, early: bytes) -> None:
        """A TLS tunnel. Intercepted when it can be (the handshake checks the server name);
        otherwise its ClientHello is read without being consumed (from `early`, then peeked)
        and must name the admitted destination before a byte goes upstream."""
        reason = self._skip_reason(admission)
        if reason is None:
            if early:
                self._intercept_early(admission, client, upstream, early)
            else:
                self._intercept(admission, client, upstream)
            return
        hello = peek_hello(client, early)
        if hello.status == "incomplete" and client.fileno() == -1:
            upstream.close()  # torn down while we waited (its rule was revoked): nothing to refuse
            return
        if hello.status != "ok":
            self._refuse_hello(admission, client, upstream, hello, "bad_tls_hello",
                               f"no valid TLS ClientHello ({hello.status}: {hello.detail})")
            return
        mismatch = self._sni_mismatch(admission, hello.server_name)
        if mismatch:
            self._refuse_hello(admission, client, upstream, hello, "sni_mismatch", mismatch)
            return
        # A request-level deny/hold rule cannot be enforced on a piped tunnel (docs/request-rules.md).
        unseen = uninspectable_refusal(self.policy, admission.container, admission.host, admission.port,
                                       admission.resolved_hostname)
        if unseen:
            self._refuse_hello(admission, client, upstream, hello, "request_rules_uninspected", unseen)
            return
        self._skipped(admission, reason)
        if early:
            upstream.sendall(early)
        self.metrics.relayed(*relay(client, upstream))

    def _refuse_hello(self, admission: Admission, client: socket.socket, upstream: socket.socket, hello: Hello,
                      reason: str, detail: str) -> None:
        """Close a tunnel whose ClientHello is refused; nothing was sent upstream. The log gets
        a blocked row with the reason (as an intercepted mismatch does). The client, which can
        be told nothing in HTTP here, gets a fatal TLS alert: access_denied for a name, or
        OpenSSL's own answer to a hello it could not parse (decode_error if none)."""
        a = admission
        log.info("refused TLS from %s to %s:%s: %s", a.container, a.host, a.port, detail)
        self.gate.refused(a, reason)
        self.metrics.mitm(reason)
        if reason in ("sni_mismatch", "request_rules_uninspected"):
            alert = alert_record(ssl.ALERT_DESCRIPTION_ACCESS_DENIED)
        else:
            alert = hello.alert or alert_record(ssl.ALERT_DESCRIPTION_DECODE_ERROR)
        upstream.close()
        try:
            # Read what was only peeked, so that closing sends a FIN after the alert, not a
            # reset that could overtake it.
            client.settimeout(0.0)
            for _ in range(8):
                if not client.recv(1 << 16):
                    break
        except OSError:
            pass
        try:
            client.settimeout(HANDSHAKE_TIMEOUT)
            client.sendall(alert)
        except OSError:
            pass
        client.close()

    def _intercept_early(self, admission: Admission, client: socket.socket, upstream: socket.socket,
                         early: bytes) -> None:
        """Intercept a tunnel whose hello (or its start) was already read off the client socket.
        Our TLS server works on one end of a socket pair; the other end is fed `early`, then the
        client's stream, and what our server writes goes back to the client."""
        inner, outer = socket.socketpair()

        def feed() -> None:
            try:
                outer.sendall(early)
                while data := client.recv(1 << 16):
                    outer.sendall(data)
                outer.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        def drain() -> None:
            try:
                while data := outer.recv(1 << 16):
                    client.sendall(data)
            except OSError:
                pass

        pumps = [gevent.spawn(feed), gevent.spawn(drain)]
        try:
            self._intercept(admission, inner, upstream)  # closes its end on every path
        finally:
            inner.close()
            pumps[1].join(timeout=HANDSHAKE_TIMEOUT)  # what our server wrote reaches the client
            for s in (client, outer):
                try:
                    s.close()
                except OSError:
                    pass
            gevent.killall(pumps, block=False)

    def _intercept(self, admission: Admission, client: socket.socket, upstream: socket.socket) -> None:
        leaves = self.mitm.leaves
        assert leaves is not None
        state = self._handshake
        state.host, state.sni, state.leaves = admission.host, None, leaves
        try:
            tls_client = self._server.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            with gevent.Timeout(HANDSHAKE_TIMEOUT):
                tls_client.do_handshake()
        except (OSError, ssl.SSLError, gevent.Timeout) as exc:
            # Typically a client that does not trust our CA (or pins its certificate).
            log.info("MITM handshake with client failed for %s: %s", admission.host, exc)
            self.metrics.mitm("client_error")
            self._skipped(admission, "mitm_error")
            client.close()
            upstream.close()
            return
        finally:
            sni, state.host, state.sni, state.leaves = state.sni, None, None, None
        server_name = sni or admission.host
        mismatch = self._sni_mismatch(admission, sni)
        tls_upstream = None
        upstream_error = None
        ctx = upstream_ssl_context(self.mitm_config().get("extra_ca_bundle"))
        if not mismatch:
            try:
                tls_upstream = wrap_origin(ctx, upstream, server_name, admission.port, self.origin_sessions)
                with gevent.Timeout(HANDSHAKE_TIMEOUT):
                    tls_upstream.do_handshake()
            except (OSError, ssl.SSLError, gevent.Timeout) as exc:
                # Not used for anything after a failed handshake: the client is told why (502).
                if tls_upstream is not None:
                    tls_upstream.close()
                tls_upstream = None
                self.origin_sessions.forget(ctx, server_name, admission.port)
                upstream_error = str(exc) or exc.__class__.__name__
                log.info("upstream TLS to %s failed: %s", server_name, upstream_error)
        self.metrics.mitm("sni_mismatch" if mismatch else "upstream_error" if tls_upstream is None else "ok")
        h2_client = tls_client.selected_alpn_protocol() == "h2"
        try:
            if mismatch or tls_upstream is None:
                self._refuse_all(
                    BufferedSocket(tls_client),
                    "sni_mismatch" if mismatch else "upstream_tls_error",
                    admission,
                    detail=mismatch or upstream_error or "",
                    h2=h2_client,
                )
                return
            upstreams = self._upstreams(admission, tls_upstream, server_name, h2_client)
            if h2_client:
                dest = destination_for(admission, "https", sni, in_tunnel=True)
                H2Server(self.gate, self.exchanges, admission, dest, tls_client, upstreams).serve()
            else:
                try:
                    self._loop(admission, BufferedSocket(tls_client), upstreams, "https", sni)
                finally:
                    upstreams.close()
        finally:
            if tls_upstream is not None:  # its session (with the tickets read meanwhile) for the next one
                self.origin_sessions.keep(ctx, server_name, admission.port, tls_upstream)
            for s in (tls_client, tls_upstream or upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def _upstreams(self, admission: Admission, tls_upstream: ssl.SSLSocket, server_name: str,
                   h2_client: bool) -> Upstreams:
        """The origin side as the origin chose in ALPN: one HTTP/2 connection for any client;
        for HTTP/1.1, the one connection (HTTP/1 client) or a pool (concurrent HTTP/2 streams)."""
        if tls_upstream.selected_alpn_protocol() == "h2":
            return H2Upstream(tls_upstream)
        first = BufferedSocket(tls_upstream)
        if not h2_client:
            return Single(first)
        extra = self.mitm_config().get("extra_ca_bundle")

        def more() -> BufferedSocket:
            # Another connection to what was admitted, under the same guard as the first.
            rule = admission.decision.rule
            pattern = rule.destination_pattern if rule is not None and rule.action == "allow" else None
            raw = dial(admission.host, admission.port, self.guard, resolver=self.resolver,
                       rule_pattern=pattern, upstream=self.upstream.get())
            ctx = upstream_ssl_context(extra, ("http/1.1",))
            tls = wrap_origin(ctx, raw, server_name, admission.port, self.origin_sessions)
            try:
                with gevent.Timeout(HANDSHAKE_TIMEOUT):
                    tls.do_handshake()
            except BaseException:
                tls.close()
                self.origin_sessions.forget(ctx, server_name, admission.port)
                raise
            self.origin_sessions.keep(ctx, server_name, admission.port, tls)
            return BufferedSocket(tls)

        return H1Pool(first, more)

    def _sni_mismatch(self, admission: Admission, sni: str | None) -> str | None:
        """The name inside TLS must be the one the connection was allowed for."""
        if not sni:
            return None
        sni = sni.lower().rstrip(".")
        allowed = admission.host if not is_ip_literal(admission.host) else admission.resolved_hostname
        if allowed is None or sni == allowed:
            return None
        return f"TLS server name {sni!r} is not the allowed destination {allowed!r}"

    def _refuse_all(self, client: BufferedSocket, reason: str, admission: Admission, detail: str,
                    h2: bool = False) -> None:
        """Answer the first request (if any) with a 403/502 that says why, then close."""
        self.gate.refused(admission, reason, method="HTTPS")
        code, text = (403, "Forbidden") if reason == "sni_mismatch" else (502, "Bad Gateway")
        body = f"greyproxy: {detail}\n" if reason != "sni_mismatch" else self.gate.blocked_text(admission, reason)
        answer = simple_response(code, text, body, [("X-Greyproxy-Reason", reason)])
        if h2:  # the same answer on the client's first HTTP/2 stream
            dest = destination_for(admission, "https", None, in_tunnel=True)
            H2Server(self.gate, self.exchanges, admission, dest, client.sock, None, refusal=answer).serve()  # type: ignore[arg-type]
            return
        try:
            client.sock.settimeout(HANDSHAKE_TIMEOUT)
            client.read_head()
            client.sock.sendall(answer)
        except (OSError, WireError, ssl.SSLError):
            pass

    # -- the request loop ----------------------------------------------------------------
    def _loop(self, admission: Admission, client: BufferedSocket, upstreams: Upstreams, scheme: str,
              server_name: str | None = None) -> None:
        """Every request on the connection goes through the one exchange pipeline: checked
        against the admitted destination and the rules as they are now, then forwarded."""
        pipeline = self.exchanges
        limits = self.limits
        assert limits is not None, "runtime.py sets it when the listeners start"
        dest = destination_for(admission, scheme, server_name, in_tunnel=True)
        try:
            while True:
                # The whole head within limits.head_seconds of its first byte, as on the plain
                # proxy: a per-read timeout would let one byte every few seconds hold it forever.
                raw = limits.read_head(client, idle_seconds=IDLE_TIMEOUT)
                if raw is None:
                    return
                try:
                    request = parse_head(raw, is_request=True)
                except WireError as exc:
                    pipeline.refuse(client.sock, admission, "malformed_request", str(exc))
                    return
                problem = pipeline.check(request, dest)
                if problem is not None:
                    pipeline.refuse(client.sock, admission, *problem)
                    return
                upstream = upstreams.lease()  # the one connection, or a stream to an HTTP/2 origin
                keep = False
                try:
                    keep = pipeline.run(client, upstream, request, dest)
                finally:
                    upstreams.release(upstream, keep)
                if not keep:
                    return
        except WireError as exc:
            log.debug("connection to %s ended: %s", admission.host, exc)
            try:
                client.sock.sendall(bad_request(exc))
            except (OSError, ssl.SSLError):
                pass
        except DeadlineExceeded:
            limits.hit(HEAD_DEADLINE, admission.container,
                       f"request head inside the tunnel to {admission.host} not complete in time")
            try:
                client.sock.settimeout(REFUSE_SECONDS)
                client.sock.sendall(REQUEST_TIMEOUT)
            except (OSError, ssl.SSLError):
                pass
        except (OSError, ssl.SSLError, gevent.Timeout) as exc:
            log.debug("intercepted connection to %s ended: %s", admission.host, exc)
