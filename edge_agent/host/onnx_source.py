"""ONNX models (PyTorch's route to TFLite: torch.onnx.export, then convert) through onnx2tf.

onnx2tf (the converter Ultralytics uses) rebuilds the ONNX graph as a tf-keras model and
turns NCHW image inputs into NHWC, the layout of the frames a board delivers; that model
is then converted like any other, so every --quantize mode works the same. What this
module adds around onnx2tf:

- shapes are fixed before onnx2tf sees the graph: a symbolic batch becomes 1 (the agent
  feeds one frame at a time); symbolic heights/widths are refused unless `--input-shapes`
  gives them (in the ONNX model's own layout, e.g. 1,3,224,224);
- operators onnx2tf has no mapping for are named before anything is converted;
- the "original" of the validation is onnxruntime running the ONNX file in its own
  layout: each sample, given once in the board's layout, is transposed back for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.host.convert import ConversionError
from edge_agent.host.source_model import (
    InputDescription,
    SourceModel,
    SourceModelError,
    SourceOptions,
    first_line,
    tensor_name,
)
from edge_agent.host.tensorflow_loader import import_host_library, import_tensorflow, native_stderr_to_debug_log

logger = logging.getLogger(__name__)

PURPOSE = "converting ONNX models"
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)
ONNX_DOMAINS = ("", "ai.onnx")
_ONNX_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}


def load_onnx_model(path: Path, options: SourceOptions) -> SourceModel:
    """The ONNX file as a batch-1 SourceModel with NHWC image inputs; SourceModelError/ConversionError say why not."""
    onnx = import_host_library("onnx", PURPOSE)
    if options.input_arrays or options.output_arrays:
        raise SourceModelError("--input-arrays/--output-arrays apply to frozen graphs; an ONNX file names its own "
                               "inputs and outputs (use --input-shapes to fix sizes it leaves open)")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # DecodeError, OSError, ValueError from a damaged or foreign file
        raise SourceModelError(f"{path} cannot be read as an ONNX model ({type(err).__name__}: {first_line(err)}): "
                               "export it again (torch.onnx.export(model, example, PATH))") from None
    if not model.graph.node:
        raise SourceModelError(f"{path} is not an ONNX model (no graph nodes): export it again with torch.onnx.export")
    _refuse_unmapped_operators(path, model)
    onnx_shapes = _fix_input_shapes(path, model, options.input_shapes)
    keras_model = _run_onnx2tf(path, model)
    tf = import_tensorflow()
    names = [t.name for t in model.graph.input if t.name not in {i.name for i in model.graph.initializer}]
    inputs, transposed = [], []
    for name, onnx_shape, tensor in zip(names, onnx_shapes, keras_model.inputs):
        shape = tuple(int(d) for d in tensor.shape)
        swap = len(onnx_shape) == 4 and shape == tuple(onnx_shape[i] for i in NCHW_TO_NHWC) and shape != onnx_shape
        transposed.append(swap)
        inputs.append(InputDescription(name, shape, np.dtype(tensor.dtype.as_numpy_dtype)))
    specs = [tf.TensorSpec(i.shape, tf.as_dtype(i.dtype), name=tensor_name(i.name)) for i in inputs]
    output_keys = _output_keys(model)

    @tf.autograph.experimental.do_not_convert
    def serve(*arrays):
        outputs = keras_model(arrays[0] if len(arrays) == 1 else list(arrays), training=False)
        return dict(zip(output_keys, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    reference = _onnxruntime_reference(model, names, transposed, output_keys, function)
    layout = {
        "onnx_inputs": [{"name": n, "shape": list(s), "layout": "NCHW" if t else None}
                        for n, s, t in zip(names, onnx_shapes, transposed)],
        "converted_inputs": [{"name": i.name, "shape": list(i.shape), "layout": "NHWC" if t else None}
                             for i, t in zip(inputs, transposed)],
        "nchw_to_nhwc": any(transposed),
    }
    if any(transposed):
        logger.info("%s: NCHW input %s becomes NHWC %s, the layout of camera frames", path, list(onnx_shapes[0]),
                    list(inputs[0].shape))
    return SourceModel(path, "onnx", inputs, function, None, None, reference=reference, layout=layout,
                       keepalive=keras_model)


def _refuse_unmapped_operators(path: Path, model: Any) -> None:
    """Name every operator onnx2tf has no mapping for (it would fail half-way with an import error)."""
    import_host_library("onnx2tf", PURPOSE)
    unmapped: dict[str, list[str]] = {}
    for node in model.graph.node:
        foreign = node.domain not in ONNX_DOMAINS
        if foreign or importlib.util.find_spec(f"onnx2tf.ops.{node.op_type}") is None:
            op = f"{node.domain}.{node.op_type}" if foreign else node.op_type
            unmapped.setdefault(op, []).append(node.name or node.output[0])
    if unmapped:
        listed = "; ".join(f"{op} (node {', '.join(nodes[:3])}{', …' if len(nodes) > 3 else ''})"
                           for op, nodes in sorted(unmapped.items()))
        raise ConversionError(
            f"{path} uses ONNX operator(s) onnx2tf cannot convert: {listed}; nothing was written. Replace them in "
            "the PyTorch model (or export with another opset) and export again")


def _fix_input_shapes(path: Path, model: Any, given: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """Fixed sizes for each graph input, written into `model`: batch 1, the rest from the model or --input-shapes."""
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [t for t in model.graph.input if t.name not in initializers]
    if given and len(given) != len(graph_inputs):
        raise SourceModelError(f"--input-shapes gives {len(given)} shape(s) but {path} has {len(graph_inputs)} "
                               f"input(s) ({', '.join(t.name for t in graph_inputs)}): give one per input, ':' apart")
    shapes = []
    for number, tensor in enumerate(graph_inputs):
        elem_type = tensor.type.tensor_type.elem_type
        if elem_type not in _ONNX_FLOAT_TYPES:
            raise SourceModelError(f"{path}: input {tensor.name!r} is not a float tensor (ONNX type {elem_type}); the "
                                   "agent feeds camera frames as float or quantised images")
        dims = tensor.type.tensor_type.shape.dim
        declared = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
        if given:
            shape = given[number]
            if len(shape) != len(declared):
                raise SourceModelError(
                    f"--input-shapes {','.join(map(str, shape))} has {len(shape)} dimensions but {tensor.name!r} has "
                    f"{len(declared)} ({_shape_text(declared)}): give the shape in the ONNX model's own layout")
            clash = [(d, s) for d, s in zip(declared, shape) if isinstance(d, int) and d not in (0, s)]
            if clash:
                raise SourceModelError(f"--input-shapes {','.join(map(str, shape))} does not fit {tensor.name!r}, "
                                       f"declared {_shape_text(declared)}: only its open sizes can be chosen")
        else:
            open_sizes = [i for i, d in enumerate(declared) if not isinstance(d, int) or d == 0]
            if [i for i in open_sizes if i != 0]:
                example = ",".join(str(d) if isinstance(d, int) and d else ("1" if i == 0 else "224")
                                   for i, d in enumerate(declared))
                raise SourceModelError(
                    f"{path}: input {tensor.name!r} is {_shape_text(declared)}, with sizes fixed only at run time; "
                    f"boards (and the Edge TPU) need fixed sizes: give them with --input-shapes, e.g. {example} "
                    "(in the ONNX model's own layout), or export with fixed sizes (no dynamic_axes)")
            shape = tuple(1 if i == 0 else int(d) for i, d in enumerate(declared))
        if shape and shape[0] != 1:
            raise SourceModelError(f"{tensor.name!r}: the agent feeds one frame at a time: the batch must be 1")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
        shapes.append(tuple(int(s) for s in shape))
    for tensor in model.graph.output:  # onnx2tf and onnxruntime re-derive them from the fixed inputs
        for dim in tensor.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    del model.graph.value_info[:]
    return shapes


def _run_onnx2tf(path: Path, model: Any) -> Any:
    onnx2tf = import_host_library("onnx2tf", PURPOSE)
    onnx = import_host_library("onnx", PURPOSE)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:  # InferenceError: shapes that cannot work with the fixed sizes
        raise SourceModelError(f"{path}: the graph does not fit its fixed input sizes ({first_line(err)}): check "
                               "--input-shapes") from None
    printed = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="edge-agent-onnx2tf-") as scratch, native_stderr_to_debug_log(), \
            contextlib.redirect_stdout(printed):
        try:
            # not_use_onnxsim: onnxsim is optional and not in the host extra; the shapes are fixed above instead.
            keras_model = onnx2tf.convert(onnx_graph=model, output_folder_path=scratch, disable_model_save=True,
                                          non_verbose=True, not_use_onnxsim=True, verbosity="error")
        except SystemExit:  # onnx2tf reports its errors by printing them and calling sys.exit(1)
            keras_model = None
        except Exception as err:
            raise ConversionError(f"onnx2tf could not convert {path} ({type(err).__name__}: {first_line(err)}); "
                                  "nothing was written") from None
    if keras_model is None:
        said = [line.strip() for line in printed.getvalue().splitlines() if "ERROR" in line]
        raise ConversionError(f"onnx2tf could not convert {path}: {'; '.join(said)[:600] or 'it stopped with an error'}; "
                              "nothing was written")
    logger.debug("onnx2tf printed:\n%s", printed.getvalue())
    return keras_model


def _output_keys(model: Any) -> list[str]:
    """The ONNX output names as the converted model's output names (unique, TF-safe)."""
    keys: list[str] = []
    for number, tensor in enumerate(model.graph.output):
        key = tensor_name(tensor.name)
        keys.append(key if key not in keys else f"{key}_{number}")
    return keys


def _onnxruntime_reference(model: Any, names: list[str], transposed: list[bool], output_keys: list[str],
                           function: Any) -> Any:
    """predict() for the validation: onnxruntime on the ONNX graph in its own layout, outputs as the converted ones."""
    onnxruntime = import_host_library("onnxruntime", PURPOSE)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    structured = function.structured_outputs
    converted_shapes = [tuple(structured[key].shape) for key in sorted(structured)]

    def predict(arrays: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {name: (a.transpose(NHWC_TO_NCHW) if swap else a) for name, a, swap in zip(names, arrays, transposed)}
        results = session.run(output_names, feeds)
        outputs = dict(zip(output_keys, results))
        ordered = [outputs[key] for key in sorted(outputs)]
        # onnx2tf turns 4-D NCHW outputs into NHWC too; compare like with like
        return [r.transpose(NCHW_TO_NHWC) if r.ndim == 4 and tuple(r.shape) != shape
                and tuple(r.transpose(NCHW_TO_NHWC).shape) == shape else r
                for r, shape in zip(ordered, converted_shapes)]

    return predict


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
