"""The model bundle: one file a board accepts, holding a model, its manifest and a signature.

A bundle (suffix `.eab`, "edge-agent bundle"; recognised by content, not by suffix) is a
zip archive with exactly these members:

  manifest.json     what the model is and how to feed it (see edge_agent.delivery.manifest),
                    stored uncompressed
  model.tflite      the model, byte for byte; its size and SHA-256 are in the manifest
  model.tflite.enc  instead of model.tflite in an encrypted bundle: the model encrypted for
                    the boards the manifest's `encryption` names (edge_agent.delivery.encryption)
  manifest.sig      optional: {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"},
                    an Ed25519 signature over the exact bytes of manifest.json

Reading is in two steps with bounded work (edge_agent.delivery.zip_members), so a board can
check who made a bundle before it inflates or decrypts a byte of the model:

  read_bundle_header  the archive's directory, the manifest (<= 1 MB) and the signature;
  check_trust         the signature verifies against one of the trusted public keys;
  read_bundle_model   the model, streamed with a hard cap (the manifest's size and the
                      caller's limit, models.max_mb on a board), its SHA-256 checked against
                      the manifest, decrypted in memory with the board's device key if encrypted.

`read_bundle` does both steps for the tools. Because the manifest names the model's (and the
ciphertext's) hash, one signature covers the whole bundle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.atomic_file import write_file_atomically
from edge_agent.delivery.manifest import (
    ENCRYPTED_MODEL_MEMBER,
    MODEL_MEMBER,
    Manifest,
    ManifestError,
    ManifestVersionError,
    parse_manifest,
)
from edge_agent.delivery.zip_members import (
    ZIP_MAGIC,
    ArchiveError,
    check_members,
    open_archive,
    read_member,
    stream_member,
)
from edge_agent.errors import InputError

if TYPE_CHECKING:
    # annotations only: keys.py brings `cryptography` (~10 MB of RSS), which a board running a
    # bare .tflite never needs; the key objects handed to sign/check carry their own methods.
    # Device keys are loaded by the caller.
    from edge_agent.delivery.device_keys import DevicePrivateKey
    from edge_agent.delivery.keys import PrivateKey, PublicKey

logger = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".eab"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
SIGNATURE_ALGORITHM = "ed25519"
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4 << 10
DEFAULT_MAX_MODEL_BYTES = 2 << 30  # the tools' limit; a board passes models.max_mb
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # reproducible bytes: same inputs, same bundle


class BundleError(InputError, ValueError):
    """The file is not a bundle, is damaged, or its model does not match its manifest."""


class BundleVersionError(BundleError):
    """The bundle was made by a newer edge-agent (its manifest format is newer than this code)."""


class BundleTrustError(BundleError):
    """The bundle is whole but not signed by a trusted key (unsigned, unknown key, or bad signature)."""


@dataclass(frozen=True)
class Signature:
    key_id: str
    signature: bytes

    def to_bytes(self) -> bytes:
        return (json.dumps({
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }, indent=2, sort_keys=True) + "\n").encode("utf-8")


@dataclass(frozen=True)
class BundleHeader:
    """A bundle's manifest and signature, read without touching the model member."""

    source: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: Signature | None
    _content: Path | bytes  # where the model member is read from (the same file, opened again)
    _max_file_bytes: int

    @property
    def encrypted(self) -> bool:
        return self.manifest.encryption is not None


@dataclass(frozen=True)
class Bundle:
    """A bundle whose container, manifest and member hashes have been checked (not yet its signature).
    `model` is the plain model (None for an encrypted bundle read without its board's key);
    `payload` is the model member as stored: the plain model, or the ciphertext of an encrypted bundle
    read without its key (empty once decrypted: the ciphertext is not kept)."""

    source: str
    manifest: Manifest
    manifest_bytes: bytes
    model: bytes | None
    signature: Signature | None
    payload: bytes = b""

    @property
    def encrypted(self) -> bool:
        return self.manifest.encryption is not None


def is_bundle_bytes(content: bytes) -> bool:
    """True when `content` starts like a zip archive (a .tflite starts with an offset and 'TFL3')."""
    return content[:4] == ZIP_MAGIC


