"""The agent's configuration: one TOML file, parsed and validated once, into frozen dataclasses.

Every error names the key path and what was expected. Nothing here touches the network,
devices or model files; paths are only joined to the config file's folder.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")

RUNTIME_CHOICES = ("auto", "litert", "tflite-runtime")
TASK_CHOICES = ("auto", "classification", "detection", "raw")
SINK_CHOICES = ("mqtt", "serial", "stdout")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
COLOR_ORDERS = ("rgb", "bgr")
SOURCE_KINDS = ("auto", "camera", "v4l2", "stream", "gstreamer", "picamera2", "file", "folder", "image")
DELEGATE_FAILURE_CHOICES = ("cpu", "fail")
SERIAL_FORMATS = ("json", "csv")
SPOOL_POLICIES = ("drop_oldest", "drop_new")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_THRESHOLD = {"classification": 0.0, "detection": 0.5}
_URL_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class ConfigError(ValueError):
    """The configuration is invalid; `problems` lists each one with its key path."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from. `kind="auto"` recognises the kind from `uri`."""

    uri: str
    kind: str = "auto"
    loop: bool = False
    width: int = 0  # requested capture size for cameras; 0 keeps the device default
    height: int = 0
    fps: float = 0.0
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    realtime: bool = False  # a file paced by max_fps that drops frames like a camera when the model is slower


@dataclass(frozen=True)
class DelegateSpec:
    """Which delegate to use: kind "none", "edgetpu" or "external" (a .so with options)."""

    kind: str = "none"
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    device: str = ""  # Edge TPU: "", "usb", "usb:0", "pci", "pci:0"

    @property
    def label(self) -> str:
        if self.kind == "edgetpu":
            return f"edgetpu:{self.device}" if self.device else "edgetpu"
        if self.kind == "external":
            return f"external:{self.path}"
        return "none"


@dataclass(frozen=True)
class PreprocessOptions:
    resize: str = "stretch"
    color: str = "rgb"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    username: str = ""
    password_file: str = ""
    password_env: str = ""
    password_credential: str = ""  # a systemd credential name (LoadCredential=NAME:...)
    tls: TlsConfig | None = None
    keepalive_s: int = 30
    qos: int = 1
    topic_prefix: str = "edge"
    client_id: str = ""
    state_interval_s: float = 5.0


@dataclass(frozen=True)
class SpoolConfig:
    """Store-and-forward for QoS 1 predictions (under state_dir/spool)."""

    enabled: bool = True
    max_mb: float = 100.0
    policy: str = "drop_oldest"


@dataclass(frozen=True)
class SerialConfig:
    port: str
    baud: int = 115200
    format: str = "json"
    write_timeout_s: float = 1.0


@dataclass(frozen=True)
class ModelsConfig:
    """Model updates pushed over MQTT (`edge-agent push`) and the model store under state_dir/models."""

    enabled: bool = True  # accept pushes and rollback requests
    keep: int = 3  # model versions kept per pipeline (the active one and the rollback target always stay)
    max_mb: float = 50.0  # largest bundle accepted
    transfer_timeout_s: float = 120.0  # a transfer with no message for this long is abandoned
    selftest_timeout_s: float = 60.0  # the self-test child is killed after this long
    probation_s: float = 60.0  # a new model that fails within this window is rolled back


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    source: SourceSpec
    model: str
    labels: str = ""
    task: str = "auto"
    runtime: str = "auto"
    delegate: DelegateSpec = DelegateSpec()
    on_delegate_failure: str = "cpu"
    num_threads: int = 0  # 0: all cores
    max_fps: float = 0.0  # 0: as fast as the model goes
    max_frames: int = 0  # 0: no limit
    top_k: int = 3
    threshold: float | None = None  # None: the task's default
    max_detections: int = 20
    preprocess: PreprocessOptions = PreprocessOptions()
    sinks: tuple[str, ...] = ("mqtt",)
    preprocess_keys: tuple[str, ...] = ()  # keys set in [preprocess]; a bundle's manifest supplies the others


