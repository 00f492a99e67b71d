"""Load the model to convert and expose it as one batch-1 function.

SRC is recognised by content: a SavedModel folder (or its saved_model.pb), a .keras (zip)
or .h5 (HDF5) file, a TF1 frozen GraphDef `.pb` (host.frozen_graph) or an ONNX file
(host.onnx_source). Whatever the format, a `SourceModel` gives the converter its
TFLiteConverter (`make_converter`) and the validation the original's own outputs
(`predict`, batch 1, inputs in the board's frame layout).

For Keras and SavedModel sources both sides use the same `tf.function` with a fixed
batch of 1: the .tflite gets static input shapes (which the Edge TPU needs), and the
"original" side of the validation runs exactly the graph that was converted. The
function is traced without the Keras model attached to the converter, so TensorFlow
freezes the weights into constants (with the model attached, TF 2.19 keeps Keras 3
variables as READ_VARIABLE ops and int8 calibration fails).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_agent.host.tensorflow_loader import import_keras, import_tensorflow
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# report's source_format for each kind (source_kind keeps its older spelling)
SOURCE_FORMATS = {"saved_model": "savedmodel", "keras": "keras", "h5": "h5", "frozen_graph": "frozen_graph",
                  "onnx": "onnx"}
ONNX_SUFFIXES = (".onnx",)
FROZEN_GRAPH_SUFFIXES = (".pb",)
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


@dataclass(frozen=True)
class SourceOptions:
    """What the command line says about the source beyond its path (frozen graphs and ONNX need more)."""

    signature: str | None = None
    input_arrays: tuple[str, ...] = ()
    output_arrays: tuple[str, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()


class SourceModel:
    """The original model as one batch-1 function: `predict` for validation, `make_converter` for conversion."""

    def __init__(self, path: Path, kind: str, inputs: list[InputDescription], function: Any, trackable: Any,
                 signature: str | None, *, converter_factory: Callable[[], Any] | None = None,
                 reference: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
                 layout: dict | None = None, keepalive: Any = None):
        self.path = path
        self.kind = kind  # "saved_model" | "keras" | "h5" | "frozen_graph" | "onnx"
        self.inputs = inputs  # in the board's frame layout (NHWC for images)
        self.signature = signature
        self.concrete_function = function
        self.trackable = trackable  # keeps SavedModel variables alive for the converter; None for Keras
        self.size_bytes = _size_on_disk(path)
        self.layout = layout  # ONNX: how the model's own input layout maps to the converted one
        self._converter_factory = converter_factory
        self._reference = reference
        # A concrete function holds its variables weakly: the Keras model that owns them must stay referenced.
        self._keepalive = keepalive

    @property
    def input(self) -> InputDescription:
        return self.inputs[0]

    @property
    def source_format(self) -> str:
        return SOURCE_FORMATS[self.kind]

    def make_converter(self) -> Any:
        """A TFLiteConverter for this model, before any quantisation setting."""
        if self._converter_factory is not None:
            return self._converter_factory()
        tf = import_tensorflow()
        return tf.lite.TFLiteConverter.from_concrete_functions([self.concrete_function], self.trackable)

    def with_function(self, function: Any, keepalive: Any = None) -> SourceModel:
        """The same source with another batch-1 function to convert (the pruned model); predict is unchanged."""
        tf = import_tensorflow()
        copy = SourceModel(self.path, self.kind, self.inputs, self.concrete_function, self.trackable, self.signature,
                           reference=self._reference, layout=self.layout, keepalive=(self._keepalive, keepalive))
        copy._converter_factory = lambda: tf.lite.TFLiteConverter.from_concrete_functions([function])
        return copy

    def predict(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Run one sample (each array shaped like its input, batch 1); outputs in the converted model's order."""
        if self._reference is not None:
            return self._reference(list(arrays))
        tf = import_tensorflow()
        outputs = self.concrete_function(*[tf.constant(a) for a in arrays])
        return [np.asarray(outputs[name]) for name in sorted(outputs)]


