"""What the model-making scripts in this folder share and the package does not provide.

The scripts import it as ``_common``: running ``python models/make_X.py`` puts this
folder first on ``sys.path``. Writing files and attaching labels come from the package
(``edge_agent.atomic_file``, ``edge_agent.host.metadata``). TensorFlow is imported inside
the functions that need it, after each script has quietened TF's logging.
"""

from __future__ import annotations

import argparse
import json
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


def batch1_converter(forward: Callable[[Any], Any], input_shape: tuple[int, ...], input_name: str,
                     output_name: str = "probs") -> Any:
    """A TFLiteConverter over ``{output_name: forward(x)}`` with a fixed batch-1 float input.

    ``forward`` runs the Keras model (``lambda x: model(x, training=False)``, or more ops
    around it). The concrete function is handed to the converter without the Keras model so
    the converter freezes the weights into constants; with the model attached, TF 2.19 keeps
    Keras 3 variables as READ_VARIABLE ops and int8 calibration fails.
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, *input_shape], tf.float32, name=input_name)])
    def serve(image):
        return {output_name: forward(image)}

    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])


def convert_full_int8(converter: Any, representative: Callable[[], Iterator[list]], io_type: str,
                      output_type: str | None = None) -> bytes:
    """Full-integer conversion: int8 kernels only, calibrated on ``representative``; ``io_type`` in,
    ``output_type`` out (default ``io_type``; "float32" keeps integer kernels with a float output)."""
    import tensorflow as tf

    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = dtypes[io_type]
    converter.inference_output_type = dtypes[output_type or io_type]
    return converter.convert()


# Loads each model and invokes it once on zeros in the runtime given by argv[1].
_CHECK_SNIPPET = r"""
import json, sys, numpy as np
res = {}
for p in sys.argv[2:]:
    try:
        it = Interpreter(model_path=p)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        res[p] = "ok " + ",".join(f"{d['name']}{list(d['shape'])}{np.dtype(d['dtype']).name}"
                                   for d in it.get_output_details())
    except Exception as e:
        res[p] = f"ERROR {type(e).__name__}: {e}"
print(json.dumps(res))
"""


def check_runtimes(paths: list[Path], device_python: str | None) -> dict[str, dict[str, str]]:
    """Load + invoke each model in ai_edge_litert and (if given) tflite_runtime: {runtime: {path: "ok ..."}}."""
    result = {}
    for runtime, python in runtime_pythons(device_python):
        proc = run_in_runtime(python, runtime, _CHECK_SNIPPET, list(map(str, paths)))
        proc.check_returncode()
        result[runtime] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
