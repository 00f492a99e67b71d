"""Every configuration key, declared once: its type (the type hint), default, range or choices,
and a one-line description (`setting(...)`, see setting.py). parser.py reads a TOML file with
these declarations; reference.py renders the README's configuration reference from them.

Choice lists live here as constants so that every module and command uses the same ones.
"""

import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_agent.config.setting import REQUIRED, Setting, derived, setting

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")

TASKS = ("classification", "detection", "raw")  # what a model's outputs mean; one decoder each
TASK_CHOICES = ("auto", *TASKS)
RUNTIME_CHOICES = ("auto", "litert", "tflite-runtime")
SINK_CHOICES = ("mqtt", "serial", "stdout")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
COLOR_ORDERS = ("rgb", "bgr")
SOURCE_KINDS = ("auto", "camera", "v4l2", "stream", "gstreamer", "picamera2", "file", "folder", "image")
DELEGATE_CHOICES = ("none", "edgetpu")  # or a table naming an external delegate's library
DELEGATE_FAILURE_CHOICES = ("cpu", "fail")
SERIAL_FORMATS = ("json", "csv")
SPOOL_POLICIES = ("drop_oldest", "drop_new")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_THRESHOLD = {"classification": 0.0, "detection": 0.5}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
PICAMERA_PATTERN = re.compile(r"^picamera2?(:(\d+))?$")

TOPIC_UNSAFE = "must not contain '/', '+', '#' or spaces (it is part of MQTT topics)"
NO_TOPIC_CHARACTERS = "no '/', '+', '#' or spaces"


def topic_safe(text: str) -> bool:
    return bool(text) and not any(c in text for c in "/+# \t\n")


def uri_kind(uri: str) -> str | None:
    """The source kind a string names by its form alone; None for a path (file, folder, image)."""
    text = uri.strip()
    if text.isdigit():
        return "camera"
    if PICAMERA_PATTERN.match(text):
        return "picamera2"
    if text.lower().startswith(STREAM_SCHEMES):
        return "stream"
    if "!" in text:
        return "gstreamer"
    if text.startswith("/dev/"):
        return "v4l2"
    return None


def looks_like_path(uri: str) -> bool:
    """False for camera indexes, devices, URLs, GStreamer pipelines, picamera2 and absolute paths."""
    return uri_kind(uri) is None and not uri.strip().startswith("/")


def _indexed_device(device: str) -> bool:
    kind, _, index = device.partition(":")
    return kind in ("usb", "pci") and index.isdigit()


def _edgetpu_device_problem(device: str) -> str | None:
    if device in ("", "usb", "pci") or _indexed_device(device):
        return None
    return f"expected '', 'usb', 'usb:N', 'pci' or 'pci:N', got {device!r}"


def _one_or_three(values: tuple[float, ...]) -> str | None:
    return None if len(values) in (1, 3) else f"expected 1 or 3 numbers, got {len(values)}"


def _std_problem(values: tuple[float, ...]) -> str | None:
    return _one_or_three(values) or ("must not contain 0" if any(v == 0 for v in values) else None)


# ---------------------------------------------------------------------------- pipelines