def load_source_model(path: str | Path, signature: str | None = None,
                      options: SourceOptions | None = None) -> SourceModel:
    """Recognise and load SRC; SourceModelError names what is wrong and what to pass instead."""
    path = Path(path)
    options = options or SourceOptions(signature=signature)
    signature = options.signature
    if not path.exists():
        raise SourceModelError(f"{path} does not exist: pass a SavedModel folder, a .keras, .h5, frozen-graph .pb "
                               "or .onnx file")
    if path.is_file() and path.name in SAVED_MODEL_FILES:
        path = path.parent  # a SavedModel named by its saved_model.pb is still a SavedModel
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_MODEL_FILES):
            raise SourceModelError(
                f"{path} is a folder but not a SavedModel (it has no saved_model.pb): pass the SavedModel folder "
                "itself, a .keras file or an .h5 file"
            )
        _refuse_graph_options(path, options, "a SavedModel")
        return _load_saved_model(path, signature)
    if signature:
        raise SourceModelError(f"--signature applies to SavedModel folders; {path} is a file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    suffix = path.suffix.lower()
    if head.startswith(_ZIP_MAGIC) and suffix not in H5_SUFFIXES:
        _refuse_graph_options(path, options, "a Keras model")
        return _load_keras(path, "keras")
    if head == _HDF5_MAGIC:
        _refuse_graph_options(path, options, "a Keras model")
        return _load_keras(path, "h5")
    if suffix in KERAS_SUFFIXES + H5_SUFFIXES:
        raise SourceModelError(
            f"{path} is not a model: a .keras file is a zip archive and an .h5 file an HDF5 file, but this file is "
            "neither (truncated, or not a model): save the model again with model.save(PATH)"
        )
    if suffix in ONNX_SUFFIXES:
        from edge_agent.host.onnx_source import load_onnx_model

        return load_onnx_model(path, options)
    if suffix in FROZEN_GRAPH_SUFFIXES:
        from edge_agent.host.frozen_graph import load_frozen_graph

        return load_frozen_graph(path, options)
    raise SourceModelError(
        f"{path} is not a model this tool converts: pass a SavedModel folder, a .keras or .h5 file, a TF1 frozen "
        "graph .pb or an .onnx file (a .tflite is already converted: use it directly, or `edge-agent bundle create` it)"
    )


def _refuse_graph_options(path: Path, options: SourceOptions, what: str) -> None:
    given = [flag for flag, value in (("--input-arrays", options.input_arrays), ("--output-arrays", options.output_arrays),
                                      ("--input-shapes", options.input_shapes)) if value]
    if given:
        raise SourceModelError(f"{', '.join(given)} apply to frozen graphs (.pb) and ONNX files; {path} is {what}, "
                               "whose inputs and outputs are known: leave them out")


def _load_keras(path: Path, kind: str) -> SourceModel:
    keras = import_keras()
    tf = import_tensorflow()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, TypeError, zip and h5 errors alike
        raise SourceModelError(
            f"{path} cannot be loaded as a Keras model ({type(err).__name__}: {first_line(err)}); if it uses custom "
            "layers, export it as a SavedModel (model.export(PATH)) and convert that"
        ) from None
    inputs = [describe_input(tensor.name, tuple(tensor.shape), tensor.dtype, path) for tensor in model.inputs]
    specs = [tf.TensorSpec(i.shape, tf.as_dtype(i.dtype), name=tensor_name(i.name)) for i in inputs]

    @tf.autograph.experimental.do_not_convert
    def serve(*arrays):
        outputs = model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)
        return output_dict(outputs)

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    return SourceModel(path, kind, inputs, function, None, None, keepalive=model)


def _load_saved_model(path: Path, signature: str | None) -> SourceModel:
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # corrupt protobufs, missing variables, unknown ops
        raise SourceModelError(f"{path} cannot be loaded as a SavedModel ({type(err).__name__}: {first_line(err)})") from None
    name = _choose_signature(path, dict(loaded.signatures), signature)
    function = loaded.signatures[name]
    _, kwargs = function.structured_input_signature
    names = sorted(kwargs)
    inputs = [describe_input(n, tuple(kwargs[n].shape), kwargs[n].dtype.as_numpy_dtype, path) for n in names]
    specs = [tf.TensorSpec(i.shape, kwargs[i.name].dtype, name=tensor_name(i.name)) for i in inputs]

    @tf.autograph.experimental.do_not_convert
    def serve(*arrays):
        return output_dict(function(**dict(zip(names, arrays))))

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


def describe_input(name: str, shape: tuple, dtype: Any, path: Path) -> InputDescription:
    if not shape:
        raise SourceModelError(f"{path}: input {name!r} is a scalar; the agent feeds tensors with a batch dimension")
    fixed = (1,) + tuple(shape[1:])
    if any(d is None or d < 0 for d in fixed):
        raise SourceModelError(
            f"{path}: input {name!r} has shape {list(shape)} with sizes unknown until run time; boards (and the "
            "Edge TPU) need fixed sizes: re-export the model with a fixed input size, e.g. keras.Input(shape=(224, 224, 3))"
        )
    return InputDescription(name, tuple(int(d) for d in fixed), np.dtype(dtype))


def output_dict(outputs: Any) -> dict:
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": tensor for i, tensor in enumerate(outputs)}
    return {"output_0": outputs}


def tensor_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name.split(":")[0]) or "input"


def first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
