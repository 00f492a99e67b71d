"""TF1 frozen graphs (a GraphDef `.pb` with the weights as constants), the way toco took them.

`--input-arrays`, `--output-arrays` and `--input-shapes` use toco's names and syntax:
comma-separated node names (a `:0` tensor suffix is accepted) and colon-separated shapes
(`1,224,224,3:1,10`). Without the names the error lists the graph's placeholders and its
likely outputs (nodes nothing consumes), ready to copy. The converter is TensorFlow's
frozen-graph converter (`tf.compat.v1.lite.TFLiteConverter.from_frozen_graph`); the
validation runs the same GraphDef, imported into a `tf.compat.v1.wrap_function`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.host.source_model import (
    InputDescription,
    SourceModel,
    SourceModelError,
    SourceOptions,
)
from edge_agent.host.tensorflow_loader import import_tensorflow

logger = logging.getLogger(__name__)

PLACEHOLDER_OPS = ("Placeholder", "PlaceholderV2", "PlaceholderWithDefault")
# Nodes nobody consumes that are not outputs a user wants (training and bookkeeping leftovers).
_NOT_OUTPUTS = ("NoOp", "Const", "Assert", "SaveV2", "RestoreV2", "VarHandleOp", "VariableV2", "Placeholder")
NAMES_LISTED = 12


def parse_array_names(text: str | None) -> tuple[str, ...]:
    """`a,b:0` -> ("a", "b"): toco's comma list; a `:0` suffix names the node's first tensor."""
    if not text:
        return ()
    names = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            raise SourceModelError(f"empty name in {text!r}: give comma-separated node names, e.g. input,logits")
        if ":" in name:
            node, _, index = name.rpartition(":")
            if index != "0":
                raise SourceModelError(f"{name!r}: only a node's first tensor (:0) can be an input or output")
            name = node
        names.append(name)
    return tuple(names)


def parse_input_shapes(text: str | None) -> tuple[tuple[int, ...], ...]:
    """`1,224,224,3:1,10` -> ((1, 224, 224, 3), (1, 10)): toco's shapes, one per input, colon-separated."""
    if not text:
        return ()
    shapes = []
    for part in text.split(":"):
        try:
            shape = tuple(int(d) for d in part.split(","))
        except ValueError:
            raise SourceModelError(f"--input-shapes {text!r}: expected integers like 1,224,224,3 (inputs separated by ':')") from None
        if any(d < 1 for d in shape):
            raise SourceModelError(f"--input-shapes {text!r}: every size must be at least 1")
        shapes.append(shape)
    return tuple(shapes)


def load_frozen_graph(path: Path, options: SourceOptions) -> SourceModel:
    """The frozen GraphDef at `path` with the chosen inputs/outputs; SourceModelError names what is missing."""
    tf = import_tensorflow()
    graph_def = _read_graph_def(path, tf)
    nodes = {node.name: node for node in graph_def.node}
    placeholders = [node.name for node in graph_def.node if node.op in PLACEHOLDER_OPS]
    outputs_guess = likely_outputs(graph_def)
    if not options.input_arrays or not options.output_arrays:
        raise SourceModelError(
            f"{path} is a TF1 frozen graph: name its inputs and outputs, e.g. --input-arrays "
            f"{','.join(placeholders[:3]) or 'INPUT'} --output-arrays {','.join(outputs_guess[:3]) or 'OUTPUT'} "
            f"(placeholders: {_listing(placeholders)}; likely outputs, nodes nothing consumes: {_listing(outputs_guess)})"
        )
    for flag, names, listed in (("--input-arrays", options.input_arrays, placeholders),
                                ("--output-arrays", options.output_arrays, outputs_guess)):
        unknown = [name for name in names if name not in nodes]
        if unknown:
            what = "placeholders" if flag == "--input-arrays" else "likely outputs"
            raise SourceModelError(f"{path} has no node {', '.join(map(repr, unknown))} ({flag}); its {what}: "
                                   f"{_listing(listed)}")
    inputs = _input_descriptions(path, options, nodes, tf)
    reference = _graph_function(graph_def, inputs, options.output_arrays, tf)

    def converter_factory() -> Any:
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path), list(options.input_arrays), list(options.output_arrays),
            input_shapes={i.name: list(i.shape) for i in inputs})

    def predict(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(out) for out in reference(*[tf.constant(a) for a in arrays])]

    logger.info("frozen graph %s: inputs %s, outputs %s", path, [(i.name, i.shape) for i in inputs],
                list(options.output_arrays))
    return SourceModel(path, "frozen_graph", inputs, None, None, None, converter_factory=converter_factory,
                       reference=predict)


