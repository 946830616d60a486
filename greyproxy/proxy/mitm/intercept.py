"""What happens inside an allowed tunnel (§1.3 step 7, §8.3): the first bytes decide.

- TLS ClientHello → interception when enabled, a CA is loaded and the host is not bypassed
  (else a blind pipe, with the skip reason recorded on the connection's log row);
- plain HTTP → the same request loop, in clear;
- anything else, or a server that speaks first → a blind pipe.

In the request loop every request is re-checked (§3.8), its Host must name the server the
tunnel was allowed for (D13), and each exchange is recorded as a transaction."""

from __future__ import annotations

import logging
import re
import socket
import ssl
from typing import TYPE_CHECKING

import gevent
from gevent import select as gselect

from greyproxy.capture.recorder import Exchange
from greyproxy.capture.websocket import deflate_negotiated, relay_frames, rewrite_extension_offer
from greyproxy.policy.decide import ConnectionRequest, Decision, Verdict
from greyproxy.policy.patterns import is_ip_literal
from greyproxy.proxy.http import simple_response, split_host_port
from greyproxy.proxy.httpwire import (
    BufferedSocket,
    Head,
    WireError,
    forward_message,
    parse_head,
    read_final_response,
    relay_body,
    response_framing,
    serialize_head,
    wants_close,
)
from greyproxy.proxy.mitm.upstream import upstream_ssl_context
from greyproxy.proxy.mwhooks import MiddlewareHooks
from greyproxy.proxy.tlshello import Hello, alert_record, peek_hello
from greyproxy.proxy.tunnel import relay

if TYPE_CHECKING:
    from greyproxy.proxy.gate import Admission
    from greyproxy.runtime import Runtime

log = logging.getLogger("greyproxy.mitm")

SNIFF_TIMEOUT = 30.0  # if neither side speaks by then, it is an idle pipe
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 120.0
_HTTP_METHOD = re.compile(rb"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT) ")
_HTTP_PREFIXES = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"TRACE ", b"CONNECT ")


def classify(first: bytes) -> str | None:
    """'tls', 'http', 'other', or None when more bytes are needed to tell."""
    if not first:
        return None
    if first[0] == 0x16:
        return "tls" if len(first) < 2 or first[1] == 0x03 else "other"
    if _HTTP_METHOD.match(first):
        return "http"
    if any(p.startswith(first) for p in _HTTP_PREFIXES):
        return None
    return "other"


