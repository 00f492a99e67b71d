"""`edge-agent demo`: the bundled models on the bundled videos, end to end over MQTT.

One agent runs two pipelines: the digits classifier on a video of single digits, and the
digits detector (models/make_detector.py, trained on scenes of handwritten digits) on a video
of held-out scenes with several digits each; its labels and task come from the model itself.
The demo starts mosquitto on its address when nothing listens there, runs the agent as a real
child process, subscribes to both prediction topics and prints what arrives, checked against
each video's ground truth, then one summary line per pipeline.
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

from edge_agent.data import DEMO_TRUTH, DETECT_TRUTH, demo_dir, demo_file
from edge_agent.local_broker import BrokerUnavailable, LocalBroker, broker_listening
from edge_agent.mqtt.listener import MqttListener

DEVICE_ID = "edge-demo"
CLASSIFIER, DETECTOR = "digits", "detect"
# 200 and 100 frames: both videos end after 8 s, so the agent (started in a second or two) ends
# by itself within the demo's default 10 s
CLASSIFIER_FPS = 25
DETECTOR_FPS = 12.5
MATCH_IOU = 0.5  # a detection is right when its label matches and its box overlaps the true one this much

CONFIG_TEMPLATE = """\
device_id = "{device}"
state_dir = "{state_dir}"

[mqtt]
host = "{host}"
port = {port}
state_interval_s = 2

[pipelines.{classifier}]
model = "{demo_dir}/digits_int8.tflite"
labels = "{demo_dir}/labels.txt"
source = {{ uri = "{demo_dir}/digits-demo.avi" }}
task = "classification"
max_fps = {classifier_fps}
top_k = 1

# labels, task and box layout come from the model (metadata.json inside the .tflite)
[pipelines.{detector}]
model = "{demo_dir}/digits_detector_int8.tflite"
source = {{ uri = "{demo_dir}/digits-detect-demo.avi" }}
max_fps = {detector_fps}
"""


class ClassifierCheck:
    """Each prediction of the classifier against the digit shown in its frame."""

    def __init__(self, truth: list[str]):
        self.truth = truth
        self.messages = self.correct = 0
        self.inference_ms = self.total_ms = 0.0

    def check(self, message: dict) -> str:
        top = message["classes"][0] if message.get("classes") else {"label": "-", "score": 0.0}
        expected = _frame_truth(self.truth, message["frame"], "?")
        right = top["label"] == expected
        self._count(message, right)
        latency = message["latency_ms"]
        return (f"{CLASSIFIER:6s} seq {message['seq']:4d}  digit {top['label']:>2}  score {top['score']:.3f}  "
                f"inference {latency['inference']:6.2f} ms  total {latency['total']:6.2f} ms  "
                f"{'ok' if right else f'WRONG (truth {expected})'}")

    def _count(self, message: dict, right: bool) -> None:
        self.messages += 1
        self.correct += right
        self.inference_ms += message["latency_ms"]["inference"]
        self.total_ms += message["latency_ms"]["total"]

    def summary(self) -> str:
        if not self.messages:
            return f"{CLASSIFIER} (classifier): no predictions arrived"
        return (f"{CLASSIFIER} (classifier): {self.messages} predictions, {self.correct} correct "
                f"({100 * self.correct / self.messages:.1f} %), mean inference {self.inference_ms / self.messages:.2f} ms, "
                f"mean capture-to-publish {self.total_ms / self.messages:.2f} ms")


class DetectorCheck:
    """Each frame's detections against the digits placed in it (label and IoU >= MATCH_IOU)."""

    def __init__(self, truth: list[list[dict]]):
        self.truth = truth
        self.messages = self.found = self.objects = self.false = 0
        self.inference_ms = self.total_ms = 0.0

    def check(self, message: dict) -> str:
        objects = _frame_truth(self.truth, message["frame"], [])
        detections = message.get("detections", [])
        matched, false = match_detections(detections, objects)
        self.messages += 1
        self.objects += len(objects)
        self.found += len(matched)
        self.false += len(false)
        self.inference_ms += message["latency_ms"]["inference"]
        self.total_ms += message["latency_ms"]["total"]
        missed = [o["label"] for i, o in enumerate(objects) if i not in matched]
        found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in detections) or "nothing"
        verdict = "ok" if not missed and not false else "  ".join(
            part for part in (f"MISSED {' '.join(missed)}" if missed else "",
                              f"FALSE {' '.join(d['label'] for d in false)}" if false else "") if part)
        latency = message["latency_ms"]
        return (f"{DETECTOR:6s} seq {message['seq']:4d}  {len(objects)} digit(s), found {found}  "
                f"inference {latency['inference']:6.2f} ms  {verdict}")

    def summary(self) -> str:
        if not self.messages:
            return f"{DETECTOR} (detector): no predictions arrived"
        recall = 100 * self.found / self.objects if self.objects else 100.0
        return (f"{DETECTOR} (detector): {self.messages} frames, {self.found} of {self.objects} digits found "
                f"({recall:.1f} %), {self.false} false detection(s), mean inference {self.inference_ms / self.messages:.2f} ms, "
                f"mean capture-to-publish {self.total_ms / self.messages:.2f} ms")


