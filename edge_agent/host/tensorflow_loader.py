"""Import TensorFlow (and the libraries that sit on it) on demand, quietly, with a message that says
how to install them when they are missing."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from types import ModuleType
from typing import Iterator

from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'edge-agent[host]'"


class TensorFlowMissing(InputError, ImportError):
    """TensorFlow (or tf-keras, tfmot, onnx, onnxruntime, onnx2tf) is not installed; only the workstation needs them."""


def import_tensorflow() -> ModuleType:
    """The tensorflow module; TensorFlowMissing with the install command when it is absent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner out of the output
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    try:
        # The `tensorflow` wheel logs CUDA plug-in registration on fd 2 at import, even on CPU-only machines.
        with native_stderr_to_debug_log():
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") logs here, not later
    except ImportError as err:
        raise TensorFlowMissing(
            f"TensorFlow is needed to convert models but cannot be imported ({err}): {INSTALL_HINT} "
            "on the workstation (boards never need it)"
        ) from err
    return tf


def import_keras() -> ModuleType:
    import_tensorflow()
    import keras

    return keras


def import_host_library(name: str, purpose: str) -> ModuleType:
    """`name` (tf_keras, tensorflow_model_optimization, onnx, onnxruntime, onnx2tf), imported after TensorFlow."""
    import_tensorflow()
    try:
        # tfmot 0.8 compares versions with distutils at import and warns about it
        with native_stderr_to_debug_log(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(name)
    except ImportError as err:
        raise TensorFlowMissing(f"{purpose} needs {name}, which cannot be imported ({err}): {INSTALL_HINT}") from err


@contextlib.contextmanager
def native_stderr_to_debug_log() -> Iterator[None]:
    """Send what TF prints on fd 2 (C++ logs such as 'fully_quantize: 0, ...', Python warnings) to the
    debug log instead of the terminal, where the command prints only its own summary and errors."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                logger.debug("TensorFlow printed:\n%s", text)
