"""Load hardware delegates (Edge TPU, or any external delegate `.so`) with clear errors.

Device strings for the Edge TPU follow pycoral: "" (first found), "usb", "usb:N", "pci", "pci:N".
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

from edge_agent.config import DelegateSpec
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime.edgetpu import library_name

EDGETPU_HELP = (
    "install the Edge TPU runtime (package libedgetpu1-std: see the README's Coral section for the "
    "build that matches your runtime), plug the Coral in (a USB Accelerator shows as 1a6e:089a or "
    "18d1:9302 in `lsusb`), make sure the agent's user is in the plugdev group (USB) or that "
    "/dev/apex_0 exists (PCIe), and pair it with a matching runtime: libedgetpu is built from one "
    "TensorFlow release; `edge-agent doctor` says which runtime matches it"
)


class DelegateError(EdgeAgentError, RuntimeError):
    """A delegate could not be loaded or applied."""


def load_delegate(module: ModuleType, spec: DelegateSpec, library: str | None = None) -> Any:
    """Return a loaded delegate object for `spec` (kind != "none"), or raise DelegateError.

    The Edge TPU's library is found by its soname, as the runtime does; `library` names another
    file instead (the doctor, checking a board's image from outside)."""
    if spec.kind == "edgetpu":
        library = library or library_name()
        options = {"device": spec.device} if spec.device else {}
        what = f"Edge TPU delegate ({library}, device {spec.device or 'first found'})"
        hint = EDGETPU_HELP
    elif spec.kind == "external":
        library = library or spec.path
        options = {key: str(value) for key, value in spec.options.items()}
        what = f"external delegate {library}"
        hint = "check that the file exists, is built for this CPU architecture and this runtime version"
    else:
        raise DelegateError(f"unknown delegate kind {spec.kind!r}")
    try:
        # Check the library before the runtime's Delegate() sees it: when that constructor fails
        # half-way, its __del__ prints an "Exception ignored ... AttributeError" traceback.
        _check_delegate_library(library)
        return module.load_delegate(library, options)
    except (ValueError, OSError, RuntimeError) as err:
        raise DelegateError(f"{what} could not be loaded: {_first_line(err)}. Fix: {hint}") from err


def _check_delegate_library(library: str) -> None:
    """Raise OSError unless `library` opens and exports the external-delegate entry points.

    Both runtimes' load_delegate (LiteRT's and tflite-runtime's) call exactly these two through
    ctypes: tensorflow/lite/delegates/external/external_delegate_interface.h."""
    handle = ctypes.CDLL(library)
    for symbol in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate"):
        if not hasattr(handle, symbol):
            raise OSError(f"{library} is not a TFLite delegate (it has no {symbol} function)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
