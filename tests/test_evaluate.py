"""`edge-agent evaluate` in child processes on the committed models and data: the numbers it measures,
the two dataset formats agreeing, and what it does with bad data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from support import DEMO, DEMO_MODEL, REPO

DETECTOR = DEMO / "digits_detector_int8.tflite"
EVAL_SET = DEMO / "digits-detect-eval"
MADE = json.loads((DEMO / "digits_detector.json").read_text())
# just below what `evaluate` measured on the committed held-out set (README, "Measure a model")
MIN_MAP50, MIN_MAP50_95 = 0.95, 0.75


def evaluate(*args, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", "evaluate", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout_s)


def evaluate_json(*args) -> dict:
    result = evaluate(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def committed_report():
    return evaluate_json(DETECTOR, EVAL_SET, "--threads", "1")


def test_the_committed_detector_reaches_its_measured_map_through_the_agents_decoder(committed_report):
    report = committed_report
    assert report["task"] == "detection" and report["model"]["name"] == "digits_detector_int8"
    assert report["images"] == MADE["heldout_scenes"] and report["objects"] == MADE["heldout_objects"]
    assert report["problems"] == []
    assert report["map50"] >= MIN_MAP50, report
    assert report["map50_95"] >= MIN_MAP50_95, report
    assert report["map50_95"] < report["map50"] <= 1.0
    assert set(report["per_class_ap50"]) == {str(d) for d in range(10)}  # labels from the model's metadata.json
    for stage in ("preprocess", "inference", "decode", "total"):
        latency = report["latency_ms"][stage]
        assert 0 < latency["p50"] <= latency["p95"]
    assert report["latency_ms"]["inference"]["p50"] < report["latency_ms"]["total"]["p50"]


def test_the_human_report_names_both_map_numbers_and_the_latency():
    result = evaluate(DETECTOR, EVAL_SET)
    assert result.returncode == 0, result.stderr
    assert "mAP@0.5 " in result.stdout and "mAP@0.5:0.95" in result.stdout
    assert "inference  median" in result.stdout
    assert " INFO edge_agent" not in result.stderr  # the agent's loading chatter stays out of the report


def test_coco_json_of_the_same_set_gives_the_same_map(tmp_path, committed_report):
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco_from_yolo(EVAL_SET)))
    report = evaluate_json(DETECTOR, annotations, "--images", EVAL_SET / "images", "--threads", "1")
    assert report["class_mapping"] == "categories matched to the model's labels by name"
    assert (report["images"], report["objects"]) == (committed_report["images"], committed_report["objects"])
    assert report["map50"] == pytest.approx(committed_report["map50"], abs=1e-6)
    assert report["map50_95"] == pytest.approx(committed_report["map50_95"], abs=1e-6)


def coco_from_yolo(root) -> dict:
    """COCO annotations for a YOLO folder, with category ids 1..10 named "0".."9" (so names must be matched)."""
    images, annotations = [], []
    for number, image_path in enumerate(sorted((root / "images").iterdir()), 1):
        height, width = cv2.imread(str(image_path)).shape[:2]
        images.append({"id": number, "file_name": image_path.name, "width": width, "height": height})
        for line in (root / "labels" / f"{image_path.stem}.txt").read_text().splitlines():
            cls, cx, cy, w, h = (float(v) for v in line.split())
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": int(cls) + 1,
                                "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                "area": w * width * h * height, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": d + 1, "name": str(d)} for d in range(10)]}


def test_bad_files_are_named_and_left_out_and_the_rest_is_evaluated(tmp_path):
    data = tmp_path / "set"
    shutil.copytree(EVAL_SET, data)
    labels = data / "labels"
    (labels / "0000.txt").unlink()  # missing label file
    (labels / "0001.txt").write_text("3 0.9 0.5 0.4 0.2\n")  # x from 0.7 to 1.1: outside the image
    (labels / "0002.txt").write_text("3 0.5 0.5\n")  # too few fields
    (labels / "0003.txt").write_text("12 0.5 0.5 0.2 0.2\n")  # not one of the model's 10 classes
    (data / "images" / "0004.jpg").write_bytes(b"not a jpeg")  # unreadable image
    (labels / "orphan.txt").write_text("1 0.5 0.5 0.2 0.2\n")  # a label without an image
    result = evaluate(DETECTOR, data, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    problems = report["problems"]
    assert len(problems) == 6, problems
    expect = {"0000.jpg": "no label file", "0001.txt": "outside the image", "0002.txt": "5 fields",
              "0003.txt": "class 12 is not a class of the model", "0004.jpg": "not an image OpenCV can decode",
              "orphan.txt": "no image for this label file"}
    for name, words in expect.items():
        assert any(name in p and words in p for p in problems), (name, problems)
        assert any(name in line and words in line for line in result.stderr.splitlines()), result.stderr
    assert report["images"] == MADE["heldout_scenes"] - 5
    assert report["map50"] >= MIN_MAP50


def test_a_coco_box_outside_its_image_leaves_that_image_out(tmp_path):
    coco = coco_from_yolo(EVAL_SET)
    coco["annotations"][0]["bbox"] = [80.0, 10.0, 40.0, 20.0]  # x to 120 in a 96-pixel-wide image
    bad_image = coco["annotations"][0]["image_id"]
    del coco["images"][-1]["width"]
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    report = evaluate_json(DETECTOR, annotations, "--images", EVAL_SET / "images")
    assert len(report["problems"]) == 2, report["problems"]
    assert f"image {bad_image} " in report["problems"][0] and "outside the image" in report["problems"][0]
    assert "positive 'width' and 'height'" in report["problems"][1]
    assert report["images"] == MADE["heldout_scenes"] - 2


@pytest.mark.parametrize("make", ["empty_folder", "no_images_folder", "every_file_bad", "empty_coco"])
def test_an_empty_dataset_is_a_clear_error_exit_2(tmp_path, make):
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    if make == "no_images_folder":
        shutil.rmtree(data / "images")
    if make == "every_file_bad":
        for name in ("a", "b"):
            cv2.imwrite(str(data / "images" / f"{name}.png"), np.zeros((96, 96), np.uint8))
    if make == "empty_coco":
        data = tmp_path / "empty.json"
        data.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    result = evaluate(DETECTOR, data, "--task", "detection")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "Traceback" not in message
    if make == "no_images_folder":
        assert "no images/ folder" in message
    else:
        assert "holds no images to evaluate" in message
    if make == "every_file_bad":
        assert "a.png: no label file" in message and "b.png: no label file" in message


def heldout_digits() -> tuple[np.ndarray, np.ndarray]:
    """make_demo.py's held-out split, as uint8 8x8 images."""
    digits = load_digits()
    pixels = np.round(digits.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    _, x_test, _, y_test = train_test_split(pixels, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    return x_test, y_test


def test_classification_accuracy_is_what_make_demo_measured(tmp_path):
    x, y = heldout_digits()
    np.savez(tmp_path / "heldout.npz", x=x, y=y)
    report = evaluate_json(DEMO_MODEL, tmp_path / "heldout.npz")
    made = json.loads((DEMO / "digits.json").read_text())
    assert report["task"] == "classification" and report["samples"] == made["heldout_samples"]
    assert report["top1_accuracy"] == pytest.approx(made["heldout_accuracy_int8"], abs=1e-4)
    assert report["top1_accuracy"] <= report["top5_accuracy"] <= 1.0
    assert set(report["per_class"]) == {str(d) for d in range(10)}


def test_classification_from_a_folder_per_class(tmp_path):
    x, y = heldout_digits()
    for number, (image, label) in enumerate(zip(x[:100], y[:100])):
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{number}.png"), cv2.resize(image, (40, 40), interpolation=cv2.INTER_NEAREST))
    report = evaluate_json(DEMO_MODEL, tmp_path / "data")
    assert report["samples"] == 100
    assert report["top1_accuracy"] >= 0.93


def test_unlabelled_or_mismatched_data_is_refused(tmp_path):
    x, _ = heldout_digits()
    np.savez(tmp_path / "unlabelled.npz", x=x)
    result = evaluate(DEMO_MODEL, tmp_path / "unlabelled.npz")
    assert result.returncode == 2 and "no class ids" in result.stderr
    result = evaluate(DEMO_MODEL, tmp_path / "missing")
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = evaluate(DEMO_MODEL, EVAL_SET, "--task", "detection")  # a classifier cannot detect
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    result = evaluate(DETECTOR, EVAL_SET, "--iou", "1.5")
    assert result.returncode == 2 and "--iou from 0 to 1" in result.stderr, result.stderr


def test_detection_without_pycocotools_says_what_to_install(tmp_path):
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'pycocotools': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edge_agent.cli import main\n"
        f"sys.exit(main(['evaluate', {str(DETECTOR)!r}, {str(EVAL_SET)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'edge-agent[eval]'" in result.stderr


def test_gates_exit_1_below_the_minimum_and_0_at_it_after_the_full_report(tmp_path, committed_report):
    measured = committed_report["map50"]
    passed = evaluate(DETECTOR, EVAL_SET, "--threads", "1", "--json", "--min-map", f"{measured - 1e-4:.6f}",
                      "--min-map50-95", "0")
    assert passed.returncode == 0, passed.stderr
    failed = evaluate(DETECTOR, EVAL_SET, "--threads", "1", "--json", "--min-map", f"{measured + 1e-4:.6f}")
    assert failed.returncode == 1, failed.stderr
    assert json.loads(failed.stdout)["map50"] == pytest.approx(measured, abs=1e-6), "the report is printed either way"
    assert f"mAP@0.5 {measured:.4f} is below --min-map" in failed.stderr

    x, y = heldout_digits()
    np.savez(tmp_path / "heldout.npz", x=x, y=y)
    accuracy = json.loads((DEMO / "digits.json").read_text())["heldout_accuracy_int8"]
    below = evaluate(DEMO_MODEL, tmp_path / "heldout.npz", "--min-accuracy", f"{min(1.0, accuracy + 0.01):.4f}")
    assert below.returncode == 1 and "top-1 accuracy" in below.stderr and "is below --min-accuracy" in below.stderr
    assert evaluate(DEMO_MODEL, tmp_path / "heldout.npz", "--min-accuracy", "0.5").returncode == 0


@pytest.mark.parametrize("args, expected", [
    (("--min-map", "95"), "--min-map must be from 0 to 1 (a fraction, not a percentage), got 95"),
    (("--min-map", "nan"), "--min-map must be from 0 to 1"),
    (("--min-accuracy", "0.9"), "--min-accuracy is for classification models"),
])
def test_a_gate_that_cannot_apply_is_refused_before_measuring(args, expected):
    result = evaluate(DETECTOR, EVAL_SET, *args)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert result.stdout == "", "nothing measured"
