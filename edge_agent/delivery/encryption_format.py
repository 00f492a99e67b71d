"""The `encryption` object of a bundle's manifest: its fields, parsed and written (see
encryption.py for the format and the maths). Apart from encryption.py because reading a manifest
must not import `cryptography` (~10 MB of RSS): a board serving a bare .tflite never needs it."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import InputError

ENCRYPTION_FORMAT = "eab-encryption/1"
CIPHER = "AES-256-GCM"
KEY_WRAP = "X25519-HKDF-SHA256-AES-256-GCM"
TAG_BYTES = 16
NONCE_BYTES = 12
KEY_BYTES = 32
MAX_RECIPIENTS = 1000


class EncryptionError(InputError, ValueError):
    """An encrypted bundle cannot be decrypted here (no key, another board's key, damaged)."""


@dataclass(frozen=True)
class Recipient:
    key_id: str
    name: str
    ephemeral_public_key: bytes
    wrap_nonce: bytes
    wrapped_key: bytes

    def describe(self) -> str:
        return f"{self.name} ({self.key_id})" if self.name else self.key_id


@dataclass(frozen=True)
class Encryption:
    nonce: bytes
    ciphertext_sha256: str
    ciphertext_size_bytes: int
    recipients: tuple[Recipient, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ENCRYPTION_FORMAT, "cipher": CIPHER, "key_wrap": KEY_WRAP, "nonce": _b64(self.nonce),
            "ciphertext_sha256": self.ciphertext_sha256, "ciphertext_size_bytes": self.ciphertext_size_bytes,
            "recipients": [{"key_id": r.key_id, "name": r.name, "ephemeral_public_key": _b64(r.ephemeral_public_key),
                            "wrap_nonce": _b64(r.wrap_nonce), "wrapped_key": _b64(r.wrapped_key)}
                           for r in self.recipients],
        }

    def describe_recipients(self) -> str:
        return ", ".join(r.describe() for r in self.recipients)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_encryption(raw: Any) -> Encryption:
    """The manifest's `encryption` object; ValueError naming the field that is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("encryption: expected an object")
    if raw.get("format") != ENCRYPTION_FORMAT or raw.get("cipher") != CIPHER or raw.get("key_wrap") != KEY_WRAP:
        raise ValueError(f"encryption: format {raw.get('format')!r} / {raw.get('cipher')!r} is not supported here "
                         f"(this edge-agent reads {ENCRYPTION_FORMAT}, {CIPHER}): upgrade edge-agent on this machine")
    sha = raw.get("ciphertext_sha256")
    size = raw.get("ciphertext_size_bytes")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("encryption.ciphertext_sha256: expected 64 lower-case hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < TAG_BYTES:
        raise ValueError("encryption.ciphertext_size_bytes: expected a whole number >= 16")
    recipients = raw.get("recipients")
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"encryption.recipients: expected a list of 1 to {MAX_RECIPIENTS} recipients")
    parsed = []
    for number, item in enumerate(recipients):
        if not isinstance(item, dict):
            raise ValueError(f"encryption.recipients[{number}]: expected an object")
        key_id, name = item.get("key_id"), item.get("name", "")
        if not isinstance(key_id, str) or len(key_id) != 16 or not isinstance(name, str) or len(name) > 128:
            raise ValueError(f"encryption.recipients[{number}]: key_id must be 16 hex digits, name a short string")
        parsed.append(Recipient(key_id, name, _bytes(item, "ephemeral_public_key", 32, number),
                                _bytes(item, "wrap_nonce", NONCE_BYTES, number),
                                _bytes(item, "wrapped_key", KEY_BYTES + TAG_BYTES, number)))
    return Encryption(_bytes(raw, "nonce", NONCE_BYTES), sha, size, tuple(parsed))


def _bytes(table: dict, key: str, length: int, number: int | None = None) -> bytes:
    where = f"encryption.recipients[{number}].{key}" if number is not None else f"encryption.{key}"
    try:
        value = base64.b64decode(table.get(key) or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        value = b""
    if len(value) != length:
        raise ValueError(f"{where}: expected {length} bytes in base64")
    return value
