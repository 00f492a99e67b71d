"""Try a model in a child process before the daemon loads it.

A model that crashes the interpreter (a segfault or abort inside the runtime) must take down
only the child, so the self-test runs as `python -m edge_agent selftest` (a hidden command):
it reads one JSON request on stdin, builds the model exactly as the pipeline would (load,
allocate, warm-up invokes, labels, decoder), runs a synthetic frame through preprocessing,
invoke and decoding, checks the output shapes, and prints one JSON line with what it found.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.config import AgentConfig, PipelineConfig, parse_config
from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

POLL_S = 0.1
SYNTHETIC_FRAME_SHAPE = (240, 320, 3)
SYNTHETIC_FRAME_VALUE = 128  # mid-grey: what a camera shows before it has settled
STDERR_TAIL_CHARS = 400


class SelfTestError(EdgeAgentError):
    """The model failed its self-test; str(err) is the reason reported to the pusher."""


def selftest_request(config: AgentConfig, pipeline: str, model_path: str, label: str, trusted_keys: tuple[str, ...],
                     allow_unsigned_models: bool) -> dict[str, Any]:
    """What the child is told: the config as it was read from TOML (the child parses it again with
    the same parser), the pipeline's name, and the trust settings the running agent applies."""
    return {"config": config.source_toml, "base_dir": config.base_dir, "pipeline": pipeline, "model": model_path,
            "label": label, "trusted_keys": list(trusted_keys), "allow_unsigned_models": allow_unsigned_models}


def pipeline_from_request(request: dict[str, Any]) -> PipelineConfig:
    """In the child: the pipeline's config, parsed from the same TOML data as the agent's."""
    config = parse_config(request["config"], base_dir=Path(request["base_dir"]), source="the agent's configuration")
    return next(p for p in config.pipelines if p.name == request["pipeline"])


def selftest_in_child(config: AgentConfig, pipeline: str, model_path: str, label: str, trusted_keys: tuple[str, ...],
                      allow_unsigned_models: bool, timeout_s: float, stop: threading.Event) -> dict[str, Any]:
    """Run the self-test of `pipeline` in a child process; its report, or SelfTestError with the reason."""
    # default=str: a TOML date (only possible among delegate options) arrives as the string the delegate gets anyway
    request = json.dumps(selftest_request(config, pipeline, model_path, label, trusted_keys, allow_unsigned_models),
                         default=str)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "edge_agent", "selftest"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = _communicate(process, request.encode("utf-8"), timeout_s, stop)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode < 0:
        number = -process.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        raise SelfTestError(f"the model crashed the interpreter (signal {number}) during its self-test in a child "
                            f"process ({name}): the file is damaged or this runtime cannot run it; re-export it, "
                            "or try the other runtime")
    report = _last_json_line(stdout)
    if report is None:
        tail = stderr.decode("utf-8", "replace").strip()[-STDERR_TAIL_CHARS:]
        raise SelfTestError(f"the self-test ended with status {process.returncode} and no report: {tail or 'no output'}")
    if not report.get("ok"):
        raise SelfTestError(str(report.get("error") or "the self-test failed"))
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _communicate(process: subprocess.Popen, request: bytes, timeout_s: float,
                 stop: threading.Event) -> tuple[bytes, bytes]:
    """Send the request and collect the output, killing the child on timeout or shutdown."""
    deadline = time.monotonic() + timeout_s
    first = True
    while True:
        try:
            return process.communicate(request if first else None, timeout=POLL_S)
        except subprocess.TimeoutExpired:
            first = False
        if stop.is_set():
            process.kill()
            raise SelfTestError("the agent is stopping")
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            raise SelfTestError(f"the self-test did not finish within {timeout_s:g} s (models.selftest_timeout_s): "
                                "the model is too slow or hangs") from None


def _last_json_line(stdout: bytes) -> dict | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def run_selftest(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: build the model as the pipeline would and run one synthetic frame through it."""
    from edge_agent.service.active_model import build_active_model

    config = pipeline_from_request(request)
    active = build_active_model(config, model_path=request["model"], trusted_keys=tuple(request["trusted_keys"]),
                                allow_unsigned_models=bool(request["allow_unsigned_models"]), label=request.get("label", ""))
    frame = np.full(SYNTHETIC_FRAME_SHAPE, SYNTHETIC_FRAME_VALUE, np.uint8)
    buffer = active.acquire_buffer()
    geometry = active.preprocessor.prepare(frame, buffer)
    outputs = active.model.run(buffer)
    for spec, output in zip(active.model.outputs, outputs):
        if tuple(output.shape) != tuple(spec.shape):
            raise SelfTestError(f"output {spec.name!r} came out with shape {list(output.shape)}, "
                                f"but the model declares {list(spec.shape)}")
    active.decode(outputs, geometry)
    return {
        "ok": True,
        "name": active.ref.name,
        "version": active.ref.version,
        "sha256": active.ref.sha256,
        "task": active.task,
        "input": active.model.input.describe(),
        "outputs": [spec.describe() for spec in active.model.outputs],
        "invoke_ms": round(active.invoke_ms, 3),
    }


def selftest_main(stdin: TextIO, stdout: TextIO) -> int:
    """The hidden `edge-agent selftest` command: JSON request on stdin, one JSON line on stdout."""
    try:
        report = run_selftest(json.loads(stdin.read()))
    except Exception as err:  # the edge of the child: every failure becomes the report
        report = {"ok": False, "error": str(err) or type(err).__name__}
    stdout.write(json.dumps(report) + "\n")
    stdout.flush()
    return 0 if report["ok"] else 1
