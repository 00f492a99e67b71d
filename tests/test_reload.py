"""SIGHUP re-reads the config without dropping the MQTT session; a bad file is refused."""

from __future__ import annotations

import signal

from support import DEMO, DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, wait_until, write_config


def config_text(tmp_path, broker, top_k: int, model=DEMO_MODEL, extra_pipeline: str = "") -> str:
    return f"""
device_id = "reloader"
state_dir = "{tmp_path}/state"
[mqtt]
host = "{broker.host}"
port = {broker.port}
state_interval_s = 0.5
[pipelines.cam]
model = "{model}"
labels = "{DEMO}/labels.txt"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 20
top_k = {top_k}
{extra_pipeline}
"""


def test_sighup_swaps_settings_and_models_without_dropping_the_session(tmp_path, session_broker, collect, agent_process):
    collector = collect(session_broker, ["edge/reloader/#"])
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, session_broker, top_k=1))
    agent = agent_process("run", "--config", str(config))
    predictions = lambda: collector.json("/cam/predictions")  # noqa: E731
    assert wait_until(lambda: len(predictions()) >= 5, 30), agent.stderr
    assert all(len(p["classes"]) == 1 for p in predictions())

    # a model setting and a new model file: swapped between two frames
    write_config(config, config_text(tmp_path, session_broker, top_k=3, model=DEMO_FLOAT_MODEL))
    seen = len(predictions())
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: any(p["model"]["name"] == "digits_float32" for p in predictions()[seen:]), 20), agent.stderr
    swapped = [p for p in predictions() if p["model"]["name"] == "digits_float32"]
    assert all(len(p["classes"]) == 3 for p in swapped)

    # an invalid file is refused and the running pipeline goes on
    config.write_text("[pipelines.cam]\nmodel = 42\n")
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload rejected" in agent.stderr, 10), agent.stderr
    seen = len(predictions())
    assert wait_until(lambda: len(predictions()) >= seen + 5, 10)

    # a new pipeline starts beside the running one
    second = f"""
[pipelines.second]
model = "{DEMO_MODEL}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 10
"""
    write_config(config, config_text(tmp_path, session_broker, top_k=3, model=DEMO_FLOAT_MODEL, extra_pipeline=second))
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: collector.payloads("/second/predictions"), 20), agent.stderr

    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    seqs = [p["seq"] for p in predictions()]
    assert seqs == list(range(1, len(seqs) + 1)), "numbering goes on across reloads"
    assert collector.payloads("/reloader/status").count(b"online") == 1, "the MQTT session was never dropped"
    assert "MQTT broker" in agent.stderr and "lost" not in agent.stderr


def test_a_sink_not_running_since_start_is_named_in_a_warning(tmp_path, session_broker, agent_process):
    config = write_config(tmp_path / "agent.toml", config_text(tmp_path, session_broker, top_k=1))
    agent = agent_process("run", "--config", str(config))
    assert wait_until(lambda: "MQTT broker" in agent.stderr, 30), agent.stderr
    extra = f"""
[pipelines.printer]
model = "{DEMO_MODEL}"
source = {{ uri = "{DEMO_VIDEO}", loop = true }}
max_fps = 5
sinks = ["stdout"]
"""
    write_config(config, config_text(tmp_path, session_broker, top_k=1, extra_pipeline=extra))
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: "sink(s) stdout not running" in agent.stderr, 20), agent.stderr
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    assert agent.stdout == "", "a sink that was not started must not appear half-way"
