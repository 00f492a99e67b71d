"""`edge-agent inspect` as a real child process: the JSON report, the text report, and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import DEMO_MODEL, MODELS, REPO, RUNTIMES


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "inspect", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


def inspect_json(*args: str) -> dict:
    result = inspect(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # stdout holds the JSON object and nothing else


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_demo_model_report(runtime):
    report = inspect_json(DEMO_MODEL, "--runtime", runtime)
    assert report["runtime"] == runtime
    assert report["path"] == str(DEMO_MODEL) and report["size_bytes"] == DEMO_MODEL.stat().st_size
    assert len(report["sha256"]) == 64
    assert report["task"] == "classification"
    (model_input,) = report["inputs"]
    assert model_input["shape"] == [1, 8, 8, 1] and model_input["dtype"] == "int8"
    assert model_input["quantization"]["scale"] == pytest.approx(1 / 255, rel=1e-6)
    assert model_input["quantization"]["zero_point"] == -128
    (output,) = report["outputs"]
    assert output["shape"] == [1, 10] and output["dtype"] == "int8"
    assert output["quantization"] == {"scale": pytest.approx(1 / 256), "zero_point": -128}
    assert report["operators"] == {"CONV_2D": 3, "FULLY_CONNECTED": 2, "MAX_POOL_2D": 1, "RESHAPE": 1, "SOFTMAX": 1}
    assert report["custom_operators"] == [] and report["needs_edgetpu"] is False
    assert report["labels"] == [str(d) for d in range(10)]
    assert "error" not in report


def test_default_runtime_is_litert():
    assert inspect_json(DEMO_MODEL)["runtime"] == "litert"


def test_ssd_tiny_report_is_a_detection_model():
    report = inspect_json(MODELS / "ssd_tiny.tflite")
    assert report["task"] == "detection"
    assert report["custom_operators"] == ["TFLite_Detection_PostProcess"]
    assert report["operators"]["TFLite_Detection_PostProcess"] == 1
    assert report["inputs"][0]["shape"] == [1, 64, 64, 3] and report["inputs"][0]["quantization"] is None
    assert sorted(o["shape"] for o in report["outputs"]) == [[1], [1, 10], [1, 10], [1, 10, 4]]
    assert report["labels"] is None


def test_sensor_tiny_report_is_raw_float():
    report = inspect_json(MODELS / "sensor_tiny.tflite")
    assert report["inputs"] == [{"name": "features", "shape": [1, 16], "dtype": "float32", "quantization": None}]
    assert report["outputs"][0]["shape"] == [1, 4] and report["outputs"][0]["dtype"] == "float32"
    # one [1, 4] output guesses classification; a pipeline on it fails later because the input is no image
    assert report["task"] == "classification"
    assert report["operators"] == {"FULLY_CONNECTED": 2, "SOFTMAX": 1}


def test_edgetpu_model_report_says_it_needs_the_edgetpu():
    result = inspect(MODELS / "edgetpu_fake.tflite", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["needs_edgetpu"] is True
    assert report["custom_operators"] == ["edgetpu-custom-op"]
    assert report["task"] is None and "inputs" not in report
    assert "Edge TPU" in report["error"] and 'delegate = "edgetpu"' in report["error"]


def test_text_report_has_the_key_lines():
    result = inspect(DEMO_MODEL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"model     {DEMO_MODEL}"
    assert "runtime   litert" in lines
    assert "task      classification (guessed)" in lines
    assert any(line.startswith("input     image  [1, 8, 8, 1]  int8  scale=0.00392157 zero_point=-128") for line in lines)
    assert any(line.startswith("output    Identity  [1, 10]  int8  scale=0.00390625 zero_point=-128") for line in lines)
    assert "operators CONV_2D×3, FULLY_CONNECTED×2, MAX_POOL_2D×1, RESHAPE×1, SOFTMAX×1" in lines
    assert "labels    0, 1, 2, 3, 4, 5, 6, 7, 8, 9 (from the model's metadata)" in lines


def test_text_report_of_the_edgetpu_model_has_a_note():
    result = inspect(MODELS / "edgetpu_fake.tflite")
    assert result.returncode == 0, result.stderr
    assert "custom    edgetpu-custom-op" in result.stdout.splitlines()
    assert any(line.startswith("note      compiled for the Edge TPU") for line in result.stdout.splitlines())
    assert "labels    none in the model" in result.stdout


@pytest.mark.parametrize("name", ["not_a_model.tflite", "truncated.tflite", "missing.tflite"])
def test_unusable_file_exits_2_with_one_line(name):
    result = inspect(MODELS / name, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("edge-agent: ") and str(MODELS / name) in line
    assert "Traceback" not in result.stderr
    expected = "does not exist" if name == "missing.tflite" else "not a valid TFLite model"
    assert expected in line


# --- the layout the outputs match, and why (issue 11) -------------------------------------------------
def test_yolo_report_says_which_layout_matched_and_why():
    report = inspect_json(MODELS / "yolov8_nchw_int8.tflite")
    assert report["task"] == "detection"
    layout = report["layout"]
    assert layout["layout"] == "yolo-v8" and "N = 84 is the anchor-free grid of a 64x64 input" in layout["why"]
    assert "normalised" in layout["why"]
    assert report["labels"] == ["red", "green", "blue"]
    assert report["export_metadata"]["task"] == "detect" and report["export_metadata"]["imgsz"] == [64, 64]


def test_anchor_ssd_report_names_the_preset():
    layout = inspect_json(MODELS / "face_detection_short_range.tflite")["layout"]
    assert layout["layout"] == "anchor-ssd" and "preset mediapipe-face-short-range" in layout["why"]


def test_an_unplaceable_model_lists_its_shapes_and_the_known_layouts():
    report = inspect_json(MODELS / "pose_13_keypoints.tflite")
    layout = report["layout"]
    assert report["task"] == "raw" and layout["unplaced_outputs"] == [[1, 1, 13, 3]]
    assert any("13 keypoints" in reason for reason in layout["rejected"])
    assert any(known.startswith("movenet-single (pose)") for known in layout["known_layouts"])
    text = inspect(MODELS / "pose_13_keypoints.tflite").stdout.splitlines()
    assert "unplaced  output [1, 1, 13, 3]" in text and any(line.startswith("known     classification") for line in text)


def test_inspect_for_a_task_that_cannot_decode_the_model_explains_why():
    report = inspect_json(MODELS / "yolov8_float.tflite", "--task", "pose")
    assert report["layout"]["layout"] is None and "[[1, 7, 84]]" in report["layout"]["error"]
    assert report["task"] == "detection"  # what auto would pick still shows
    assert "movenet-single" in report["layout"]["error"]
    assert inspect_json(MODELS / "yolov8_float.tflite", "--task", "raw")["layout"]["layout"] == "raw"


def test_yolo_seg_report_names_the_layout_the_prototypes_and_what_does_not_fit():
    report = inspect_json(MODELS / "yolov8_seg_float.tflite")
    layout = report["layout"]
    assert report["task"] == "detection" and layout["layout"] == "yolo-seg"
    assert "3 class scores + 32 mask coefficients" in layout["why"] and "mask prototypes [1, 16, 16, 32]" in layout["why"]
    assert any(line.startswith("layout    yolo-seg: outputs [1, 39, 84]")
               for line in inspect(MODELS / "yolov8_seg_float.tflite").stdout.splitlines())
    bad = inspect_json(MODELS / "yolov8_seg_bad_protos.tflite")["layout"]
    assert bad["layout"] is None and "4 + 3 + 16 = 23 values" in bad["error"]
    assert any(known.startswith("yolo-seg (detection)") for known in bad["known_layouts"])