@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from. `kind="auto"` recognises the kind from `uri`."""

    uri: str = setting(REQUIRED, "camera index, /dev/videoN, URL, video file, folder, image, GStreamer pipeline "
                                 "or picamera2[:N]; relative paths are relative to the config file",
                       path=looks_like_path)
    kind: str = setting("auto", "what `uri` is; auto recognises it (see below)", choices=SOURCE_KINDS)
    loop: bool = setting(False, "file, folder, image: start again at the end")
    width: int = setting(0, "camera capture width to request; 0 = the device's default", minimum=0, cap=16384)
    height: int = setting(0, "camera capture height to request; 0 = the device's default", minimum=0, cap=16384)
    fps: float = setting(0.0, "camera frame rate to request; 0 = the device's default", minimum=0.0, cap=1000.0)
    open_timeout_s: float = setting(5.0, "streams: how long opening may take (given to OpenCV's constructor)",
                                    minimum=0.1, cap=3600.0)
    read_timeout_s: float = setting(5.0, "streams: how long one frame may take before the source counts as lost",
                                    minimum=0.1, cap=3600.0)
    realtime: bool = setting(False, "file: behave like a camera (paced by max_fps, the newest frame wins)")


@dataclass(frozen=True)
class DelegateSpec:
    """Which delegate to use: kind "none", "edgetpu" or "external" (a .so with options)."""

    kind: str = "none"  # from the key's form: "none", "edgetpu", or a table (external)
    path: str = setting("", "the external delegate's shared library (required in the table form)", path=True)
    options: dict[str, Any] = setting(doc="options passed to the delegate, name = value", factory=dict,
                                      expected="a table of option names to values")
    device: str = ""  # Edge TPU: "", "usb", "usb:0", "pci", "pci:0" (the pipeline's edgetpu_device key)

    @property
    def label(self) -> str:
        if self.kind == "edgetpu":
            return f"edgetpu:{self.device}" if self.device else "edgetpu"
        if self.kind == "external":
            return f"external:{self.path}"
        return "none"


@dataclass(frozen=True)
class PreprocessOptions:
    resize: str = setting("stretch", "how a frame is fitted to the model's input", choices=RESIZE_MODES)
    color: str = setting("rgb", "channel order the model was trained on", choices=COLOR_ORDERS)
    mean: tuple[float, ...] = setting((0.0,), "float inputs get (pixel - mean) / std; 1 or 3 values",
                                      minimum=-1000.0, maximum=1000.0, expected="a list of 1 or 3 numbers",
                                      check=_one_or_three)
    std: tuple[float, ...] = setting((255.0,), "1 or 3 values, not 0; quantised inputs then get the tensor's "
                                               "scale and zero point", minimum=-1000.0, maximum=1000.0,
                                     expected="a list of 1 or 3 numbers", check=_std_problem)


PREPROCESS_KEYS = tuple(f.name for f in fields(PreprocessOptions))


class SourceKey:
    """`source`: a string (the URI) or a table with uri = ... and the other SourceSpec keys."""

    type_text = "string or table"
    allowed_text = "a source string, or a table: see `[pipelines.NAME.source]`"
    tables = {"source": SourceSpec}
    siblings: dict[str, tuple[type, Setting]] = {}
    _expected = ("a string (camera index, /dev/videoN, URL, file, folder, image, GStreamer pipeline, picamera2) "
                 "or a table with uri = ...")

    def read(self, table: Any, name: str) -> SourceSpec:
        value = table.data.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            table.consume(name)
            uri = str(value)
            return SourceSpec(uri=table.resolve(uri) if uri and looks_like_path(uri) else uri)
        if isinstance(value, dict):
            return table.sub(name).read_dataclass(SourceSpec)
        table.consume(name)
        table.error(name, f"required: {self._expected}" if value is None else f"expected {self._expected}, got {value!r}")
        return SourceSpec(uri="")


class DelegateKey:
    """`delegate`: "none", "edgetpu" (the Edge TPU named by `edgetpu_device`), or a table naming
    an external delegate's library and options."""

    type_text = "string or table"
    allowed_text = '"none", "edgetpu", or a table: see `[pipelines.NAME.delegate]`'
    tables = {"delegate": DelegateSpec}
    siblings = {"edgetpu_device": (str, Setting(
        "which Edge TPU (with delegate = \"edgetpu\"); \"\" = the first found", check=_edgetpu_device_problem,
        allowed='"", "usb", "usb:N", "pci", "pci:N"'))}

    def read(self, table: Any, name: str) -> DelegateSpec:
        device_type, device_setting = self.siblings["edgetpu_device"]
        device = table.read_value("edgetpu_device", device_setting, device_type, "")
        value = table.data.get(name, "none")
        if isinstance(value, str):
            table.consume(name)
            if value not in DELEGATE_CHOICES:
                table.error(name, f"expected \"none\", \"edgetpu\" or a table {{ path = \"lib.so\", options = {{...}} }}, "
                                  f"got {value!r}")
                return DelegateSpec()
            return DelegateSpec(kind=value, device=device)
        if isinstance(value, dict):
            delegate = table.sub(name)
            if "path" not in delegate.data:
                delegate.error("path", "required (a string)")
            return delegate.read_dataclass(DelegateSpec, kind="external")
        table.consume(name)
        table.error(name, "expected \"none\", \"edgetpu\" or a table with a path")
        return DelegateSpec()


def _preprocess_keys(table: Any, values: dict[str, Any]) -> tuple[str, ...]:
    preprocess = table.data.get("preprocess")
    return tuple(k for k in PREPROCESS_KEYS if k in preprocess) if isinstance(preprocess, dict) else ()


