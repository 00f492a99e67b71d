"""Open the file a pipeline's `model` names: a bare .tflite, or a bundle checked against the trusted keys.

The rule (config keys `trusted_keys` and `allow_unsigned_models`):
  - A bundle is always checked for integrity: container, manifest format, model SHA-256.
  - A bundle signed by a trusted key is loaded. A bundle whose signature names a trusted
    key but does not verify is always refused (the manifest was altered).
  - Anything else (a bare .tflite, an unsigned bundle, a bundle signed by an unknown key)
    is loaded only when `allow_unsigned_models` is true -- its default while `trusted_keys`
    is empty, so a device without keys keeps running plain .tflite files -- and refused
    with a clear error otherwise.
A bundle's manifest supplies the task, labels and preprocessing; pipeline keys the user
set explicitly (`task` other than "auto", `labels`, keys inside [preprocess]) win.

The trust decision is made on the bundle's header (manifest and signature, edge_agent.delivery.
bundle) before a byte of the model is inflated or decrypted; the model is then read with a hard
cap (`max_model_bytes`: models.max_mb for pushed bundles) and, when encrypted, decrypted in
memory with the board's device key (models.device_key): it never touches the disk in the clear.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from typing import TYPE_CHECKING

from edge_agent.config import PipelineConfig, PreprocessOptions
from edge_agent.runtime.tflite_file import ModelFile, model_file_from_bytes, read_model_file

if TYPE_CHECKING:
    from edge_agent.delivery.keys import PublicKey
    from edge_agent.delivery.manifest import Manifest

# edge_agent.delivery (and with it `cryptography`, ~11 MB of RSS) is imported only when a
# bundle is actually opened: a device running plain .tflite files does not pay for it.

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedModel:
    """Model bytes ready for the runtime, and the manifest when they came from a bundle."""

    model_file: ModelFile
    manifest: Manifest | None
    provenance: str  # for the log: who vouches for these bytes
    manifest_bytes: bytes = b""  # the manifest as signed (the self-test child parses it again)


def open_model(path: str, trusted_keys: tuple[str, ...] = (), allow_unsigned_models: bool = True,
               label: str = "", device_key: str = "", max_model_bytes: int = 0) -> OpenedModel:
    """Read `path` as a bundle or a .tflite, applying the trust rule in the module docstring; errors name
    the file as `label` when given (a pushed bundle by the name the pusher knows it by). `device_key` is
    models.device_key (loaded only for an encrypted bundle); `max_model_bytes` 0 is the tools' limit."""
    from edge_agent.delivery.bundle import (
        DEFAULT_MAX_MODEL_BYTES,
        BundleTrustError,
        check_trust,
        is_bundle_file,
        read_bundle_header,
        read_bundle_model,
    )

    if not is_bundle_file(path):
        if not allow_unsigned_models:
            raise BundleTrustError(
                f"{path} is a bare .tflite model, but this device only accepts signed bundles (trusted_keys is set): "
                "bundle and sign it (`edge-agent bundle create MODEL.tflite --key NAME.key -o MODEL.eab`), "
                "or set allow_unsigned_models = true"
            )
        return OpenedModel(read_model_file(path), None, "unsigned .tflite")
    limit = max_model_bytes or DEFAULT_MAX_MODEL_BYTES
    header = read_bundle_header(path, label, limit)
    keys = load_trusted_keys(trusted_keys)
    try:
        key = check_trust(header, keys)
        provenance = f"bundle signed by trusted key {key.key_id} ({key.source})"
    except BundleTrustError as err:
        altered = header.signature is not None and any(k.key_id == header.signature.key_id for k in keys)
        if altered:
            raise
        if not allow_unsigned_models:
            raise BundleTrustError(f"{err} (allow_unsigned_models is false)") from None
        logger.warning("%s -- loading it anyway because allow_unsigned_models is true", err)
        provenance = "bundle not verified (allow_unsigned_models = true)"
    key_for_bundle = None
    if header.encrypted:
        from edge_agent.delivery.device_keys import load_device_private_key

        key_for_bundle = load_device_private_key(device_key) if device_key else None
        provenance += f", decrypted in memory with device key {key_for_bundle.key_id}" if key_for_bundle else ""
    model, _ = read_bundle_model(header, limit, key_for_bundle)
    return OpenedModel(model_file_from_bytes(label or path, model), header.manifest, provenance, header.manifest_bytes)


def opened_from_bytes(model: bytes, manifest_bytes: bytes, label: str, provenance: str) -> OpenedModel:
    """An OpenedModel for bytes another process already verified (the self-test child's input)."""
    manifest = None
    if manifest_bytes:
        from edge_agent.delivery.manifest import parse_manifest

        manifest = parse_manifest(manifest_bytes, label)
    return OpenedModel(model_file_from_bytes(label, model), manifest, provenance, manifest_bytes)


def load_trusted_keys(paths: tuple[str, ...]) -> list[PublicKey]:
    from edge_agent.delivery.keys import SigningKeyError, load_public_key

    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path))
        except SigningKeyError as err:
            raise SigningKeyError(f"trusted_keys: {err}") from None
    return keys


def apply_manifest(config: PipelineConfig, manifest: Manifest) -> PipelineConfig:
    """The pipeline config with the manifest's task and preprocessing where the user set none."""
    manifest_options = dataclasses.asdict(manifest.preprocessing)
    user_options = dataclasses.asdict(config.preprocess)
    merged = {key: user_options[key] if key in config.preprocess_keys else value for key, value in manifest_options.items()}
    return dataclasses.replace(
        config,
        task=config.task if config.task != "auto" else manifest.task,
        preprocess=PreprocessOptions(**merged),
    )
