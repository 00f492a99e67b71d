"""`edge-agent demo` end to end: one agent, two pipelines (the digits classifier and the digits
detector) against a real mosquitto; what arrives is checked against each video's ground truth by
the test itself, and the demo's own summary lines must say the same."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from support import DEMO, DEMO_TRUTH, REPO

DETECT_TRUTH = [json.loads(line)["objects"] for line in (DEMO / "digits-detect-demo.truth.jsonl").read_text().splitlines()]


def iou(a, b) -> float:
    """IoU of [ymin, xmin, ymax, xmax] boxes (written out here, not taken from the demo it checks)."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(height, 0.0) * max(width, 0.0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_the_demo_runs_both_pipelines_and_their_answers_match_the_ground_truth(session_broker, collect):
    collector = collect(session_broker, ["edge/edge-demo/+/predictions"])
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "demo", "--broker", f"{session_broker.host}:{session_broker.port}",
         "--seconds", "60"],  # a cap: the agent ends by itself when both videos have played
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "agent exit status 0" in result.stdout

    classified = collector.json("/digits/predictions")
    assert [p["frame"] for p in classified] == list(range(1, 201))
    correct = sum(p["classes"][0]["label"] == DEMO_TRUTH[p["frame"] - 1] for p in classified)
    assert correct >= 190, f"only {correct}/200 classified right"

    detected = collector.json("/detect/predictions")
    assert [p["frame"] for p in detected] == list(range(1, 101))
    assert all(p["task"] == "detection" and p["model"]["name"] == "digits_detector_int8" for p in detected)
    found = false = 0
    for payload in detected:
        truth = list(DETECT_TRUTH[payload["frame"] - 1])
        for detection in sorted(payload["detections"], key=lambda d: -d["score"]):
            best = max(truth, key=lambda t: iou(t["box"], detection["box"]) if t["label"] == detection["label"] else -1,
                       default=None)
            if best is not None and best["label"] == detection["label"] and iou(best["box"], detection["box"]) >= 0.5:
                truth.remove(best)
                found += 1
            else:
                false += 1
    objects = sum(len(t) for t in DETECT_TRUTH)
    assert found >= 0.9 * objects, f"only {found}/{objects} digits found"
    assert false <= 0.05 * objects, f"{false} false detections"

    # the demo's own summary says what the test counted
    summary = re.search(r"digits \(classifier\): 200 predictions, (\d+) correct", result.stdout)
    assert summary and int(summary[1]) == correct, result.stdout[-1500:]
    summary = re.search(r"detect \(detector\): 100 frames, (\d+) of (\d+) digits found \([\d.]+ %\), (\d+) false", result.stdout)
    assert summary and [int(v) for v in summary.groups()] == [found, objects, false], result.stdout[-1500:]
