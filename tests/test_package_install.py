"""What a new user gets from `pip install edge-agent`: the wheel built from this tree, installed
(not editable) into a fresh venv without the network, runs `edge-agent demo` and `edge-agent
bench` from a folder outside the checkout, with the demo files the wheel carries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, free_port, local_wheels, run_offline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the edge-agent wheel and its dependencies from the local wheels."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"  # a clean copy: pip writes build/ and *.egg-info where it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "edge_agent", source / "edge_agent", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = local_wheels("native")
    run_offline(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index", "--find-links", wheels,
                "--wheel-dir", work / "dist", source)
    (wheel,) = (work / "dist").glob("edge_agent-*-py3-none-any.whl")
    venv = work / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    run_offline(venv / "bin/python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, wheel)
    return venv


def test_the_package_comes_from_the_venv_not_the_checkout(installed, tmp_path):
    probe = "import edge_agent, edge_agent.data as d; print(edge_agent.__file__); print(d.demo_dir())"
    lines = subprocess.run([installed / "bin/python", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert all(line.startswith(str(installed / "lib")) for line in lines), lines
    files = sorted(p.name for p in Path(lines[1]).iterdir())
    assert files == sorted(p.name for p in (REPO / "edge_agent/data/demo").iterdir())


def test_demo_runs_from_a_folder_outside_the_checkout(installed, tmp_path):
    # a free port where nothing listens: the demo starts its own mosquitto there, as for a new user
    result = subprocess.run([installed / "bin/edge-agent", "demo", "--seconds", "3", "--broker", f"127.0.0.1:{free_port()}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo files not found" not in result.stdout + result.stderr
    predictions = re.findall(r"^digits seq +\d+ +digit +(\d) +score", result.stdout, re.M)
    summary = re.search(r"digits \(classifier\): (\d+) predictions, (\d+) correct", result.stdout)
    assert summary and int(summary[1]) == len(predictions) >= 10, result.stdout
    assert int(summary[2]) >= 0.9 * int(summary[1]), result.stdout
    found = re.search(r"detect \(detector\): (\d+) frames, (\d+) of (\d+) digits found", result.stdout)
    assert found and int(found[1]) >= 5 and int(found[2]) >= 0.8 * int(found[3]), result.stdout


def test_bench_without_model_uses_the_packaged_demo_model(installed, tmp_path):
    result = subprocess.run([installed / "bin/edge-agent", "bench", "--seconds", "0.5", "--threads", "1", "--json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"].startswith(str(installed / "lib")) and report["model"].endswith("digits_int8.tflite")
    assert report["missing"] == 0 and report["pipeline_fps"] > 0
