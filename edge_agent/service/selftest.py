"""Try a model in a child process before the daemon loads it.

A model that crashes the interpreter (a segfault or abort inside the runtime) must take down
only the child, so the self-test runs as `python -m edge_agent selftest` (a hidden command):
it reads one JSON request line on stdin followed by the manifest and the model bytes, builds
the model exactly as the pipeline would (load, allocate, warm-up invokes, labels, decoder),
runs a synthetic frame through preprocessing, invoke and decoding, checks the output shapes,
and prints one JSON line with what it found.

The agent has already checked the bundle (signature, bounded read, decryption), so the child
gets the plain model through the pipe and never opens a file for it: an encrypted model is
never written anywhere in the clear. The child takes at most models.max_mb of model bytes and
MAX_MANIFEST_BYTES of manifest, the same bounds as the agent.
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
from typing import Any, BinaryIO, TextIO

import numpy as np

from edge_agent.config import AgentConfig, PipelineConfig, parse_config
from edge_agent.errors import EdgeAgentError
from edge_agent.service.model_source import OpenedModel, opened_from_bytes

logger = logging.getLogger(__name__)

POLL_S = 0.1
SYNTHETIC_FRAME_SHAPE = (240, 320, 3)
SYNTHETIC_FRAME_VALUE = 128  # mid-grey: what a camera shows before it has settled
STDERR_TAIL_CHARS = 400
MAX_REQUEST_LINE_BYTES = 8 * 1024 * 1024  # the config as JSON
MAX_MANIFEST_BYTES = 1 << 20
STOP_JOIN_S = 5.0


class SelfTestError(EdgeAgentError):
    """The model failed its self-test; str(err) is the reason reported to the pusher."""


def selftest_request(config: AgentConfig, pipeline: str, label: str, model_bytes: int, manifest_bytes: int,
                     provenance: str = "") -> dict[str, Any]:
    """What the child is told: the config as it was read from TOML (the child parses it again with
    the same parser), the pipeline's name, and how many manifest and model bytes follow the line."""
    return {"config": config.source_toml, "base_dir": config.base_dir, "pipeline": pipeline, "label": label,
            "model_bytes": model_bytes, "manifest_bytes": manifest_bytes, "provenance": provenance}


def pipeline_from_request(request: dict[str, Any]) -> PipelineConfig:
    """In the child: the pipeline's config, parsed from the same TOML data as the agent's."""
    return _pipeline_of(_agent_from_request(request), request)


def _agent_from_request(request: dict[str, Any]) -> AgentConfig:
    return parse_config(request["config"], base_dir=Path(request["base_dir"]), source="the agent's configuration")


def _pipeline_of(agent: AgentConfig, request: dict[str, Any]) -> PipelineConfig:
    return next(p for p in agent.pipelines if p.name == request["pipeline"])


def selftest_in_child(config: AgentConfig, pipeline: str, opened: OpenedModel, label: str, timeout_s: float,
                      stop: threading.Event) -> dict[str, Any]:
    """Run the self-test of `pipeline` on the model `opened` (already verified, and decrypted if it was
    encrypted) in a child process; its report, or SelfTestError with the reason."""
    model, manifest = opened.model_file.content, opened.manifest_bytes
    # default=str: a TOML date (only possible among delegate options) arrives as the string the delegate gets anyway
    line = json.dumps(selftest_request(config, pipeline, label, len(model), len(manifest), opened.provenance),
                      default=str).encode("utf-8")
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "edge_agent", "selftest"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = _communicate(process, b"".join((line, b"\n", manifest, model)), timeout_s, stop)
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
    """Send the request and collect the output, killing the child on timeout or shutdown. Threads feed
    and drain the pipes (Popen.communicate cannot resume sending a large input after a timeout)."""
    output: dict[str, bytes] = {}

    def feed() -> None:
        try:
            process.stdin.write(request)
        except (BrokenPipeError, OSError):
            pass  # the child died or stopped reading: its exit status and stderr tell why
        finally:
            try:
                process.stdin.close()
            except OSError:
                pass

    def drain(name: str, stream) -> None:
        output[name] = stream.read()

    threads = [threading.Thread(target=feed, name="selftest-stdin", daemon=True),
               threading.Thread(target=drain, args=("stdout", process.stdout), name="selftest-stdout", daemon=True),
               threading.Thread(target=drain, args=("stderr", process.stderr), name="selftest-stderr", daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                process.wait(POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop.is_set():
                process.kill()
                raise SelfTestError("the agent is stopping")
            if time.monotonic() > deadline:
                process.kill()
                raise SelfTestError(f"the self-test did not finish within {timeout_s:g} s (models.selftest_timeout_s): "
                                    "the model is too slow or hangs")
    finally:
        process.wait()
        for thread in threads:
            thread.join(STOP_JOIN_S)
    return output.get("stdout", b""), output.get("stderr", b"")


def _last_json_line(stdout: bytes) -> dict | None:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def read_request(stdin: BinaryIO) -> tuple[dict[str, Any], PipelineConfig, OpenedModel]:
    """In the child: the request line, the pipeline's config, and the model that follows it (bounded)."""
    line = stdin.readline(MAX_REQUEST_LINE_BYTES)
    if not line.endswith(b"\n"):
        raise SelfTestError("the self-test request line is missing or too long")
    request = json.loads(line)
    agent = _agent_from_request(request)
    config = _pipeline_of(agent, request)
    model_bytes, manifest_bytes = request["model_bytes"], request["manifest_bytes"]
    limit = int(agent.models.max_mb * 1024 * 1024)
    if not 0 < model_bytes <= limit or not 0 <= manifest_bytes <= MAX_MANIFEST_BYTES:
        raise SelfTestError(f"the self-test was offered {model_bytes} model bytes (at most {limit}, models.max_mb) "
                            f"and {manifest_bytes} manifest bytes")
    manifest, model = _read_exactly(stdin, manifest_bytes), _read_exactly(stdin, model_bytes)
    label = request.get("label", "") or "the model"
    return request, config, opened_from_bytes(model, manifest, label, request.get("provenance", ""))


def _read_exactly(stdin: BinaryIO, count: int) -> bytes:
    data = stdin.read(count) if count else b""
    if len(data) != count:
        raise SelfTestError(f"the self-test got {len(data)} of {count} bytes on its input")
    return data


def run_selftest(config: PipelineConfig, opened: OpenedModel, label: str) -> dict[str, Any]:
    """In the child: build the model as the pipeline would and run one synthetic frame through it."""
    from edge_agent.service.active_model import build_active_model

    active = build_active_model(config, opened=opened, label=label)
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


def selftest_main(stdin: BinaryIO, stdout: TextIO) -> int:
    """The hidden `edge-agent selftest` command: request line, manifest and model on stdin; one JSON line on stdout."""
    try:
        request, config, opened = read_request(stdin)
        report = run_selftest(config, opened, request.get("label", ""))
    except Exception as err:  # the edge of the child: every failure becomes the report
        report = {"ok": False, "error": str(err) or type(err).__name__}
    stdout.write(json.dumps(report) + "\n")
    stdout.flush()
    return 0 if report["ok"] else 1
