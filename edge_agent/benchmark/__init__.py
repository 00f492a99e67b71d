"""`edge-agent bench`: how close the agent gets to the interpreter's own speed, in one run.

Measures, on the same model, runtime and threads: the interpreter alone; the plain
single-thread loop; the real agent end to end (child process, QoS 1 to a real broker,
every message confirmed by a subscriber), these three in interleaved rounds (rounds.py);
then capture→publish latency at a paced 30 fps source; the agent's peak RSS, CPU use and
time to its first prediction.
"""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.benchmark.agent_run import AgentChild, run_agent
from edge_agent.benchmark.decode_time import decode_time_ms
from edge_agent.benchmark.in_process import InterpreterLoop, PlainLoop
from edge_agent.benchmark.rounds import DEFAULT_ROUNDS, Round, order_of, plan_rounds, summarise
from edge_agent.data import DEMO_MODEL, demo_file
from edge_agent.config import MqttConfig, PipelineConfig, SourceSpec
from edge_agent.local_broker import LocalBroker
from edge_agent.runtime.backends import import_runtime

PACED_FPS = 30.0
# MobileNetV2 int8 when `models/make_bench_models.py` has written it into the current folder's
# models/bench (a checkout), else the demo model that ships inside the package
BENCH_MODEL = Path("models") / "bench" / "mobilenet_v2_int8.tflite"

CONFIG_TEMPLATE = """\
device_id = "{device}"
state_dir = "{workdir}/state-{device}"
log_level = "warning"

[mqtt]
host = "{host}"
port = {port}

[pipelines.bench]
model = "{model}"
runtime = "{runtime}"
num_threads = {threads}
source = {{ uri = "{source}", loop = true, realtime = {realtime} }}
max_fps = {max_fps}
{interpret}{http}"""

# `bench --interpret`: tracking, events, counts, two zones and Home Assistant discovery on; without
# it they are off, so the two runs differ by the interpret stage alone
INTERPRET_ON = """[pipelines.bench.zones.left]
polygon = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
[pipelines.bench.zones.door]
polygon = [[0.3, 0.6], [0.7, 0.6], [0.7, 1], [0.3, 1]]
[homeassistant]
enabled = true
"""
INTERPRET_OFF = """[pipelines.bench.events]
enabled = false
"""
# `bench --http`: the HTTP server listening, nobody watching (the cost the views may add while unwatched)
HTTP_ON = """[http]
enabled = true
listen = "127.0.0.1:{port}"
"""


@dataclass(frozen=True)
class BenchOptions:
    model: str = ""
    source: str = ""
    threads: int = 0
    seconds: float = 10.0
    runtime: str = "auto"
    broker: str = ""
    interpret: bool = False  # tracking, events, counts, zones and Home Assistant discovery on
    rounds: int = DEFAULT_ROUNDS
    http: bool = False  # the HTTP server on, nobody watching


def default_model() -> str:
    return str(BENCH_MODEL.resolve() if BENCH_MODEL.exists() else demo_file(DEMO_MODEL))