class Interceptor:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.recorder = runtime.recorder
        self.hooks = MiddlewareHooks(runtime)

    # -- entry -------------------------------------------------------------------------
    def serve(self, admission: Admission, client: socket.socket, upstream: socket.socket, early: bytes = b"") -> None:
        """`early`: bytes the client sent before the tunnel was set up (right behind its CONNECT
        head), already read off the socket, so they are judged here rather than peeked."""
        kind = (classify(early[:16]) or "other") if early else self._sniff(client, upstream)
        if kind == "http":
            buffered = BufferedSocket(client)
            buffered.buf += early  # parsed, re-checked and recorded like every later request
            try:
                self._loop(admission, buffered, BufferedSocket(upstream), "http")
            finally:
                upstream.close()
            return
        if kind == "tls":
            self._tls(admission, client, upstream, early)
            return
        self._skipped(admission, "non_tls")
        if early:
            upstream.sendall(early)
        self.rt.metrics.relayed(*relay(client, upstream))

    def _skipped(self, admission: Admission, reason: str) -> None:
        self.rt.writer.skip_reason(admission.container, admission.host, admission.port, reason)

    def _sniff(self, client: socket.socket, upstream: socket.socket) -> str:
        # gevent's poll (event-loop watchers), not select(): select() cannot take fds >= 1024.
        poller = gselect.poll()
        poller.register(client.fileno(), gselect.POLLIN)
        poller.register(upstream.fileno(), gselect.POLLIN)
        for _ in range(16):  # bounded: a handful of short reads settle it
            ready = {fd for fd, _ in poller.poll(SNIFF_TIMEOUT * 1000)}
            if not ready:
                return "other"
            if client.fileno() not in ready:
                return "other"  # the server speaks first (SSH, SMTP, ...): not ours to parse
            try:
                peeked = client.recv(16, socket.MSG_PEEK)
            except OSError:
                return "other"
            kind = classify(peeked)
            if kind is not None:
                return kind
            if not peeked:
                return "other"
            gevent.sleep(0.01)
        return "other"

    def _skip_reason(self, admission: Admission) -> str | None:
        mitm = self.rt.mitm
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
        and must name the admitted destination (D13, D29) before a byte goes upstream."""
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
        self._skipped(admission, reason)
        if early:
            upstream.sendall(early)
        self.rt.metrics.relayed(*relay(client, upstream))

    def _refuse_hello(self, admission: Admission, client: socket.socket, upstream: socket.socket, hello: Hello,
                      reason: str, detail: str) -> None:
        """Close a tunnel whose ClientHello is refused; nothing was sent upstream. The log gets
        a blocked row with the reason (as an intercepted mismatch does). The client, which can
        be told nothing in HTTP here, gets a fatal TLS alert: access_denied for a name, or
        OpenSSL's own answer to a hello it could not parse (decode_error if none)."""
        a = admission
        log.info("refused TLS from %s to %s:%s: %s", a.container, a.host, a.port, detail)
        self.rt.gate.record(a.container, a.host, a.port, a.method, Decision(Verdict.DENY, reason), 0,
                            resolved_hostname=a.resolved_hostname, container_id=a.container_id)
        self.rt.metrics.mitm(reason)
        if reason == "sni_mismatch":
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
        leaves = self.rt.mitm.leaves
        assert leaves is not None
        seen: dict[str, str | None] = {}

        def pick_leaf(tls_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            seen["sni"] = server_name
            tls_obj.context = leaves.context_for(server_name or admission.host)

        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.sni_callback = pick_leaf
        base.set_alpn_protocols(["http/1.1"])
        try:
            tls_client = base.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            with gevent.Timeout(HANDSHAKE_TIMEOUT):
                tls_client.do_handshake()
        except (OSError, ssl.SSLError, gevent.Timeout) as exc:
            # Typically a client that does not trust our CA (or pins its certificate).
            log.info("MITM handshake with client failed for %s: %s", admission.host, exc)
            self.rt.metrics.mitm("client_error")
            self._skipped(admission, "mitm_error")
            client.close()
            upstream.close()
            return
        sni = seen.get("sni")
        server_name = sni or admission.host
        mismatch = self._sni_mismatch(admission, sni)
        tls_upstream = None
        upstream_error = None
        if not mismatch:
            try:
                ctx = upstream_ssl_context(self.rt.config.raw["mitm"].get("extra_ca_bundle"))
                tls_upstream = ctx.wrap_socket(upstream, server_hostname=server_name, do_handshake_on_connect=False)
                with gevent.Timeout(HANDSHAKE_TIMEOUT):
                    tls_upstream.do_handshake()
            except (OSError, ssl.SSLError, gevent.Timeout) as exc:
                upstream_error = str(exc) or exc.__class__.__name__
                log.info("upstream TLS to %s failed: %s", server_name, upstream_error)
        self.rt.metrics.mitm("sni_mismatch" if mismatch else "upstream_error" if tls_upstream is None else "ok")
        try:
            if mismatch or tls_upstream is None:
                self._refuse_all(
                    BufferedSocket(tls_client),
                    "sni_mismatch" if mismatch else "upstream_tls_error",
                    admission,
                    detail=mismatch or upstream_error or "",
                )
                return
            self._loop(admission, BufferedSocket(tls_client), BufferedSocket(tls_upstream), "https", server_name)
        finally:
            for s in (tls_client, tls_upstream or upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def _sni_mismatch(self, admission: Admission, sni: str | None) -> str | None:
        """D13: the name inside TLS must be the one the connection was allowed for."""
        if not sni:
            return None
        sni = sni.lower().rstrip(".")
        allowed = admission.host if not is_ip_literal(admission.host) else admission.resolved_hostname
        if allowed is None or sni == allowed:
            return None
        return f"TLS server name {sni!r} is not the allowed destination {allowed!r}"

    def _refuse_all(self, client: BufferedSocket, reason: str, admission: Admission, detail: str) -> None:
        """Answer the first request (if any) with a 403/502 that says why, then close."""
        self.rt.gate.record(admission.container, admission.host, admission.port, "HTTPS",
                            Decision(Verdict.DENY, reason), 0)
        try:
            client.sock.settimeout(HANDSHAKE_TIMEOUT)
            client.read_head()
            code, text = (403, "Forbidden") if reason == "sni_mismatch" else (502, "Bad Gateway")
            body = f"greyproxy: {detail}\n" if reason != "sni_mismatch" else self.rt.gate.blocked_text(admission, reason)
            client.sock.sendall(simple_response(code, text, body, [("X-Greyproxy-Reason", reason)]))
        except (OSError, WireError, ssl.SSLError):
            pass

    # -- the request loop ----------------------------------------------------------------
    def _loop(self, admission: Admission, client: BufferedSocket, upstream: BufferedSocket, scheme: str,
              server_name: str | None = None) -> None:
        expected = (server_name or admission.host).lower()
        rule_id = admission.decision.rule.id if admission.decision.rule else None
        try:
            while True:
                client.sock.settimeout(IDLE_TIMEOUT)
                raw = client.read_head()
                if raw is None:
                    return
                request = parse_head(raw, is_request=True)
                blocked = self._recheck(admission, request, expected)
                if blocked is not None:
                    client.sock.sendall(simple_response(
                        403, "Forbidden", self.rt.gate.blocked_text(admission, blocked),
                        [("X-Greyproxy-Reason", blocked)],
                    ))
                    return
                if not self._exchange(admission, client, upstream, request, scheme, expected, rule_id):
                    return
        except (OSError, WireError, ssl.SSLError, gevent.Timeout) as exc:
            log.debug("intercepted connection to %s ended: %s", admission.host, exc)

    def _recheck(self, admission: Admission, request: Head, expected: str) -> str | None:
        """A reason to refuse this request, or None."""
        host_header = request.get("host")
        if host_header:
            try:
                host, _ = split_host_port(host_header, admission.port)
            except ValueError:
                return "bad_host_header"
            host = host.lower().rstrip(".")
            if host != expected and not (is_ip_literal(expected) and expected == admission.host):
                return "sni_mismatch"
        decision = self.rt.policy.decide(ConnectionRequest(
            container=admission.container, host=expected, port=admission.port,
            resolved_hostname=admission.resolved_hostname,
            control_plane=self.rt.guard.is_control_plane(expected, admission.port),
        ))
        if decision.verdict is Verdict.DENY:
            return decision.reason
        return None

    def _exchange(self, admission: Admission, client: BufferedSocket, upstream: BufferedSocket, request: Head,
                  scheme: str, host: str, rule_id: int | None) -> bool:
        """Forward one request and its response; True if the connection can carry another."""
        method, target, _version = request.start
        default_port = 443 if scheme == "https" else 80
        authority = host if admission.port == default_port else f"{host}:{admission.port}"
        url = target if target.startswith(("http://", "https://")) else f"{scheme}://{authority}{target}"
        ex = Exchange(admission.container, host, admission.port, url, request, rule_id)
        is_upgrade = "upgrade" in request.tokens("connection") and (request.get("upgrade") or "").lower() == "websocket"
        step = None
        if is_upgrade:
            rewrite_extension_offer(request)  # replaces request.headers
        else:
            step = self.hooks.before_request(ex, client, request, request.headers, target, tls=scheme == "https")
            if step is not None and step.refusal is not None:
                client.sock.sendall(step.refusal)
                return False
        headers = step.headers if step is not None and step.headers is not None else request.headers
        # What is stored is the request as the client sent it (placeholders); only what goes
        # upstream carries the real secrets (§11.2).
        headers, target = self.rt.gate.substitute(ex, headers, target, host)
        head_out = serialize_head(f"{method} {target} {request.start[2]}", headers)
        ex.request_tap = ex.tap_for(request)
        if step is not None and step.body is not None:  # a middleware replaced the body
            upstream.sock.sendall(head_out + step.body)
            ex.request_tap.feed(step.body)
        else:
            upstream.sock.sendall(head_out)
            relay_body(client, upstream.sock, request, tap=ex.request_tap.feed)

        upstream.sock.settimeout(IDLE_TIMEOUT)
        raw, response = read_final_response(upstream, client.sock)
        ex.response = response
        code = int(response.start[1])
        if code == 101 and is_upgrade:
            client.sock.sendall(raw)
            self.recorder.record(ex)
            self._websocket(ex, client, upstream, deflate_negotiated(response))
            return False
        no_body, framed = response_framing(method, response)
        keep = framed and not wants_close(request) and "close" not in response.tokens("connection")
        changed = self.hooks.after_response(ex, upstream, response, no_body, framed)
        if changed is not None:
            ex.response = Head([response.start[0], str(changed.status_code), changed.reason], changed.headers)
            raw = serialize_head(" ".join(ex.response.start), changed.headers)
            keep = keep and not changed.close
        ex.response_tap = ex.tap_for(ex.response)
        if changed is not None and changed.body is not None:
            client.sock.sendall(raw + changed.body)
            ex.response_tap.feed(changed.body)
        else:
            forward_message(upstream, client.sock, raw, response, no_body=no_body, until_close=not framed,
                            tap=ex.response_tap.feed)
        self.recorder.record(ex)
        return keep

    def _websocket(self, ex: Exchange, client: BufferedSocket, upstream: BufferedSocket, deflate: bool) -> None:
        client.sock.settimeout(None)
        upstream.sock.settimeout(None)

        def pump(src: BufferedSocket, dst: BufferedSocket, from_client: bool) -> None:
            try:
                relay_frames(src, dst.sock, deflate, lambda f: self.recorder.frame(ex, f, from_client))
            except (OSError, WireError, ssl.SSLError):
                pass

        down = gevent.spawn(pump, upstream, client, False)
        pump(client, upstream, True)
        down.join(timeout=IDLE_TIMEOUT)
        down.kill(block=False)