def is_bundle_file(path: str | Path) -> bool:
    """True when the file starts like a bundle (see is_bundle_bytes); False when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return is_bundle_bytes(handle.read(4))
    except OSError:
        return False


def read_bundle_header(content: str | Path | bytes, source: str = "",
                       max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> BundleHeader:
    """Check the container and read the manifest and signature (bounded); BundleError naming the problem."""
    if not isinstance(content, (bytes, bytearray)):
        content = Path(content)
        source = source or str(content)
        _check_readable(content)
    max_file_bytes = max_model_bytes + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 64 * 1024
    archive, handle = _open(content, source, max_file_bytes)
    try:
        infos = _members(archive, source, max_model_bytes)
        manifest_bytes = _read(archive, infos[MANIFEST_MEMBER], MAX_MANIFEST_BYTES, source)
        try:
            manifest = parse_manifest(manifest_bytes, source)
        except ManifestVersionError as err:
            raise BundleVersionError(str(err)) from None
        except ManifestError as err:
            raise BundleError(str(err)) from None
        if manifest.model_member not in infos:
            present = MODEL_MEMBER if manifest.model_member == ENCRYPTED_MODEL_MEMBER else ENCRYPTED_MODEL_MEMBER
            raise BundleError(f"{source}: the manifest says the model is {manifest.model_member}, but the bundle holds "
                              f"{present}: the bundle was altered or damaged; build it again")
        signature = None
        if SIGNATURE_MEMBER in infos:
            signature = _parse_signature(_read(archive, infos[SIGNATURE_MEMBER], MAX_SIGNATURE_BYTES, source), source)
    finally:
        archive.close()
        handle.close()
    return BundleHeader(source, manifest, manifest_bytes, signature, content, max_file_bytes)


def read_bundle_model(header: BundleHeader, max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
                      device_key: DevicePrivateKey | None = None, decrypt: bool = True) -> tuple[bytes | None, bytes]:
    """(plain model, stored member): the model member streamed with a hard cap at the manifest's size
    and `max_model_bytes`, its SHA-256 checked against the manifest, decrypted in memory when encrypted
    (unless decrypt is false: then the plain model is None and only the ciphertext is checked)."""
    manifest, source = header.manifest, header.source
    if manifest.model_size_bytes > max_model_bytes:
        raise BundleError(f"{source}: the model is {manifest.model_size_bytes / 1048576:.1f} MB; at most "
                          f"{max_model_bytes / 1048576:.1f} MB are accepted here (models.max_mb)")
    archive, handle = _open(header._content, source, header._max_file_bytes)
    try:
        info = _members(archive, source, max_model_bytes)[manifest.model_member]
        encryption = manifest.encryption
        expected_size = encryption.ciphertext_size_bytes if encryption else manifest.model_size_bytes
        expected_sha = encryption.ciphertext_sha256 if encryption else manifest.model_sha256
        if info.file_size != expected_size:
            raise BundleError(f"{source}: the {info.filename} member does not match the manifest ({info.file_size:,} "
                              f"bytes; the manifest says {expected_size:,}): the bundle was altered or damaged; copy "
                              "or build it again")
        digest = hashlib.sha256()
        if encryption is not None and decrypt:
            # cryptography (~10 MB of RSS) only for an encrypted bundle
            from edge_agent.delivery.encryption import EncryptionError, decrypt_blocks, unwrap_content_key
            try:
                content_key = unwrap_content_key(encryption, device_key, source)
            except EncryptionError as err:
                raise BundleError(str(err)) from None
            blocks = _hashed(stream_member(archive, info, expected_size, source), digest)
            try:
                model = decrypt_blocks(blocks, content_key, encryption, manifest.model_sha256, source)
            except ArchiveError as err:
                raise BundleError(str(err)) from None
            except EncryptionError as err:
                # the whole ciphertext went through the hash: a mismatch with the signed manifest says more
                _check_digest(digest.hexdigest(), expected_sha, info.file_size, expected_size, source, "encrypted model")
                raise BundleError(str(err)) from None
            _check_digest(digest.hexdigest(), expected_sha, len(model) + 16, expected_size, source, "encrypted model")
            _check_digest(hashlib.sha256(model).hexdigest(), manifest.model_sha256, len(model),
                          manifest.model_size_bytes, source, "model")
            return model, b""
        stored = _read(archive, info, expected_size, source, digest.update)
        _check_digest(digest.hexdigest(), expected_sha, len(stored), expected_size, source,
                      "encrypted model" if encryption else "model")
        return (None if encryption else stored), stored
    finally:
        archive.close()
        handle.close()


def read_bundle(path: str | Path, source: str = "", device_key: DevicePrivateKey | None = None,
                max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES) -> Bundle:
    """Read and check a bundle file (both steps; an encrypted one is decrypted only with `device_key`);
    BundleError (or BundleVersionError) naming the problem (as `source` when given)."""
    header = read_bundle_header(path, source, max_model_bytes)
    return _whole(header, max_model_bytes, device_key)


def parse_bundle(content: bytes, source: str, device_key: DevicePrivateKey | None = None) -> Bundle:
    """Check bundle bytes (see read_bundle)."""
    return _whole(read_bundle_header(content, source), DEFAULT_MAX_MODEL_BYTES, device_key)


def _whole(header: BundleHeader, max_model_bytes: int, device_key: DevicePrivateKey | None) -> Bundle:
    model, stored = read_bundle_model(header, max_model_bytes, device_key, decrypt=device_key is not None)
    return Bundle(header.source, header.manifest, header.manifest_bytes, model, header.signature, stored)


def sign_manifest(manifest_bytes: bytes, key: PrivateKey) -> Signature:
    return Signature(key.key_id, key.sign(manifest_bytes))


def bundle_to_bytes(manifest_bytes: bytes, model: bytes, signature: Signature | None, encrypted: bool = False) -> bytes:
    """The bundle as bytes: manifest.json, model.tflite (model.tflite.enc, the ciphertext, when
    `encrypted`) and, if signed, manifest.sig. Nothing is compressed: models barely shrink, and a
    board then never inflates anything it has not checked."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = [(MANIFEST_MEMBER, manifest_bytes), (ENCRYPTED_MODEL_MEMBER if encrypted else MODEL_MEMBER, model)]
        if signature is not None:
            entries.append((SIGNATURE_MEMBER, signature.to_bytes()))
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def write_bundle(path: str | Path, manifest_bytes: bytes, model: bytes, signature: Signature | None,
                 encrypted: bool = False) -> Path:
    """Write a bundle atomically (temp file + fsync + rename)."""
    return write_file_atomically(path, bundle_to_bytes(manifest_bytes, model, signature, encrypted))