def run_bench(options: BenchOptions, progress=print) -> dict:
    """Run every measurement and return the results as one JSON-ready dict."""
    from edge_agent.sources.opencv_setup import configure_opencv

    configure_opencv()  # the in-process references capture with the agent's OpenCV settings
    model = options.model or default_model()
    threads = options.threads or os.cpu_count() or 1
    runtime = import_runtime(options.runtime)[0]
    rounds, window_s = plan_rounds(options.seconds, options.rounds)
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        source = options.source or _default_source(workdir)
        if options.broker:
            host, _, port_text = options.broker.rpartition(":")
            port = int(port_text)
        else:
            broker = stack.enter_context(LocalBroker())
            host, port = broker.host, broker.port
        pipeline = PipelineConfig(
            name="bench", source=SourceSpec(uri=source, loop=True), model=model, runtime=runtime, num_threads=threads
        )

        def agent_config(device: str, max_fps: float) -> str:
            return CONFIG_TEMPLATE.format(
                device=device, workdir=workdir, host=host, port=port, model=Path(model).resolve(),
                runtime=runtime, threads=threads, source=Path(source).resolve() if Path(source).exists() else source,
                max_fps=max_fps, realtime="true" if max_fps else "false",
                interpret=INTERPRET_ON if options.interpret else INTERPRET_OFF,
                http=HTTP_ON.format(port=free_port()) if options.http else "",
            )

        decode_ms, layout = decode_time_ms(pipeline)
        progress(f"decode: {decode_ms:.3f} ms/frame median ({layout} layout)")
        progress("setting up: interpreter, plain loop, agent child…")
        interpreter = InterpreterLoop(pipeline)
        agent = AgentChild(agent_config("bench-full", 0.0), workdir, host, port, "bench-full")
        with PlainLoop(pipeline, MqttConfig(host=host, port=port)) as plain, agent:
            agent.freeze()
            measured: list[dict[str, float]] = []
            for index in range(rounds):
                progress(f"round {index + 1} of {rounds}: interpreter alone, agent end to end, plain loop, "
                         f"{window_s:.2g} s each…")
                rates = {}
                for kind in order_of(index):
                    if kind == "interpreter":
                        rates[kind] = interpreter.measure(window_s).rate
                    elif kind == "plain":
                        rates[kind] = plain.measure(window_s).rate
                    else:
                        agent.measure(window_s)  # counted again below, once every message has arrived
                measured.append(rates)
        full = agent.result()
        results = [Round(m["interpreter"], w.rate, m["plain"]) for m, w in zip(measured, full.windows)]
        progress(f"agent end to end, source paced at {PACED_FPS:g} fps ({options.seconds:g} s)…")
        paced = run_agent(agent_config("bench-paced", PACED_FPS), workdir, host, port, "bench-paced", options.seconds)
    summary = summarise(results)
    return {
        "model": str(model),
        "runtime": runtime,
        "threads": threads,
        "cores": os.cpu_count(),
        "source": options.source or "generated 640x480 MJPG video",
        "interpreter_fps": summary["interpreter_fps"],
        "invoke_ms": round(1000.0 / summary["interpreter_fps"], 3),
        "decode_ms": round(decode_ms, 4),
        "pipeline_fps": summary["pipeline_fps"],
        "ratio": summary["ratio"],
        "ratio_min": summary["ratio_min"],
        "ratio_max": summary["ratio_max"],
        "plain_loop_fps": summary["plain_loop_fps"],
        "speedup_over_plain_loop": summary["speedup_over_plain_loop"],
        "speedup_min": summary["speedup_min"],
        "speedup_max": summary["speedup_max"],
        "missing": full.missing + paced.missing,
        "latency_ms": _percentiles(paced.latencies_ms),
        "overhead_ms": _percentiles(paced.overheads_ms),
        "paced_fps": round(paced.fps, 1),
        "peak_rss_mb": round(max(full.peak_rss_mb, paced.peak_rss_mb), 1),
        "cpu_percent": round(full.cpu_percent, 1),
        "startup_s": round(min(full.startup_s, paced.startup_s), 3),
        "seconds": options.seconds,
        "interpret": options.interpret,
        "rounds": summary["rounds"],
        "round_s": round(window_s, 3),
        "per_round": summary["per_round"],
        "http": options.http,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_source(workdir: Path) -> str:
    from edge_agent.sources.synthetic import write_benchmark_video

    return str(write_benchmark_video(workdir / "bench-640x480.avi"))


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2), "max": round(max(values), 2)}


def format_results(r: dict) -> str:
    """A table for people."""
    lat, over = r["latency_ms"], r["overhead_ms"]
    rows = [
        ("model", f"{Path(r['model']).name} ({r['runtime']}, {r['threads']} of {r['cores']} cores)"),
        ("interpret stage", "on (tracking, events, counts, 2 zones, Home Assistant)" if r.get("interpret") else "off"),
        ("HTTP server", "on, nobody watching" if r.get("http") else "off"),
        ("source", r["source"]),
        ("interpreter alone", f"{r['interpreter_fps']:.1f} fps ({r['invoke_ms']:.2f} ms/invoke)"),
        ("decode", f"{r['decode_ms']:.3f} ms/frame median"),
        ("agent end to end", f"{r['pipeline_fps']:.1f} fps, ratio {r['ratio']:.2f} of the interpreter "
                             f"(median of {r['rounds']} rounds, {r['ratio_min']:.2f}-{r['ratio_max']:.2f})"),
        ("plain one-thread loop", f"{r['plain_loop_fps']:.1f} fps (agent is {r['speedup_over_plain_loop']:.2f}x, "
                                  f"{r['speedup_min']:.2f}-{r['speedup_max']:.2f})"),
        ("messages missing", str(r["missing"])),
        (f"latency at {PACED_FPS:g} fps", f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"),
        ("  of which not invoke", f"p50 {over['p50']} ms, p99 {over['p99']} ms, max {over['max']} ms"),
        ("peak RSS", f"{r['peak_rss_mb']:.1f} MB"),
        ("CPU", f"{r['cpu_percent']:.0f} % of one core"),
        ("start to first prediction", f"{r['startup_s']:.2f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
