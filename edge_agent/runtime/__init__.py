"""Interpreter creation, delegates and model introspection (the only place a runtime is imported)."""

from edge_agent.config import DelegateSpec
from edge_agent.runtime.delegates import DelegateError
from edge_agent.runtime.model import (
    TASKS,
    LoadedModel,
    ModelLoadError,
    TensorSpec,
    default_num_threads,
    guess_task,
    load_model,
    load_model_file,
)
from edge_agent.runtime.tflite_file import ModelFile, ModelFileError, parse_labels, read_model_file

__all__ = [
    "TASKS",
    "DelegateError",
    "DelegateSpec",
    "LoadedModel",
    "ModelFile",
    "ModelFileError",
    "ModelLoadError",
    "TensorSpec",
    "default_num_threads",
    "guess_task",
    "load_model",
    "load_model_file",
    "parse_labels",
    "read_model_file",
]