def check_trust(bundle: Bundle | BundleHeader, trusted_keys: list[PublicKey]) -> PublicKey:
    """The trusted key that signed the bundle's manifest; BundleTrustError when there is none."""
    if bundle.signature is None:
        raise BundleTrustError(
            f"{bundle.source} is not signed: sign it with `edge-agent bundle sign {bundle.source} --key NAME.key`"
        )
    if not trusted_keys:
        raise BundleTrustError(
            f"{bundle.source} is signed by key {bundle.signature.key_id}, but no trusted keys are configured: "
            "add the signer's .pub file to trusted_keys (or pass --trusted-key)"
        )
    for key in trusted_keys:
        if key.key_id == bundle.signature.key_id:
            if key.verifies(bundle.manifest_bytes, bundle.signature.signature):
                return key
            raise BundleTrustError(
                f"{bundle.source}: the signature does not match the manifest for key {key.key_id} ({key.source}): "
                "the manifest was altered after signing, or the signature is forged; do not deploy this bundle"
            )
    # The key id is only a hint: a key could be listed under another id by mistake, so try all.
    for key in trusted_keys:
        if key.verifies(bundle.manifest_bytes, bundle.signature.signature):
            return key
    trusted = ", ".join(f"{k.key_id} ({k.source})" for k in trusted_keys)
    raise BundleTrustError(
        f"{bundle.source} is signed by key {bundle.signature.key_id}, which is not trusted here "
        f"(trusted: {trusted}): add that key's .pub to the trusted keys, or re-sign the bundle with a trusted key"
    )


