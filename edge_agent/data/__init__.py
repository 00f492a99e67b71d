"""Files shipped inside the package: the demo models, labels, videos, the videos' ground truth, and the
detector's held-out evaluation set (YOLO format).

They are package data, found through importlib.resources wherever the package is installed
(a wheel in a venv, an editable checkout), so `pip install edge-agent && edge-agent demo` works.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEMO_MODEL = "digits_int8.tflite"
DEMO_FLOAT_MODEL = "digits_float32.tflite"
DEMO_LABELS = "labels.txt"
DEMO_VIDEO = "digits-demo.avi"
DEMO_TRUTH = "digits-demo.truth.txt"
# the digits detector (models/make_detector.py): labels and task are inside the model
DETECT_MODEL = "digits_detector_int8.tflite"
DETECT_VIDEO = "digits-detect-demo.avi"
DETECT_TRUTH = "digits-detect-demo.truth.jsonl"  # {"frame", "objects": [{"label", "box"}]} per line
DETECT_EVAL = "digits-detect-eval"  # images/, labels/ for `edge-agent evaluate`


def demo_dir() -> Path:
    """The folder holding the bundled demo files (pip installs package data as plain files)."""
    return Path(str(files(__name__).joinpath("demo")))


def demo_file(name: str) -> Path:
    return demo_dir() / name
