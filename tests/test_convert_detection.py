"""`convert --validate` on a detection model: mAP@0.5 and mAP@0.5:0.95 of the original (TensorFlow) and the
converted model (the agent's runtime and decoder), gated by --max-map-drop.

The source is the project's trained digits detector as Keras saved it (tests/model_files/digits_detector.keras,
from models/make_detector.py --keras-out), wrapped with the same YOLO-layout output function make_detector
exports (save_source_model); the data is the committed held-out YOLO set and a COCO JSON made from it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import pytest

from support import DEMO, MODELS, REPO
from edge_agent.cli import main

sys.path.insert(0, str(REPO / "models"))
import make_detector  # noqa: E402  (the detector's own code: its output head and scenes)

pytestmark = pytest.mark.tensorflow

EVAL_SET = DEMO / "digits-detect-eval"
CALIBRATION_SCENES = 100
COCO_IMAGES = 40
INT8_MAX_MAP_GAP = 0.03


@pytest.fixture(scope="session")
def detector(tmp_path_factory):
    """The SavedModel source, calibration scenes from training digits, labels, a COCO JSON (a few seconds)."""
    root = tmp_path_factory.mktemp("detector")
    model = keras.models.load_model(MODELS / "digits_detector.keras", compile=False)
    make_detector.save_source_model(model, root / "savedmodel")
    x_train, y_train, _, _ = make_detector.load_split()
    scenes = make_detector.render_scenes(np.random.default_rng([0, 3]), x_train, y_train, CALIBRATION_SCENES)
    (root / "calibration").mkdir()
    for number, scene in enumerate(scenes):
        assert cv2.imwrite(str(root / "calibration" / f"{number:04d}.png"), scene.image)
    (root / "labels.txt").write_text("\n".join(make_detector.LABELS) + "\n")
    (root / "coco").mkdir()  # the JSON beside its images/ folder, as COCO sets are laid out
    (root / "coco" / "images").symlink_to(EVAL_SET / "images", target_is_directory=True)
    (root / "coco" / "instances.json").write_text(json.dumps(coco_from_yolo(EVAL_SET, COCO_IMAGES)))
    return root


def coco_from_yolo(folder: Path, count: int) -> dict:
    """The first `count` images of a YOLO folder as COCO annotations (pixel boxes, categories by label name)."""
    images, annotations = [], []
    for image_id, path in enumerate(sorted((folder / "images").glob("*.jpg"))[:count], 1):
        height, width = cv2.imread(str(path)).shape[:2]
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for line in (folder / "labels" / f"{path.stem}.txt").read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            box = [(float(cx) - float(w) / 2) * width, (float(cy) - float(h) / 2) * height,
                   float(w) * width, float(h) * height]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": label} for i, label in enumerate(make_detector.LABELS)]
    return {"images": images, "annotations": annotations, "categories": categories}


def convert(capsys, detector, out: Path, *options) -> tuple[int, dict | None, str]:
    report_path = out.with_suffix(".json")
    status = main([str(a) for a in ("convert", detector / "savedmodel", "-o", out, "--labels", detector / "labels.txt",
                                    "--report-json", report_path, *options)])
    captured = capsys.readouterr()
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return status, report, captured.out + captured.err


def test_int8_detector_reports_map_of_original_and_converted_and_passes_the_gate(capsys, detector, tmp_path):
    out = tmp_path / "detector.tflite"
    status, report, output = convert(capsys, detector, out, "--quantize", "int8", "--calibration",
                                     detector / "calibration", "--validate", EVAL_SET,
                                     "--max-map-drop", str(INT8_MAX_MAP_GAP))
    assert status == 0, output
    assert out.exists() and report["passed"] is True and report["max_map_drop"] == INT8_MAX_MAP_GAP
    assert report["task"] == "detection"  # the layout matcher's (yolo-v8), not the old "raw"
    validation = report["validation"]
    assert validation["layout"] == "yolo-v8" and validation["images"] == 150 and validation["objects"] == 346
    assert validation["problems"] == []
    for key in ("map50_original", "map50_converted", "map_original", "map_converted"):
        assert report[key] == validation[key] and 0.0 < report[key] <= 1.0, key
    # the trained detector: the committed int8 model scores 0.976 / 0.775 on this set
    assert report["map50_original"] > 0.9 and report["map_original"] > 0.65
    assert abs(report["map50_original"] - report["map50_converted"]) <= INT8_MAX_MAP_GAP
    assert abs(report["map_original"] - report["map_converted"]) <= INT8_MAX_MAP_GAP
    assert report["accuracy_original"] is None and report["max_abs_diff"] is None
    assert "mAP@0.5:0.95 original" in output and "--max-map-drop 0.03: passed" in output
    # the converted side is what `edge-agent evaluate` measures on the written file
    status = main(["evaluate", str(out), str(EVAL_SET), "--labels", str(detector / "labels.txt"), "--json"])
    evaluated = json.loads(capsys.readouterr().out)
    assert status == 0 and evaluated["map50"] == pytest.approx(report["map50_converted"], abs=1e-6)
    assert evaluated["map50_95"] == pytest.approx(report["map_converted"], abs=1e-6)


def test_a_float_conversion_of_the_detector_scores_as_the_original_on_coco_json(capsys, detector, tmp_path):
    """COCO JSON data (categories by name); float TFLite and TensorFlow compute the same function."""
    out = tmp_path / "float.tflite"
    status, report, output = convert(capsys, detector, out, "--validate", detector / "coco" / "instances.json",
                                     "--max-map-drop", "0.005")
    assert status == 0, output
    assert report["validation"]["images"] == COCO_IMAGES
    assert report["map50_original"] > 0.9
    assert report["map50_converted"] == pytest.approx(report["map50_original"], abs=0.005)
    assert report["map_converted"] == pytest.approx(report["map_original"], abs=0.005)


def test_a_detector_calibrated_on_dark_scenes_fails_the_map_gate_and_is_not_written(capsys, detector, tmp_path):
    """Calibrating on scenes 20x too dark saturates the real ones: the int8 model loses most of its mAP."""
    dark = tmp_path / "dark"
    dark.mkdir()
    for path in sorted((detector / "calibration").glob("*.png"))[:30]:
        assert cv2.imwrite(str(dark / path.name), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) // 20)
    out = tmp_path / "dark.tflite"
    status, report, output = convert(capsys, detector, out, "--quantize", "int8", "--calibration", dark,
                                     "--validate", EVAL_SET, "--max-map-drop", "0.05")
    assert status == 1, output
    assert not out.exists() and report["passed"] is False
    assert report["map50_original"] > 0.9 and report["map50_original"] - report["map50_converted"] > 0.05
    assert "mAP@0.5 dropped from" in output and "was not written" in output


def test_detection_validation_bad_input(capsys, detector, tmp_path):
    np.savez(tmp_path / "arrays.npz", x=np.zeros((4, 96, 96, 1), np.uint8), y=np.zeros(4, np.int64))
    out = tmp_path / "out.tflite"
    cases = [
        (("--max-map-drop", "0.01"), "--max-map-drop needs --validate"),
        (("--validate", tmp_path / "arrays.npz", "--max-map-drop", "0.01"), "--max-map-drop needs detection data"),
        (("--validate", EVAL_SET, "--max-accuracy-drop", "0.01"), "gate a detection model with --max-map-drop"),
        (("--validate", EVAL_SET, "--task", "classification"), "decode as 'classification'"),
    ]
    for options, message in cases:
        status, report, output = convert(capsys, detector, out, *options)
        assert status == 2, (options, output)
        errors = [line for line in output.splitlines() if line.startswith("edge-agent: ")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in output, (options, output)
        assert not out.exists(), options