def _check_readable(path: Path) -> None:
    try:
        path.stat()
        if path.is_dir():
            raise BundleError(f"bundle path {path} is a directory: name the .eab file")
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist: check the path") from None
    except OSError as err:
        raise BundleError(f"bundle {path} cannot be read ({err.strerror}): check its permissions") from None


def _open(content: Path | bytes, source: str, max_file_bytes: int) -> tuple[zipfile.ZipFile, object]:
    try:
        return open_archive(content, source, max_file_bytes)
    except PermissionError as err:
        raise BundleError(f"bundle {source} cannot be read ({err.strerror}): check its permissions") from None
    except ArchiveError as err:
        text = str(err)
        if text.endswith("is not a zip archive"):
            head = content[:8] if isinstance(content, (bytes, bytearray)) else _head(content)
            hint = " (it is a bare .tflite model: make a bundle with `edge-agent bundle create`)" if head[4:8] == b"TFL3" else ""
            raise BundleError(f"{source} is not a model bundle{hint}") from None
        raise BundleError(text) from None


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(8)


def _members(archive: zipfile.ZipFile, source: str, max_model_bytes: int) -> dict[str, zipfile.ZipInfo]:
    caps = {MANIFEST_MEMBER: MAX_MANIFEST_BYTES, MODEL_MEMBER: max_model_bytes,
            ENCRYPTED_MODEL_MEMBER: max_model_bytes + 16, SIGNATURE_MEMBER: MAX_SIGNATURE_BYTES}
    try:
        infos = check_members(archive, caps, source)
    except ArchiveError as err:
        raise BundleError(str(err)) from None
    models = [name for name in (MODEL_MEMBER, ENCRYPTED_MODEL_MEMBER) if name in infos]
    missing = ([MANIFEST_MEMBER] if MANIFEST_MEMBER not in infos else []) + ([] if models else [MODEL_MEMBER])
    if missing:
        raise BundleError(f"{source}: the bundle lacks {', '.join(missing)}: make it again with `edge-agent bundle create`")
    if len(models) > 1:
        raise BundleError(f"{source}: the bundle holds both {MODEL_MEMBER} and {ENCRYPTED_MODEL_MEMBER}: make it again "
                          "with `edge-agent bundle create`")
    return infos


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, source: str, on_block=None) -> bytes:
    try:
        return read_member(archive, info, cap, source, on_block)
    except ArchiveError as err:
        raise BundleError(str(err)) from None


def _hashed(blocks, digest):
    for block in blocks:
        digest.update(block)
        yield block


def _check_digest(digest: str, expected: str, size: int, expected_size: int, source: str, what: str) -> None:
    if digest != expected or size != expected_size:
        raise BundleError(
            f"{source}: the {what} does not match the manifest (sha256 {digest[:16]}…, {size} bytes; "
            f"the manifest says {expected[:16]}…, {expected_size} bytes): "
            "the bundle was altered or damaged; copy or build it again"
        )


def _parse_signature(data: bytes, source: str) -> Signature:
    try:
        raw = json.loads(data.decode("utf-8"))
        if raw.get("algorithm") != SIGNATURE_ALGORITHM:
            raise BundleError(f"{source}: signature algorithm {str(raw.get('algorithm'))[:40]!r} is not supported "
                              "(expected ed25519)")
        signature = base64.b64decode(raw["signature"], validate=True)
        key_id = str(raw["key_id"])[:64]
    except BundleError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, binascii.Error,
            RecursionError, ValueError) as err:
        raise BundleError(f"{source}: manifest.sig is damaged ({type(err).__name__}): sign the bundle again") from None
    if len(signature) != 64:
        raise BundleError(f"{source}: manifest.sig holds {len(signature)} bytes, an Ed25519 signature has 64: sign the bundle again")
    return Signature(key_id, signature)
