"""`edge-agent bench` end to end on the tiny demo model: the numbers it prints exist and are sane.
(How fast they are is for the README, not for a test.)"""

from __future__ import annotations

import json
import subprocess
import sys

from support import DEMO_MODEL, DEMO_VIDEO, REPO

REQUIRED = {"interpreter_fps", "pipeline_fps", "ratio", "plain_loop_fps", "latency_ms", "peak_rss_mb",
            "startup_s", "threads", "runtime", "model", "cpu_percent", "missing", "decode_ms"}


def test_bench_json_reports_every_measurement_with_nothing_missing():
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "bench", "--model", str(DEMO_MODEL), "--source", str(DEMO_VIDEO),
         "--seconds", "1", "--threads", "1", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert REQUIRED <= set(report)
    assert report["missing"] == 0, "every QoS 1 prediction must reach the subscriber"
    assert report["interpreter_fps"] > 0 and report["pipeline_fps"] > 0 and report["plain_loop_fps"] > 0
    assert abs(report["ratio"] - report["pipeline_fps"] / report["interpreter_fps"]) < 0.01
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert 20 < report["peak_rss_mb"] < 1000 and 0 < report["startup_s"] < 60
    assert report["threads"] == 1 and report["runtime"] in ("litert", "tflite-runtime")
    assert 0 < report["decode_ms"] < 1000


def test_bench_table_for_people(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "bench", "--model", str(DEMO_MODEL), "--source", str(DEMO_VIDEO),
         "--seconds", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for row in ("interpreter alone", "decode", "agent end to end", "plain one-thread loop", "latency at 30 fps", "peak RSS",
                "start to first prediction"):
        assert row in result.stdout


def test_bench_names_a_missing_model():
    result = subprocess.run([sys.executable, "-m", "edge_agent", "bench", "--model", "/nonexistent.tflite", "--seconds", "0.5"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "/nonexistent.tflite" in result.stderr and "Traceback" not in result.stderr
