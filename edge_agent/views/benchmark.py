"""`python -m edge_agent.views.benchmark`: what the views cost, on real agent runs.

Three set-ups, interleaved round by round (on a shared machine the load changes from one minute
to the next, so each round compares neighbours):

  off      [http] disabled
  idle     [http] enabled, nobody watching
  viewer   [http] enabled, one client reading /pipelines/bench/live all along

Each is run twice: the source as fast as it goes (agent fps) and paced at --paced-fps like a
camera (CPU per frame at a camera's rate, where a viewer's drawing and encoding show). The agent is
a child process (edge_agent.benchmark.agent_run: QoS 1 to a private mosquitto, every message
confirmed); its CPU time comes from /proc, so the viewer's own reading is not counted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from edge_agent.benchmark import CONFIG_TEMPLATE, HTTP_ON, INTERPRET_OFF, default_model, free_port
from edge_agent.benchmark.agent_run import AgentRun, run_agent
from edge_agent.local_broker import LocalBroker

SETUPS = ("off", "idle", "viewer")


class LiveViewer(threading.Thread):
    """Reads a live view as fast as it comes and notes when each JPEG arrives."""

    def __init__(self, port: int, pipeline: str = "bench"):
        super().__init__(name="bench-viewer", daemon=True)
        self.port, self.path = port, f"/pipelines/{pipeline}/live"
        self.arrivals: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", self.path)
                response = connection.getresponse()
                while not self.stop_event.is_set():
                    chunk = response.read1(1 << 16)
                    if not chunk:
                        break
                    self.arrivals += [time.monotonic()] * chunk.count(b"\r\n\r\n\xff\xd8")
                connection.close()
            except OSError:
                self.stop_event.wait(0.05)  # the agent is not listening yet

    def fps(self) -> float:
        recent = self.arrivals[len(self.arrivals) // 4:]  # past start-up
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0


def one_run(setup: str, model: str, source: str, threads: int, max_fps: float, seconds: float,
            workdir: Path, host: str, port: int) -> tuple[AgentRun, float]:
    http_port = free_port()
    device = f"views-{setup}-{'paced' if max_fps else 'full'}"
    text = CONFIG_TEMPLATE.format(
        device=device, workdir=workdir, host=host, port=port, model=Path(model).resolve(), runtime="auto",
        threads=threads, source=source, max_fps=max_fps, realtime="true" if max_fps else "false",
        interpret=INTERPRET_OFF, http=HTTP_ON.format(port=http_port) if setup != "off" else "")
    viewer = LiveViewer(http_port) if setup == "viewer" else None
    if viewer is not None:
        viewer.start()
    try:
        result = run_agent(text, workdir, host, port, device, seconds)
    finally:
        if viewer is not None:
            viewer.stop_event.set()
            viewer.join(10)
    return result, viewer.fps() if viewer is not None else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="default: models/bench/mobilenet_v2_int8.tflite, else the demo model")
    parser.add_argument("--source", help="default: a generated 640x480 MJPG video")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced-fps", type=float, default=30.0)
    args = parser.parse_args()
    model = args.model or default_model()
    rows: dict[tuple[str, str], list[tuple[AgentRun, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-agent-views-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        if args.source:
            source = str(Path(args.source).resolve())
        else:
            from edge_agent.sources.synthetic import write_benchmark_video

            source = str(write_benchmark_video(workdir / "bench-640x480.avi"))
        broker = stack.enter_context(LocalBroker())
        for round_number in range(args.rounds):
            order = SETUPS[round_number % 3:] + SETUPS[:round_number % 3]  # each set-up goes first once
            for setup in order:
                for mode, max_fps in (("full", 0.0), ("paced", args.paced_fps)):
                    print(f"round {round_number + 1}/{args.rounds}: {setup}, {mode}…", flush=True)
                    rows.setdefault((setup, mode), []).append(
                        one_run(setup, model, source, args.threads, max_fps, args.seconds, workdir, broker.host, broker.port))
    print(f"\n{Path(model).name}, {args.threads} thread(s), {os.cpu_count()} cores, {args.rounds} rounds of "
          f"{args.seconds:g} s (per round; medians last)")
    print(f"{'setup':<8} {'agent fps (full speed)':<30} {'CPU ms/frame (full)':<24} "
          f"{'CPU ms/frame at ' + format(args.paced_fps, 'g') + ' fps':<26} {'peak RSS MB':<22} viewer fps")
    for setup in SETUPS:
        full, paced = rows[(setup, "full")], rows[(setup, "paced")]
        fps = [r.fps for r, _ in full]
        cpu_full = [_cpu_ms(r) for r, _ in full]
        cpu_paced = [_cpu_ms(r) for r, _ in paced]
        rss = [max(a.peak_rss_mb, b.peak_rss_mb) for (a, _), (b, _) in zip(full, paced)]
        viewer = [v for _, v in paced]
        print(f"{setup:<8} {_series(fps, '.0f'):<30} {_series(cpu_full, '.2f'):<24} {_series(cpu_paced, '.2f'):<26} "
              f"{_series(rss, '.1f'):<22} {_series(viewer, '.1f') if setup == 'viewer' else '–'}")


def _cpu_ms(run: AgentRun) -> float:
    return run.cpu_percent * 10.0 / run.fps if run.fps else 0.0  # % of a core = 10 ms per second


def _series(values: list[float], spec: str) -> str:
    return ", ".join(format(v, spec) for v in values) + f" ({format(statistics.median(values), spec)})"


if __name__ == "__main__":
    main()
