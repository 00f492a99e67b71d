"""The main subgraph of a .tflite file: operators in execution order and their tensors.

For analyses that need more than operator counts (Edge TPU readiness, a bundle's input
spec) without building an interpreter. Uses the same bounds-checked FlatBuffer reader as
`tflite_file`; field numbers follow tensorflow/lite/schema/schema.fbs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.runtime.builtin_ops import BUILTIN_OPERATOR_NAMES
from edge_agent.runtime.tflite_file import _CUSTOM_CODE, ModelFileError, _FlatBuffer, _Malformed, _read_flatbuffer

# schema.fbs enum TensorType, by value
TENSOR_TYPES = (
    "float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16", "complex64", "int8",
    "float64", "complex128", "uint64", "resource", "variant", "uint32", "uint16", "int4", "bfloat16",
)


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 marks a dimension only known at run time
    constant: bool  # holds weights baked into the file
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)

    @property
    def quantized(self) -> bool:
        return bool(self.scale) and any(s != 0.0 for s in self.scale)


@dataclass(frozen=True)
class OperatorInfo:
    index: int  # position in execution order
    name: str  # builtin name (CONV_2D) or custom code
    version: int
    inputs: tuple[int, ...]  # tensor indexes; -1 marks an omitted optional input
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelGraph:
    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraph_count: int

    def tensor(self, index: int) -> TensorInfo | None:
        return self.tensors[index] if 0 <= index < len(self.tensors) else None


def read_graph(content: bytes, source: str | Path = "model") -> ModelGraph:
    """Operators and tensors of subgraph 0; ModelFileError for bytes that are not a valid model."""
    try:
        _read_flatbuffer(content)  # the same structural checks as read_model_file
        return _read_graph(_FlatBuffer(content))
    except (_Malformed, IndexError) as err:
        raise ModelFileError(
            f"{source} is not a valid TFLite model ({err}); it may be truncated or not a .tflite file: "
            "copy it again or re-export it"
        ) from None


def _read_graph(fb: _FlatBuffer) -> ModelGraph:
    model = fb.root()
    codes = []
    for code in fb.tables(model, 1):  # Model.operator_codes
        builtin = max(fb.scalar(code, 0, "<b"), fb.scalar(code, 3, "<i"))
        name = (fb.string(code, 1) or "CUSTOM") if builtin == _CUSTOM_CODE else BUILTIN_OPERATOR_NAMES.get(builtin, f"BUILTIN_{builtin}")
        codes.append((name, fb.scalar(code, 2, "<i", default=1)))
    buffers = fb.tables(model, 4)
    subgraphs = fb.tables(model, 2)
    subgraph = subgraphs[0]
    tensors = tuple(_tensor(fb, number, table, buffers) for number, table in enumerate(fb.tables(subgraph, 0)))
    operators = []
    for number, table in enumerate(fb.tables(subgraph, 3)):
        name, version = codes[fb.scalar(table, 0, "<I")]
        operators.append(OperatorInfo(number, name, version, tuple(fb.ints(table, 1)), tuple(fb.ints(table, 2))))
    return ModelGraph(tensors, tuple(operators), tuple(fb.ints(subgraph, 1)), tuple(fb.ints(subgraph, 2)), len(subgraphs))


def _tensor(fb: _FlatBuffer, number: int, table: int, buffers: list[int]) -> TensorInfo:
    type_code = fb.scalar(table, 1, "<b")
    buffer_index = fb.scalar(table, 2, "<I")
    shape = tuple(fb.ints(table, 0))
    signature = tuple(fb.ints(table, 7)) or shape
    quantization = fb.table(table, 4)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    if quantization is not None:
        scale = tuple(fb.vector(quantization, 2, "<f"))
        zero_point = tuple(fb.vector(quantization, 3, "<q"))
    return TensorInfo(
        index=number,
        name=fb.string(table, 3) or "",
        dtype=TENSOR_TYPES[type_code] if 0 <= type_code < len(TENSOR_TYPES) else f"type{type_code}",
        shape=shape,
        shape_signature=signature,
        constant=0 < buffer_index < len(buffers) and _buffer_has_data(fb, buffers[buffer_index]),
        scale=scale,
        zero_point=zero_point,
    )


def _buffer_has_data(fb: _FlatBuffer, buffer: int) -> bool:
    if fb.scalar(buffer, 1, "<Q"):  # Buffer.offset: weights stored after the flatbuffer
        return True
    data = fb.vector(buffer, 0, "<s")  # Buffer.data as one bytes object (not a list of ints)
    return bool(data and data[0])
