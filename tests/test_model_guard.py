"""Damaged models named directly in the config (not pushed): refused with a reason, never a crash of the
agent. Real `edge-agent run` processes, real models: byte-mutated copies of the demo model
(tests/model_fuzz.py), and crafted_models.crashing_model(), which passes every check a reader can make
and crashes both runtimes with SIGSEGV."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest

from support import DEMO_MODEL, DEMO_VIDEO, REPO, RUNTIMES, wait_until, write_config
from crafted_models import crashing_model, unbounded_shape_model
from model_fuzz import REASON_MARKERS, run_all, write_mutants
from edge_agent.service.model_guard import CACHE_FILE

FUZZ_COPIES = 24  # per runtime here; tests/model_fuzz.py --count 200 for the numbers in the README
FUZZ_SEED = 3
CRASHED = "the model crashed the interpreter (signal 11)"


@pytest.fixture(scope="module")
def fuzz_outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    models = write_mutants(folder, FUZZ_COPIES, FUZZ_SEED)
    return run_all(models, RUNTIMES, folder, jobs=2)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_mutated_model_crashes_the_agent(fuzz_outcomes, runtime):
    """Each copy either runs (2 predictions, exit 0) or is refused with its reason in the log."""
    outcomes = [o for o in fuzz_outcomes if o.runtime == runtime]
    assert len(outcomes) == FUZZ_COPIES
    bad = [f"{o.name}: {o.kind} {o.detail[:300]}" for o in outcomes if o.kind not in ("ran", "refused")]
    assert not bad, "\n".join(bad)
    kinds = Counter(o.kind for o in outcomes)
    assert kinds["ran"] > 0 and kinds["refused"] > 0, kinds  # the copies are damaged both harmlessly and not
    for outcome in outcomes:
        if outcome.kind == "refused":
            assert any(marker in outcome.detail for marker in REASON_MARKERS), outcome


def agent_config(tmp_path, broker, pipelines: dict, runtime: str, state_dir=None) -> str:
    tables = "".join(f"""
[pipelines.{name}]
model = "{model}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
runtime = "{runtime}"
max_fps = 20
num_threads = 1
""" for name, model in pipelines.items())
    return str(write_config(tmp_path / "agent.toml", f"""
