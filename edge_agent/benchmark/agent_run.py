"""Measure a real `edge-agent run` child process: what users actually deploy.

A subscriber confirms every prediction at QoS 1; the process's own counters give peak RSS
(VmHWM) and CPU time; start-up is process spawn → first prediction at the subscriber.
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

from edge_agent.errors import EdgeAgentError
from edge_agent.mqtt.listener import MqttListener

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FIRST_PREDICTION_TIMEOUT_S = 60.0
SETTLE_S = 1.0  # skip the first second after the first prediction (caches, thread start-up)


class BenchmarkError(EdgeAgentError, RuntimeError):
    """A measurement could not be made (the agent under test published nothing)."""


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


def run_agent(config_text: str, workdir: Path, host: str, port: int, device: str, seconds: float) -> AgentRun:
    """Start the agent with `config_text`, measure for `seconds` after its first prediction, stop it."""
    config = workdir / f"{device}.toml"
    config.write_text(config_text)
    arrivals: list[tuple[float, bytes]] = []
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes) -> None:
        # parsed after the run: the subscriber shares the cores with the agent being measured
        arrivals.append((time.monotonic(), payload))

    listener = MqttListener(host, port, [f"edge/{device}/+/predictions"], on_message, client_id=f"bench-{device}")
    listener.start()
    result = AgentRun()
    spawned = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        if not _wait_for(lambda: arrivals, FIRST_PREDICTION_TIMEOUT_S, process):
            raise BenchmarkError(f"the agent published nothing within {FIRST_PREDICTION_TIMEOUT_S:g} s (exit status {process.poll()})")
        with lock:
            first_arrival = arrivals[0][0]
        result.startup_s = first_arrival - spawned
        time.sleep(SETTLE_S)
        cpu_start, window_start = _cpu_seconds(process.pid), time.monotonic()
        with lock:
            skip = len(arrivals)
        time.sleep(seconds)
        cpu_end, window_end = _cpu_seconds(process.pid), time.monotonic()
        result.peak_rss_mb = _peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        time.sleep(0.3)
        listener.stop()
    with lock:
        window = [json.loads(payload) for arrived, payload in arrivals[skip:] if arrived <= window_end]
    result.received = len(window)
    result.fps = len(window) / (window_end - window_start)
    result.cpu_percent = 100.0 * (cpu_end - cpu_start) / (window_end - window_start)
    seqs = [m["seq"] for m in window]
    result.missing = (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0
    result.latencies_ms = [m["latency_ms"]["total"] for m in window]
    result.overheads_ms = [m["latency_ms"]["total"] - m["latency_ms"]["inference"] for m in window]
    return result


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
