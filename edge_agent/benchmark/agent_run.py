"""Measure a real `edge-agent run` child process: what users actually deploy.

A subscriber confirms every prediction at QoS 1; the process's own counters give peak RSS
(VmHWM) and CPU time; start-up is process spawn → first prediction at the subscriber.

The child is started once and measured in windows: between windows it is frozen with SIGSTOP
(every thread, at once) and thawed with SIGCONT, so the bench can alternate the agent's windows
with the in-process measurements without paying start-up again or letting the agent compete with
them for the cores. A window counts the predictions that arrive at the subscriber from a short
settle after the thaw (what was half-done at the freeze is flushed then) to the window's end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.benchmark.in_process import Window
from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt.listener import MqttListener

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FIRST_PREDICTION_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # skip the first second after the first prediction (caches, thread start-up)
THAW_SETTLE_S = 0.3  # after SIGCONT: frames frozen mid-pipeline come out now, with inflated latency
STOP_TIMEOUT_S = 30.0


class BenchmarkError(EdgeAgentError, RuntimeError):
    """A measurement could not be made (the agent under test published nothing, or exited)."""


@dataclass
class AgentRun:
    startup_s: float = 0.0
    fps: float = 0.0
    received: int = 0
    missing: int = 0
    peak_rss_mb: float = 0.0
    cpu_percent: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    overheads_ms: list[float] = field(default_factory=list)  # total - inference: queueing + pre/post + publish
    windows: list[Window] = field(default_factory=list)


class AgentChild:
    """`edge-agent run --config CONFIG` as a child, measured window by window. Use as a context
    manager; `result()` after leaving it gives the whole run (missing counts every message from
    the first prediction to the stop, windows or not)."""

    def __init__(self, config_text: str, workdir: Path, host: str, port: int, device: str):
        self._config = workdir / f"{device}.toml"
        self._config.write_text(config_text)
        self._device = device
        self._arrivals: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._listener = MqttListener(host, port, [f"edge/{device}/+/predictions"], self._on_message, client_id=f"bench-{device}")
        self._process: subprocess.Popen | None = None
        self._frozen = False
        self._spans: list[tuple[float, float]] = []  # (start, end) of each window, monotonic
        self._cpu_s = 0.0
        self._startup_s = 0.0
        self._peak_rss_mb = 0.0

    def _on_message(self, topic: str, payload: bytes) -> None:
        # parsed after the run: the subscriber shares the cores with the agent being measured
        with self._lock:
            self._arrivals.append((time.monotonic(), payload))

    def __enter__(self) -> "AgentChild":
        self._listener.start()
        spawned = time.monotonic()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(self._config), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        try:
            if not _wait_for(lambda: self._arrivals, FIRST_PREDICTION_TIMEOUT_S, self._process):
                raise BenchmarkError(f"the agent published nothing within {FIRST_PREDICTION_TIMEOUT_S:g} s "
                                   f"(exit status {self._process.poll()})")
            with self._lock:
                self._startup_s = self._arrivals[0][0] - spawned
            time.sleep(SETTLE_S)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def freeze(self) -> None:
        if self._process is not None and not self._frozen:
            self._process.send_signal(signal.SIGSTOP)
            self._frozen = True

    def thaw(self) -> None:
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
            self._frozen = False

    def measure(self, seconds: float, thawed_settle_s: float = THAW_SETTLE_S) -> Window:
        """Thaw (if frozen), count the predictions of the next `seconds`, and freeze again only if
        it was frozen before."""
        was_frozen = self._frozen
        self.thaw()
        if was_frozen:
            time.sleep(thawed_settle_s)
        if self._process.poll() is not None:
            raise BenchmarkError(f"the agent exited during the benchmark (exit status {self._process.returncode})")
        cpu_start, start = _cpu_seconds(self._process.pid), time.monotonic()
        time.sleep(seconds)
        cpu_end, end = _cpu_seconds(self._process.pid), time.monotonic()
        if was_frozen:
            self.freeze()
        self._cpu_s += cpu_end - cpu_start
        self._spans.append((start, end))
        with self._lock:
            count = sum(1 for arrived, _ in self._arrivals if start < arrived <= end)
        return Window(count, end - start)

    def __exit__(self, *exc) -> None:
        try:
            if self._process is not None:
                if self._process.poll() is None:
                    self._peak_rss_mb = _peak_rss_mb(self._process.pid)
                self.thaw()
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(10)
                time.sleep(0.3)  # the last acknowledged messages reach the subscriber
        finally:
            self._listener.stop()

    def result(self) -> AgentRun:
        with self._lock:
            arrivals = list(self._arrivals)
        messages = [(arrived, json.loads(payload)) for arrived, payload in arrivals]
        in_windows = [m for arrived, m in messages if any(start < arrived <= end for start, end in self._spans)]
        seqs = {m["seq"] for _, m in messages}
        measured_s = sum(end - start for start, end in self._spans)
        return AgentRun(
            startup_s=self._startup_s,
            fps=len(in_windows) / measured_s if measured_s else 0.0,
            received=len(in_windows),
            # every prediction from the first to the last one seen, frozen or not, reached the subscriber
            missing=(max(seqs) - min(seqs) + 1 - len(seqs)) if seqs else 0,
            peak_rss_mb=self._peak_rss_mb,
            cpu_percent=100.0 * self._cpu_s / measured_s if measured_s else 0.0,
            latencies_ms=[m["latency_ms"]["total"] for m in in_windows],
            overheads_ms=[m["latency_ms"]["total"] - m["latency_ms"]["inference"] for m in in_windows],
            windows=[Window(sum(1 for arrived, _ in messages if start < arrived <= end), end - start) for start, end in self._spans],
        )


def run_agent(config_text: str, workdir: Path, host: str, port: int, device: str, seconds: float) -> AgentRun:
    """Start the agent with `config_text`, measure one window of `seconds` after its first prediction, stop it."""
    agent = AgentChild(config_text, workdir, host, port, device)
    with agent:
        agent.measure(seconds)
    return agent.result()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the bench dies, so a killed bench never leaves a
    frozen (SIGSTOPped) agent behind. Linux only, like /proc; elsewhere nothing is done."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_for(predicate, timeout_s: float, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return bool(predicate())
        time.sleep(0.002)
    return False


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime + stime


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0
