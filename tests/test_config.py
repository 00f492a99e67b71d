"""The TOML config: a full valid file, path resolution, errors that name their key path, and the
`check-config` / `run --config` commands on good and bad files (child processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support import DEMO, DEMO_MODEL, DEMO_VIDEO, MODELS, REPO, write_config
from edge_agent.config import (
    ConfigError,
    DelegateSpec,
    PreprocessOptions,
    SourceSpec,
    TlsConfig,
    load_config,
    parse_config,
)

FULL_CONFIG = """
device_id = "cam-01"
state_dir = "state"
log_level = "debug"
shutdown_timeout_s = 3

[mqtt]
enabled = true
host = "broker.local"
port = 8883
username = "agent"
password_file = "secrets/mqtt.pass"
keepalive_s = 20
qos = 0
topic_prefix = "factory/edge"
client_id = "agent-cam-01"
state_interval_s = 2.5

[mqtt.tls]
ca_file = "certs/ca.pem"
cert_file = "/etc/ssl/client.pem"
key_file = "certs/client.key"
insecure = false

[serial]
port = "/dev/ttyUSB0"
baud = 9600
format = "csv"
write_timeout_s = 0.5

[pipelines.door]
model = "models/detector_edgetpu.tflite"
labels = "models/coco.txt"
source = { uri = "rtsp://user:pw@10.0.0.5/stream", kind = "stream", open_timeout_s = 3, read_timeout_s = 2 }
task = "detection"
runtime = "tflite-runtime"
delegate = "edgetpu"
edgetpu_device = "usb:0"
on_delegate_failure = "fail"
num_threads = 2
max_fps = 5
threshold = 0.6
max_detections = 5
sinks = ["mqtt", "serial"]

[pipelines.door.preprocess]
resize = "letterbox"
color = "bgr"
mean = [127.5]
std = [127.5]

[pipelines.yard]
model = "/opt/models/classifier.tflite"
source = { uri = "videos/yard.mp4", loop = true, width = 640, height = 480, fps = 15 }
delegate = { path = "libs/libvx_delegate.so", options = { cache_file = "/tmp/vx.cache", level = 2 } }
top_k = 5
max_frames = 100
sinks = ["stdout"]

[pipelines.yard.preprocess]
resize = "center_crop"
mean = [123.7, 116.3, 103.5]
std = [58.4, 57.1, 57.4]
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=60)


def problems_of(data: dict, base_dir: Path = Path("/base")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=base_dir)
    return info.value.problems


def one_pipeline(**keys) -> dict:
    return {"pipelines": {"cam": {"model": "m.tflite", "source": "0", **keys}}}


