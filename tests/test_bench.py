"""`edge-agent bench` end to end on the tiny demo model: the numbers it prints exist and are sane.
(How fast they are is for the README, not for a test.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from support import DEMO_MODEL, DEMO_VIDEO, REPO
from edge_agent.benchmark import CONFIG_TEMPLATE, INTERPRET_OFF
from edge_agent.benchmark.agent_run import AgentChild
from edge_agent.benchmark.rounds import Round, median_round, order_of, plan_rounds, summarise

REQUIRED = {"interpreter_fps", "pipeline_fps", "ratio", "plain_loop_fps", "latency_ms", "peak_rss_mb",
            "startup_s", "threads", "runtime", "model", "cpu_percent", "missing", "decode_ms"}


@pytest.mark.slow
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
    # interleaved rounds: the ratio is the median round's, inside the rounds' range
    assert report["rounds"] == 5 and len(report["per_round"]) == 5 and report["round_s"] == 0.2
    assert report["ratio_min"] <= report["ratio"] <= report["ratio_max"]
    assert report["ratio"] in [r["ratio"] for r in report["per_round"]]
    assert all(r["interpreter_fps"] > 0 and r["pipeline_fps"] > 0 and r["plain_loop_fps"] > 0 for r in report["per_round"])
    assert report["speedup_min"] <= report["speedup_over_plain_loop"] <= report["speedup_max"]


@pytest.mark.slow
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


def test_the_agent_child_stays_up_and_is_frozen_between_its_windows(tmp_path, session_broker):
    """One agent process for every round: nothing arrives while it is frozen, it goes on after."""
    text = CONFIG_TEMPLATE.format(device="frozen", workdir=tmp_path, host=session_broker.host, port=session_broker.port,
                                  model=DEMO_MODEL, runtime="litert", threads=1, source=DEMO_VIDEO, max_fps=200,
                                  realtime="false", interpret=INTERPRET_OFF, http="")
    agent = AgentChild(text, tmp_path, session_broker.host, session_broker.port, "frozen")
    with agent:
        pid = agent._process.pid
        agent.freeze()
        frozen_window = _arrivals_during(agent, 0.6)
        first = agent.measure(0.5)
        second = agent.measure(0.5)
        assert agent._process.pid == pid and agent._process.poll() is None
    result = agent.result()
    assert frozen_window == 0, "a frozen agent published"
    assert first.count > 20 and second.count > 20, (first, second)  # max_fps 200: ~100 per window
    assert [w.count for w in result.windows] == [first.count, second.count]
    assert result.missing == 0 and result.startup_s > 0 and result.peak_rss_mb > 20


def _arrivals_during(agent: AgentChild, seconds: float) -> int:
    time.sleep(0.3)  # what was in flight at the freeze
    before = len(agent._arrivals)
    time.sleep(seconds)
    return len(agent._arrivals) - before


def test_rounds_report_the_median_round_and_flip_their_order():
    rounds = [Round(100.0, 90.0, 60.0), Round(100.0, 70.0, 60.0), Round(50.0, 40.0, 30.0)]
    assert median_round(rounds) == Round(50.0, 40.0, 30.0)  # ratios 0.9, 0.7, 0.8
    summary = summarise(rounds)
    assert (summary["ratio"], summary["ratio_min"], summary["ratio_max"]) == (0.8, 0.7, 0.9)
    assert summary["pipeline_fps"] / summary["interpreter_fps"] == summary["ratio"]
    assert summary["plain_loop_fps"] == 60.0 and summary["rounds"] == 3
    assert order_of(0) == ("interpreter", "agent", "plain") and order_of(1) == ("plain", "agent", "interpreter")
    assert plan_rounds(6.0, 5) == (5, 1.2)
    assert plan_rounds(120.0, 5) == (12, 10.0), "a frozen agent must not outlast its MQTT keepalive"


def test_bench_names_a_bad_round_count():
    result = subprocess.run([sys.executable, "-m", "edge_agent", "bench", "--rounds", "0", "--seconds", "0.5"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert "--rounds must be at least 1, got 0" in result.stderr and "Traceback" not in result.stderr
