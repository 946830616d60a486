"""A local TLS origin for interception tests: its own throw-away CA, a leaf for `localhost`
and 127.0.0.1/127.0.0.2, and handlers that exercise what capture must get right."""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port


def make_origin_pki(folder: Path) -> tuple[Path, Path]:
    """(ca.pem, leaf-with-key.pem) for localhost, 127.0.0.1 and 127.0.0.2."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test origin CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, leaf_path = folder / "origin-ca.pem", folder / "origin-leaf.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    )
    return ca_path, leaf_path


class TLSHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})  # type: ignore[attr-defined]
        if self.path.startswith("/gzip"):
            payload = json.dumps({"compressed": True, "items": list(range(50))}).encode()
            self._send(200, gzip.compress(payload, mtime=0), "application/json", {"Content-Encoding": "gzip",
                                                                          "Set-Cookie": "session=abc"})
        elif self.path.startswith("/binary"):
            self._send(200, bytes(range(256)) * 16, "application/octet-stream")
        else:
            self._send(200, b"hello over tls\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self.server.seen.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "body": data})  # type: ignore[attr-defined]
        self._send(200, data, self.headers.get("Content-Type", "application/octet-stream"))

    def log_message(self, *args: Any) -> None:
        pass


class TLSOrigin:
    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.ca_path, leaf = make_origin_pki(folder)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf)
        self.server = ThreadingHTTPServer((host, free_port(host)), TLSHandler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
