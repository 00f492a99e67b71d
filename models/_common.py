"""What the model-making scripts in this folder share and the package does not provide.

The scripts import it as ``_common``: running ``python models/make_X.py`` puts this
folder first on ``sys.path``. Writing files and attaching labels come from the package
(``edge_agent.atomic_file``, ``edge_agent.host.metadata``). TensorFlow is imported inside
the functions that need it, after each script has quietened TF's logging.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Put before a snippet run by `run_in_runtime`: imports `Interpreter` from the runtime
# named in argv[1] ("ai_edge_litert" or "tflite_runtime").
_IMPORT_INTERPRETER = r"""
import sys
if sys.argv[1] == "ai_edge_litert":
    from ai_edge_litert.interpreter import Interpreter
else:
    from tflite_runtime.interpreter import Interpreter
"""


def make_parser(description: str, default_out: Path, device_python_help: str) -> argparse.ArgumentParser:
    """The options every script takes: ``--out DIR`` and ``--device-python PY``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    device_python = REPO / ".venv" / "bin" / "python"
    parser.add_argument(
        "--device-python",
        default=str(device_python) if device_python.exists() else None,
        help=f"{device_python_help} ('' to skip)",
    )
    return parser


def runtime_pythons(device_python: str | None) -> list[tuple[str, str]]:
    """(runtime, python) pairs: ai_edge_litert in this Python, tflite_runtime in ``device_python`` if given."""
    runs = [("ai_edge_litert", sys.executable)]
    if device_python:
        runs.append(("tflite_runtime", device_python))
    return runs


def run_in_runtime(
    python: str, runtime: str, snippet: str, args: list[str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``snippet`` in a fresh ``python`` with ``Interpreter`` from ``runtime``; argv = [runtime, *args]."""
    return subprocess.run(
        [python, "-c", _IMPORT_INTERPRETER + snippet, runtime, *args], cwd=cwd, capture_output=True, text=True
    )


def batch1_converter(model: Any, input_shape: tuple[int, ...], input_name: str) -> Any:
    """A TFLiteConverter over ``{"probs": model(x)}`` with a fixed batch-1 input.

    The concrete function is handed to the converter without the Keras model so the
    converter freezes the weights into constants; with the model attached, TF 2.19 keeps
    Keras 3 variables as READ_VARIABLE ops and int8 calibration fails.
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, *input_shape], tf.float32, name=input_name)])
    def serve(image):
        return {"probs": model(image, training=False)}

    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])


def convert_full_int8(converter: Any, representative: Callable[[], Iterator[list]], io_type: str) -> bytes:
    """Full-integer conversion: int8 kernels only, calibrated on ``representative``, ``io_type`` in and out."""
    import tensorflow as tf

    io_dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = io_dtype
    converter.inference_output_type = io_dtype
    return converter.convert()
