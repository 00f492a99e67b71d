"""What the daemon imports decides its memory (the bench's peak RSS): `cryptography` (~8 MB
resident) is loaded only when a bundle is opened, never for a bare .tflite."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from crafted_models import make_bundle, make_keys
from support import DEMO_MODEL, DEMO_VIDEO, REPO, write_config

# `edge-agent run` as a real child; at exit it reports which of these packages it had imported
CHILD = textwrap.dedent("""
    import atexit, json, runpy, sys
    WATCHED = ("cryptography", "tensorflow", "serial", "sklearn", "skimage")
    atexit.register(lambda: sys.__stderr__.write("LOADED " + json.dumps(
        sorted({m.partition(".")[0] for m in sys.modules} & set(WATCHED))) + "\\n"))
    sys.argv = ["edge-agent", *sys.argv[1:]]
    runpy.run_module("edge_agent", run_name="__main__")
""")


def loaded_by_run(config) -> list[str]:
    result = subprocess.run([sys.executable, "-c", CHILD, "run", "--config", str(config), "--max-frames", "3"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("LOADED ")]
    return json.loads(line.removeprefix("LOADED "))


def config_for(tmp_path, session_broker, model, extra: str = ""):
    return write_config(tmp_path / "agent.toml", f"""
device_id = "imports"
state_dir = "{tmp_path}/state"
log_level = "warning"
{extra}
[mqtt]
host = "{session_broker.host}"
port = {session_broker.port}

[pipelines.cam]
model = "{model}"
source = {{ uri = "{DEMO_VIDEO}" }}
""")


def test_a_bare_tflite_with_mqtt_and_spool_never_imports_cryptography(tmp_path, session_broker):
    assert loaded_by_run(config_for(tmp_path, session_broker, DEMO_MODEL)) == []


def test_a_signed_bundle_does_import_it(tmp_path, session_broker):
    """The other side of the rule above, so the check can tell the difference."""
    bundle = make_bundle(tmp_path / "digits.eab", DEMO_MODEL, make_keys(tmp_path, "signer")["signer"], "1.0")
    config = config_for(tmp_path, session_broker, bundle, extra=f'trusted_keys = ["{tmp_path}/signer.pub"]')
    assert loaded_by_run(config) == ["cryptography"]


def test_import_cost_prints_rss_and_time_per_import():
    result = subprocess.run([sys.executable, "-m", "edge_agent.benchmark.import_cost", "numpy", "sqlite3"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"(python", "numpy", "sqlite3"}
    rss_mb, added_mb = float(rows["numpy"][1]), float(rows["numpy"][3])
    assert rss_mb > added_mb > 5, "numpy and its OpenBLAS take more than 5 MB in every build"
