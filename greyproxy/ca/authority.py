"""The interception CA: ECDSA P-256, 10 years, files in the data dir
(`ca-key.pem` 0600, `ca-cert.pem` 0644)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from greyproxy.files import write_file

CA_CERT_FILE = "ca-cert.pem"
CA_KEY_FILE = "ca-key.pem"
CA_COMMON_NAME = "Greyproxy CA"
CA_VALIDITY = dt.timedelta(days=3650)


class CAExists(FileExistsError):
    pass


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path
    loaded_mtime: float

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def ca_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE


def generate_ca(data_dir: Path, force: bool = False) -> CertificateAuthority:
    cert_path, key_path = ca_paths(data_dir)
    if not force and (cert_path.exists() or key_path.exists()):
        raise CAExists(f"a CA already exists in {data_dir} (use force to replace it)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "greyproxy")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(16), "big") >> 1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first (0600), then the certificate: a reader never sees a cert without its key.
    write_file(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()), 0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return load_ca(data_dir)  # type: ignore[return-value]


def ca_mtime(data_dir: Path) -> float | None:
    cert_path, key_path = ca_paths(data_dir)
    try:
        return max(cert_path.stat().st_mtime, key_path.stat().st_mtime)
    except FileNotFoundError:
        return None


def load_ca(data_dir: Path) -> CertificateAuthority | None:
    """The CA if both files exist and parse; None when absent. ValueError when broken."""
    cert_path, key_path = ca_paths(data_dir)
    mtime = ca_mtime(data_dir)
    if mtime is None:
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) and not hasattr(key, "sign"):
        raise ValueError("unsupported CA key type")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError("ca-cert.pem and ca-key.pem do not belong together")
    return CertificateAuthority(cert, key, cert_path, key_path, mtime)  # type: ignore[arg-type]


def ca_status(data_dir: Path, ca: CertificateAuthority | None, installed: bool) -> dict[str, Any]:
    cert_path, key_path = ca_paths(data_dir)
    status: dict[str, Any] = {
        "generated": ca is not None,
        "certPath": str(cert_path),
        "keyPath": str(key_path),
        "installed": installed,
        "installCommands": {"linux": "greyproxy cert install", "macos": "greyproxy cert install"},
    }
    if ca is not None:
        status["subject"] = ca.cert.subject.rfc4514_string()
        status["expiresAt"] = ca.cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    return status
