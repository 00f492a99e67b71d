"""A changed log_level is applied by SIGHUP (it used to be accepted and ignored); `run --log-level`
keeps winning over the file."""

from __future__ import annotations

import json
import signal

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, wait_until, write_config

DEBUG_LINE = "DEBUG edge_agent.runtime.model: loaded digits_int8"  # logged at every model load


def config_text(tmp_path, log_level: str, top_k: int) -> str:
    return f"""
device_id = "levels"
state_dir = "{tmp_path}/state"
log_level = "{log_level}"
[pipelines.cam]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 10
top_k = {top_k}
sinks = ["stdout"]
"""


def reload_with(agent, config, tmp_path, log_level: str, top_k: int) -> None:
    """Reload, and wait for a prediction made after it (each step changes top_k)."""
    write_config(config, config_text(tmp_path, log_level, top_k))
    seen = agent.stdout.count("\n")
    agent.signal(signal.SIGHUP)

    def reloaded() -> bool:
        lines = agent.stdout.splitlines()[seen:]
        return any(len(json.loads(line)["classes"]) == top_k for line in lines if line.strip())

    assert wait_until(reloaded, 30), agent.stderr


def test_sighup_applies_a_new_log_level(tmp_path, agent_process):
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, "info", top_k=1))
    agent = agent_process("run", "--config", str(config))
    assert wait_until(lambda: agent.stdout.count("\n") >= 3, 30), agent.stderr
    assert DEBUG_LINE not in agent.stderr

    reload_with(agent, config, tmp_path, "debug", top_k=2)  # top_k: the model is loaded again
    assert DEBUG_LINE in agent.stderr, agent.stderr
    assert "reload: log_level is now debug" in agent.stderr

    reload_with(agent, config, tmp_path, "warning", top_k=3)
    quiet_from = len(agent.stderr)
    reload_with(agent, config, tmp_path, "warning", top_k=1)
    assert "INFO" not in agent.stderr[quiet_from:], agent.stderr[quiet_from:]
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr


def test_the_command_line_log_level_wins_over_a_reloaded_file(tmp_path, agent_process):
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, "info", top_k=1))
    agent = agent_process("run", "--config", str(config), "--log-level", "info")
    assert wait_until(lambda: agent.stdout.count("\n") >= 3, 30), agent.stderr
    reload_with(agent, config, tmp_path, "debug", top_k=2)
    assert DEBUG_LINE not in agent.stderr, agent.stderr
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
