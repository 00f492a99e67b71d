"""Edge TPU readiness: which operators `edgetpu_compiler` can map, and which fall back to the CPU.

The analysis reads the .tflite itself (no compiler, no hardware) and applies Coral's
published model requirements (https://coral.ai/docs/edgetpu/models-intro/, "Model
requirements" and "Supported operations", compiler 16):
  - tensors are 8-bit (int8/uint8); int32 is allowed for constants such as biases and shapes;
  - tensor sizes are fixed at compile time (no dynamic dimensions);
  - a tensor has at most 3 dimensions larger than 1, and only the innermost ones;
  - the operator is in the supported list (its known limitations are quoted in the report).
The compiler maps one part of the graph: an operator it cannot map runs on the CPU, and so
does every operator that needs its result, even supported ones (Coral: "everything after
it executes on the CPU"). A QUANTIZE that converts a float model input, or a DEQUANTIZE
that produces a float model output, runs on the CPU without cutting the graph (this is
what `--io-type float32` costs).
Not checked here (the compiler's own log, `--edgetpu`, is authoritative): fused activations
on pooling/concatenation, axis limits of MEAN/PAD/SPLIT, operator versions newer than the
compiler knows, and size-dependent choices for RESIZE_* and RESHAPE.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.runtime.tflite_graph import ModelGraph, OperatorInfo, read_graph
from edge_agent.errors import EdgeAgentError

COMPILER_NAME = "edgetpu_compiler"
COMPILER_TIMEOUT_S = 300
COMPILER_HELP = (
    "edgetpu_compiler is not on the PATH: it runs on x86-64 Debian/Ubuntu; install the package "
    "'edgetpu-compiler' from Coral's apt repository (https://coral.ai/docs/edgetpu/compiler/) or use "
    "Coral's web (Colab) compiler, then run again with --edgetpu. The readiness report above is this "
    "tool's own estimate from Coral's published operator list."
)
EIGHT_BIT = ("int8", "uint8")
CONSTANT_TYPES = ("int8", "uint8", "int32")  # weights, biases, shapes
SOFTMAX_MAX_ELEMENTS = 16_000
MAX_NON_UNIT_DIMS = 3

# TFLite builtin name -> the known limitation Coral's table lists ("" = none).
SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "No fused activation function.",
    "CONCATENATION": "No fused activation function. If any input is a compile-time constant tensor, "
                     "there must be only 2 inputs, and this constant tensor must be all zeroes.",
    "CONV_2D": "Must use the same dilation in x and y dimensions.",
    "DEPTHWISE_CONV_2D": "Must use the same dilation in x and y dimensions.",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "Only the default format is supported for fully-connected weights. Output tensor is one-dimensional.",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "Unidirectional LSTM only.",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "Unidirectional LSTM only.",
    "MAXIMUM": "",
    "MAX_POOL_2D": "No fused activation function.",
    "MEAN": "No fused activation function. Supports reduction along x-, y-, and/or z-dimensions only.",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "No packing in batch dimension.",
    "PAD": "Supports padding along x-, y-, and/or z-dimensions only.",
    "PRELU": "Alpha needs to be constant and 1-dimensional (Keras PReLU: shared_axes=[1, 2]).",
    "QUANTIZE": "",
    "REDUCE_MAX": "Cannot operate on the batch dimension.",
    "REDUCE_MIN": "Cannot operate on the batch dimension.",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "Certain reshape operations might not be supported for large tensor sizes.",
    "RESIZE_BILINEAR": "Input/output is a 3-dimensional tensor; depending on sizes it may not be mapped (precision).",
    "RESIZE_NEAREST_NEIGHBOR": "Input/output is a 3-dimensional tensor; depending on sizes it may not be mapped (precision).",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "Supports only 1-D input tensor with a max of 16,000 elements.",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "No splitting in batch dimension.",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "All strides must be 1; ellipsis-axis-mask and new-axis-mask must be 0.",
    "SUB": "",
    "SUM": "Cannot operate on the batch dimension.",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}


class EdgeTpuCompilerMissing(EdgeAgentError, RuntimeError):
    """edgetpu_compiler is not installed on this machine."""


@dataclass(frozen=True)
class OperatorVerdict:
    index: int
    name: str
    placement: str  # "edgetpu" | "cpu"
    reason: str
    limitation: str = ""

    def to_dict(self) -> dict:
        return {"index": self.index, "op": self.name, "placement": self.placement, "reason": self.reason,
                "limitation": self.limitation}


@dataclass(frozen=True)
class Readiness:
    verdicts: tuple[OperatorVerdict, ...]
    first_unsupported: OperatorVerdict | None
    notes: tuple[str, ...] = field(default=())

    @property
    def mapped(self) -> int:
        return sum(v.placement == "edgetpu" for v in self.verdicts)

    @property
    def fully_mapped(self) -> bool:
        return self.first_unsupported is None

    def to_dict(self) -> dict:
        return {
            "operators": len(self.verdicts),
            "mapped_to_edgetpu": self.mapped,
            "run_on_cpu": len(self.verdicts) - self.mapped,
            "fully_mapped": self.fully_mapped,
            "first_unsupported": self.first_unsupported.to_dict() if self.first_unsupported else None,
            "notes": list(self.notes),
            "per_operator": [v.to_dict() for v in self.verdicts],
        }


@dataclass(frozen=True)
class CompilerRun:
    returncode: int
    log: str
    compiled_model: bytes | None


def analyse_readiness(content: bytes, source: str = "model") -> Readiness:
    """Walk the operators in execution order and decide where each would run."""
    graph = read_graph(content, source)
    verdicts = []
    first_unsupported: OperatorVerdict | None = None
    on_cpu: dict[int, OperatorVerdict] = {}  # tensor index -> the CPU operator that produces it
    for op in graph.operators:
        upstream = next((on_cpu[i] for i in op.inputs if i in on_cpu), None)
        problem = _problem(op, graph)
        if upstream is not None:
            verdict = OperatorVerdict(op.index, op.name, "cpu",
                                      f"needs the result of {upstream.name} #{upstream.index}, which runs on the CPU")
        elif problem is None:
            verdict = OperatorVerdict(op.index, op.name, "edgetpu", "mappable", SUPPORTED_OPS.get(op.name, ""))
        elif _is_io_conversion(op, graph):
            verdict = OperatorVerdict(op.index, op.name, "cpu", f"converts a float model input/output ({problem})")
        else:
            verdict = OperatorVerdict(op.index, op.name, "cpu", problem, SUPPORTED_OPS.get(op.name, ""))
            first_unsupported = first_unsupported or verdict
        if verdict.placement == "cpu" and not (op.name == "QUANTIZE" and upstream is None and problem is not None
                                               and _is_io_conversion(op, graph)):
            on_cpu.update({index: verdict for index in op.outputs})
        verdicts.append(verdict)
    return Readiness(tuple(verdicts), first_unsupported, _notes(graph))


def _problem(op: OperatorInfo, graph: ModelGraph) -> str | None:
    if op.name == "edgetpu-custom-op":
        return "already compiled for the Edge TPU (run this file, not a recompilation)"
    if op.name == "DEQUANTIZE":
        consumers = [o for o in graph.operators if set(o.inputs) & set(op.outputs)]
        around = f" before {consumers[0].name} #{consumers[0].index}" if consumers else ""
        return (f"operator not supported by the Edge TPU: the converter went back to float here{around}, "
                "which has no int8 kernel")
    if op.name not in SUPPORTED_OPS:
        return "operator not supported by the Edge TPU"
    for index in op.inputs + op.outputs:
        tensor = graph.tensor(index)
        if tensor is None:
            continue
        allowed = CONSTANT_TYPES if tensor.constant else EIGHT_BIT
        if tensor.dtype not in allowed:
            return f"tensor {tensor.name!r} is {tensor.dtype}; the Edge TPU needs 8-bit (int8/uint8) tensors"
        if tensor.dynamic:
            return f"tensor {tensor.name!r} has a dynamic shape {list(tensor.shape_signature)}; the Edge TPU needs fixed sizes"
        if not tensor.constant and sum(d > 1 for d in tensor.shape[:-MAX_NON_UNIT_DIMS]) > 0:
            return f"tensor {tensor.name!r} {list(tensor.shape)} has more than 3 dimensions larger than 1"
    if op.name == "SOFTMAX":
        tensor = graph.tensor(op.inputs[0])
        if tensor is not None:
            elements = int(np.prod(tensor.shape))
            if sum(d > 1 for d in tensor.shape) > 1 or elements > SOFTMAX_MAX_ELEMENTS:
                return f"SOFTMAX over {list(tensor.shape)}: only a 1-D input of at most {SOFTMAX_MAX_ELEMENTS} elements maps"
    return None


def _is_io_conversion(op: OperatorInfo, graph: ModelGraph) -> bool:
    if op.name == "QUANTIZE":
        return any(i in graph.inputs for i in op.inputs)
    if op.name == "DEQUANTIZE":
        return any(o in graph.outputs for o in op.outputs)
    return False


def _notes(graph: ModelGraph) -> tuple[str, ...]:
    notes = []
    boundary = set(graph.inputs) | set(graph.outputs)
    body_float = any(
        not tensor.constant and tensor.dtype in ("float32", "float16") and tensor.index not in boundary
        for op in graph.operators if op.name in SUPPORTED_OPS and op.name != "QUANTIZE"
        for tensor in map(graph.tensor, op.inputs + op.outputs) if tensor is not None
    )
    io_float = [graph.tensor(i) for i in sorted(boundary) if graph.tensor(i) is not None and graph.tensor(i).dtype == "float32"]
    if body_float:
        notes.append("the model computes in floating point: convert it with --quantize int8 for the Edge TPU")
    elif io_float:
        notes.append(f"model input/output {io_float[0].name!r} is float32: --io-type uint8 or int8 keeps the "
                     "(de)quantisation off the CPU")
    if graph.subgraph_count > 1:
        notes.append(f"the model has {graph.subgraph_count} subgraphs; the compiler maps only the main one")
    return tuple(notes)


def find_compiler() -> str | None:
    return shutil.which(COMPILER_NAME)


def run_compiler(model: bytes, model_name: str = "model", timeout_s: float = COMPILER_TIMEOUT_S) -> CompilerRun:
    """Run edgetpu_compiler on the model bytes; EdgeTpuCompilerMissing when it is not installed."""
    compiler = find_compiler()
    if compiler is None:
        raise EdgeTpuCompilerMissing(COMPILER_HELP)
    with tempfile.TemporaryDirectory(prefix="edgetpu-") as folder:
        source = Path(folder) / f"{model_name}.tflite"
        source.write_bytes(model)
        try:
            result = subprocess.run(
                [compiler, "-s", "-o", folder, str(source)],
                capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return CompilerRun(-1, f"{COMPILER_NAME} did not finish within {timeout_s:.0f} s", None)
        except OSError as err:
            return CompilerRun(-1, f"{COMPILER_NAME} could not be started: {err}", None)
        log = (result.stdout + result.stderr).strip()
        log_file = Path(folder) / f"{model_name}_edgetpu.log"
        if log_file.is_file():
            log += "\n" + log_file.read_text(errors="replace").strip()
        compiled = Path(folder) / f"{model_name}_edgetpu.tflite"
        return CompilerRun(result.returncode, log, compiled.read_bytes() if compiled.is_file() else None)


def format_readiness(readiness: Readiness) -> str:
    """The readiness report as text for people."""
    total = len(readiness.verdicts)
    on_cpu = total - readiness.mapped
    lines = [f"Edge TPU readiness: {readiness.mapped} of {total} operators mappable"
             + ("; no unsupported operator" if readiness.fully_mapped and total else "")
             + (f" ({on_cpu} float input/output conversion(s) on the CPU)" if readiness.fully_mapped and on_cpu else "")]
    first = readiness.first_unsupported
    if first is not None:
        lines.append(f"  first unsupported: {first.name} (#{first.index}): {first.reason}")
        following = [v for v in readiness.verdicts if v.index > first.index and v.placement == "cpu"]
        lines.append(f"  it and {len(following)} operator(s) after it would run on the CPU")
    cpu_ops = [v for v in readiness.verdicts if v.placement == "cpu" and v is not first and "needs the result" not in v.reason]
    for verdict in cpu_ops:
        lines.append(f"  on the CPU: {verdict.name} (#{verdict.index}): {verdict.reason}")
    for note in readiness.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