# --- a valid file -----------------------------------------------------------------------------
def test_full_config_parses_every_section(tmp_path):
    config = load_config(write_config(tmp_path / "agent.toml", FULL_CONFIG))
    assert config.device_id == "cam-01" and config.log_level == "debug" and config.shutdown_timeout_s == 3.0
    assert config.state_dir == str(tmp_path / "state")

    mqtt = config.mqtt
    assert (mqtt.enabled, mqtt.host, mqtt.port, mqtt.username) == (True, "broker.local", 8883, "agent")
    assert mqtt.password_file == str(tmp_path / "secrets/mqtt.pass") and mqtt.password_env == ""
    assert (mqtt.keepalive_s, mqtt.qos, mqtt.topic_prefix, mqtt.client_id) == (20, 0, "factory/edge", "agent-cam-01")
    assert mqtt.state_interval_s == 2.5
    assert mqtt.tls == TlsConfig(ca_file=str(tmp_path / "certs/ca.pem"), cert_file="/etc/ssl/client.pem",
                                 key_file=str(tmp_path / "certs/client.key"), insecure=False)

    serial = config.serial
    assert (serial.port, serial.baud, serial.format, serial.write_timeout_s) == ("/dev/ttyUSB0", 9600, "csv", 0.5)

    door, yard = config.pipelines
    assert door.name == "door" and yard.name == "yard"
    assert door.model == str(tmp_path / "models/detector_edgetpu.tflite") and door.labels == str(tmp_path / "models/coco.txt")
    assert door.source == SourceSpec(uri="rtsp://user:pw@10.0.0.5/stream", kind="stream", open_timeout_s=3.0, read_timeout_s=2.0)
    assert (door.task, door.runtime, door.on_delegate_failure) == ("detection", "tflite-runtime", "fail")
    assert door.delegate == DelegateSpec(kind="edgetpu", device="usb:0") and door.delegate.label == "edgetpu:usb:0"
    assert (door.num_threads, door.max_fps, door.threshold, door.max_detections) == (2, 5.0, 0.6, 5)
    assert door.sinks == ("mqtt", "serial")
    assert door.preprocess == PreprocessOptions(resize="letterbox", color="bgr", mean=(127.5,), std=(127.5,))

    assert yard.model == "/opt/models/classifier.tflite"
    assert yard.source == SourceSpec(uri=str(tmp_path / "videos/yard.mp4"), loop=True, width=640, height=480, fps=15.0)
    assert yard.delegate.kind == "external" and yard.delegate.path == str(tmp_path / "libs/libvx_delegate.so")
    assert yard.delegate.options == {"cache_file": "/tmp/vx.cache", "level": 2}
    assert (yard.top_k, yard.max_frames, yard.sinks, yard.labels) == (5, 100, ("stdout",), "")
    assert yard.threshold is None and yard.task == "auto" and yard.runtime == "auto" and yard.on_delegate_failure == "cpu"
    assert yard.preprocess == PreprocessOptions(resize="center_crop", color="rgb", mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))


def test_defaults_of_a_minimal_config():
    config = parse_config({"pipelines": {"cam": {"model": "m.tflite", "source": 0}}}, base_dir=Path("/etc/edge-agent"))
    (cam,) = config.pipelines
    assert cam.source == SourceSpec(uri="0") and cam.model == "/etc/edge-agent/m.tflite"
    assert cam.sinks == ("mqtt",) and cam.delegate == DelegateSpec() and cam.preprocess == PreprocessOptions()
    assert config.serial is None and config.mqtt.tls is None and config.mqtt.port == 1883
    assert config.device_id  # the hostname