@dataclass(frozen=True)
class PipelineConfig:
    name: str = derived("the table's name; part of the pipeline's topics", lambda table, values: table.name,
                        check=lambda name: None if topic_safe(name) else f"the name {TOPIC_UNSAFE}")
    source: SourceSpec = setting(REQUIRED, "where frames come from", custom=SourceKey())
    model: str = setting(REQUIRED, "a .tflite file or a bundle (.eab)", path=True)
    labels: str = setting("", "labels file, one per line; default: the labels in the model or bundle", path=True)
    task: str = setting("auto", "what the outputs mean; auto: from the bundle or model, else guessed",
                        choices=TASK_CHOICES)
    runtime: str = setting("auto", "auto tries LiteRT first", choices=RUNTIME_CHOICES)
    delegate: DelegateSpec = setting(DelegateSpec(), "hardware delegate", custom=DelegateKey(), default_text='"none"')
    on_delegate_failure: str = setting("cpu", "cpu: one warning, run on the CPU; fail: the pipeline does not start",
                                       choices=DELEGATE_FAILURE_CHOICES)
    num_threads: int = setting(0, "interpreter threads; 0 = all cores", minimum=0, cap=64)
    max_fps: float = setting(0.0, "frames per second at most; 0 = as fast as the model goes",
                             minimum=0.0, cap=1000.0, smallest=0.001)
    max_frames: int = setting(0, "stop the pipeline after N frames; 0 = never", minimum=0, cap=10**12)
    top_k: int = setting(3, "classification: how many classes each prediction lists", minimum=1, cap=1000)
    threshold: float | None = setting(None, "minimum score of a class or detection", minimum=0.0, maximum=1.0,
                                      default_text="0.0 for classification, 0.5 for detection")
    max_detections: int = setting(20, "detection: boxes per prediction at most", minimum=1, cap=10000)
    preprocess: PreprocessOptions = setting(PreprocessOptions(), "what is done to each frame; keys set here win over "
                                                                 "a bundle's manifest")
    sinks: tuple[str, ...] = setting(("mqtt",), "where predictions go", choices=SINK_CHOICES,
                                     expected=f"a list of {SINK_CHOICES}")
    # keys set in [preprocess]; a bundle's manifest supplies the others
    preprocess_keys: tuple[str, ...] = derived("keys set in [preprocess]", _preprocess_keys, ())


