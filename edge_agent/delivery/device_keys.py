"""X25519 device keys: a board's key pair for models encrypted at rest (`cryptography` does the maths).

Files, as `edge-agent keys generate-device NAME` writes them:
  NAME.key  the board's private key: PKCS#8 PEM, unencrypted, mode 0600. It goes on that board
            only (`[models] device_key`, or a systemd credential: see the README), owned by the
            service user; whoever holds it can decrypt the models made for it.
  NAME.pub  the public key (SubjectPublicKeyInfo PEM): `bundle create --encrypt-for NAME.pub`
            encrypts for it. It is not secret.
A device key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key, like a
signing key's. Signing keys (Ed25519) and device keys (X25519) are different kinds: each loader
says so when given the other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edge_agent.atomic_file import write_file_atomically
from edge_agent.delivery.keys import PRIVATE_KEY_MODE, PUBLIC_KEY_MODE, SigningKeyError, read_key_file

CREDENTIAL_PREFIX = "credential:"  # device_key = "credential:NAME": $CREDENTIALS_DIRECTORY/NAME (systemd)


class DeviceKeyError(SigningKeyError):
    """A device key file is missing, unreadable, or not an X25519 key."""


@dataclass(frozen=True)
class DevicePublicKey:
    key_id: str
    name: str  # the file's stem, shown in `bundle verify` / `inspect` ("encrypted for kitchen-pi")
    raw: bytes = field(repr=False)

    def load(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.raw)


@dataclass(frozen=True)
class DevicePrivateKey:
    key_id: str
    source: str
    _key: X25519PrivateKey = field(repr=False, compare=False)

    def exchange(self, peer_raw: bytes) -> bytes:
        return self._key.exchange(X25519PublicKey.from_public_bytes(peer_raw))

    @property
    def public_raw(self) -> bytes:
        return _raw(self._key.public_key())


def _raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def generate_device_key_pair(name: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (0600) and NAME.pub; refuse to replace existing files unless `overwrite`."""
    base = Path(name)
    if base.suffix in (".key", ".pub"):
        base = base.with_suffix("")
    private_path, public_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise DeviceKeyError(f"{path} already exists: pick another NAME, or pass --force to replace it "
                                     "(models encrypted for the old key can then no longer be decrypted)")
    key = X25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_file_atomically(private_path, private_pem, PRIVATE_KEY_MODE)
    write_file_atomically(public_path, public_pem, PUBLIC_KEY_MODE)
    return private_path, public_path


def load_device_public_key(path: str | Path) -> DevicePublicKey:
    path = Path(path)
    data = read_key_file(path, "device public key", DeviceKeyError)
    if b"PRIVATE KEY" in data:
        raise DeviceKeyError(f"{path} is a private key: encrypt for the board's .pub file, and keep the .key on the board")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        raise DeviceKeyError(f"{path} is not a PEM public key: use the .pub that `edge-agent keys generate-device` "
                             "wrote") from err
    if not isinstance(key, X25519PublicKey):
        raise DeviceKeyError(f"{path} holds a {type(key).__name__}, not a device (X25519) key: make one with "
                             "`edge-agent keys generate-device NAME` (`keys generate` makes signing keys)")
    raw = _raw(key)
    return DevicePublicKey(device_key_id(raw), path.stem, raw)


def resolve_device_key_path(setting: str) -> Path:
    """`device_key` as a path: "credential:NAME" names a systemd credential (LoadCredential=NAME:…)."""
    if setting.startswith(CREDENTIAL_PREFIX):
        name = setting[len(CREDENTIAL_PREFIX):]
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise DeviceKeyError(f"models.device_key names the credential {name!r} but $CREDENTIALS_DIRECTORY is not "
                                 "set: run under systemd (LoadCredential=) or give a file path")
        return Path(directory) / name
    return Path(setting)


def load_device_private_key(setting: str | Path) -> DevicePrivateKey:
    """Read a board's X25519 private key (a path, or "credential:NAME"); DeviceKeyError names what is wrong."""
    path = resolve_device_key_path(str(setting))
    data = read_key_file(path, "device key", DeviceKeyError)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise DeviceKeyError(f"{path} is encrypted; edge-agent reads unencrypted PKCS#8 keys (protect the file "
                             "with its mode, 0600, or a systemd credential)") from err
    except ValueError as err:
        hint = " (that is a public key: the board needs the .key file)" if b"PUBLIC KEY" in data else ""
        raise DeviceKeyError(f"{path} is not a PEM private key{hint}: make one with "
                             "`edge-agent keys generate-device NAME`") from err
    if not isinstance(key, X25519PrivateKey):
        raise DeviceKeyError(f"{path} holds a {type(key).__name__}, not a device (X25519) key: make one with "
                             "`edge-agent keys generate-device NAME`")
    return DevicePrivateKey(device_key_id(_raw(key.public_key())), str(path), key)


