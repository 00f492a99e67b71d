"""A bundle's manifest: what the model is, how to feed it, and where it came from.

The manifest is JSON, stored in the bundle as `manifest.json`; the signature covers its
exact bytes, so it is parsed from those bytes and never re-serialised for checking.
Fields (format_version 2; format 1 is the same without `encryption`, and is still read):

  format_version  int, 2; a board refuses a higher number ("made by a newer edge-agent")
  name, version   strings; version shows up as `model.version` in every prediction
  created_at      UTC ISO 8601 time the bundle was made
  task            "classification" | "detection" | "raw"
  labels          list of strings, or null
  model           {"file": "model.tflite", "sha256": hex, "size_bytes": int}
  input           {"name", "shape", "dtype", "quantization": {"scale", "zero_point"} | null}
  preprocessing   {"resize": stretch|letterbox|center_crop, "color": rgb|bgr,
                   "mean": [1 or 3 numbers], "std": [1 or 3 numbers]}  (value = (pixel - mean) / std)
  converter       free-form versions: {"edge_agent": ..., "tensorflow": ..., "quantize": ...}
  validation      the validation summary from `edge-agent convert --validate`, or null
  encryption      absent, or how the model member is encrypted and for whom
                  (edge_agent.delivery.encryption); the model member is then model.tflite.enc
Unknown extra fields are ignored, so later format-2 writers may add information.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_agent.config import COLOR_ORDERS, RESIZE_MODES, TASKS, PreprocessOptions
from edge_agent.delivery.encryption_format import Encryption, parse_encryption
from edge_agent.delivery.request_limits import clip_repr
from edge_agent.errors import InputError

FORMAT_VERSION = 2
MODEL_MEMBER = "model.tflite"
ENCRYPTED_MODEL_MEMBER = "model.tflite.enc"


class ManifestError(InputError, ValueError):
    """The manifest is not valid JSON or lacks a field a board needs."""


class ManifestVersionError(ManifestError):
    """The manifest was written by a newer edge-agent than this one."""


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest (see the module docstring for the fields)."""

    name: str
    version: str
    created_at: str
    task: str
    labels: tuple[str, ...] | None
    model_sha256: str
    model_size_bytes: int
    input: dict[str, Any]
    preprocessing: PreprocessOptions
    converter: dict[str, Any]
    validation: dict[str, Any] | None
    format_version: int = FORMAT_VERSION
    encryption: Encryption | None = None

    @property
    def model_member(self) -> str:
        return ENCRYPTED_MODEL_MEMBER if self.encryption is not None else MODEL_MEMBER

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "task": self.task,
            "labels": list(self.labels) if self.labels is not None else None,
            "model": {"file": self.model_member, "sha256": self.model_sha256, "size_bytes": self.model_size_bytes},
            "input": self.input,
            "preprocessing": {
                "resize": self.preprocessing.resize,
                "color": self.preprocessing.color,
                "mean": list(self.preprocessing.mean),
                "std": list(self.preprocessing.std),
            },
            "converter": self.converter,
            "validation": self.validation,
        }
        if self.encryption is not None:
            data["encryption"] = self.encryption.to_dict()
        return data


def manifest_to_bytes(manifest: Manifest) -> bytes:
    """The bytes stored in the bundle and signed: sorted keys, two-space indent, final newline."""
    return (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_manifest(data: bytes, source: str = "manifest") -> Manifest:
    """Parse and check manifest bytes; ManifestVersionError for a newer format, ManifestError otherwise."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{source}: manifest.json is not valid JSON ({err}): the bundle is damaged, make it again") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{source}: manifest.json must hold a JSON object")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManifestError(f"{source}: manifest.json has no valid format_version (got {clip_repr(version)})")
    if version > FORMAT_VERSION:
        raise ManifestVersionError(
            f"{source}: bundle format {version} was made by a newer edge-agent; this one reads format "
            f"{FORMAT_VERSION} and older: upgrade edge-agent on this machine, or bundle the model with this version"
        )
    problems: list[str] = []
    model = _field(raw, "model", dict, problems) or {}
    preprocessing = _field(raw, "preprocessing", dict, problems) or {}
    labels = raw.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        problems.append("labels: expected a list of strings or null")
        labels = None
    task = _field(raw, "task", str, problems) or "raw"
    if task not in TASKS:
        problems.append(f"task: expected one of {', '.join(TASKS)}, got {clip_repr(task)}")
    sha256 = _field(model, "sha256", str, problems, "model.sha256") or ""
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        problems.append("model.sha256: expected 64 lower-case hex digits")
    options = _preprocessing(preprocessing, problems)
    size_bytes = _field(model, "size_bytes", int, problems, "model.size_bytes") or 0
    if size_bytes < 0:
        problems.append("model.size_bytes: must not be negative")
    encryption = None
    if raw.get("encryption") is not None and version < 2:
        problems.append("encryption: needs format_version 2")
    elif raw.get("encryption") is not None:
        try:
            encryption = parse_encryption(raw["encryption"])
        except ValueError as err:
            problems.append(str(err))
    manifest = Manifest(
        format_version=version,
        name=_field(raw, "name", str, problems) or "",
        version=_field(raw, "version", str, problems) or "",
        created_at=_field(raw, "created_at", str, problems) or "",
        task=task,
        labels=tuple(labels) if labels is not None else None,
        model_sha256=sha256,
        model_size_bytes=size_bytes,
        input=_field(raw, "input", dict, problems) or {},
        preprocessing=options,
        converter=raw.get("converter") if isinstance(raw.get("converter"), dict) else {},
        validation=raw.get("validation") if isinstance(raw.get("validation"), dict) else None,
        encryption=encryption,
    )
    if problems:
        raise ManifestError(f"{source}: manifest.json is incomplete: " + "; ".join(problems))
    return manifest


def _field(table: dict, key: str, kind: type, problems: list[str], label: str = "") -> Any:
    value = table.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        problems.append(f"{label or key}: expected {kind.__name__}, got {clip_repr(value)}")
        return None
    return value


def _preprocessing(table: dict, problems: list[str]) -> PreprocessOptions:
    resize = table.get("resize", "stretch")
    color = table.get("color", "rgb")
    if resize not in RESIZE_MODES:
        problems.append(f"preprocessing.resize: expected one of {', '.join(RESIZE_MODES)}, got {clip_repr(resize)}")
        resize = "stretch"
    if color not in COLOR_ORDERS:
        problems.append(f"preprocessing.color: expected one of {', '.join(COLOR_ORDERS)}, got {clip_repr(color)}")
        color = "rgb"
    numbers = {}
    for key, default in (("mean", [0.0]), ("std", [255.0])):
        values = table.get(key, default)
        if not (isinstance(values, list) and len(values) in (1, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            problems.append(f"preprocessing.{key}: expected a list of 1 or 3 numbers, got {clip_repr(values)}")
            values = default
        numbers[key] = tuple(float(v) for v in values)
    if any(v == 0 for v in numbers["std"]):
        problems.append("preprocessing.std: must not contain 0")
        numbers["std"] = (255.0,)
    return PreprocessOptions(resize=resize, color=color, mean=numbers["mean"], std=numbers["std"])
