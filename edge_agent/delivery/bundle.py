"""The model bundle: one file a board accepts, holding a model, its manifest and a signature.

A bundle (suffix `.eab`, "edge-agent bundle"; recognised by content, not by suffix) is a
zip archive with exactly these members:

  manifest.json  what the model is and how to feed it (see edge_agent.delivery.manifest)
  model.tflite   the model, byte for byte; its SHA-256 is in the manifest
  manifest.sig   optional: {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"},
                 an Ed25519 signature over the exact bytes of manifest.json

Checking a bundle (`read_bundle`) proves it is whole: the manifest parses, its format is
not newer than this code, and the model's SHA-256 matches the manifest. Trusting it
(`check_trust`) proves who made it: the signature verifies against one of the trusted
public keys. Because the manifest names the model's hash, one signature covers both.
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
    MODEL_MEMBER,
    Manifest,
    ManifestError,
    ManifestVersionError,
    parse_manifest,
)
from edge_agent.errors import InputError

if TYPE_CHECKING:
    # annotations only: keys.py brings `cryptography` (~10 MB of RSS), which a board running a
    # bare .tflite never needs; the key objects handed to sign/check carry their own methods
    from edge_agent.delivery.keys import PrivateKey, PublicKey

logger = logging.getLogger(__name__)

BUNDLE_SUFFIX = ".eab"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
SIGNATURE_ALGORITHM = "ed25519"
MEMBER_LIMITS_BYTES = {MANIFEST_MEMBER: 4 << 20, MODEL_MEMBER: 2 << 30, SIGNATURE_MEMBER: 4 << 10}
_ZIP_MAGIC = b"PK\x03\x04"
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
class Bundle:
    """A bundle whose container, manifest and model hash have been checked (not yet its signature)."""

    source: str
    manifest: Manifest
    manifest_bytes: bytes
    model: bytes
    signature: Signature | None


def is_bundle_bytes(content: bytes) -> bool:
    """True when `content` starts like a zip archive (a .tflite starts with an offset and 'TFL3')."""
    return content[:4] == _ZIP_MAGIC


def is_bundle_file(path: str | Path) -> bool:
    """True when the file starts like a bundle (see is_bundle_bytes); False when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return is_bundle_bytes(handle.read(4))
    except OSError:
        return False


def read_bundle(path: str | Path, source: str = "") -> Bundle:
    """Read and check a bundle file; raise BundleError (or BundleVersionError) naming the problem
    (as `source` when given, e.g. the name the pusher knows a received file by)."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise BundleError(f"bundle path {path} is a directory: name the .eab file") from None
    except OSError as err:
        raise BundleError(f"bundle {path} cannot be read ({err.strerror}): check its permissions") from None
    return parse_bundle(content, source or str(path))


def parse_bundle(content: bytes, source: str) -> Bundle:
    """Check bundle bytes: container, manifest, model hash (see read_bundle)."""
    members = _read_members(content, source)
    try:
        manifest = parse_manifest(members[MANIFEST_MEMBER], source)
    except ManifestVersionError as err:
        raise BundleVersionError(str(err)) from None
    except ManifestError as err:
        raise BundleError(str(err)) from None
    model = members[MODEL_MEMBER]
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.model_sha256 or len(model) != manifest.model_size_bytes:
        raise BundleError(
            f"{source}: the model does not match the manifest (sha256 {digest[:16]}…, {len(model)} bytes; "
            f"the manifest says {manifest.model_sha256[:16]}…, {manifest.model_size_bytes} bytes): "
            "the bundle was altered or damaged; copy or build it again"
        )
    signature = _parse_signature(members[SIGNATURE_MEMBER], source) if SIGNATURE_MEMBER in members else None
    return Bundle(source, manifest, members[MANIFEST_MEMBER], model, signature)


def sign_manifest(manifest_bytes: bytes, key: PrivateKey) -> Signature:
    return Signature(key.key_id, key.sign(manifest_bytes))


def bundle_to_bytes(manifest_bytes: bytes, model: bytes, signature: Signature | None) -> bytes:
    """The bundle as bytes: a zip with manifest.json, model.tflite and (if signed) manifest.sig."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = [(MANIFEST_MEMBER, manifest_bytes, zipfile.ZIP_DEFLATED), (MODEL_MEMBER, model, zipfile.ZIP_STORED)]
        if signature is not None:
            entries.append((SIGNATURE_MEMBER, signature.to_bytes(), zipfile.ZIP_DEFLATED))
        for name, data, compression in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def write_bundle(path: str | Path, manifest_bytes: bytes, model: bytes, signature: Signature | None) -> Path:
    """Write a bundle atomically (temp file + fsync + rename)."""
    return write_file_atomically(path, bundle_to_bytes(manifest_bytes, model, signature))


def check_trust(bundle: Bundle, trusted_keys: list[PublicKey]) -> PublicKey:
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


def _read_members(content: bytes, source: str) -> dict[str, bytes]:
    if content[:4] != _ZIP_MAGIC:
        hint = " (it is a bare .tflite model: make a bundle with `edge-agent bundle create`)" if content[4:8] == b"TFL3" else ""
        raise BundleError(f"{source} is not a model bundle{hint}")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            unknown = sorted(set(names) - set(MEMBER_LIMITS_BYTES))
            if unknown or len(names) != len(set(names)):
                raise BundleError(
                    f"{source}: unexpected bundle members {unknown or sorted(names)}; a bundle holds only "
                    f"{', '.join(MEMBER_LIMITS_BYTES)} (each once): make it again with `edge-agent bundle create`"
                )
            missing = [name for name in (MANIFEST_MEMBER, MODEL_MEMBER) if name not in names]
            if missing:
                raise BundleError(f"{source}: the bundle lacks {', '.join(missing)}: make it again with `edge-agent bundle create`")
            members = {}
            for info in infos:
                if info.file_size > MEMBER_LIMITS_BYTES[info.filename]:
                    raise BundleError(f"{source}: {info.filename} is implausibly large ({info.file_size} bytes)")
                members[info.filename] = archive.read(info)
            return members
    except BundleError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise BundleError(f"{source} is damaged or truncated ({err}): copy the bundle again") from None


def _parse_signature(data: bytes, source: str) -> Signature:
    try:
        raw = json.loads(data.decode("utf-8"))
        if raw.get("algorithm") != SIGNATURE_ALGORITHM:
            raise BundleError(f"{source}: signature algorithm {raw.get('algorithm')!r} is not supported (expected ed25519)")
        signature = base64.b64decode(raw["signature"], validate=True)
        key_id = str(raw["key_id"])
    except BundleError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, binascii.Error) as err:
        raise BundleError(f"{source}: manifest.sig is damaged ({type(err).__name__}): sign the bundle again") from None
    if len(signature) != 64:
        raise BundleError(f"{source}: manifest.sig holds {len(signature)} bytes, an Ed25519 signature has 64: sign the bundle again")
    return Signature(key_id, signature)
