"""The doctor's child process: everything that can crash or hang the process that does it.

A libedgetpu built from another TensorFlow release segfaults inside the runtime; a camera driver
can block in open(); importing a runtime compiled for numpy 1 under numpy 2 can abort. So those
run here, in `python -m edge_agent.doctor.probe`, one JSON request on stdin and one JSON line on
stdout; the parent (`run_probe`) bounds it with a timeout and turns a signal into a sentence.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

STARTUP_ALLOWANCE_S = 10.0  # interpreter start and imports on a Pi Zero 2 W, before the probe's own work


@dataclass(frozen=True)
class ProbeResult:
    """status: "ok" (data holds the answer), "error" (the probe ran and reports `error`), "crashed"
    (killed by `signal_name`), "timeout", or "unavailable" (no child process could be started)."""

    status: str
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    signal_name: str = ""
    seconds: float = 0.0


def run_probe(request: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None) -> ProbeResult:
    """Run one probe in a child process; never raises, never waits longer than `timeout_s`."""
    started = time.monotonic()
    try:
        process = subprocess.Popen([sys.executable, "-m", "edge_agent.doctor.probe"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as err:
        # ENOEXEC: this Python runs under an emulator (qemu-user without binfmt) and cannot exec itself
        why = "exec format error (an emulated Python without binfmt)" if err.errno == errno.ENOEXEC else err.strerror
        return ProbeResult("unavailable", error=f"cannot start a child process: {why}")
    try:
        stdout, stderr = process.communicate(json.dumps(request).encode(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(process)
        return ProbeResult("timeout", error=f"no answer within {timeout_s:g} s", seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    if process.returncode < 0:
        try:
            name = signal.Signals(-process.returncode).name
        except ValueError:
            name = f"signal {-process.returncode}"
        return ProbeResult("crashed", signal_name=name, error=_tail(stderr), seconds=seconds)
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            if answer.get("ok"):
                return ProbeResult("ok", data=answer, seconds=seconds)
            return ProbeResult("error", data=answer, error=str(answer.get("error") or "failed"), seconds=seconds)
    return ProbeResult("error", error=f"exit status {process.returncode}: {_tail(stderr) or 'no output'}", seconds=seconds)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the probe and anything it started
    except OSError:
        process.kill()
    try:
        process.communicate(timeout=5)
    except subprocess.TimeoutExpired:  # stuck in the kernel (a driver in D state): leave it
        pass


def _tail(data: bytes, limit: int = 300) -> str:
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return " / ".join(lines[-3:])[-limit:]


# ---------------------------------------------------------------------------- the child


def probe_imports(request: dict[str, Any]) -> dict[str, Any]:
    """Import each module the agent may use (its version, or the error it gave), and run the demo
    model once with each runtime: tflite-runtime 2.14 imports under numpy 2 and fails only when
    it builds an interpreter."""
    import importlib

    modules = {}
    for name in request.get("modules", []):
        try:
            module = importlib.import_module(name)
        except Exception as err:  # an ImportError, or numpy's ABI complaint (a RuntimeError/ValueError)
            modules[name] = {"ok": False, "error": _root_cause(err)}
            continue
        modules[name] = {"ok": True, "version": str(getattr(module, "__version__", "")), "file": str(getattr(module, "__file__", ""))}
    for name in request.get("runtimes", []):
        if not modules.get(name, {}).get("ok"):
            continue
        try:
            import numpy as np

            interpreter = importlib.import_module(name).Interpreter(model_path=request["model"])
            interpreter.allocate_tensors()
            detail = interpreter.get_input_details()[0]
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except Exception as err:
            modules[name] = {**modules[name], "ok": False, "error": f"imports, but cannot run a model: {_root_cause(err)}"}
    return {"ok": True, "modules": modules}


def probe_delegate(request: dict[str, Any]) -> dict[str, Any]:
    """Load the Edge TPU delegate with one runtime and run the demo model through an interpreter
    that has it (a mismatched libedgetpu crashes in one of these two steps)."""
    import numpy as np

    from edge_agent.config import DelegateSpec
    from edge_agent.runtime.backends import import_runtime
    from edge_agent.runtime.delegates import load_delegate

    name, module = import_runtime(request["runtime"])
    spec = DelegateSpec(kind="edgetpu", device=request.get("device", ""))
    delegate = load_delegate(module, spec, library=request.get("library") or None)
    interpreter = module.Interpreter(model_path=request["model"], experimental_delegates=[delegate])
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    return {"ok": True, "runtime": name}


def probe_source(request: dict[str, Any]) -> dict[str, Any]:
    """Open the source exactly as a pipeline does and read one frame."""
    from edge_agent.config import SourceSpec
    from edge_agent.sources import make_source
    from edge_agent.sources.opencv_setup import configure_opencv

    configure_opencv()
    source = make_source(SourceSpec(**request["spec"]))
    started = time.monotonic()
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    if frame is None:
        return {"ok": False, "error": "opened, but delivered no frame"}
    return {"ok": True, "shape": list(frame.shape), "seconds": round(time.monotonic() - started, 3)}


def probe_querycap(request: dict[str, Any]) -> dict[str, Any]:
    """VIDIOC_QUERYCAP on each V4L2 node (needs read access: the video group)."""
    from edge_agent.doctor.v4l2 import query_capabilities

    return {"ok": True, "nodes": {path: query_capabilities(path) for path in request["paths"]}}


def probe_picamera(request: dict[str, Any]) -> dict[str, Any]:
    """The cameras libcamera sees, through Picamera2 (CSI cameras OpenCV cannot open)."""
    from picamera2 import Picamera2

    return {"ok": True, "cameras": [{k: str(v) for k, v in info.items()} for info in Picamera2.global_camera_info()]}


PROBES = {"imports": probe_imports, "delegate": probe_delegate, "source": probe_source,
          "querycap": probe_querycap, "picamera": probe_picamera}


def _root_cause(err: BaseException) -> str:
    """The innermost exception of a chain ("ImportError: numpy.core.multiarray failed to import"
    under a pybind11 SystemError), as TYPE: first line."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:1000]


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        answer = PROBES[request["probe"]](request)
    except Exception as err:  # reported to the parent as the probe's finding, not a crash
        answer = {"ok": False, "error": f"{_first_line(err)}", "type": type(err).__name__}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