@pytest.mark.parametrize(
    "source, expected",
    [
        ("videos/in.mp4", "{base}/videos/in.mp4"),
        ("frames", "{base}/frames"),
        ("./still.jpg", "{base}/still.jpg"),
        ("/data/in.mp4", "/data/in.mp4"),
        ("0", "0"),
        ("/dev/video2", "/dev/video2"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("HTTP://cam.local/mjpg", "HTTP://cam.local/mjpg"),
        ("v4l2src ! videoconvert ! appsink", "v4l2src ! videoconvert ! appsink"),
        ("picamera2", "picamera2"),
    ],
)
def test_relative_source_paths_resolve_against_the_config_folder(tmp_path, source, expected):
    config_dir = tmp_path / "conf.d"
    config_dir.mkdir()
    path = write_config(config_dir / "agent.toml", f'[pipelines.cam]\nmodel = "m.tflite"\nsource = "{source}"\n')
    (cam,) = load_config(path).pipelines
    assert cam.source.uri == expected.format(base=config_dir)
    assert cam.model == str(config_dir / "m.tflite")


def test_home_relative_paths_expand(tmp_path):
    (cam,) = parse_config({"pipelines": {"cam": {"model": "~/models/m.tflite", "source": "0"}}}, base_dir=tmp_path).pipelines
    assert cam.model == str(Path.home() / "models/m.tflite")


# --- errors name key paths --------------------------------------------------------------------
def test_unknown_keys_are_named_with_their_path():
    data = one_pipeline(max_fsp=5, source={"uri": "0", "loops": True}, preprocess={"colour": "bgr"})
    data["mqtt"] = {"hots": "x", "tls": {"ca": "x"}}
    data["serial"] = {"port": "/dev/ttyS0", "speed": 9600}
    data["devcie_id"] = "x"
    problems = problems_of(data)
    for key in ("pipelines.cam.max_fsp", "pipelines.cam.source.loops", "pipelines.cam.preprocess.colour", "mqtt.hots",
                "mqtt.tls.ca", "serial.speed", "devcie_id"):
        assert f"{key}: unknown key" in "\n".join(problems), key
    assert len(problems) == 7, problems


@pytest.mark.parametrize(
    "data, expected",
    [
        (one_pipeline(max_fps="fast"), "pipelines.cam.max_fps: expected a number >= 0.0, got 'fast'"),
        (one_pipeline(max_fps=-1), "pipelines.cam.max_fps: expected a number >= 0.0, got -1"),
        (one_pipeline(num_threads=2.5), "pipelines.cam.num_threads: expected a whole number >= 0, got 2.5"),
        (one_pipeline(top_k=True), "pipelines.cam.top_k: expected a whole number >= 1, got True"),
        (one_pipeline(top_k=0), "pipelines.cam.top_k: expected a whole number >= 1, got 0"),
        (one_pipeline(sinks="mqtt"), "pipelines.cam.sinks: expected a list of ('mqtt', 'serial', 'stdout'), got 'mqtt'"),
        (one_pipeline(labels=3), "pipelines.cam.labels: expected a string (a labels file) or [pipelines.cam.labels.LABEL] tables, got 3"),
        (one_pipeline(model=["a.tflite"]), "pipelines.cam.model: expected a string, got ['a.tflite']"),
        (one_pipeline(source=1.5), "pipelines.cam.source: expected a string (camera index"),
        (one_pipeline(source=True), "pipelines.cam.source: expected a string (camera index"),
        (one_pipeline(source={"uri": "0", "loop": "yes"}), "pipelines.cam.source.loop: expected true or false, got 'yes'"),
        (one_pipeline(preprocess={"mean": [1, 2]}), "pipelines.cam.preprocess.mean: expected 1 or 3 numbers, got 2"),
        (one_pipeline(preprocess={"std": [0]}), "pipelines.cam.preprocess.std: must not contain 0"),
        (one_pipeline(preprocess={"mean": ["a"]}), "pipelines.cam.preprocess.mean: expected a list of 1 or 3 numbers, got ['a']"),
        (one_pipeline(preprocess="letterbox"), "pipelines.cam.preprocess: expected a table"),
        ({**one_pipeline(), "mqtt": {"port": 70000}}, "mqtt.port: expected a whole number from 1 to 65535, got 70000"),
        ({**one_pipeline(), "mqtt": {"port": "1883"}}, "mqtt.port: expected a whole number from 1 to 65535, got '1883'"),
        ({**one_pipeline(), "mqtt": {"tls": {"insecure": "no"}}}, "mqtt.tls.insecure: expected true or false, got 'no'"),
        ({**one_pipeline(), "mqtt": {"tls": {"cert_file": "c.pem"}}}, "mqtt.tls: cert_file and key_file go together"),
        ({**one_pipeline(), "mqtt": {"topic_prefix": "edge/#"}}, "mqtt.topic_prefix: must not contain"),
        ({**one_pipeline(), "mqtt": "localhost"}, "mqtt: expected a table"),
        ({**one_pipeline(), "shutdown_timeout_s": "5s"}, "shutdown_timeout_s: expected a number >= 0.0, got '5s'"),
        ({**one_pipeline(), "device_id": "cam 1"}, "device_id: 'cam 1' must not contain"),
        ({"pipelines": {"a/b": {"model": "m.tflite", "source": "0"}}}, "pipelines.a/b: the name must not contain"),
    ],
)
def test_wrong_types_and_values_name_the_key(data, expected):
    problems = problems_of(data)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    "key, value, choices",
    [
        ("runtime", "tensorflow", "'auto', 'litert', 'tflite-runtime'"),
        ("task", "tracking", "'auto', 'classification', 'detection', 'pose', 'segmentation', 'raw'"),
        ("on_delegate_failure", "ignore", "'cpu', 'fail'"),
        ("sinks", ["mqtt", "kafka"], None),
        ("delegate", "gpu", None),
    ],
)
def test_bad_choices_name_the_key_and_the_choices(key, value, choices):
    (problem,) = problems_of(one_pipeline(**{key: value}))
    assert problem.startswith(f"pipelines.cam.{key}: expected ")
    assert repr(value) in problem
    if choices:
        assert choices in problem