@dataclass(frozen=True)
class AgentConfig:
    pipelines: tuple[PipelineConfig, ...]
    device_id: str = field(default_factory=socket.gethostname)
    state_dir: str = str(DEFAULT_STATE_DIR)
    log_level: str = "info"
    shutdown_timeout_s: float = 5.0
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    serial: SerialConfig | None = None
    trusted_keys: tuple[str, ...] = ()  # .pub files whose signatures on model bundles are trusted
    allow_unsigned_models: bool = True  # parse_config's default: true only while trusted_keys is empty
    # pushed bundles must be signed by a trusted key unless allow_unsigned_models = true is set explicitly
    allow_unsigned_pushes: bool = False
    groups: tuple[str, ...] = ()  # announced in the retained state; `edge-agent push --group NAME` targets them
    models: ModelsConfig = ModelsConfig()


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML config file; raise ConfigError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path} does not exist: pass --config PATH or create it"], str(path)) from None
    except OSError as err:
        raise ConfigError([f"{path} cannot be read: {err.strerror}"], str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8"], str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"not valid TOML: {err}"], str(path)) from None
    return parse_config(data, base_dir=path.parent, source=str(path))


def parse_config(data: dict[str, Any], base_dir: Path = Path("."), source: str = "configuration") -> AgentConfig:
    """Validate a config dictionary (as read from TOML)."""
    errors: list[str] = []
    root = _Table(data, "", errors, base_dir)
    device_id = root.str("device_id", socket.gethostname())
    if device_id and not _topic_safe(device_id):
        errors.append(f"device_id: {device_id!r} must not contain '/', '+', '#' or spaces (it is part of MQTT topics)")
    config = AgentConfig(
        device_id=device_id,
        state_dir=root.path("state_dir", str(DEFAULT_STATE_DIR)),
        log_level=root.choice("log_level", LOG_LEVELS, "info"),
        shutdown_timeout_s=root.number("shutdown_timeout_s", 5.0, minimum=0.0),
        mqtt=_parse_mqtt(root.table("mqtt")),
        spool=_parse_spool(root.table("spool")),
        serial=_parse_serial(root.table("serial")) if "serial" in data else None,
        pipelines=_parse_pipelines(root),
        trusted_keys=(trusted_keys := _parse_trusted_keys(root)),
        allow_unsigned_models=root.bool("allow_unsigned_models", not trusted_keys),
        allow_unsigned_pushes=data.get("allow_unsigned_models") is True,
        groups=_parse_groups(root),
        models=_parse_models(root.table("models")),
    )
    root.reject_unknown()
    for pipeline in config.pipelines:
        if "serial" in pipeline.sinks and config.serial is None:
            errors.append(f"pipelines.{pipeline.name}.sinks: 'serial' needs a [serial] table with a port")
    if errors:
        raise ConfigError(errors, source)
    return config


def _parse_mqtt(table: _Table) -> MqttConfig:
    tls = table.table("tls") if "tls" in table.data else None
    config = MqttConfig(
        enabled=table.bool("enabled", True),
        host=table.str("host", "localhost"),
        port=table.int("port", 1883, minimum=1, maximum=65535),
        username=table.str("username", ""),
        password_file=table.path("password_file", ""),
        password_env=table.str("password_env", ""),
        password_credential=table.str("password_credential", ""),
        tls=(
            TlsConfig(
                ca_file=tls.path("ca_file", ""),
                cert_file=tls.path("cert_file", ""),
                key_file=tls.path("key_file", ""),
                insecure=tls.bool("insecure", False),
            )
            if tls
            else None
        ),
        keepalive_s=table.int("keepalive_s", 30, minimum=5),
        qos=table.int("qos", 1, minimum=0, maximum=2),
        topic_prefix=table.str("topic_prefix", "edge"),
        client_id=table.str("client_id", ""),
        state_interval_s=table.number("state_interval_s", 5.0, minimum=0.1),
    )
    if "/" in config.password_credential:
        table.errors.append("mqtt.password_credential: a credential name as in LoadCredential=NAME:..., not a path")
    if sum(bool(v) for v in (config.password_file, config.password_env, config.password_credential)) > 1:
        table.errors.append("mqtt: use only one of password_file, password_env, password_credential")
    if tls:
        tls.reject_unknown()
        if bool(config.tls.cert_file) != bool(config.tls.key_file):
            table.errors.append("mqtt.tls: cert_file and key_file go together (client certificate and its key)")
    if not _topic_safe(config.topic_prefix.replace("/", "")):
        table.errors.append("mqtt.topic_prefix: must not contain '+', '#' or spaces")
    table.reject_unknown()
    return config


def _parse_spool(table: _Table) -> SpoolConfig:
    config = SpoolConfig(
        enabled=table.bool("enabled", True),
        max_mb=table.number("max_mb", 100.0, minimum=0.01),
        policy=table.choice("policy", SPOOL_POLICIES, "drop_oldest"),
    )
    table.reject_unknown()
    return config


def _parse_groups(root: _Table) -> tuple[str, ...]:
    groups = root.list("groups", [], item=lambda v: isinstance(v, str) and _topic_safe(v),
                       expected="a list of group names without '/', '+', '#' or spaces")
    return tuple(dict.fromkeys(groups))


def _parse_models(table: _Table) -> ModelsConfig:
    config = ModelsConfig(
        enabled=table.bool("enabled", True),
        keep=table.int("keep", 3, minimum=1),
        max_mb=table.number("max_mb", 50.0, minimum=0.001),
        transfer_timeout_s=table.number("transfer_timeout_s", 120.0, minimum=0.1),
        selftest_timeout_s=table.number("selftest_timeout_s", 60.0, minimum=1.0),
        probation_s=table.number("probation_s", 60.0, minimum=0.0),
    )
    table.reject_unknown()
    return config


def _parse_serial(table: _Table) -> SerialConfig:
    config = SerialConfig(
        port=table.str("port", "", required=True),
        baud=table.int("baud", 115200, minimum=50),
        format=table.choice("format", SERIAL_FORMATS, "json"),
        write_timeout_s=table.number("write_timeout_s", 1.0, minimum=0.0),
    )
    table.reject_unknown()
    return config


def _parse_pipelines(root: _Table) -> tuple[PipelineConfig, ...]:
    if "pipelines" not in root.data:
        root.errors.append("pipelines: at least one [pipelines.NAME] table is required")
        return ()
    pipelines_table = root.table("pipelines")
    pipelines = []
    for name in list(pipelines_table.data):
        if not _topic_safe(name):
            root.errors.append(f"pipelines.{name}: the name must not contain '/', '+', '#' or spaces (it is part of MQTT topics)")
        pipelines.append(_parse_pipeline(name, pipelines_table.table(name)))
    if not pipelines:
        root.errors.append("pipelines: at least one [pipelines.NAME] table is required")
    return tuple(pipelines)


def _parse_pipeline(name: str, table: _Table) -> PipelineConfig:
    task = table.choice("task", TASK_CHOICES, "auto")
    config = PipelineConfig(
        name=name,
        source=_parse_source(table),
        model=table.path("model", "", required=True),
        labels=table.path("labels", ""),
        task=task,
        runtime=table.choice("runtime", RUNTIME_CHOICES, "auto"),
        delegate=_parse_delegate(table),
        on_delegate_failure=table.choice("on_delegate_failure", DELEGATE_FAILURE_CHOICES, "cpu"),
        num_threads=table.int("num_threads", 0, minimum=0),
        max_fps=table.number("max_fps", 0.0, minimum=0.0),
        max_frames=table.int("max_frames", 0, minimum=0),
        top_k=table.int("top_k", 3, minimum=1),
        threshold=table.number("threshold", None, minimum=0.0, maximum=1.0),
        max_detections=table.int("max_detections", 20, minimum=1),
        preprocess=_parse_preprocess(table.table("preprocess")),
        preprocess_keys=tuple(k for k in ("resize", "color", "mean", "std") if k in _as_dict(table.data.get("preprocess"))),
        sinks=tuple(table.list("sinks", ["mqtt"], item=lambda v: v in SINK_CHOICES, expected=f"a list of {SINK_CHOICES}")),
    )
    table.reject_unknown()
    return config


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _parse_trusted_keys(root: _Table) -> tuple[str, ...]:
    paths = root.list("trusted_keys", [], item=lambda v: isinstance(v, str) and bool(v),
                      expected="a list of public key files (NAME.pub from `edge-agent keys generate`)")
    return tuple(root._resolve(path) for path in paths)


def _parse_source(table: _Table) -> SourceSpec:
    value = table.data.get("source")
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        table.consume("source")
        return SourceSpec(uri=table.source_uri(str(value)))
    if not isinstance(value, dict):
        expected = (
            "a string (camera index, /dev/videoN, URL, file, folder, image, GStreamer pipeline, picamera2) "
            "or a table with uri = ..."
        )
        problem = f"required: {expected}" if value is None else f"expected {expected}, got {value!r}"
        table.errors.append(f"{table.key('source')}: {problem}")
        table.consume("source")
        return SourceSpec(uri="")
    source = table.table("source")
    uri = source.str("uri", "", required=True)
    spec = SourceSpec(
        uri=source.source_uri(uri),
        kind=source.choice("kind", SOURCE_KINDS, "auto"),
        loop=source.bool("loop", False),
        width=source.int("width", 0, minimum=0),
        height=source.int("height", 0, minimum=0),
        fps=source.number("fps", 0.0, minimum=0.0),
        open_timeout_s=source.number("open_timeout_s", 5.0, minimum=0.1),
        read_timeout_s=source.number("read_timeout_s", 5.0, minimum=0.1),
        realtime=source.bool("realtime", False),
    )
    source.reject_unknown()
    return spec


def _parse_delegate(table: _Table) -> DelegateSpec:
    value = table.data.get("delegate", "none")
    device = table.str("edgetpu_device", "")
    if device and device not in ("usb", "pci") and not _is_indexed_device(device):
        table.errors.append(f"{table.key('edgetpu_device')}: expected '', 'usb', 'usb:N', 'pci' or 'pci:N', got {device!r}")
    if isinstance(value, str):
        table.consume("delegate")
        if value not in ("none", "edgetpu"):
            table.errors.append(
                f"{table.key('delegate')}: expected \"none\", \"edgetpu\" or a table {{ path = \"lib.so\", options = {{...}} }}, got {value!r}"
            )
            return DelegateSpec()
        return DelegateSpec(kind=value, device=device)
    if isinstance(value, dict):
        delegate = table.table("delegate")
        path = delegate.path("path", "", required=True)
        options = delegate.data.get("options", {})
        delegate.consume("options")
        if not isinstance(options, dict):
            table.errors.append(f"{delegate.key('options')}: expected a table of option names to values")
            options = {}
        delegate.reject_unknown()
        return DelegateSpec(kind="external", path=path, options=dict(options))
    table.consume("delegate")
    table.errors.append(f"{table.key('delegate')}: expected \"none\", \"edgetpu\" or a table with a path")
    return DelegateSpec()


def _parse_preprocess(table: _Table) -> PreprocessOptions:
    def number_list(key: str, default: list[float]) -> tuple[float, ...]:
        values = table.list(key, default, item=lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                            expected="a list of 1 or 3 numbers")
        if len(values) not in (1, 3):
            table.errors.append(f"{table.key(key)}: expected 1 or 3 numbers, got {len(values)}")
        return tuple(float(v) for v in values)

    options = PreprocessOptions(
        resize=table.choice("resize", RESIZE_MODES, "stretch"),
        color=table.choice("color", COLOR_ORDERS, "rgb"),
        mean=number_list("mean", [0.0]),
        std=number_list("std", [255.0]),
    )
    if any(s == 0 for s in options.std):
        table.errors.append(f"{table.key('std')}: must not contain 0")
    table.reject_unknown()
    return options


def _topic_safe(text: str) -> bool:
    return bool(text) and not any(c in text for c in "/+# \t\n")


def _is_indexed_device(device: str) -> bool:
    kind, _, index = device.partition(":")
    return kind in ("usb", "pci") and index.isdigit()


def looks_like_path(uri: str) -> bool:
    """False for camera indexes, devices, URLs, GStreamer pipelines and picamera2."""
    text = uri.strip()
    return not (
        text.isdigit()
        or text.startswith("/")
        or text.lower().startswith(_URL_PREFIXES)
        or "!" in text
        or text.split(":")[0] in ("picamera", "picamera2")
    )


class _Table:
    """A TOML table being read: typed getters that record errors by key path, and unknown-key checks."""

    def __init__(self, data: Any, path: str, errors: list[str], base_dir: Path):
        self.path_prefix = path
        self.errors = errors
        self.base_dir = base_dir
        if not isinstance(data, dict):
            errors.append(f"{path or 'top level'}: expected a table")
            data = {}
        self.data = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path_prefix}.{name}" if self.path_prefix else name

    def consume(self, name: str) -> None:
        self._seen.add(name)

    def table(self, name: str) -> _Table:
        self._seen.add(name)
        return _Table(self.data.get(name, {}), self.key(name), self.errors, self.base_dir)

    def _get(self, name: str, default: Any, check: Callable[[Any], bool], expected: str, required: bool = False) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if required:
                self.errors.append(f"{self.key(name)}: required ({expected})")
            return default
        value = self.data[name]
        if not check(value):
            self.errors.append(f"{self.key(name)}: expected {expected}, got {value!r}")
            return default
        return value

    def str(self, name: str, default: str, required: bool = False) -> str:
        return self._get(name, default, lambda v: isinstance(v, str), "a string", required)

    def bool(self, name: str, default: bool) -> bool:
        return self._get(name, default, lambda v: isinstance(v, bool), "true or false")

    def int(self, name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
        expected = "a whole number" + _range_text(minimum, maximum)
        return self._get(
            name, default,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and _in_range(v, minimum, maximum),
            expected,
        )

    def number(self, name: str, default: Any, minimum: float | None = None, maximum: float | None = None) -> Any:
        expected = "a number" + _range_text(minimum, maximum)
        value = self._get(
            name, default,
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and _in_range(v, minimum, maximum),
            expected,
        )
        return float(value) if value is not None else None

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        return self._get(name, default, lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))

    def list(self, name: str, default: list, item: Callable[[Any], bool], expected: str) -> list:
        return self._get(name, default, lambda v: isinstance(v, list) and all(item(x) for x in v), expected)

    def path(self, name: str, default: str, required: bool = False) -> str:
        value = self.str(name, default, required)
        return self._resolve(value) if value else value

    def source_uri(self, uri: str) -> str:
        return self._resolve(uri) if uri and looks_like_path(uri) else uri

    def _resolve(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)

    def reject_unknown(self) -> None:
        for name in self.data:
            if name not in self._seen:
                self.errors.append(f"{self.key(name)}: unknown key (check its spelling in the README's configuration reference)")


def _in_range(value: float, minimum: float | None, maximum: float | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return ""
