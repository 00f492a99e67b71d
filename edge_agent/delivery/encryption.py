"""Models encrypted at rest: the `encryption` object of a bundle's manifest, and the maths behind it.

Format "eab-encryption/1" (all primitives from `cryptography`; nothing home-made):

  content   AES-256-GCM with a random 256-bit content key and a random 96-bit nonce; the
            additional data is b"edge-agent-model/1" + the model's raw SHA-256 (so a ciphertext
            cannot be passed off as another model's). The bundle member `model.tflite.enc` is
            ciphertext || 16-byte tag.
  per board an ephemeral X25519 key pair; shared = X25519(ephemeral private, board public);
            wrapping key = HKDF-SHA256(shared, salt = ephemeral public || board public,
            info = b"edge-agent-bundle key wrap/1", 32 bytes); wrapped key = AES-256-GCM(wrapping
            key, a random 96-bit nonce, content key, additional data = the board's key id).

Manifest (format_version 2) field, covered by the bundle's signature like everything else:

  "encryption": {"format": "eab-encryption/1", "cipher": "AES-256-GCM",
                 "key_wrap": "X25519-HKDF-SHA256-AES-256-GCM", "nonce": b64,
                 "ciphertext_sha256": hex, "ciphertext_size_bytes": N,
                 "recipients": [{"key_id", "name", "ephemeral_public_key": b64,
                                 "wrap_nonce": b64, "wrapped_key": b64}, ...]}

`model.sha256` and `model.size_bytes` stay those of the plain model (what predictions report);
the ciphertext's hash lets a board check the bytes before it decrypts anything.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import serialization

from edge_agent.delivery.device_keys import DevicePrivateKey, DevicePublicKey
from edge_agent.delivery.encryption_format import (  # noqa: F401  (re-exported: the format's names live there)
    CIPHER,
    ENCRYPTION_FORMAT,
    KEY_BYTES,
    KEY_WRAP,
    MAX_RECIPIENTS,
    NONCE_BYTES,
    TAG_BYTES,
    Encryption,
    EncryptionError,
    Recipient,
    parse_encryption,
)

_MODEL_AAD = b"edge-agent-model/1"
_WRAP_INFO = b"edge-agent-bundle key wrap/1"


def _model_aad(model_sha256: str) -> bytes:
    return _MODEL_AAD + bytes.fromhex(model_sha256)


def _wrapping_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=ephemeral_public + recipient_public,
                info=_WRAP_INFO).derive(shared)


def encrypt_model(model: bytes, model_sha256: str, recipients: list[DevicePublicKey]) -> tuple[Encryption, bytes]:
    """(the manifest's encryption object, ciphertext || tag) for these boards."""
    if not recipients:
        raise ValueError("encrypt_model needs at least one recipient")
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(content_key).encrypt(nonce, model, _model_aad(model_sha256))
    wrapped = []
    for recipient in recipients:
        ephemeral = X25519PrivateKey.generate()
        ephemeral_public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kek = _wrapping_key(ephemeral.exchange(recipient.load()), ephemeral_public, recipient.raw)
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped.append(Recipient(recipient.key_id, recipient.name, ephemeral_public, wrap_nonce,
                                 AESGCM(kek).encrypt(wrap_nonce, content_key, recipient.key_id.encode("ascii"))))
    return Encryption(nonce, hashlib.sha256(ciphertext).hexdigest(), len(ciphertext), tuple(wrapped)), ciphertext


def unwrap_content_key(encryption: Encryption, device_key: DevicePrivateKey | None, source: str) -> bytes:
    """The content key, unwrapped with this board's key; EncryptionError saying for whom it was made otherwise."""
    if device_key is None:
        raise EncryptionError(f"{source} is encrypted for {encryption.describe_recipients()}, and this board has no "
                              "device key: set [models] device_key (or run --device-key FILE) to the board's .key "
                              "from `edge-agent keys generate-device`")
    recipient = next((r for r in encryption.recipients if r.key_id == device_key.key_id), None)
    if recipient is None:
        raise EncryptionError(f"{source} is encrypted for {encryption.describe_recipients()}, not for this board's "
                              f"device key {device_key.key_id} ({device_key.source}): make the bundle with "
                              "--encrypt-for this board's .pub")
    kek = _wrapping_key(device_key.exchange(recipient.ephemeral_public_key), recipient.ephemeral_public_key,
                        device_key.public_raw)
    try:
        return AESGCM(kek).decrypt(recipient.wrap_nonce, recipient.wrapped_key, recipient.key_id.encode("ascii"))
    except InvalidTag:
        raise EncryptionError(f"{source}: the content key for device key {device_key.key_id} does not unwrap (the "
                              "bundle was altered or damaged): build it again") from None


def decrypt_blocks(blocks: Iterable[bytes], content_key: bytes, encryption: Encryption, model_sha256: str,
                   source: str) -> bytes:
    """Decrypt ciphertext || tag arriving in blocks (never all of the ciphertext in memory at once);
    the plain model, released only once the tag has been checked."""
    decryptor = Cipher(algorithms.AES(content_key), modes.GCM(encryption.nonce)).decryptor()
    decryptor.authenticate_additional_data(_model_aad(model_sha256))
    plain: list[bytes] = []
    tail = b""  # the last TAG_BYTES seen so far: the tag, once the stream ends
    for block in blocks:
        data = tail + block
        tail = data[-TAG_BYTES:]
        body = data[:-TAG_BYTES]
        if body:
            plain.append(decryptor.update(body))
    if len(tail) < TAG_BYTES:
        raise EncryptionError(f"{source}: the encrypted model is shorter than its tag: the bundle is damaged")
    try:
        plain.append(decryptor.finalize_with_tag(tail))
    except InvalidTag:
        raise EncryptionError(f"{source}: the encrypted model does not decrypt (authentication failed: altered or "
                              "damaged): copy or build the bundle again") from None
    return b"".join(plain)
