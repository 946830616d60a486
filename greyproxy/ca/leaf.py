"""Leaf certificates per server name, signed by the CA, with their own key (never the CA's;
docs/decisions.md), kept in a bounded LRU of ready-to-use server SSLContexts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from greyproxy.ca.authority import CertificateAuthority

LEAF_VALIDITY = dt.timedelta(days=30)
RENEW_BEFORE = dt.timedelta(days=1)


class LeafCache:
    def __init__(self, ca: CertificateAuthority, max_entries: int = 1024) -> None:
        self.ca = ca
        self.max_entries = max_entries
        # One leaf key for this CA generation: never the CA's own key.
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._contexts: OrderedDict[tuple[str, tuple[str, ...]], tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()
        self.generated = 0

    def __len__(self) -> int:
        return len(self._contexts)

    def cached(self, name: str, alpn: tuple[str, ...] = ("http/1.1",)) -> bool:
        """Whether a leaf context for `name` is ready (asking costs no signature)."""
        return (name.lower().rstrip("."), alpn) in self._contexts

    def context_for(self, name: str, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        """`alpn`: what the client may choose. The interception path offers h2 too (it can
        serve HTTP/2 streams); a path that only speaks HTTP/1.1 keeps the default."""
        name = name.lower().rstrip(".")
        key = (name, alpn)
        now = dt.datetime.now(dt.UTC)
        entry = self._contexts.get(key)
        if entry is not None and entry[1] - now > RENEW_BEFORE:
            self._contexts.move_to_end(key)
            return entry[0]
        cert, not_after = self._issue(name, now)
        ctx = self._server_context(cert, alpn)
        self._contexts[key] = (ctx, not_after)
        self._contexts.move_to_end(key)
        while len(self._contexts) > self.max_entries:
            self._contexts.popitem(last=False)
        return ctx

    def _issue(self, name: str, now: dt.datetime) -> tuple[x509.Certificate, dt.datetime]:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            san = x509.DNSName(name)
        not_after = min(now + LEAF_VALIDITY, self.ca.cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self.ca.cert.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()), critical=False
            )
            .sign(self.ca.key, hashes.SHA256())
        )
        self.generated += 1
        return cert, not_after

    def _server_context(self, cert: x509.Certificate, alpn: tuple[str, ...]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # WebSocket stays visible with h2 offered: without SETTINGS_ENABLE_CONNECT_PROTOCOL,
        # clients open an HTTP/1.1 connection for it.
        ctx.set_alpn_protocols(list(alpn))
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.ca.cert_pem
        # ssl can only load a chain from files: write both to a private temp file, load, delete.
        fd, path = tempfile.mkstemp(prefix="greyproxy-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(chain + self._key_pem)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx
