"""The real agent (a child process) running detection, face-with-keypoints, pose, segmentation and instance
segmentation pipelines
from one config file, on a video written with OpenCV and a real photo: what it publishes per frame."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage import data

from decode_support import BLUE, RED, solid_frame
from support import MODELS, AgentProcess, write_config, write_video

CONFIG = """\
device_id = "decode-test"
state_dir = "{state}"
[mqtt]
enabled = false

[pipelines.yolo]
model = "{models}/yolov8_nchw_int8.tflite"
source = "{video}"
sinks = ["stdout"]

[pipelines.faces]
model = "{models}/face_detection_short_range.tflite"
source = {{ uri = "{photo}", loop = true }}
max_frames = 2
sinks = ["stdout"]

[pipelines.people]
model = "{models}/movenet_multi_layout.tflite"
task = "pose"
source = "{video}"
max_frames = 4
sinks = ["stdout"]

[pipelines.selfie]
model = "{models}/selfie_segmentation.tflite"
runtime = "litert"
source = {{ uri = "{photo}", loop = true }}
max_frames = 2
sinks = ["stdout"]

[pipelines.instances]
model = "{models}/yolov8_seg_float.tflite"
source = "{video}"
sinks = ["stdout"]

[pipelines.yolo.thresholds]
blue = 0.95
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("decode-agent")
    video = write_video(workdir / "red-blue.avi", [solid_frame(120, 160, RED)] * 3 + [solid_frame(120, 160, BLUE)] * 3)
    photo = workdir / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    config = write_config(workdir / "agent.toml", CONFIG.format(state=workdir / "state", models=MODELS, video=video, photo=photo))
    agent = AgentProcess(["run", "--config", str(config)], workdir)
    try:
        assert agent.wait(120) == 0, agent.stderr
    finally:
        agent.kill()
    messages = [json.loads(line) for line in agent.stdout.splitlines() if line.startswith("{")]
    by_pipeline: dict[str, list[dict]] = {}
    for message in messages:
        by_pipeline.setdefault(message["pipeline"], []).append(message)
    return by_pipeline, agent.stderr


def test_yolo_pipeline_publishes_detections_with_labels_from_the_model(run):
    messages, log = run
    yolo = messages["yolo"]
    assert len(yolo) == 6 and all(m["task"] == "detection" for m in yolo)
    red, blue = yolo[0]["detections"], yolo[-1]["detections"]
    # per-label threshold: blue (0.70) is gone; the red box scores the red mean only in red frames
    assert [d["label"] for d in red] == ["green", "red"] and [d["label"] for d in blue] == ["green"]
    assert all(len(d["box"]) == 4 and 0 <= min(d["box"]) and max(d["box"]) <= 1 for d in red)
    assert "yolov8_nchw_int8: yolo-v8 layout" in log


def test_face_pipeline_publishes_keypoints(run):
    messages, _ = run
    (face,) = messages["faces"][0]["detections"]
    assert face["label"] == "face" and face["score"] > 0.8
    assert [k["name"] for k in face["keypoints"]][:3] == ["right_eye", "left_eye", "nose_tip"]


def test_pose_pipeline_publishes_poses(run):
    messages, _ = run
    (pose,) = messages["people"][0]["poses"]
    assert pose["label"] == "person" and len(pose["keypoints"]) == 17 and pose["keypoints"][0]["name"] == "nose"
    assert "detections" not in messages["people"][0]
    # poses are tracked like detections: the same person keeps one track_id from frame to frame
    track_ids = [m["poses"][0].get("track_id") for m in messages["people"]]
    assert len(track_ids) == 4 and track_ids[0] is not None and set(track_ids) == {track_ids[0]}, track_ids


def test_segmentation_pipeline_publishes_segments_and_no_mask(run):
    messages, _ = run
    message = messages["selfie"][0]
    (segment,) = message["segments"]
    assert segment["label"] == "selfie" and 0.3 < segment["coverage"] < 0.8
    assert "mask" not in message and len(json.dumps(message)) < 2000
    assert np.isfinite(segment["box"]).all()


def test_instance_segmentation_pipeline_publishes_tracked_detections_with_coverage_and_no_mask(run):
    messages, log = run
    instances = messages["instances"]
    assert len(instances) == 6 and all(m["task"] == "detection" for m in instances)
    red, blue = instances[0]["detections"], instances[-1]["detections"]
    assert [d["label"] for d in red] == ["green", "red", "blue", "green"] and [d["label"] for d in blue] == ["green", "blue", "green"]
    assert all(0 < d["coverage"] < 0.1 for d in red + blue)
    assert "mask" not in instances[0] and len(json.dumps(instances[0])) < 1200
    # tracked as yolo-v8's detections are: the green box keeps its track id over all six frames
    green = [m["detections"][0] for m in instances]
    assert all(d["label"] == "green" for d in green) and green[0].get("track_id") is not None
    assert {d["track_id"] for d in green} == {green[0]["track_id"]}
    assert "yolov8_seg_float: yolo-seg layout" in log
