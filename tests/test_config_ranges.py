"""Every number in the configuration has a sane range: values that used to pass check-config and
fail at run time (a traceback, a dead MQTT thread, a machine out of threads) are refused up front,
with the key path and the allowed range; NaN and infinities are refused everywhere."""

from __future__ import annotations

import math
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass

import pytest

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, REPO, write_config
from edge_agent.config import AgentConfig, ConfigError, SourceSpec, parse_config
from edge_agent.config.parser import optional_type, type_hints
from edge_agent.config.setting import setting_of


def check_config(tmp_path, top: str = "", pipeline: str = "", tables: str = "") -> subprocess.CompletedProcess:
    path = write_config(tmp_path / "agent.toml", f"""
device_id = "ranged"
state_dir = "state"
{top}
[pipelines.cam]
model = "{DEMO_MODEL}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
sinks = ["stdout"]
{pipeline}
{tables}
""")
    return subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize(
    "place, text, expected",
    [
        ("tables", "[spool]\nmax_mb = inf", "spool.max_mb: expected a number from 0.01 to 100000.0, got inf"),
        ("tables", "[models]\nmax_mb = inf", "models.max_mb: expected a number from 0.001 to 2048.0, got inf"),
        ("tables", "[mqtt]\nkeepalive_s = 100000000", "mqtt.keepalive_s: expected a whole number from 5 to 65535, got 100000000"),
        ("pipeline", "max_fps = 1e-300", "pipelines.cam.max_fps: expected 0 or a number from 0.001 to 1000.0, got 1e-300"),
        ("pipeline", "num_threads = 1000000", "pipelines.cam.num_threads: expected a whole number from 0 to 64, got 1000000"),
        ("pipeline", f"num_threads = {2**63 - 1}", f"pipelines.cam.num_threads: expected a whole number from 0 to 64, got {2**63 - 1}"),
        ("pipeline", "max_fps = nan", "pipelines.cam.max_fps: expected 0 or a number from 0.001 to 1000.0, got nan"),
        ("top", "shutdown_timeout_s = -inf", "shutdown_timeout_s: expected a number from 0.0 to 3600.0, got -inf"),
        ("pipeline", "threshold = nan", "pipelines.cam.threshold: expected a number from 0.0 to 1.0, got nan"),
        ("tables", "[pipelines.cam.preprocess]\nstd = [inf]",
         "pipelines.cam.preprocess.std: expected a list of 1 or 3 numbers from -1000.0 to 1000.0, got [inf]"),
    ],
)
def test_check_config_refuses_values_that_fail_at_run_time(tmp_path, place, text, expected):
    result = check_config(tmp_path, **{place: text})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"  - {expected}" in result.stderr, result.stderr


def test_check_config_accepts_the_edges_of_each_range(tmp_path):
    result = check_config(tmp_path, pipeline="max_fps = 0.001\nnum_threads = 64",
                          tables="[mqtt]\nkeepalive_s = 65535\n[spool]\nmax_mb = 100000\n[models]\nmax_mb = 2048")
    assert result.returncode == 0, result.stderr


def numeric_keys(cls=AgentConfig, prefix=""):
    """(key path, TOML data setting it, Setting, type) for every numeric key of the schema."""
    for f in fields(cls):
        s = setting_of(f)
        if s is None or not s.is_key or s.custom is not None:
            continue
        hint = type_hints(cls)[f.name]
        inner = optional_type(hint) or hint
        if typing.get_origin(inner) is tuple:
            inner = typing.get_args(inner)[0]
        path = f"{prefix}{f.name}"
        if is_dataclass(inner):
            yield from numeric_keys(inner, path + ".NAME." if typing.get_origin(hint) is tuple else path + ".")
        elif inner in (int, float):
            yield path, s, inner, typing.get_origin(hint) is tuple
    if cls is AgentConfig:  # the source table is read by a custom key (it may also be a string)
        yield from numeric_keys(SourceSpec, "pipelines.NAME.source.")


ALL_NUMERIC_KEYS = list(numeric_keys())


def test_the_schema_has_numeric_keys_to_check():
    names = {path for path, *_ in ALL_NUMERIC_KEYS}
    assert {"pipelines.NAME.max_fps", "spool.max_mb", "mqtt.keepalive_s", "pipelines.NAME.source.open_timeout_s",
            "pipelines.NAME.preprocess.std"} <= names


@pytest.mark.parametrize("path, s, kind, is_list", ALL_NUMERIC_KEYS, ids=[k[0] for k in ALL_NUMERIC_KEYS])
def test_every_number_has_an_upper_and_a_lower_bound(path, s, kind, is_list):
    assert s.minimum is not None, f"{path} needs a minimum"
    assert s.maximum is not None or s.cap is not None, f"{path} needs a maximum or a cap"


def data_setting(path: str, value) -> dict:
    data = {"pipelines": {"cam": {"model": "m.tflite", "source": {"uri": "0"}}}}
    parts = path.replace("NAME", "cam").split(".")
    table = data
    for part in parts[:-1]:
        table = table.setdefault(part, {})
    table[parts[-1]] = value
    if parts[0] == "serial":
        table.setdefault("port", "/dev/ttyS0")
    if len(parts) > 2 and parts[2] in ("anchors", "box_decoder"):  # these tables need a preset or their required keys
        data["pipelines"]["cam"].setdefault("anchors", {}).setdefault("preset", "mediapipe-face-short-range")
    return data


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("path, s, kind, is_list", ALL_NUMERIC_KEYS, ids=[k[0] for k in ALL_NUMERIC_KEYS])
def test_nan_and_infinities_are_refused_everywhere(path, s, kind, is_list, value):
    with pytest.raises(ConfigError) as info:
        parse_config(data_setting(path, [value] if is_list else value))
    key = path.replace("NAME", "cam")
    (problem,) = info.value.problems
    assert problem.startswith(f"{key}: expected "), problem
