"""Create an interpreter for a model and move tensors in and out of it.

`load_model` is the only place an interpreter is built: it picks the runtime, loads the
delegate (falling back to the CPU when allowed), and wraps the result in `LoadedModel`,
whose methods take and return plain numpy arrays so that nothing else touches the
interpreter object.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.runtime.backends import available_runtimes, import_runtime
from edge_agent.config import TASKS, DelegateSpec
from edge_agent.runtime.delegates import DelegateError, load_delegate
from edge_agent.runtime.tflite_file import (
    DETECTION_POSTPROCESS_OP,
    EDGETPU_CUSTOM_OP,
    ModelFile,
    ModelFileError,
    read_model_file,
)
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)



class ModelLoadError(InputError, RuntimeError):
    """The model could not be turned into a working interpreter."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: shape, dtype and quantisation parameters."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0

    def describe(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None,
        }


class LoadedModel:
    """A model inside an interpreter, ready to invoke. Not thread-safe: one caller at a time."""

    def __init__(self, model_file: ModelFile, interpreter, runtime: str, delegate: str, num_threads: int):
        self.file = model_file
        self.runtime = runtime
        self.delegate = delegate
        self.num_threads = num_threads
        self._interpreter = interpreter
        self.inputs = [_tensor_spec(d) for d in interpreter.get_input_details()]
        self.outputs = [_tensor_spec(d) for d in interpreter.get_output_details()]
        self._input_index = self.inputs[0].index
        self._output_indices = [spec.index for spec in self.outputs]

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def sha256(self) -> str:
        return self.file.sha256

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def guess_task(self) -> str:
        return guess_task(self.file, self.outputs)

    def run(self, input_array: np.ndarray) -> list[np.ndarray]:
        """Copy `input_array` into the input buffer, invoke, return copies of the outputs."""
        # The view from tensor() must be gone before invoke(), or the runtime raises.
        np.copyto(self._interpreter.tensor(self._input_index)(), input_array, casting="no")
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index) for index in self._output_indices]

    def invoke(self) -> None:
        """Invoke on whatever the input holds (for benchmarks that time the interpreter alone)."""
        self._interpreter.invoke()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "delegate": self.delegate,
            "num_threads": self.num_threads,
        }


def default_num_threads() -> int:
    return os.cpu_count() or 1


def load_model(
    path: str | Path,
    runtime: str = "auto",
    num_threads: int | None = None,
    delegate: DelegateSpec | None = None,
    on_delegate_failure: str = "cpu",
) -> LoadedModel:
    """Load a .tflite file into an interpreter; raise ModelFileError/ModelLoadError/DelegateError."""
    model_file = read_model_file(path)
    return load_model_file(model_file, runtime, num_threads, delegate, on_delegate_failure)


def load_model_file(
    model_file: ModelFile,
    runtime: str = "auto",
    num_threads: int | None = None,
    delegate: DelegateSpec | None = None,
    on_delegate_failure: str = "cpu",
) -> LoadedModel:
    """Same as load_model for a file already read (and possibly already verified)."""
    delegate = delegate or DelegateSpec()
    threads = num_threads or default_num_threads()
    if runtime == "auto" and delegate.kind == "edgetpu":
        runtime = edgetpu_runtime()
    runtime_name, module = import_runtime(runtime)
    if model_file.needs_edgetpu and delegate.kind != "edgetpu":
        raise ModelLoadError(
            f"{model_file.path} is compiled for the Edge TPU (it contains the operator "
            f"'{EDGETPU_CUSTOM_OP}'), but the pipeline's delegate is {delegate.label!r}: set "
            'delegate = "edgetpu" for this model, or use the model as it was before edgetpu_compiler to run on the CPU'
        )
    delegates = []
    delegate_label = "none"
    if delegate.kind != "none":
        try:
            delegates = [load_delegate(module, delegate)]
            delegate_label = delegate.label
        except DelegateError as err:
            if on_delegate_failure == "fail" or model_file.needs_edgetpu:
                if model_file.needs_edgetpu and on_delegate_failure != "fail":
                    raise DelegateError(
                        f"{err} -- and {model_file.path} cannot fall back to the CPU because it is "
                        "compiled for the Edge TPU: use the CPU version of the model, or fix the delegate"
                    ) from err
                raise
            logger.warning("%s -- running %s on the CPU instead", err, model_file.name)
    interpreter = _make_interpreter(module, model_file, threads, delegates)
    loaded = LoadedModel(model_file, interpreter, runtime_name, delegate_label, threads)
    logger.debug("loaded %s with %s (%d threads, delegate %s)", loaded.name, runtime_name, threads, delegate_label)
    return loaded


def edgetpu_runtime() -> str:
    """The runtime `auto` means with the Edge TPU: the one built from libedgetpu's TensorFlow release."""
    from edge_agent.runtime.edgetpu import choose_edgetpu_runtime, find_edgetpu_library

    available = available_runtimes()
    if not available:
        return "auto"  # import_runtime then names what to install
    name, why = choose_edgetpu_runtime(available, find_edgetpu_library())
    logger.info("Edge TPU with runtime = \"auto\": %s", why)
    return name


def _make_interpreter(module, model_file: ModelFile, threads: int, delegates: list):
    try:
        interpreter = module.Interpreter(
            model_content=model_file.content, num_threads=threads, experimental_delegates=delegates or None
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        detail = str(err).strip().splitlines()
        message = "; ".join(line for line in detail if line)[:500]
        custom = [op for op in model_file.custom_ops if op != DETECTION_POSTPROCESS_OP]
        hint = (
            f" The model uses custom operators this runtime does not have: {', '.join(custom)}."
            if custom
            else ""
        )
        raise ModelLoadError(f"the interpreter refused {model_file.path}: {message}.{hint}") from err
    if not interpreter.get_input_details():
        raise ModelLoadError(f"{model_file.path} has no input tensor")
    return interpreter


def _tensor_spec(details: dict) -> TensorSpec:
    scale, zero_point = details.get("quantization", (0.0, 0))
    return TensorSpec(
        index=int(details["index"]),
        name=str(details["name"]),
        shape=tuple(int(x) for x in details["shape"]),
        dtype=np.dtype(details["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


def guess_task(model_file: ModelFile, outputs: list[TensorSpec]) -> str:
    """Detection for SSD post-processing, classification for one [1, N] output, else raw."""
    if DETECTION_POSTPROCESS_OP in model_file.operator_counts and len(outputs) == 4:
        return "detection"
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[0] == 1 and outputs[0].shape[1] > 1:
        return "classification"
    return "raw"


__all__ = [
    "DelegateError",
    "DelegateSpec",
    "LoadedModel",
    "ModelFileError",
    "ModelLoadError",
    "TASKS",
    "TensorSpec",
    "default_num_threads",
    "guess_task",
    "load_model",
    "load_model_file",
]
