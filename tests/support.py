"""Real parts for the tests: a mosquitto broker on a free port, an MQTT collector, the agent as a
child process, video files written with OpenCV, a local MJPEG camera. Tests import these from here;
conftest.py holds only the fixtures built on them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "model_files"
DEMO = REPO / "edge_agent" / "data" / "demo"
DEMO_MODEL = DEMO / "digits_int8.tflite"
DEMO_FLOAT_MODEL = DEMO / "digits_float32.tflite"
DEMO_VIDEO = DEMO / "digits-demo.avi"
DEMO_TRUTH = (DEMO / "digits-demo.truth.txt").read_text().split()
RUNTIMES = ["litert", "tflite-runtime"]


def local_wheels(kind: str) -> Path:
    """A folder of wheels that `make test-wheels` fetched at install time (`native`: this machine's
    device requirements plus setuptools and wheel; `aarch64`: a Pi's), so the install tests build
    wheelhouses and venvs without the network. Missing: the test fails saying what to run."""
    folder = Path(os.environ.get("EDGE_AGENT_TEST_WHEELS", Path(sys.prefix) / "test-wheels")) / kind
    if not any(folder.glob("*.whl")):
        pytest.fail(f"no wheels in {folder}: `make test-wheels` fetches them (`make test` does it first)", pytrace=False)
    return folder


def _can_unshare_net() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def run_offline(*args: str | Path, check: bool = True, env: dict | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run a command without this machine's pip settings and, where `unshare --net` works (root),
    in a fresh network namespace with no network at all: an install that needs the index fails."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, **(env or {})}
    env["PIP_CONFIG_FILE"] = os.devnull
    prefix = ["unshare", "--net"] if _can_unshare_net() else []
    started = time.monotonic()
    result = subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, timeout=timeout_s, env=env)
    network = "no network" if prefix else "network present: unshare --net is not allowed here"
    print(f"$ {' '.join(str(a) for a in args)}  ({time.monotonic() - started:.1f} s, exit {result.returncode}, {network})")
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    """Poll `predicate` until true; the bound only catches hangs, it is not a speed check."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


class Broker:
    """A real mosquitto process on 127.0.0.1:port that tests can stop and start again."""

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = False, password_file: Path | None = None,
                 extra_config: tuple[str, ...] = (), own_config: str = ""):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            pytest.fail("mosquitto is not installed: `make test` installs it with apt-get")
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.persistence = persistence
        self.password_file = password_file  # a mosquitto_passwd file: then anonymous clients are refused
        self.extra_config = extra_config  # more mosquitto.conf lines, e.g. "max_packet_size 20000"
        self.own_config = own_config  # a whole mosquitto.conf with its own listener on self.port (TLS, ACL)
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        conf = self.workdir / "mosquitto.conf"
        if self.own_config:
            conf.write_text("user root\n" + self.own_config)
            return self._launch(conf)
        lines = [f"listener {self.port} 127.0.0.1", "user root"]
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        lines += list(self.extra_config)
        conf.write_text("\n".join(lines) + "\n")
        return self._launch(conf)

    def _launch(self, conf: Path) -> "Broker":
        self.log = open(self.workdir / "mosquitto.log", "ab")
        self.process = subprocess.Popen([self.binary, "-c", str(conf)], stdout=self.log, stderr=self.log)
        if not wait_until(self._listening, 10):
            self.stop()
            pytest.fail(f"mosquitto did not listen on {self.port}: {(self.workdir / 'mosquitto.log').read_text()}")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Collector:
    """A real paho subscriber that records every message it receives."""

    def __init__(self, broker: Broker, topics: list[str], client_id: str = "", clean_session: bool = True):
        """`client_id` with `clean_session=False`: a session the broker keeps (and queues for) while it is away."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"collector-{time.monotonic_ns()}", clean_session=clean_session)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "collector could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def payloads(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [payload for topic, payload, _ in self.messages if topic.endswith(suffix)]

    def json(self, suffix: str) -> list[dict]:
        return [json.loads(p) for p in self.payloads(suffix)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AgentProcess:
    """`python -m edge_agent ...` as a real child process, stderr kept for assertions."""

    def __init__(self, args: list[str], workdir: Path, env: dict | None = None):
        self.stderr_path = workdir / f"agent-{time.monotonic_ns()}.stderr"
        self.stdout_path = workdir / f"agent-{time.monotonic_ns()}.stdout"
        self._stderr = open(self.stderr_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *args],
            stdout=self._stdout, stderr=self._stderr, cwd=REPO, env={**os.environ, **(env or {})},
        )

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._stderr.flush()
            self._stdout.flush()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    @property
    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        self._stdout.flush()
        return self.stdout_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 20.0) -> Path:
    """A real MJPG .avi written with OpenCV."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def numbered_frames(count: int, size: tuple[int, int] = (120, 160)) -> list[np.ndarray]:
    """Frames whose brightness encodes their number, so a reader can tell them apart."""
    frames = []
    for i in range(count):
        frame = np.full((*size, 3), (i * 10) % 250, np.uint8)
        cv2.putText(frame, str(i), (10, size[0] - 20), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
        frames.append(frame)
    return frames


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class MjpegServer:
    """A real HTTP MJPEG camera on 127.0.0.1 (multipart/x-mixed-replace JPEGs at `fps`). Frame n is
    `numbered_frames` frame n % 25, so its top rows have brightness (n % 25) * 10. Tests can stall it
    (connections stay open, nothing more is sent), stop it, and start it again on the same port."""

    PERIOD = 25

    def __init__(self, fps: float = 30.0):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.fps = fps
        self.port = free_port()
        self.sent = 0
        self._jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in numbered_frames(self.PERIOD)]
        self._stalled = threading.Event()
        self._stopping = threading.Event()
        self._server_class = ThreadingHTTPServer
        self._server = None
        self._thread: threading.Thread | None = None
        camera = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a client that stops reading cannot block stop() for ever

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                while not camera._stopping.wait(1.0 / camera.fps):
                    if camera._stalled.is_set():
                        continue
                    jpeg = camera._jpegs[camera.sent % camera.PERIOD]
                    part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    try:
                        self.wfile.write(part + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    camera.sent += 1

        self._handler = Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegServer":
        self._stopping.clear()
        self._stalled.clear()
        self._server = self._server_class(("127.0.0.1", self.port), self._handler)
        self._server.daemon_threads = False  # so server_close() joins every connection's thread
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="mjpeg-server")
        self._thread.start()
        return self

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def stop(self) -> None:
        """Close the listening socket and every connection (clients see the stream end)."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._server = None


def frame_number(frame: np.ndarray) -> int:
    """The number (mod 25) of a `numbered_frames` frame, read from the brightness of its top rows."""
    return round(float(frame[:30].mean()) / 10) % 25