def likely_outputs(graph_def: Any) -> list[str]:
    """Nodes whose result no other node consumes, without training and bookkeeping leftovers."""
    consumed = set()
    for node in graph_def.node:
        for name in node.input:
            consumed.add(name.lstrip("^").split(":")[0])
    return [node.name for node in graph_def.node if node.name not in consumed and node.op not in _NOT_OUTPUTS]


def _read_graph_def(path: Path, tf: Any) -> Any:
    data = path.read_bytes()
    try:
        graph_def = tf.compat.v1.GraphDef.FromString(data)
    except Exception:  # google.protobuf.message.DecodeError, RuntimeWarning-free across protobuf versions
        graph_def = None
    if graph_def is None or not graph_def.node or any(not node.op for node in graph_def.node):
        if (path.parent / "variables").is_dir():
            raise SourceModelError(f"{path} is not a frozen GraphDef, and its folder looks like a SavedModel: pass the "
                                   f"folder {path.parent} (with its file named saved_model.pb)")
        raise SourceModelError(
            f"{path} is not a TensorFlow GraphDef (a frozen graph .pb): it could not be parsed as one; pass the "
            "frozen graph itself (tf.compat.v1.graph_util.convert_variables_to_constants writes it), or a SavedModel "
            "folder"
        )
    variables = [node.name for node in graph_def.node if node.op in ("VariableV2", "VarHandleOp", "Variable")]
    if variables:
        raise SourceModelError(
            f"{path} still has variables ({_listing(variables)}): it is not frozen; freeze it with "
            "tf.compat.v1.graph_util.convert_variables_to_constants, or export a SavedModel"
        )
    return graph_def


def _input_descriptions(path: Path, options: SourceOptions, nodes: dict, tf: Any) -> list[InputDescription]:
    if options.input_shapes and len(options.input_shapes) != len(options.input_arrays):
        raise SourceModelError(f"--input-shapes gives {len(options.input_shapes)} shape(s) for "
                               f"{len(options.input_arrays)} --input-arrays: give one per input, separated by ':'")
    inputs = []
    for number, name in enumerate(options.input_arrays):
        node = nodes[name]
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type) if "dtype" in node.attr else tf.float32
        declared = _declared_shape(node)
        if options.input_shapes:
            shape = options.input_shapes[number]
            if declared is not None and len(declared) != len(shape):
                raise SourceModelError(
                    f"--input-shapes {','.join(map(str, shape))} has {len(shape)} dimensions but {name!r} has "
                    f"{len(declared)} ({_shape_text(declared)}): give a shape of rank {len(declared)}")
            if declared is not None and any(d not in (-1, s) for d, s in zip(declared, shape)):
                raise SourceModelError(f"--input-shapes {','.join(map(str, shape))} does not fit {name!r}, "
                                       f"declared {_shape_text(declared)}: only its unknown (?) sizes can be chosen")
        elif declared is None:
            raise SourceModelError(f"{path}: {name!r} has no declared shape: give it with --input-shapes, e.g. 1,224,224,3")
        else:
            shape = (1,) + tuple(declared[1:]) if declared else ()
            if any(d < 0 for d in shape):
                raise SourceModelError(
                    f"{path}: {name!r} is {_shape_text(declared)}, with sizes unknown until run time: fix them with "
                    f"--input-shapes, e.g. {','.join(str(d if d > 0 else 224) for d in shape)}")
        if not shape or shape[0] != 1:
            raise SourceModelError(f"{name!r}: the agent feeds one frame at a time: the first size of --input-shapes "
                                   "must be the batch of 1")
        inputs.append(InputDescription(name, tuple(int(d) for d in shape), np.dtype(dtype.as_numpy_dtype)))
    return inputs


def _declared_shape(node: Any) -> tuple[int, ...] | None:
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return None
    return tuple(int(d.size) for d in node.attr["shape"].shape.dim)


def _graph_function(graph_def: Any, inputs: list[InputDescription], outputs: tuple[str, ...], tf: Any) -> Any:
    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    graph = wrapped.graph
    return wrapped.prune([graph.get_tensor_by_name(f"{i.name}:0") for i in inputs],
                         [graph.get_tensor_by_name(f"{name}:0") for name in outputs])


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _listing(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:NAMES_LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > NAMES_LISTED else "")
