"""Files shipped inside the package: the demo model, its labels, its video and the video's ground truth.

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


def demo_dir() -> Path:
    """The folder holding the bundled demo files (pip installs package data as plain files)."""
    return Path(str(files(__name__).joinpath("demo")))


def demo_file(name: str) -> Path:
    return demo_dir() / name