def test_bad_choices_in_nested_tables():
    data = one_pipeline(preprocess={"resize": "crop", "color": "rgba"}, source={"uri": "0", "kind": "webcam"})
    data["log_level"] = "verbose"
    data["serial"] = {"port": "/dev/ttyS0", "format": "xml"}
    problems = "\n".join(problems_of(data))
    for key in ("pipelines.cam.preprocess.resize", "pipelines.cam.preprocess.color", "pipelines.cam.source.kind", "log_level", "serial.format"):
        assert f"{key}: expected one of" in problems, key


def test_missing_model_and_source():
    problems = problems_of({"pipelines": {"cam": {}}})
    assert any(p.startswith("pipelines.cam.model: required") for p in problems)
    assert any(p.startswith("pipelines.cam.source: required") for p in problems)
    problems = problems_of({"pipelines": {"cam": {"model": "m.tflite", "source": {"loop": True}}}})
    assert problems == ["pipelines.cam.source.uri: required (a string)"]


@pytest.mark.parametrize("data", [{}, {"pipelines": {}}, {"device_id": "x", "mqtt": {"host": "h"}}])
def test_missing_pipelines(data):
    problems = problems_of(data)
    assert problems == ["pipelines: at least one [pipelines.NAME] table is required"]


def test_serial_sink_without_a_serial_table():
    assert problems_of(one_pipeline(sinks=["serial"])) == ["pipelines.cam.sinks: 'serial' needs a [serial] table with a port"]
    problems = problems_of({**one_pipeline(), "serial": {"baud": 9600}})
    assert problems == ["serial.port: required (a string)"]


@pytest.mark.parametrize("device", ["usb0", "usb:", "pci:x", "tpu", "USB:0"])
def test_bad_edgetpu_device(device):
    (problem,) = problems_of(one_pipeline(delegate="edgetpu", edgetpu_device=device))
    assert problem == f"pipelines.cam.edgetpu_device: expected '', 'usb', 'usb:N', 'pci' or 'pci:N', got {device!r}"


@pytest.mark.parametrize("device", ["", "usb", "usb:0", "pci", "pci:1"])
def test_good_edgetpu_devices(device):
    (cam,) = parse_config(one_pipeline(delegate="edgetpu", edgetpu_device=device)).pipelines
    assert cam.delegate == DelegateSpec(kind="edgetpu", device=device)


def test_external_delegate_table_errors():
    problems = problems_of(one_pipeline(delegate={"options": {"a": 1}, "lib": "x.so"}))
    assert "pipelines.cam.delegate.path: required (a string)" in problems
    assert "pipelines.cam.delegate.lib: unknown key (check its spelling in the README's configuration reference)" in problems
    problems = problems_of(one_pipeline(delegate={"path": "x.so", "options": "fast"}))
    assert problems == ["pipelines.cam.delegate.options: expected a table of option names to values"]


def test_every_problem_is_reported_at_once():
    data = {"mqtt": {"port": 0, "qos": 3}, "pipelines": {"a": {"source": "0"}, "b": {"model": "m", "source": "0", "top_k": 0}}}
    problems = problems_of(data)
    assert len(problems) == 4, problems
    assert [p.split(":")[0] for p in problems] == ["mqtt.port", "mqtt.qos", "pipelines.a.model", "pipelines.b.top_k"]


