"""TFLite converter settings for each quantisation mode.

  none     float32 weights and activations
  float16  float16 weights (half the size), float32 compute on a CPU
  dynamic  int8 weights, float activations (dynamic range quantisation); no calibration
  int8     full integer: int8 weights and activations calibrated on a representative
           dataset; only int8 kernels allowed (what the Edge TPU needs); inputs/outputs
           uint8, int8 or float32 (--io-type)
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Iterator

import numpy as np

from edge_agent.host.source_model import SourceModel
from edge_agent.host.tensorflow_loader import import_tensorflow, native_stderr_to_debug_log
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
IO_TYPES = ("uint8", "int8", "float32")
ERROR_LINES_KEPT = 6


class ConversionError(InputError, RuntimeError):
    """The converter (TensorFlow's, or onnx2tf for ONNX) refused the model (unsupported operation, no int8 kernel, ...)."""


def convert_to_tflite(source: SourceModel, quantize: str, io_type: str = "uint8",
                      representative: Callable[[], Iterator[list[np.ndarray]]] | None = None) -> bytes:
    """The .tflite bytes for `source` in quantisation mode `quantize`; ConversionError if TF refuses."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantisation needs a representative dataset (--calibration)")
    tf = import_tensorflow()
    with native_stderr_to_debug_log():  # TF warns about the (intended) path without a trackable object
        converter = source.make_converter()
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_dtype = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[io_type]
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    with native_stderr_to_debug_log(), warnings.catch_warnings():
        # TF warns that uint8/int8 inputs have no "statistics"; calibration supplies them.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        try:
            content = converter.convert()
        except Exception as err:  # ConverterError, ValueError, RuntimeError: all mean "TF refused"
            raise ConversionError(_explain(err, quantize)) from None
    return bytes(content)


def _explain(err: Exception, quantize: str) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and "tensorflow.org" not in line]
    text = "; ".join(lines[:ERROR_LINES_KEPT]) or type(err).__name__
    hint = ""
    if quantize == "int8" and ("quantiz" in text.lower() or "int8" in text.lower() or "not supported" in text.lower()):
        hint = " -- an operator has no full-integer kernel: try --quantize dynamic, or replace that layer"
    return f"TensorFlow could not convert the model: {text[:900]}{hint}"
