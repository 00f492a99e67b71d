"""Import TensorFlow on demand, with a message that says how to install it when it is missing."""

from __future__ import annotations

import os
from types import ModuleType

from edge_agent.errors import InputError

INSTALL_HINT = "pip install 'edge-agent[host]'"


class TensorFlowMissing(InputError, ImportError):
    """TensorFlow is not installed (it is only needed on the workstation)."""


def import_tensorflow() -> ModuleType:
    """The tensorflow module; TensorFlowMissing with the install command when it is absent."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner out of the output
    try:
        import tensorflow as tf
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
