"""models/make_detector.py reproduces the committed detector, video, ground truth and evaluation set
byte for byte (minutes of training: marked retrain, so `make test` leaves it out and
`make test-retrain` runs it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import DEMO, REPO

OUTPUTS = ["digits_detector_int8.tflite", "digits-detect-demo.avi", "digits-detect-demo.truth.jsonl",
           "digits_detector.json"]


@pytest.mark.retrain
@pytest.mark.slow
@pytest.mark.tensorflow  # make_detector.py trains with TensorFlow (the host extra)
def test_the_script_reproduces_the_committed_files(tmp_path):
    result = subprocess.run([sys.executable, "models/make_detector.py", "--out", str(tmp_path), "--device-python", ""],
                            capture_output=True, text=True, cwd=REPO, timeout=3600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == (DEMO / name).read_bytes(), name
    committed = sorted(p.relative_to(DEMO) for p in (DEMO / "digits-detect-eval").rglob("*") if p.is_file())
    made = sorted(p.relative_to(tmp_path) for p in (tmp_path / "digits-detect-eval").rglob("*") if p.is_file())
    assert made == committed and len(made) == 300
    assert all((tmp_path / p).read_bytes() == (DEMO / p).read_bytes() for p in made)
