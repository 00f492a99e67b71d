"""Importing edge_agent changes nothing process-wide; the daemon's settings come from one explicit call."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import REPO

CHILD = textwrap.dedent("""
    import importlib, json, os, pkgutil, sys
    import cv2

    def settings():
        return {"opencv_threads": cv2.getNumThreads(), "opencv_log_level": cv2.getLogLevel(),
                "switch_interval_s": sys.getswitchinterval(),
                "ffmpeg_options": os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")}

    before = settings()
    import edge_agent
    imported = []
    for module in pkgutil.walk_packages(edge_agent.__path__, "edge_agent."):
        # host/ is the workstation side (TensorFlow); __main__ runs the CLI
        if module.name.startswith("edge_agent.host") or module.name == "edge_agent.__main__":
            continue
        importlib.import_module(module.name)
        imported.append(module.name)
    after_import = settings()
    from edge_agent.service.process_setup import setup_process
    setup_process()
    after_setup = settings()
    setup_process()
    print(json.dumps({"before": before, "after_import": after_import, "after_setup": after_setup,
                      "again": settings(), "imported": imported}))
""")


def test_importing_the_package_changes_nothing_and_setup_applies_the_daemons_settings():
    env = {"PATH": "/usr/bin:/bin"}  # no OPENCV_FFMPEG_CAPTURE_OPTIONS inherited from the test's environment
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"edge_agent.sources.opencv", "edge_agent.service.agent", "edge_agent.mqtt.publisher"} <= set(report["imported"])
    assert report["after_import"] == report["before"], "importing edge_agent must not change process-wide settings"
    after = report["after_setup"]
    assert after["opencv_threads"] == 1 and after["opencv_log_level"] == 2
    assert after["switch_interval_s"] == 0.0005
    assert after["ffmpeg_options"] == "rtsp_transport;tcp"
    assert report["again"] == after, "a second call changes nothing"


def test_a_users_ffmpeg_options_are_kept(tmp_path):
    code = ("import os; from edge_agent.service.process_setup import setup_process; setup_process(); "
            "print(os.environ['OPENCV_FFMPEG_CAPTURE_OPTIONS'])")
    env = {"PATH": "/usr/bin:/bin", "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;udp"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rtsp_transport;udp"
