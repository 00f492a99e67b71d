"""Choose and import the TFLite interpreter package: LiteRT or tflite-runtime.

Both expose the same `Interpreter` / `load_delegate` API. LiteRT (`ai-edge-litert`) is the
maintained successor and much faster for int8 models on x86-64 and aarch64; tflite-runtime
stays supported because Coral's libedgetpu builds are matched to its TensorFlow version.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edge_agent.errors import EdgeAgentError

RUNTIMES = ("litert", "tflite-runtime")
RUNTIME_CHOICES = ("auto", *RUNTIMES)

_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}
_INSTALL_HINTS = {
    "litert": "pip install ai-edge-litert",
    "tflite-runtime": "pip install tflite-runtime 'numpy<2' (tflite-runtime 2.14 does not work with numpy 2)",
}


class RuntimeNotAvailable(EdgeAgentError, RuntimeError):
    """The requested interpreter package is not installed or does not import."""


def import_runtime(runtime: str = "auto") -> tuple[str, ModuleType]:
    """Return (runtime name, interpreter module); `auto` prefers LiteRT."""
    if runtime not in RUNTIME_CHOICES:
        raise RuntimeNotAvailable(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIME_CHOICES)}")
    candidates = RUNTIMES if runtime == "auto" else (runtime,)
    problems = []
    for name in candidates:
        try:
            return name, importlib.import_module(_MODULES[name])
        except ImportError as err:
            problems.append(f"{name}: {err} (install with: {_INSTALL_HINTS[name]})")
    raise RuntimeNotAvailable("no TFLite runtime could be imported; " + "; ".join(problems))


def available_runtimes() -> list[str]:
    """Runtimes that import on this machine, in order of preference."""
    names = []
    for name in RUNTIMES:
        try:
            import_runtime(name)
        except RuntimeNotAvailable:
            continue
        names.append(name)
    return names
