"""Make a bundle from a .tflite: fill in the manifest from the model, its attached files and options.

Where each manifest field comes from, first match wins:
  task           --task; what `convert --task` was given; else the layout matcher's task for the outputs
                 (what `task = "auto"` decodes on the board and `inspect` shows: YOLO, anchor SSD,
                 pose and segmentation layouts included)
  labels         --labels FILE; what `convert --labels` recorded (any task); the model's attached labels.txt
  preprocessing  --resize/--color/--mean/--std; what `convert` recorded; the agent's defaults
  input          the model's first input tensor (name, shape, dtype, quantisation)
  converter      what `convert` recorded (edge-agent and TensorFlow versions, quantisation)
  validation     the validation summary `convert --validate` recorded, else null
No TensorFlow needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config import PreprocessOptions
from edge_agent.host.metadata import read_conversion_info
from edge_agent.delivery.bundle import Bundle, Signature, bundle_to_bytes, sign_manifest
from edge_agent.delivery.device_keys import DevicePublicKey
from edge_agent.delivery.encryption import encrypt_model
from edge_agent.delivery.keys import PrivateKey
from edge_agent.delivery.manifest import FORMAT_VERSION, TASKS, Manifest, ManifestError, manifest_to_bytes, parse_manifest
from edge_agent.runtime.model import TensorSpec
from edge_agent.runtime.tflite_file import parse_labels, read_model_file
from edge_agent.runtime.tflite_graph import ModelGraph, TensorInfo, read_graph
from edge_agent.service.decoding import auto_task
from edge_agent.errors import InputError

DEFAULT_VERSION = "unversioned"


class BundleInputError(InputError, ValueError):
    """An option or input file does not fit the model being bundled."""


@dataclass(frozen=True)
class BundleRequest:
    model_path: Path
    name: str = ""
    version: str = ""
    task: str = ""
    labels_path: Path | None = None
    preprocess_overrides: dict[str, Any] | None = None  # resize / color / mean / std given on the command line


def build_manifest(request: BundleRequest) -> tuple[Manifest, bytes]:
    """The manifest for the model, and the model bytes it describes."""
    model_file = read_model_file(request.model_path)
    graph = read_graph(model_file.content, request.model_path)
    info = read_conversion_info(model_file)
    recorded = info.get("labels") if isinstance(info.get("labels"), list) else None
    labels = _labels(request, recorded or model_file.labels)
    task = request.task or _task_convert_was_given(info) or auto_task(
        model_file, _tensor_spec(_input_tensor(graph)), _output_specs(graph), len(labels) if labels else None)
    if task not in TASKS:
        raise BundleInputError(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    _check_labels(labels, task, graph)
    preprocessing = dict(info.get("preprocessing") or {})
    preprocessing.update(request.preprocess_overrides or {})
    converter = dict(info.get("converter") or {})
    converter["bundled_by"] = f"edge-agent {__version__}"
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=request.name or request.model_path.stem,
        version=request.version or DEFAULT_VERSION,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        task=task,
        labels=tuple(labels) if labels else None,
        model_sha256=model_file.sha256,
        model_size_bytes=len(model_file.content),
        input=_input_spec(graph),
        preprocessing=_preprocess_options(preprocessing),
        converter=converter,
        validation=info.get("validation") or None,
    )
    # Round-trip through the parser so that a bundle we write is one a board accepts.
    try:
        parse_manifest(manifest_to_bytes(manifest), str(request.model_path))
    except ManifestError as err:
        raise BundleInputError(str(err)) from None
    return manifest, model_file.content


def create_bundle_bytes(request: BundleRequest, key: PrivateKey | None,
                        encrypt_for: list[DevicePublicKey] = ()) -> tuple[bytes, Manifest, Signature | None]:
    """The bundle's bytes; with `encrypt_for`, the model is encrypted for those boards (one wrapped
    content key each) and the manifest, which the signature covers, says so."""
    manifest, model = build_manifest(request)
    if encrypt_for:
        if len({r.key_id for r in encrypt_for}) != len(encrypt_for):
            raise BundleInputError("--encrypt-for: the same device key is given twice")
        encryption, model = encrypt_model(model, manifest.model_sha256, list(encrypt_for))
        manifest = dataclasses.replace(manifest, encryption=encryption)
    manifest_bytes = manifest_to_bytes(manifest)
    signature = sign_manifest(manifest_bytes, key) if key is not None else None
    return bundle_to_bytes(manifest_bytes, model, signature, encrypted=bool(encrypt_for)), manifest, signature


def resign_bundle_bytes(bundle: Bundle, key: PrivateKey) -> tuple[bytes, Signature]:
    """The same manifest and model member with a new signature (replacing any old one); an encrypted
    bundle stays encrypted (read it without a device key: `payload` is its ciphertext)."""
    signature = sign_manifest(bundle.manifest_bytes, key)
    return bundle_to_bytes(bundle.manifest_bytes, bundle.payload, signature, bundle.encrypted), signature


def _labels(request: BundleRequest, attached: list[str] | None) -> list[str] | None:
    if request.labels_path is None:
        return attached
    return read_labels_option(request.labels_path)


def read_labels_option(path: Path) -> list[str]:
    """The labels of a `--labels FILE` option; BundleInputError (a ValueError) naming the problem."""
    try:
        labels = parse_labels(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleInputError(f"--labels: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleInputError(f"--labels: {path} cannot be read as UTF-8 text ({err})") from None
    if not labels:
        raise BundleInputError(f"--labels: {path} holds no labels (one per line expected)")
    return labels


def _check_labels(labels: list[str] | None, task: str, graph: ModelGraph) -> None:
    if task != "classification" or not labels or len(graph.outputs) != 1:
        return
    output = graph.tensor(graph.outputs[0])
    classes = int(np.prod(output.shape[1:])) if output is not None and len(output.shape) > 1 else 0
    if classes and len(labels) not in (classes, classes + 1):
        raise BundleInputError(
            f"the labels have {len(labels)} entries but the model's output has {classes} classes: "
            "pass the labels file that belongs to this model"
        )


def _task_convert_was_given(info: dict[str, Any]) -> str | None:
    """The task `convert --task` was given. Records from before `task_option` existed hold convert's
    own guess in `task`: kept, except "raw", which the old guess gave every layout it did not know
    (YOLO, anchor SSD, pose, segmentation) and the layout matcher now decodes."""
    if "task_option" in info:
        return info["task_option"] or None
    task = info.get("task")
    return task if task != "raw" else None


def _input_tensor(graph: ModelGraph) -> TensorInfo:
    tensor = graph.tensor(graph.inputs[0]) if graph.inputs else None
    if tensor is None:
        raise BundleInputError("the model has no input tensor")
    return tensor


def _input_spec(graph: ModelGraph) -> dict[str, Any]:
    tensor = _input_tensor(graph)
    quantized = tensor.quantized and len(tensor.scale) == 1
    return {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "quantization": {"scale": tensor.scale[0], "zero_point": tensor.zero_point[0]} if quantized else None,
    }


def _preprocess_options(values: dict[str, Any]) -> PreprocessOptions:
    defaults = PreprocessOptions()
    return PreprocessOptions(
        resize=values.get("resize", defaults.resize),
        color=values.get("color", defaults.color),
        mean=tuple(float(v) for v in values.get("mean", defaults.mean)),
        std=tuple(float(v) for v in values.get("std", defaults.std)),
    )


def _output_specs(graph: ModelGraph) -> list[TensorSpec]:
    return [_tensor_spec(graph.tensor(index)) for index in graph.outputs if graph.tensor(index) is not None]


def _tensor_spec(tensor: TensorInfo) -> TensorSpec:
    try:
        dtype = np.dtype(tensor.dtype)
    except TypeError:
        dtype = np.dtype(np.float32)
    scale = tensor.scale[0] if len(tensor.scale) == 1 else 0.0
    zero_point = tensor.zero_point[0] if len(tensor.zero_point) == 1 else 0
    return TensorSpec(tensor.index, tensor.name, tensor.shape, dtype, float(scale), int(zero_point))
