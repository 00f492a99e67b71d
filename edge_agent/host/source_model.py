"""Load the model to convert (SavedModel folder, .keras or .h5) and expose it as one batch-1 function.

Both the converter and the validation use the same `tf.function` with a fixed batch of 1:
the .tflite gets static input shapes (which the Edge TPU needs), and the "original" side
of the validation runs exactly the graph that was converted. The function is traced
without the Keras model attached to the converter, so TensorFlow freezes the weights into
constants (with the model attached, TF 2.19 keeps Keras 3 variables as READ_VARIABLE ops
and int8 calibration fails).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.host.tensorflow_loader import import_keras, import_tensorflow
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")
DEFAULT_SIGNATURE = "serving_default"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


class SourceModelError(InputError, ValueError):
    """SRC is not a model this tool can load, or it is ambiguous (several signatures)."""


@dataclass(frozen=True)
class InputDescription:
    name: str
    shape: tuple[int, ...]  # batch fixed to 1
    dtype: np.dtype


class SourceModel:
    """The original model as one batch-1 function: `predict` for validation, `concrete_function` for conversion."""

    def __init__(self, path: Path, kind: str, inputs: list[InputDescription], function: Any, trackable: Any,
                 signature: str | None):
        self.path = path
        self.kind = kind  # "saved_model" | "keras" | "h5"
        self.inputs = inputs
        self.signature = signature
        self.concrete_function = function
        self.trackable = trackable  # keeps SavedModel variables alive for the converter; None for Keras
        self.size_bytes = _size_on_disk(path)

    @property
    def input(self) -> InputDescription:
        return self.inputs[0]

    def predict(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run one sample (each array shaped like its input, batch 1); outputs in sorted-name order."""
        tf = import_tensorflow()
        outputs = self.concrete_function(*[tf.constant(a) for a in arrays])
        return [np.asarray(outputs[name]) for name in sorted(outputs)]


def load_source_model(path: str | Path, signature: str | None = None) -> SourceModel:
    """Recognise and load SRC; SourceModelError names what is wrong and what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise SourceModelError(f"{path} does not exist: pass a SavedModel folder, a .keras file or an .h5 file")
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_MODEL_FILES):
            raise SourceModelError(
                f"{path} is a folder but not a SavedModel (it has no saved_model.pb): pass the SavedModel folder "
                "itself, a .keras file or an .h5 file"
            )
        return _load_saved_model(path, signature)
    if signature:
        raise SourceModelError(f"--signature applies to SavedModel folders; {path} is a file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(_ZIP_MAGIC) and path.suffix.lower() not in H5_SUFFIXES:
        return _load_keras(path, "keras")
    if head == _HDF5_MAGIC:
        return _load_keras(path, "h5")
    if path.suffix.lower() in KERAS_SUFFIXES + H5_SUFFIXES:
        raise SourceModelError(
            f"{path} is not a model: a .keras file is a zip archive and an .h5 file an HDF5 file, but this file is "
            "neither (truncated, or not a model): save the model again with model.save(PATH)"
        )
    raise SourceModelError(
        f"{path} is not a model this tool converts: pass a SavedModel folder, a .keras file or an .h5 file "
        "(a .tflite is already converted: use it directly, or `edge-agent bundle create` it)"
    )


def _load_keras(path: Path, kind: str) -> SourceModel:
    keras = import_keras()
    tf = import_tensorflow()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, TypeError, zip and h5 errors alike
        raise SourceModelError(
            f"{path} cannot be loaded as a Keras model ({type(err).__name__}: {_first_line(err)}); if it uses custom "
            "layers, export it as a SavedModel (model.export(PATH)) and convert that"
        ) from None
    inputs = [_describe_input(tensor.name, tuple(tensor.shape), tensor.dtype, path) for tensor in model.inputs]
    specs = [tf.TensorSpec(i.shape, tf.as_dtype(i.dtype), name=_tensor_name(i.name)) for i in inputs]

    @tf.autograph.experimental.do_not_convert
    def serve(*arrays):
        outputs = model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)
        return _output_dict(outputs)

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    return SourceModel(path, kind, inputs, function, None, None)


def _load_saved_model(path: Path, signature: str | None) -> SourceModel:
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # corrupt protobufs, missing variables, unknown ops
        raise SourceModelError(f"{path} cannot be loaded as a SavedModel ({type(err).__name__}: {_first_line(err)})") from None
    name = _choose_signature(path, dict(loaded.signatures), signature)
    function = loaded.signatures[name]
    _, kwargs = function.structured_input_signature
    names = sorted(kwargs)
    inputs = [_describe_input(n, tuple(kwargs[n].shape), kwargs[n].dtype.as_numpy_dtype, path) for n in names]
    specs = [tf.TensorSpec(i.shape, kwargs[i.name].dtype, name=_tensor_name(i.name)) for i in inputs]

    @tf.autograph.experimental.do_not_convert
    def serve(*arrays):
        return _output_dict(function(**dict(zip(names, arrays))))

    batch_one = tf.function(serve, input_signature=specs).get_concrete_function()
    return SourceModel(path, "saved_model", inputs, batch_one, loaded, name)


def _choose_signature(path: Path, signatures: dict, requested: str | None) -> str:
    if requested:
        if requested not in signatures:
            raise SourceModelError(
                f"{path} has no signature {requested!r}; it has: {', '.join(sorted(signatures)) or 'none'}"
            )
        return requested
    if not signatures:
        raise SourceModelError(
            f"{path} has no signatures to convert: export it with one (Keras: model.export(PATH); "
            "TF: tf.saved_model.save(obj, PATH, signatures=fn))"
        )
    if len(signatures) == 1:
        return next(iter(signatures))
    # Keras' model.export() writes the same function as "serve" and "serving_default": not a real choice.
    default = signatures.get(DEFAULT_SIGNATURE)
    if default is not None and all(_same_signature(default, other) for other in signatures.values()):
        return DEFAULT_SIGNATURE
    raise SourceModelError(
        f"{path} has several signatures ({', '.join(sorted(signatures))}) and none was chosen: "
        "pick one with --signature NAME"
    )


def _same_signature(a: Any, b: Any) -> bool:
    return a.structured_input_signature == b.structured_input_signature and a.structured_outputs == b.structured_outputs


def _describe_input(name: str, shape: tuple, dtype: Any, path: Path) -> InputDescription:
    if not shape:
        raise SourceModelError(f"{path}: input {name!r} is a scalar; the agent feeds tensors with a batch dimension")
    fixed = (1,) + tuple(shape[1:])
    if any(d is None or d < 0 for d in fixed):
        raise SourceModelError(
            f"{path}: input {name!r} has shape {list(shape)} with sizes unknown until run time; boards (and the "
            "Edge TPU) need fixed sizes: re-export the model with a fixed input size, e.g. keras.Input(shape=(224, 224, 3))"
        )
    return InputDescription(name, tuple(int(d) for d in fixed), np.dtype(dtype))


def _output_dict(outputs: Any) -> dict:
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": tensor for i, tensor in enumerate(outputs)}
    return {"output_0": outputs}


def _tensor_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name.split(":")[0]) or "input"


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
