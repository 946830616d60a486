"""Credential values at rest (docs/sessions.md): AES-256-GCM with a 32-byte key in
`<data>/session.key` (0600). Layout: 12-byte random nonce ‖ ciphertext ‖ 16-byte tag."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "session.key"
KEY_SIZE = 32
NONCE_SIZE = 12


class KeyFileError(ValueError):
    """The key file exists but cannot be used; credential support stays off (never regenerated)."""


class DecryptError(ValueError):
    pass


def load_or_create_key(data_dir: Path) -> tuple[bytes, bool]:
    """(key, created). A key of the wrong size is refused, not replaced: replacing it would
    silently make every stored secret unreadable."""
    path = data_dir / KEY_FILE
    if path.exists():
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read the credential key: {exc}") from None
        if len(key) != KEY_SIZE:
            raise KeyFileError(
                f"{path}: the credential key must be exactly {KEY_SIZE} bytes, found {len(key)}; "
                "credential support is disabled until it is fixed or removed"
            )
        os.chmod(path, 0o600)
        return key, False
    key = secrets.token_bytes(KEY_SIZE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key, True


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def decrypt(key: bytes, blob: bytes) -> bytes:
    if len(blob) < NONCE_SIZE + 16:
        raise DecryptError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], None)
    except InvalidTag:
        raise DecryptError("wrong key or tampered ciphertext") from None
