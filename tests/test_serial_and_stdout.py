"""The serial sink against real pseudo-terminals, and the stdout sink through the real agent."""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time

import cv2
import pytest

from support import DEMO, DEMO_MODEL, DEMO_TRUTH, DEMO_VIDEO, wait_until, write_config
from edge_agent.config import SerialConfig
from edge_agent.records import ClassScore, Detection, ModelRef, Prediction
from edge_agent.sinks.serial import SerialSink

HANG_S = 10.0  # bounds only catch hangs


class PtyReader:
    """The master side of a real pseudo-terminal, read on a thread (the pty buffer is small)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pty-reader")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO while no slave is open: nothing to read yet
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.data += chunk

    def lines(self) -> list[bytes]:
        with self._lock:
            return bytes(self.data).split(b"\n")[:-1]  # complete lines only

    def close(self) -> None:
        self._stop.set()
        self._thread.join(HANG_S)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty():
    reader = PtyReader()
    yield reader
    reader.close()


def prediction(seq: int, classes=(), detections=(), task: str = "classification") -> Prediction:
    return Prediction(
        device="bench", pipeline="digits", seq=seq, ts=1700000000.0 + seq, model=ModelRef("digits_int8", "ab" * 32),
        task=task, inference_ms=1.5, total_ms=3.0, classes=tuple(classes), detections=tuple(detections), frame_index=seq,
    )


def payload_of(p: Prediction) -> str:
    return json.dumps(p.to_payload(), separators=(",", ":"))


# --- SerialSink on its own ------------------------------------------------------------------


def test_serial_sink_writes_one_json_line_per_prediction(pty):
    sink = SerialSink(SerialConfig(port=pty.path))
    sent = [prediction(seq, [ClassScore(seq, str(seq), 0.5 + seq / 10)]) for seq in (1, 2, 3)]
    try:
        for p in sent:
            sink.send(p, payload_of(p))
        assert wait_until(lambda: len(pty.lines()) >= 3, HANG_S), pty.data
    finally:
        sink.close(5)
    assert [json.loads(line) for line in pty.lines()] == [p.to_payload() for p in sent]
    assert sink.written == 3 and sink.dropped == 0


def test_serial_sink_csv_format_writes_label_and_score(pty):
    sink = SerialSink(SerialConfig(port=pty.path, format="csv", baud=9600))
    sent = [
        prediction(1, [ClassScore(7, "seven", 0.91234), ClassScore(1, "one", 0.05)]),
        prediction(2, detections=[Detection(0, "cat", 0.4, (0, 0, 1, 1)), Detection(2, "dog", 0.8, (0, 0, 0.5, 0.5))],
                   task="detection"),
        prediction(3, task="detection"),
    ]
    try:
        for p in sent:
            sink.send(p, payload_of(p))
        assert wait_until(lambda: len(pty.lines()) >= 3, HANG_S), pty.data
    finally:
        sink.close(5)
    assert pty.lines() == [b"seven,0.912", b"dog,0.800", b"none,0.000"]


def test_serial_sink_with_a_missing_port_warns_once_and_never_raises(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent")
    port = str(tmp_path / "ttyUSB-unplugged")
    sink = SerialSink(SerialConfig(port=port))
    try:
        for seq in range(1, 6):
            p = prediction(seq, [ClassScore(1, "1", 0.9)])
            sink.send(p, payload_of(p))  # must not raise: the port is the sink's problem
        time.sleep(1.8)  # room for at least two reopen attempts (0.5 s, then 1 s)
    finally:
        started = time.monotonic()
        sink.close(5)
        closing_s = time.monotonic() - started
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert port in warnings[0]
    assert closing_s < 2.0, f"close took {closing_s:.1f} s while the port was missing"
    assert sink.written == 0


def test_serial_sink_delivers_queued_lines_once_the_port_appears(tmp_path, pty, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent")
    link = tmp_path / "ttyACM0"  # the device node appears when the board is plugged in
    sink = SerialSink(SerialConfig(port=str(link)))
    try:
        sent = [prediction(seq, [ClassScore(1, "1", 0.9)]) for seq in (1, 2)]
        for p in sent:
            sink.send(p, payload_of(p))
        time.sleep(0.7)
        link.symlink_to(pty.path)
        assert wait_until(lambda: len(pty.lines()) >= 2, HANG_S), caplog.text
    finally:
        sink.close(5)
    assert [json.loads(line)["seq"] for line in pty.lines()] == [1, 2]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert any(str(link) in m and "back" in m for m in messages), messages


# --- the agent with serial and stdout sinks -----------------------------------------------------


def test_agent_writes_every_prediction_to_a_serial_port(tmp_path, pty, agent_process):
    config = write_config(tmp_path / "serial.toml", f"""
device_id = "serialtest"
state_dir = "{tmp_path}/state"

[serial]
port = "{pty.path}"

[pipelines.digits]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
max_frames = 20
sinks = ["serial"]
""")
    agent = agent_process("run", "--config", str(config))
    assert agent.wait(60) == 0, agent.stderr
    assert wait_until(lambda: len(pty.lines()) >= 20, HANG_S), agent.stderr
    messages = [json.loads(line) for line in pty.lines()]
    assert [m["seq"] for m in messages] == list(range(1, 21))
    assert all(m["device"] == "serialtest" and m["pipeline"] == "digits" for m in messages)
    correct = sum(m["classes"][0]["label"] == DEMO_TRUTH[m["frame"] - 1] for m in messages)
    assert correct >= 16, f"only {correct}/20 frames classified correctly"
    assert agent.stdout == "", "nothing but the stdout sink may write to stdout"


@pytest.mark.parametrize("source", ["image", "video"])
def test_one_line_trial_prints_exactly_max_frames_json_lines_on_stdout(tmp_path, agent_process, source):
    digit_index = 3
    if source == "image":
        capture = cv2.VideoCapture(str(DEMO_VIDEO))
        capture.set(cv2.CAP_PROP_POS_FRAMES, digit_index)
        ok, frame = capture.read()
        capture.release()
        assert ok
        path = tmp_path / "digit.png"
        cv2.imwrite(str(path), frame)
    else:
        path = DEMO_VIDEO
    agent = agent_process(
        "run", "--model", str(DEMO_MODEL), "--source", str(path), "--no-mqtt", "--max-frames", "5",
        "--state-dir", str(tmp_path / "state"),
    )
    assert agent.wait(60) == 0, agent.stderr
    lines = agent.stdout.splitlines()
    assert len(lines) == 5, agent.stdout
    messages = [json.loads(line) for line in lines]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4, 5]
    if source == "image":
        assert {m["classes"][0]["label"] for m in messages} == {DEMO_TRUTH[digit_index]}
    else:
        assert [m["frame"] for m in messages] == [1, 2, 3, 4, 5]
    assert "INFO" in agent.stderr and "INFO" not in agent.stdout, "logs belong on stderr"
