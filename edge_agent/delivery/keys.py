"""Ed25519 keys that sign and verify model bundles (the `cryptography` package does the maths).

Files, as `edge-agent keys generate NAME` writes them:
  NAME.key  the private key: PKCS#8 PEM, unencrypted, file mode 0600. Keep it on the build
            machine or in the CI secret store; never copy it to a board.
  NAME.pub  the public key: SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----"), the same
            format `openssl pkey -pubout` writes, so keys made with OpenSSL
            (`openssl genpkey -algorithm ed25519`) work too. Boards list it in `trusted_keys`.
A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key; bundles
name the id of the key that signed them, so errors can say which key it was.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.atomic_file import write_file_atomically
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644
MAX_KEY_FILE_BYTES = 16 * 1024


class SigningKeyError(InputError, ValueError):
    """A key file is missing, unreadable, or not an Ed25519 key."""


@dataclass(frozen=True)
class PublicKey:
    """A public key that verifies bundle signatures."""

    key_id: str
    source: str
    _key: Ed25519PublicKey = field(repr=False, compare=False)

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature over exactly `data`."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class PrivateKey:
    """A private key that signs bundle manifests."""

    key_id: str
    source: str
    _key: Ed25519PrivateKey = field(repr=False, compare=False)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @property
    def public_key(self) -> PublicKey:
        return _public(self._key.public_key(), self.source)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(name: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (0600) and NAME.pub; refuse to replace an existing key unless `overwrite`."""
    base = Path(name)
    if base.suffix in (PRIVATE_KEY_SUFFIX, PUBLIC_KEY_SUFFIX):
        base = base.with_suffix("")
    private_path = base.with_name(base.name + PRIVATE_KEY_SUFFIX)
    public_path = base.with_name(base.name + PUBLIC_KEY_SUFFIX)
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise SigningKeyError(
                    f"{path} already exists: pick another NAME, or pass --force to replace the key "
                    "(bundles signed with the old key will no longer verify against the new .pub)"
                )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file_atomically(private_path, private_pem, PRIVATE_KEY_MODE)
    write_file_atomically(public_path, public_pem, PUBLIC_KEY_MODE)
    return private_path, public_path


def load_private_key(path: str | Path) -> PrivateKey:
    """Read an Ed25519 private key (PKCS#8 PEM); SigningKeyError names what is wrong."""
    path = Path(path)
    data = read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise SigningKeyError(f"{path} is encrypted; edge-agent reads unencrypted PKCS#8 keys: "
                              "decrypt it with `openssl pkey -in KEY -out PLAIN.key`") from err
    except ValueError as err:
        hint = " (that is a public key: sign with the .key file)" if b"PUBLIC KEY" in data else ""
        raise SigningKeyError(f"{path} is not a PEM private key{hint}: make one with `edge-agent keys generate NAME`") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key: make one with `edge-agent keys generate NAME`")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        logger.warning("private key %s is readable by others (mode %o): chmod 600 %s", path, mode, path)
    return PrivateKey(key_id_of(key.public_key()), str(path), key)


def load_public_key(path: str | Path) -> PublicKey:
    """Read an Ed25519 public key (SubjectPublicKeyInfo PEM); SigningKeyError names what is wrong."""
    path = Path(path)
    data = read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise SigningKeyError(f"{path} is a private key: trust the .pub file instead, and keep the .key off the board")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise SigningKeyError(f"{path} is not a PEM public key: use the .pub file that `edge-agent keys generate` wrote") from err
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return _public(key, str(path))


def _public(key: Ed25519PublicKey, source: str) -> PublicKey:
    return PublicKey(key_id_of(key), source, key)


def read_key_file(path: Path, what: str, error: type[SigningKeyError] = SigningKeyError) -> bytes:
    """A key file's bytes, bounded; `error` (SigningKeyError or a subclass) says what is wrong and what to do."""
    try:
        if path.stat().st_size > MAX_KEY_FILE_BYTES:
            raise error(f"{path} is too large to be a {what}")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise error(f"{what} path {path} is a directory: name the key file") from None
    except OSError as err:
        raise error(f"{what} file {path} cannot be read ({err.strerror}): check its owner and mode "
                    "(the service user must be able to read it)") from None


__all__ = [
    "PrivateKey",
    "PublicKey",
    "SigningKeyError",
    "generate_key_pair",
    "key_id_of",
    "load_private_key",
    "load_public_key",
]
