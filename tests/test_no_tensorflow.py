"""The daemon and `edge-agent evaluate` import and run without TensorFlow: in a child process where
importing tensorflow, tf_keras or keras raises ImportError, the daemon's modules are imported and the
demo runs in-process, and evaluate measures the demo classifier and the detector."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, REPO

BLOCKED = ("tensorflow", "tf_keras", "keras")

# Makes every import of tensorflow, tf_keras or keras fail (and records it) in the child process.
BLOCKER = textwrap.dedent("""
    import importlib.abc
    import io
    import json
    import sys
    from contextlib import redirect_stdout

    BLOCKED = {blocked!r}
    attempts = []

    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTensorFlow())
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import block does not work")
    attempts.clear()
""")

CHILD = BLOCKER + textwrap.dedent("""
    import edge_agent.cli
    import edge_agent.runtime
    import edge_agent.service.agent
    import edge_agent.mqtt.publisher
    import edge_agent.sinks.mqtt
    import edge_agent.sources

    predictions = io.StringIO()
    with redirect_stdout(predictions):
        status = edge_agent.cli.main([
            "run", "--model", {model!r}, "--source", {video!r}, "--no-mqtt", "--max-frames", "3",
            "--state-dir", {state_dir!r},
        ])
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({{"status": status, "predictions": predictions.getvalue(), "attempts": attempts, "loaded": loaded}}))
""")


def test_daemon_imports_and_runs_without_tensorflow(tmp_path):
    code = CHILD.format(blocked=BLOCKED, model=str(DEMO_MODEL), video=str(DEMO_VIDEO), state_dir=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 0, result.stderr
    predictions = [json.loads(line) for line in report["predictions"].splitlines()]
    assert [p["seq"] for p in predictions] == [1, 2, 3]
    assert all(p["task"] == "classification" and p["model"]["name"] == "digits_int8" for p in predictions)
    assert report["loaded"] == [], "TensorFlow must not be in sys.modules"
    assert report["attempts"] == [], f"the daemon tried to import {report['attempts']}"


EVALUATE_CHILD = BLOCKER + textwrap.dedent("""
    import edge_agent.cli

    statuses, reports = [], []
    for model, data in {runs!r}:
        report = io.StringIO()
        with redirect_stdout(report):
            statuses.append(edge_agent.cli.main(["evaluate", model, data, "--json"]))
        reports.append(report.getvalue())
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({{"statuses": statuses, "reports": reports, "attempts": attempts, "loaded": loaded}}))
""")


def test_evaluate_runs_without_tensorflow(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=np.round(digits.data[:50] * 255 / 16).astype(np.uint8).reshape(-1, 8, 8),
             y=digits.target[:50])
    runs = [(str(DEMO_MODEL), str(tmp_path / "digits.npz")),
            (str(DEMO / "digits_detector_int8.tflite"), str(DEMO / "digits-detect-eval"))]
    code = EVALUATE_CHILD.format(blocked=BLOCKED, runs=runs)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["statuses"] == [0, 0], result.stderr
    classified, detected = (json.loads(report) for report in child["reports"])
    assert classified["task"] == "classification" and classified["top1_accuracy"] > 0.9
    assert detected["task"] == "detection" and detected["map50"] > 0.9
    assert child["loaded"] == [] and child["attempts"] == [], child
