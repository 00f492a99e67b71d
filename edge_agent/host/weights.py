"""What a written .tflite's weights look like: how many are zero, how well the file compresses, and how
fast it runs with and without XNNPACK (for pruned models, whose zeros are what pruning buys)."""

from __future__ import annotations

import gzip
import time
from dataclasses import asdict, dataclass

import numpy as np

from edge_agent.host.tensorflow_loader import native_stderr_to_debug_log
from edge_agent.runtime.backends import import_runtime
from edge_agent.runtime.tflite_graph import read_graph

# Operators whose input 1 is the weight tensor pruning thins out (biases are left alone, as tfmot does).
WEIGHT_OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_3D")
LATENCY_RUNS = 100
LATENCY_BLOCKS = 5  # the fastest block's mean: the least disturbed by other work on a shared machine
GZIP_LEVEL = 9


@dataclass(frozen=True)
class WeightSparsity:
    zeros: int
    weights: int

    @property
    def sparsity(self) -> float | None:
        return self.zeros / self.weights if self.weights else None


def weight_sparsity(content: bytes) -> WeightSparsity:
    """Zero weights of the convolution/dense kernels in `content`, counted in the model's own buffers.

    Quantised kernels count a value equal to their zero point as zero; float16 kernels are read
    before their DEQUANTIZE. Each kernel tensor is counted once, however many operators use it.
    """
    graph = read_graph(content)
    producers = {out: op for op in graph.operators for out in op.outputs}
    kernels: set[int] = set()
    for op in graph.operators:
        if op.name in WEIGHT_OPERATORS and len(op.inputs) > 1 and op.inputs[1] >= 0:
            index = op.inputs[1]
            producer = producers.get(index)
            if producer is not None and producer.name == "DEQUANTIZE":  # float16 weights
                index = producer.inputs[0]
            tensor = graph.tensor(index)
            if tensor is not None and tensor.constant:
                kernels.add(index)
    if not kernels:
        return WeightSparsity(0, 0)
    _, module = import_runtime("auto")
    interpreter = module.Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    zeros = total = 0
    for index in sorted(kernels):
        values = interpreter.get_tensor(index)
        zero_point = graph.tensor(index).zero_point
        zero = zero_point[0] if zero_point and len(set(zero_point)) == 1 else 0
        zeros += int(np.count_nonzero(values == zero))
        total += int(values.size)
    return WeightSparsity(zeros, total)


def compressed_size(content: bytes) -> int:
    """Bytes of `content` gzipped (what a download or an over-the-air push of the file costs)."""
    return len(gzip.compress(content, compresslevel=GZIP_LEVEL, mtime=0))


@dataclass(frozen=True)
class KernelLatency:
    """Mean per-invoke latency in ms of one model with three kernel choices (None where a runtime lacks one)."""

    reference_kernels_ms: float | None  # TFLite's builtin kernels, XNNPACK off
    xnnpack_ms: float | None  # the default: XNNPACK delegate
    xnnpack_latest_features_ms: float | None  # XNNPACK with its flag-protected features (sparse inference among them)
    runtime: str
    threads: int

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def kernel_latency(content: bytes, sample: np.ndarray, threads: int, runs: int = LATENCY_RUNS) -> KernelLatency:
    """Mean ms per invoke on `sample` (shaped and typed like the input) with each kernel choice: the fastest of
    LATENCY_BLOCKS blocks of `runs` invokes."""
    runtime, module = import_runtime("auto")
    choices = {
        "reference_kernels_ms": {"experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES},
        "xnnpack_ms": {},
        "xnnpack_latest_features_ms": {"experimental_default_delegate_latest_features": True},
    }
    results: dict[str, float | None] = {}
    for key, options in choices.items():
        try:
            with native_stderr_to_debug_log():  # XNNPACK logs its (deprecated) flags on fd 2
                interpreter = module.Interpreter(model_content=content, num_threads=threads, **options)
                interpreter.allocate_tensors()
        except TypeError:  # an older runtime without this option
            results[key] = None
            continue
        index = interpreter.get_input_details()[0]["index"]
        interpreter.set_tensor(index, sample)
        for _ in range(5):
            interpreter.invoke()
        block_means = []
        for _ in range(LATENCY_BLOCKS):
            started = time.perf_counter()
            for _ in range(runs):
                interpreter.invoke()
            block_means.append((time.perf_counter() - started) * 1000.0 / runs)
        results[key] = min(block_means)
    return KernelLatency(runtime=runtime, threads=threads, **results)
