"""A throwaway mosquitto for the tools that need a broker when none runs (demo, bench)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from edge_agent.errors import EdgeAgentError

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailable(EdgeAgentError, RuntimeError):
    """No broker listens and none could be started."""


def broker_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


class LocalBroker:
    """`with LocalBroker(port) as broker:` runs mosquitto on 127.0.0.1:port until the block ends."""

    def __init__(self, port: int | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> "LocalBroker":
        binary = find_mosquitto()
        if binary is None:
            raise BrokerUnavailable(
                "no MQTT broker listens and mosquitto is not installed: `sudo apt install mosquitto` "
                "(make demo and make test install it)"
            )
        self._workdir = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
        conf = Path(self._workdir.name) / "mosquitto.conf"
        # `user root` keeps mosquitto from dropping to its own user when started as root
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
        self._process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if broker_listening(self.host, self.port):
                return self
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace").strip()
                self.__exit__()
                raise BrokerUnavailable(f"mosquitto exited at start: {error}")
            time.sleep(0.05)
        self.__exit__()
        raise BrokerUnavailable(f"mosquitto did not start listening on port {self.port}")

    def __exit__(self, *exc_info) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
