"""The daemon imports and runs without TensorFlow: a child process where importing tensorflow,
tf_keras or keras raises ImportError imports the daemon's modules and runs the demo in-process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import DEMO_MODEL, DEMO_VIDEO, REPO

BLOCKED = ("tensorflow", "tf_keras", "keras")

CHILD = textwrap.dedent("""
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