device_id = "guarded"
state_dir = "{state_dir or tmp_path / 'state'}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = 0.5
{tables}"""))


def predictions(collector, pipeline: str) -> list[dict]:
    return collector.json(f"edge/guarded/{pipeline}/predictions")


def last_state(collector) -> dict:
    states = collector.json("edge/guarded/state")
    return states[-1] if states else {}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_model_that_crashes_the_interpreter_beside_a_good_one(tmp_path, session_broker, collect, agent_process,
                                                                 runtime):
    crash = tmp_path / "crash.tflite"
    crash.write_bytes(crashing_model())
    collector = collect(session_broker, ["edge/guarded/#"])
    agent = agent_process("run", "--config", agent_config(tmp_path, session_broker,
                                                           {"bad": crash, "good": DEMO_MODEL}, runtime))
    assert wait_until(lambda: len(predictions(collector, "good")) >= 10, 60), agent.stderr
    assert agent.process.poll() is None, "the agent is up"
    assert wait_until(lambda: "bad" in last_state(collector).get("pipelines", {}), 10)
    bad = last_state(collector)["pipelines"]["bad"]
    assert bad["status"] == "failed" and CRASHED in bad["error"], bad
    assert f"pipeline bad cannot start: {CRASHED}" in agent.stderr
    assert predictions(collector, "bad") == []
    seen = len(predictions(collector, "good"))
    assert wait_until(lambda: len(predictions(collector, "good")) >= seen + 10, 30), "the good one keeps publishing"
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


def test_a_reload_to_a_crashing_model_keeps_the_working_one(tmp_path, session_broker, collect, agent_process):
    crash = tmp_path / "crash.tflite"
    crash.write_bytes(crashing_model())
    collector = collect(session_broker, ["edge/guarded/#"])
    config = agent_config(tmp_path, session_broker, {"cam": DEMO_MODEL}, "litert")
    agent = agent_process("run", "--config", config)
    assert wait_until(lambda: len(predictions(collector, "cam")) >= 5, 60), agent.stderr
    write_config(tmp_path / "agent.toml", open(config).read().replace(str(DEMO_MODEL), str(crash)))
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: f"reload: pipeline cam keeps its model: {CRASHED}" in agent.stderr, 60), agent.stderr
    seen = len(predictions(collector, "cam"))
    assert wait_until(lambda: len(predictions(collector, "cam")) >= seen + 10, 30)
    assert {p["model"]["name"] for p in predictions(collector, "cam")[seen:]} == {"digits_int8"}
    assert agent.process.poll() is None


def trial_run(state_dir, model, runtime: str = "litert") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--model", str(model), "--source", str(DEMO_VIDEO), "--no-mqtt",
         "--max-frames", "2", "--runtime", runtime, "--state-dir", str(state_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120)


CHECKED = "passed its check in a child process"


def verified(state_dir) -> list[str]:
    return json.loads((state_dir / CACHE_FILE).read_text())["verified"]


def test_a_model_checked_before_is_not_checked_again(tmp_path):
    state = tmp_path / "state"
    first = trial_run(state, DEMO_MODEL)
    assert first.returncode == 0 and CHECKED in first.stderr, first.stderr
    assert len(verified(state)) == 1
    again = trial_run(state, DEMO_MODEL)
    assert again.returncode == 0 and CHECKED not in again.stderr, again.stderr
    assert len(again.stdout.splitlines()) == 2
    other_runtime = trial_run(state, DEMO_MODEL, "tflite-runtime")  # what passed is bytes *and* runtime
    assert other_runtime.returncode == 0 and CHECKED in other_runtime.stderr
    assert len(verified(state)) == 2


def test_changed_bytes_are_checked_again(tmp_path):
    state, model = tmp_path / "state", tmp_path / "model.tflite"
    model.write_bytes(DEMO_MODEL.read_bytes())
    assert CHECKED in trial_run(state, model).stderr
    model.write_bytes(crashing_model())  # same path, other bytes
    result = trial_run(state, model)
    assert result.returncode == 1 and CRASHED in result.stderr, result.stderr
    assert len(verified(state)) == 1, "a crash is never recorded as checked"
    assert CRASHED in trial_run(state, model).stderr, "and is checked (and refused) again"


def test_a_damaged_record_of_checked_models_only_costs_a_check(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / CACHE_FILE).write_text("{not json")
    result = trial_run(state, DEMO_MODEL)
    assert result.returncode == 0, result.stderr
    assert f"ignoring {state / CACHE_FILE}" in result.stderr and CHECKED in result.stderr
    assert len(verified(state)) == 1


def test_a_state_dir_that_cannot_be_written_only_costs_a_check_each_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / CACHE_FILE).mkdir()  # a folder where the record should be: writing it fails
    result = trial_run(state, DEMO_MODEL)
    assert result.returncode == 0, result.stderr
    assert "cannot record checked models" in result.stderr and CHECKED in result.stderr


def test_inspect_and_check_config_refuse_what_crashed_the_runtime(tmp_path):
    """unbounded_shape_model() crashed tflite-runtime 2.14 with SIGSEGV; `inspect` said nothing was wrong."""
    model = tmp_path / "damaged.tflite"
    model.write_bytes(unbounded_shape_model())
    inspect = subprocess.run([sys.executable, "-m", "edge_agent", "inspect", str(model), "--runtime", "tflite-runtime"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert inspect.returncode == 2, inspect
    assert "tensors[12].shape: a vector of 1,048,576 entries runs past the end" in inspect.stderr
    config = write_config(tmp_path / "agent.toml", f"""
device_id = "guarded"
[pipelines.cam]
model = "{model}"
source = "{DEMO_VIDEO}"
""")
    check = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(config)], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2, check
    assert "pipelines.cam.model:" in check.stderr and "is not a valid TFLite model" in check.stderr
