"""`edge-agent demo`: the bundled digits model on the bundled video, end to end over MQTT.

Starts mosquitto on the demo's address when nothing listens there, runs the agent as a
real child process, subscribes to its prediction topic and prints what arrives, checked
against the video's ground truth.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from edge_agent.data import DEMO_TRUTH, demo_dir, demo_file
from edge_agent.local_broker import BrokerUnavailable, LocalBroker, broker_listening
from edge_agent.mqtt.listener import MqttListener

DEVICE_ID = "edge-demo"
PIPELINE = "digits"
DEMO_FPS = 20

CONFIG_TEMPLATE = """\
device_id = "{device}"
state_dir = "{state_dir}"

[mqtt]
host = "{host}"
port = {port}
state_interval_s = 2

[pipelines.{pipeline}]
model = "{demo_dir}/digits_int8.tflite"
labels = "{demo_dir}/labels.txt"
source = {{ uri = "{demo_dir}/digits-demo.avi" }}
task = "classification"
max_fps = {fps}
top_k = 1
"""


def run_demo(host: str, port: int, seconds: float) -> int:
    """Run the demo against the broker at host:port (parsed by the CLI: `--broker HOST:PORT`)."""
    truth = demo_file(DEMO_TRUTH).read_text().split()
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp, ExitStack() as stack:
        if not broker_listening(host, port):
            print(f"no broker on {host}:{port}: starting mosquitto for the demo")
            try:
                broker = stack.enter_context(LocalBroker(port))
            except BrokerUnavailable as err:
                print(f"edge-agent demo: {err}", file=sys.stderr)
                return 1
            host = broker.host
        return _watch_agent(host, port, Path(tmp), truth, seconds)


def _watch_agent(host: str, port: int, workdir: Path, truth: list[str], seconds: float) -> int:
    config = workdir / "agent.toml"
    config.write_text(CONFIG_TEMPLATE.format(
        device=DEVICE_ID, state_dir=workdir / "state", host=host, port=port,
        pipeline=PIPELINE, demo_dir=demo_dir(), fps=DEMO_FPS,
    ))
    received: list[dict] = []
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes) -> None:
        message = json.loads(payload)
        with lock:
            received.append(message)
        top = message["classes"][0] if message.get("classes") else {"label": "-", "score": 0.0}
        expected = truth[message["frame"] - 1] if 0 < message["frame"] <= len(truth) else "?"
        mark = "ok" if top["label"] == expected else f"WRONG (truth {expected})"
        latency = message["latency_ms"]
        print(f"seq {message['seq']:4d}  digit {top['label']:>2}  score {top['score']:.3f}  "
              f"inference {latency['inference']:6.2f} ms  total {latency['total']:6.2f} ms  {mark}", flush=True)

    topic = f"edge/{DEVICE_ID}/{PIPELINE}/predictions"
    listener = MqttListener(host, port, [topic], on_message, client_id=f"edge-demo-watch-{int(time.time())}")
    listener.start()
    print(f"subscribed to {topic} on {host}:{port}; starting the agent for {seconds:g} s\n", flush=True)
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config), "--log-level", "warning"])
    try:
        agent.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    except KeyboardInterrupt:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    time.sleep(0.3)  # the last acknowledged messages are still on their way to us
    listener.stop()
    with lock:
        messages = list(received)
    if not messages:
        print("no predictions arrived: see the agent's log above", file=sys.stderr)
        return 1
    correct = sum(
        1 for m in messages if m.get("classes") and 0 < m["frame"] <= len(truth) and m["classes"][0]["label"] == truth[m["frame"] - 1]
    )
    mean_inference = sum(m["latency_ms"]["inference"] for m in messages) / len(messages)
    mean_total = sum(m["latency_ms"]["total"] for m in messages) / len(messages)
    print(f"\n{len(messages)} predictions received, {correct} correct ({100 * correct / len(messages):.1f} %), "
          f"mean inference {mean_inference:.2f} ms, mean capture-to-publish {mean_total:.2f} ms; agent exit status {agent.returncode}")
    return 0 if agent.returncode == 0 else 1
