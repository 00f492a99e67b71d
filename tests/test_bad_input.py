"""The agent as a child process given bad input: each mistake gives one clear error and the right
exit status, never a traceback; a camera that is not there keeps the agent up."""

from __future__ import annotations

import json
import signal
import time

import cv2
import numpy as np
import pytest

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, MODELS, wait_until, write_config
from edge_agent.service.source_health import RECONNECT_MAX_DELAY_S, RECONNECT_MIN_DELAY_S


def trial(agent_process, tmp_path, model, source=DEMO_VIDEO, *extra: str):
    return agent_process(
        "run", "--model", str(model), "--source", str(source), "--no-mqtt", "--max-frames", "3",
        "--state-dir", str(tmp_path / "state"), *extra,
    )


def assert_failed_cleanly(agent, *fragments: str) -> str:
    status = agent.wait(60)
    stderr = agent.stderr
    assert status != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert agent.stdout == "", "nothing may be published"
    for fragment in fragments:
        assert fragment in stderr, stderr
    return stderr


def test_missing_model_file_names_the_path(tmp_path, agent_process):
    missing = tmp_path / "models" / "detector.tflite"
    agent = trial(agent_process, tmp_path, missing)
    stderr = assert_failed_cleanly(agent, f"model file {missing} does not exist")
    assert stderr.count("does not exist") == 1


@pytest.mark.parametrize("name", ["not_a_model.tflite", "truncated.tflite"])
def test_broken_model_file_is_not_a_valid_tflite_model(tmp_path, agent_process, name):
    agent = trial(agent_process, tmp_path, MODELS / name)
    assert_failed_cleanly(agent, f"{MODELS / name} is not a valid TFLite model")


def test_image_source_for_a_non_image_model_says_the_input_is_not_an_image(tmp_path, agent_process):
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 128, np.uint8))
    agent = trial(agent_process, tmp_path, MODELS / "sensor_tiny.tflite", image)
    assert_failed_cleanly(agent, "[1, 16], which is not an image", "'features'")


def test_labels_that_do_not_fit_the_model_name_both_counts(tmp_path, agent_process):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(12)) + "\n")
    agent = trial(agent_process, tmp_path, DEMO_MODEL, DEMO_VIDEO, "--labels", str(labels))
    assert_failed_cleanly(agent, "the labels have 12 entries", "output has 10 classes")


def test_edgetpu_model_on_the_cpu_names_the_fix(tmp_path, agent_process):
    agent = trial(agent_process, tmp_path, MODELS / "edgetpu_fake.tflite")
    assert_failed_cleanly(agent, "edgetpu-custom-op", 'delegate = "edgetpu"')


def test_camera_that_does_not_open_keeps_the_agent_up_and_logs_once(tmp_path, agent_process):
    agent = agent_process(
        "run", "--model", str(DEMO_MODEL), "--source", "/dev/video97", "--no-mqtt", "--state-dir", str(tmp_path / "state"),
    )
    assert wait_until(lambda: "/dev/video97 did not open" in agent.stderr, 30), agent.stderr
    # long enough for the capped backoff to retry several times
    time.sleep(RECONNECT_MIN_DELAY_S * 2 + RECONNECT_MAX_DELAY_S * 1.5)
    assert agent.process.poll() is None, f"the agent must keep waiting for the camera:\n{agent.stderr}"
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    stderr = agent.stderr
    assert stderr.count("/dev/video97 did not open") == 1, "a lost camera is logged once, not once per retry"
    assert "v4l2-ctl --list-devices" in stderr
    assert "Traceback" not in stderr and agent.stdout == ""


def test_bad_pipeline_next_to_a_good_one(tmp_path, agent_process):
    missing = tmp_path / "gone.tflite"
    config = write_config(tmp_path / "agent.toml", f"""
device_id = "mixed"
state_dir = "{tmp_path}/state"

[pipelines.good]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
max_frames = 20
sinks = ["stdout"]

[pipelines.broken]
model = "{missing}"
source = "{DEMO_VIDEO}"
sinks = ["stdout"]
""")
    agent = agent_process("run", "--config", str(config))
    assert agent.wait(60) == 1, agent.stderr
    stderr = agent.stderr
    assert "Traceback" not in stderr
    assert f"pipeline broken cannot start: model file {missing} does not exist" in stderr
    predictions = [json.loads(line) for line in agent.stdout.splitlines()]
    assert len(predictions) == 20
    assert {p["pipeline"] for p in predictions} == {"good"} and [p["seq"] for p in predictions] == list(range(1, 21))
    assert all(p["task"] == "classification" and p["classes"] for p in predictions)