# ---------------------------------------------------------------------------- the agent's tables


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str = setting("", "CA certificate of the broker; empty: the system's CAs", path=True)
    cert_file: str = setting("", "client certificate (goes with key_file)", path=True)
    key_file: str = setting("", "client certificate's private key", path=True)
    insecure: bool = setting(False, "true skips the broker's host-name check (testing only)")

    def cross_check(self) -> list[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            return [("", "cert_file and key_file go together (client certificate and its key)")]
        return []


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = setting(True, "false: no MQTT at all (pipelines' mqtt sink is skipped)")
    host: str = setting("localhost", "broker host name or address")
    port: int = setting(1883, "broker port", minimum=1, maximum=65535)
    username: str = setting("", "user name; empty: anonymous")
    password_file: str = setting("", "a file holding the password (never logged)", path=True)
    password_env: str = setting("", "the name of an environment variable holding the password")
    password_credential: str = setting(
        "", "a systemd credential name holding the password (LoadCredential=NAME:...)",
        check=lambda v: "a credential name as in LoadCredential=NAME:..., not a path" if "/" in v else None,
        allowed="a name, not a path")
    tls: TlsConfig | None = setting(None, "the table's presence turns TLS on", default_text="no TLS")
    keepalive_s: int = setting(30, "MQTT keepalive; the broker drops a silent client after 1.5 times this",
                               minimum=5, maximum=65535)
    qos: int = setting(1, "QoS of predictions (1: spooled and delivered at least once)", minimum=0, maximum=2)
    topic_prefix: str = setting("edge", "first part of every topic ('/' allowed)",
                                check=lambda v: None if topic_safe(v.replace("/", "")) else "must not contain '+', '#' or spaces",
                                allowed="no '+', '#' or spaces")
    client_id: str = setting("", "MQTT client id", default_text='"edge-agent-{device_id}"')
    state_interval_s: float = setting(5.0, "how often the retained state message is published", minimum=0.1, cap=3600.0)

    def cross_check(self) -> list[tuple[str, str]]:
        if sum(bool(v) for v in (self.password_file, self.password_env, self.password_credential)) > 1:
            return [("", "use only one of password_file, password_env, password_credential")]
        return []


@dataclass(frozen=True)
class SpoolConfig:
    """Store-and-forward for QoS 1 predictions (under state_dir/spool)."""

    enabled: bool = setting(True, "keep QoS 1 predictions on disk until the broker acknowledges them")
    max_mb: float = setting(100.0, "size of the spool at most", minimum=0.01, cap=100_000.0)
    policy: str = setting("drop_oldest", "when full: delete the oldest unsent messages, or refuse new ones",
                          choices=SPOOL_POLICIES)


@dataclass(frozen=True)
class SerialConfig:
    port: str = setting(REQUIRED, "a device path or a pyserial URL (socket://, rfc2217://, loop://)")
    baud: int = setting(115200, "bits per second", minimum=50, cap=12_000_000)
    format: str = setting("json", "json: the MQTT payload, one line; csv: label,score", choices=SERIAL_FORMATS)
    write_timeout_s: float = setting(1.0, "a write that takes longer is dropped and counted", minimum=0.0, cap=3600.0)


@dataclass(frozen=True)
class ModelsConfig:
    """Model updates pushed over MQTT (`edge-agent push`) and the model store under state_dir/models."""

    enabled: bool = setting(True, "accept pushes and rollbacks (false: they are answered `rejected`)")
    keep: int = setting(3, "model versions kept per pipeline (the active one and the rollback target always stay)",
                        minimum=1, cap=100)
    max_mb: float = setting(50.0, "largest bundle accepted", minimum=0.001, cap=2048.0)
    transfer_timeout_s: float = setting(120.0, "a transfer with no message for this long is abandoned",
                                        minimum=0.1, cap=86400.0)
    selftest_timeout_s: float = setting(60.0, "the self-test child is killed after this long", minimum=1.0, cap=3600.0)
    probation_s: float = setting(60.0, "a new model that fails within this window is rolled back; 0 = no probation",
                                 minimum=0.0, cap=86400.0)


def _allow_unsigned_pushes(table: Any, values: dict[str, Any]) -> bool:
    # pushed bundles must be signed by a trusted key unless allow_unsigned_models = true is set explicitly
    return table.data.get("allow_unsigned_models") is True


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = setting(doc="part of every topic", factory=socket.gethostname, default_text="the hostname",
                             check=lambda v: f"{v!r} {TOPIC_UNSAFE}" if v and not topic_safe(v) else None,
                             allowed=NO_TOPIC_CHARACTERS)
    state_dir: str = setting(str(DEFAULT_STATE_DIR), "spool, model store", path=True)
    log_level: str = setting("info", "applied again on reload (SIGHUP)", choices=LOG_LEVELS)
    shutdown_timeout_s: float = setting(5.0, "how long a stop may take to deliver what is pending", minimum=0.0,
                                        cap=3600.0)
    mqtt: MqttConfig = setting(MqttConfig(), "the broker")
    spool: SpoolConfig = setting(SpoolConfig(), "store and forward")
    serial: SerialConfig | None = setting(None, "needed when a pipeline lists the serial sink", default_text="none")
    pipelines: tuple[PipelineConfig, ...] = setting((), "one table per pipeline (at least one); NAME is part of its "
                                                        f"topics and has {NO_TOPIC_CHARACTERS}")
    trusted_keys: tuple[str, ...] = setting((), "public keys (.pub) whose signatures on model bundles are trusted",
                                            path=True, item_check=lambda v: isinstance(v, str) and bool(v),
                                            expected="a list of public key files (NAME.pub from `edge-agent keys generate`)")
    allow_unsigned_models: bool = setting(True, "load bare .tflite files and unsigned bundles",
                                          default_from=lambda values: not values["trusted_keys"],
                                          default_text="true while trusted_keys is empty, else false")
    allow_unsigned_pushes: bool = derived("allow_unsigned_models set to true explicitly", _allow_unsigned_pushes, False)
    groups: tuple[str, ...] = setting((), "announced in the retained state; `edge-agent push --group NAME` targets them",
                                      item_check=lambda v: isinstance(v, str) and topic_safe(v), unique=True,
                                      expected="a list of group names without '/', '+', '#' or spaces")
    models: ModelsConfig = setting(ModelsConfig(), "model delivery")
    # not keys: what was parsed, and the folder its relative paths are relative to (the self-test
    # child parses the same data again instead of receiving dataclasses converted by hand)
    source_toml: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    base_dir: str = field(default=".", compare=False, repr=False)

    def cross_check(self) -> list[tuple[str, str]]:
        if self.serial is not None:
            return []
        return [(f"pipelines.{p.name}.sinks", "'serial' needs a [serial] table with a port")
                for p in self.pipelines if "serial" in p.sinks]