def test_invalid_toml_names_the_line(tmp_path):
    path = write_config(tmp_path / "agent.toml", '[pipelines.cam]\nmodel = "m.tflite"\nsource = 0\nmax_fps = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith("not valid TOML") and "line 4" in problem
    assert str(path) in str(info.value)


def test_missing_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: pass --config PATH"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('device_id = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin1)


# --- the commands -----------------------------------------------------------------------------
def demo_config(tmp_path: Path, model: Path = DEMO_MODEL, extra: str = "") -> Path:
    return write_config(tmp_path / "agent.toml", f"""
device_id = "checked"
state_dir = "state"

[pipelines.digits]
model = "{model}"
labels = "{DEMO}/labels.txt"
source = "{DEMO_VIDEO}"
sinks = ["stdout"]
{extra}
""")


def test_check_config_accepts_a_valid_file(tmp_path):
    path = demo_config(tmp_path)
    result = run_cli("check-config", path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK (1 pipeline(s), device checked)" in result.stdout
    assert "pipeline digits: model digits_int8" in result.stdout and "sinks stdout" in result.stdout


def test_check_config_lists_every_problem_without_a_traceback(tmp_path):
    path = demo_config(tmp_path, extra='max_fsp = 5\ntop_k = "three"\nruntime = "tf"\n')
    result = run_cli("check-config", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"edge-agent: {path} is invalid:" in result.stderr
    for key in ("pipelines.digits.max_fsp: unknown key", "pipelines.digits.top_k: expected", "pipelines.digits.runtime: expected one of"):
        assert f"  - {key}" in result.stderr, key


@pytest.mark.parametrize(
    "model, expected",
    [
        (Path("/nonexistent/model.tflite"), "pipelines.digits.model: model file /nonexistent/model.tflite does not exist"),
        (MODELS / "not_a_model.tflite", f"pipelines.digits.model: {MODELS / 'not_a_model.tflite'} is not a valid TFLite model"),
        (MODELS / "truncated.tflite", f"pipelines.digits.model: {MODELS / 'truncated.tflite'} is not a valid TFLite model"),
    ],
    ids=["missing", "not-tflite", "truncated"],
)
def test_check_config_reads_the_model_files(tmp_path, model, expected):
    result = run_cli("check-config", demo_config(tmp_path, model))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"  - {expected}" in result.stderr


def test_check_config_reports_a_missing_labels_file(tmp_path):
    path = write_config(tmp_path / "agent.toml", f'[pipelines.cam]\nmodel = "{DEMO_MODEL}"\nlabels = "labels.txt"\nsource = "0"\n')
    result = run_cli("check-config", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"pipelines.cam.labels: {tmp_path / 'labels.txt'} does not exist" in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[pipelines.cam]\nmodel = 'm.tflite'\nsource = '0'\nmax_fsp = 2\n", "pipelines.cam.max_fsp: unknown key"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_run_with_a_bad_config_exits_2_without_a_traceback(tmp_path, text, expected):
    path = write_config(tmp_path / "bad.toml", text)
    result = run_cli("run", "--config", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and expected in result.stderr
    assert result.stderr.startswith(f"edge-agent: {path} is invalid:")


def test_run_with_a_missing_config_exits_2(tmp_path):
    result = run_cli("run", "--config", tmp_path / "absent.toml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr



def test_only_one_password_source_and_credentials_are_names():
    data = one_pipeline()
    data["mqtt"] = {"password_file": "p", "password_env": "P", "password_credential": "../etc/x"}
    problems = problems_of(data)
    assert any("only one of password_file, password_env, password_credential" in p for p in problems)
    assert any(p.startswith("mqtt.password_credential:") and "not a path" in p for p in problems)