def match_detections(detections: list[dict], objects: list[dict]) -> tuple[dict[int, dict], list[dict]]:
    """Greedy, best score first: ({object index: its detection}, detections that match nothing)."""
    matched: dict[int, dict] = {}
    false = []
    for detection in sorted(detections, key=lambda d: -d["score"]):
        candidates = [(box_iou(detection["box"], o["box"]), i) for i, o in enumerate(objects)
                      if i not in matched and o["label"] == detection["label"]]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= MATCH_IOU:
            matched[best[1]] = detection
        else:
            false.append(detection)
    return matched, false


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two [ymin, xmin, ymax, xmax] boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _frame_truth(truth: list, frame: int, missing):
    return truth[frame - 1] if 0 < frame <= len(truth) else missing


def run_demo(host: str, port: int, seconds: float) -> int:
    """Run the demo against the broker at host:port (parsed by the CLI: `--broker HOST:PORT`)."""
    checks = {
        CLASSIFIER: ClassifierCheck(demo_file(DEMO_TRUTH).read_text().split()),
        DETECTOR: DetectorCheck([json.loads(line)["objects"] for line in demo_file(DETECT_TRUTH).read_text().splitlines()]),
    }
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp, ExitStack() as stack:
        if not broker_listening(host, port):
            print(f"no broker on {host}:{port}: starting mosquitto for the demo")
            try:
                broker = stack.enter_context(LocalBroker(port))
            except BrokerUnavailable as err:
                print(f"edge-agent demo: {err}", file=sys.stderr)
                return 1
            host = broker.host
        return _watch_agent(host, port, Path(tmp), checks, seconds)


def _watch_agent(host: str, port: int, workdir: Path, checks: dict, seconds: float) -> int:
    config = workdir / "agent.toml"
    config.write_text(CONFIG_TEMPLATE.format(
        device=DEVICE_ID, state_dir=workdir / "state", host=host, port=port, demo_dir=demo_dir(),
        classifier=CLASSIFIER, detector=DETECTOR, classifier_fps=CLASSIFIER_FPS, detector_fps=DETECTOR_FPS,
    ))
    lock = threading.Lock()
    topics = {f"edge/{DEVICE_ID}/{name}/predictions": name for name in checks}

    def on_message(topic: str, payload: bytes) -> None:
        message = json.loads(payload)
        with lock:
            line = checks[topics[topic]].check(message)
        print(line, flush=True)

    listener = MqttListener(host, port, list(topics), on_message, client_id=f"edge-demo-watch-{int(time.time())}")
    listener.start()
    print(f"subscribed to {', '.join(topics)} on {host}:{port}; starting the agent "
          f"(it stops when both videos have played, at most {seconds:g} s)\n", flush=True)
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config), "--log-level", "warning"])
    try:
        agent.wait(timeout=seconds)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)
    time.sleep(0.3)  # the last acknowledged messages are still on their way to us
    listener.stop()
    with lock:
        print()
        for check in checks.values():
            print(check.summary())
        arrived = all(check.messages for check in checks.values())
    print(f"agent exit status {agent.returncode}")
    if not arrived:
        print("a pipeline published nothing: see the agent's log above", file=sys.stderr)
        return 1
    return 0 if agent.returncode == 0 else 1
