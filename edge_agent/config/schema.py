"""Every configuration key, declared once: its type (the type hint), default, range or choices,
and a one-line description (`setting(...)`, see setting.py). parser.py reads a TOML file with
these declarations; reference.py renders the README's configuration reference from them.

Choice lists live here as constants so that every module and command uses the same ones.
"""

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_agent.config.setting import REQUIRED, Setting, derived, setting

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")

TASKS = ("classification", "detection", "pose", "segmentation", "raw")  # what a model's outputs mean
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
PREDICTION_POLICIES = ("every_frame", "on_change", "interval", "off")
# pose: a person's score (mean keypoint score for single-pose models); segmentation: foreground probability
DEFAULT_THRESHOLD = {"classification": 0.0, "detection": 0.5, "pose": 0.3, "segmentation": 0.5}
BOX_UNITS = ("auto", "normalized", "pixels")
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


def parse_listen(listen: str) -> tuple[str, int] | None:
    """(host, port) of "HOST:PORT" or "[IPv6]:PORT"; None when it is not of that form."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets: [::1]:8080
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost"); names are
    not resolved here (no I/O in the config), so any other name counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_problem(listen: str) -> str | None:
    if parse_listen(listen) is None:
        return (f"expected HOST:PORT (\"127.0.0.1:8080\", \"0.0.0.0:8080\", \"[::1]:8080\") with a port from 1 to "
                f"65535, got {listen!r}")
    return None


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
    pad: int | None = setting(None, "letterbox padding pixel (what the model was trained with)", minimum=0, maximum=255,
                              default_text="114 for models with Ultralytics metadata, else 0")


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


# ---------------------------------------------------------------------------- interpretation
# What the interpret stage (edge_agent/interpret) does with a pipeline's decoded frames: tracks,
# events, counts, zones, the stable label, and how often predictions are published.


def slug(text: str) -> str:
    """`text` as Home Assistant makes entity ids of it: lower case, runs of anything but a-z and 0-9
    become one "_", none at either end ("Front Door" and "front-door" are both "front_door")."""
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


@functools.lru_cache(maxsize=4096)
def label_segment(label: str) -> str:
    """A label as one topic level: '/', '+', '#' and whitespace become '_' ("traffic light" → "traffic_light")."""
    return re.sub(r"[/+#\s]+", "_", label) or "_"


def _polygon_problem(points: Any) -> str | None:
    if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
            for p in points):
        return f"expected a list of [x, y] points, got {points!r}"
    if len(points) < 3:
        return f"a polygon needs at least 3 points, got {len(points)}"
    outside = [p for p in points if not all(0.0 <= v <= 1.0 for v in p)]
    if outside:
        return (f"coordinates are fractions of the frame (0 to 1, x from the left, y from the top); "
                f"{outside[0]!r} is outside")
    return None


class PolygonKey:
    """`polygon = [[x, y], ...]`: at least 3 points in normalised frame coordinates."""

    type_text = "list of [x, y]"
    allowed_text = "3 or more points, each coordinate 0 to 1"
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[float, float], ...]:
        table.consume(name)
        if name not in table.data:
            table.error(name, "required: a list of [x, y] points (fractions of the frame)")
            return ()
        problem = _polygon_problem(table.data[name])
        if problem:
            table.error(name, problem)
            return ()
        return tuple((float(x), float(y)) for x, y in table.data[name])


@dataclass(frozen=True)
class ZoneConfig:
    """An area of the frame; an object is in it when the bottom centre of its box is inside."""

    name: str = derived("the table's name; part of the zone's topics", lambda table, values: table.name,
                        check=lambda name: None if topic_safe(name) else f"the zone name {TOPIC_UNSAFE}")
    polygon: tuple[tuple[float, float], ...] = setting(REQUIRED, "the zone's corners, [x, y] fractions of the frame "
                                                                 "(x from the left, y from the top)", custom=PolygonKey())
    labels: tuple[str, ...] = setting((), "labels counted in this zone; empty: every tracked label", unique=True)


@dataclass(frozen=True)
class LabelFilterConfig:
    """Per-label filters of a detection pipeline (`[pipelines.NAME.labels.LABEL]`). Two scores, as Frigate
    names them: `min_score` (decode: each frame's detections) and `threshold` (interpret: an object's `new`)."""

    name: str = derived("the label, as the model names it", lambda table, values: table.name)
    min_score: float | None = setting(None, "decode: minimum score of this label's detections in each frame, "
                                            "overriding the pipeline's threshold (Frigate's min_score)",
                                      minimum=0.0, maximum=1.0, default_text="the pipeline's threshold")
    threshold: float | None = setting(None, "interpret: median score an object's first min_frames frames must reach "
                                            "before its `new` event (Frigate's threshold)",
                                      minimum=0.0, maximum=1.0, default_text="min_score, else the pipeline's threshold")
    min_area: float = setting(0.0, "boxes smaller than this share of the frame are not tracked", minimum=0.0, maximum=1.0)


class LabelsKey:
    """`labels`: a labels file (a string, as before) or per-label filter tables (`[labels.LABEL]`);
    with the tables, the file is `labels_file`."""

    type_text = "path or tables"
    allowed_text = "a labels file, or `[pipelines.NAME.labels.LABEL]` tables (then the file is `labels_file`)"
    tables = {"labels.LABEL": LabelFilterConfig}
    table_titles = {"labels.LABEL": "detection: one label's scores and filters (other labels keep the pipeline's; see "
                                    "\"Two scores per label\")"}
    siblings = {"labels_file": (str, Setting("the labels file, when `labels` holds per-label tables", path=True))}

    def read(self, table: Any, name: str) -> str:
        file_type, file_setting = self.siblings["labels_file"]
        labels_file = table.read_value("labels_file", file_setting, file_type, "")
        value = table.data.get(name)
        if isinstance(value, str):
            table.consume(name)
            if labels_file:
                table.error("labels_file", "give the labels file once: `labels = \"FILE\"` or `labels_file = \"FILE\"`")
            return table.resolve(value) if value else ""
        if value is not None and not isinstance(value, dict):
            table.consume(name)
            table.error(name, f"expected a string (a labels file) or [{table.key(name)}.LABEL] tables, got {value!r}")
        return labels_file


def _label_filters(table: Any, values: dict[str, Any]) -> tuple[LabelFilterConfig, ...]:
    if not isinstance(table.data.get("labels"), dict):
        return ()
    return table.read_named_tables("labels", LabelFilterConfig, optional=True)


@dataclass(frozen=True)
class EventsConfig:
    """Tracking, events, counts and the stable label (see the README's "Events, counts and zones")."""

    enabled: bool = setting(True, "false: predictions only (no tracking, events, counts or label topics)")
    min_frames: int = setting(3, "frames an object (or a new top label) must be seen before it counts",
                              minimum=1, cap=10_000)
    max_disappeared_s: float = setting(3.0, "an object unseen this long has left (its `end` event)",
                                       minimum=0.01, cap=86_400.0)
    update_interval_s: float = setting(30.0, "an `update` event at least this often while an object stays; 0 = only on "
                                             "zone and score changes", minimum=0.0, cap=86_400.0)
    iou_threshold: float = setting(0.3, "tracker: a box overlapping an object's last box less than this is another "
                                        "object", minimum=0.01, maximum=1.0)


@dataclass(frozen=True)
class PublishConfig:
    """How often a pipeline publishes predictions; events, counts and labels go out whatever this says."""

    predictions: str = setting("every_frame", "every_frame; on_change: when the objects or top label change; "
                                              "interval: the newest every interval_s; off", choices=PREDICTION_POLICIES)
    interval_s: float = setting(1.0, "with predictions = \"interval\"", minimum=0.001, cap=86_400.0)
    heartbeat_s: float = setting(60.0, "with on_change: a prediction at least this often; 0 = never",
                                 minimum=0.0, cap=86_400.0)


# ---------------------------------------------------------------------------- anchor-SSD heads (MediaPipe)
# [pipelines.NAME.anchors] and [box_decoder] hold the keys as given (None: not set); resolve_anchor_ssd()
# lays them over a preset and MediaPipe's defaults, and PipelineConfig.cross_check checks the result.

NMS_ALGORITHMS = ("plain", "weighted")
_FACE_BOX_DECODER = {
    "num_coords": 16, "box_coord_offset": 0, "keypoint_coord_offset": 4, "num_keypoints": 6, "num_values_per_keypoint": 2,
    "reverse_output_order": True, "sigmoid_score": True, "score_clipping_thresh": 100.0, "nms": "weighted",
    "keypoint_names": ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion"),
}
_FACE_ANCHORS = {"min_scale": 0.1484375, "max_scale": 0.75, "anchor_offset_x": 0.5, "anchor_offset_y": 0.5,
                 "aspect_ratios": (1.0,), "fixed_anchor_size": True, "reduce_boxes_in_lowest_layer": False}
# From MediaPipe's graphs (mediapipe/modules/face_detection/face_detection.pbtxt with
# face_detection_short_range.pbtxt / face_detection_full_range.pbtxt): the anchors, the box decoder, NMS
# (WEIGHTED, min_suppression_threshold 0.3), the preprocessing (keep_aspect_ratio, float range -1..1).
ANCHOR_PRESETS: dict[str, dict[str, Any]] = {
    "mediapipe-face-short-range": {
        "anchors": {**_FACE_ANCHORS, "num_layers": 4, "input_size_height": 128, "input_size_width": 128,
                    "strides": (8, 16, 16, 16), "interpolated_scale_aspect_ratio": 1.0},
        "box_decoder": {**_FACE_BOX_DECODER, "x_scale": 128.0, "y_scale": 128.0, "w_scale": 128.0, "h_scale": 128.0,
                        "min_score_thresh": 0.5},
        "iou": 0.3, "labels": ("face",),
        "preprocess": {"resize": "letterbox", "mean": (127.5,), "std": (127.5,), "pad": 0},
    },
    "mediapipe-face-full-range": {
        "anchors": {**_FACE_ANCHORS, "num_layers": 1, "input_size_height": 192, "input_size_width": 192,
                    "strides": (4,), "interpolated_scale_aspect_ratio": 0.0},
        "box_decoder": {**_FACE_BOX_DECODER, "x_scale": 192.0, "y_scale": 192.0, "w_scale": 192.0, "h_scale": 192.0,
                        "min_score_thresh": 0.6},
        "iou": 0.3, "labels": ("face",),
        "preprocess": {"resize": "letterbox", "mean": (127.5,), "std": (127.5,), "pad": 0},
    },
}
# MediaPipe's own defaults (ssd_anchors_calculator.proto, tensors_to_detections_calculator.proto)
_ANCHOR_DEFAULTS = {"anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "fixed_anchor_size": False,
                    "interpolated_scale_aspect_ratio": 1.0, "reduce_boxes_in_lowest_layer": False}
_BOX_DECODER_DEFAULTS = {"box_coord_offset": 0, "keypoint_coord_offset": 0, "num_keypoints": 0,
                         "num_values_per_keypoint": 2, "reverse_output_order": False, "sigmoid_score": False,
                         "keypoint_names": (), "nms": "plain"}
_FROM_PRESET = "from the preset"


@dataclass(frozen=True)
class AnchorsConfig:
    """MediaPipe's SsdAnchorsCalculatorOptions, field for field (None: not set, the preset's or MediaPipe's)."""

    preset: str | None = setting(None, "every number of a MediaPipe graph; keys set beside it override it",
                                 choices=tuple(ANCHOR_PRESETS), default_text="none")
    num_layers: int | None = setting(None, "feature maps the anchors are generated on", minimum=1, cap=16,
                                     default_text=_FROM_PRESET)
    min_scale: float | None = setting(None, "anchor scale of the first layer", minimum=0.0, cap=10.0, default_text=_FROM_PRESET)
    max_scale: float | None = setting(None, "anchor scale of the last layer", minimum=0.0, cap=10.0, default_text=_FROM_PRESET)
    input_size_height: int | None = setting(None, "input height the anchors are made for", minimum=1, cap=8192,
                                            default_text="the preset's, else the model's")
    input_size_width: int | None = setting(None, "input width the anchors are made for", minimum=1, cap=8192,
                                           default_text="the preset's, else the model's")
    anchor_offset_x: float | None = setting(None, "anchor centre within its cell", minimum=0.0, maximum=1.0, default_text="0.5")
    anchor_offset_y: float | None = setting(None, "anchor centre within its cell", minimum=0.0, maximum=1.0, default_text="0.5")
    strides: tuple[int, ...] | None = setting(None, "one stride per layer; equal strides share a grid",
                                              minimum=1, cap=4096,
                                              item_check=lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096,
                                              expected="a list of whole numbers from 1 to 4096", key_type="list of integers",
                                              allowed="1 to 4096", default_text=_FROM_PRESET)
    aspect_ratios: tuple[float, ...] | None = setting(None, "anchor aspect ratios per layer", minimum=0.0, cap=100.0,
                                                      expected="a list of numbers > 0", default_text=_FROM_PRESET,
                                                      check=lambda v: "must not contain 0" if 0 in v else None)
    fixed_anchor_size: bool | None = setting(None, "anchors of size 1 x 1 (BlazeFace)", default_text="false")
    interpolated_scale_aspect_ratio: float | None = setting(None, "an extra anchor per cell at this ratio; 0: none",
                                                            minimum=0.0, cap=100.0, default_text="1.0")
    reduce_boxes_in_lowest_layer: bool | None = setting(None, "3 predefined anchors in the first layer", default_text="false")


@dataclass(frozen=True)
class BoxDecoderConfig:
    """MediaPipe's TensorsToDetectionsCalculatorOptions (num_classes and num_boxes come from the model), plus
    the keypoints' names and the NMS algorithm (MediaPipe's NonMaxSuppressionCalculator)."""

    num_coords: int | None = setting(None, "values per box: 4 + num_keypoints x num_values_per_keypoint", minimum=4,
                                     cap=4096, default_text=_FROM_PRESET)
    box_coord_offset: int | None = setting(None, "where the box starts among them", minimum=0, cap=4096, default_text="0")
    keypoint_coord_offset: int | None = setting(None, "where the keypoints start", minimum=0, cap=4096, default_text="0")
    num_keypoints: int | None = setting(None, "keypoints per box", minimum=0, cap=1000, default_text="0")
    num_values_per_keypoint: int | None = setting(None, "values per keypoint (MediaPipe supports 2)", minimum=2, maximum=2,
                                                  default_text="2")
    x_scale: float | None = setting(None, "box and keypoint x is divided by it", minimum=1e-9, cap=1e6, default_text=_FROM_PRESET)
    y_scale: float | None = setting(None, "box and keypoint y is divided by it", minimum=1e-9, cap=1e6, default_text=_FROM_PRESET)
    w_scale: float | None = setting(None, "box width is divided by it", minimum=1e-9, cap=1e6, default_text=_FROM_PRESET)
    h_scale: float | None = setting(None, "box height is divided by it", minimum=1e-9, cap=1e6, default_text=_FROM_PRESET)
    reverse_output_order: bool | None = setting(None, "boxes are x, y, w, h (else y, x, h, w)", default_text="false")
    sigmoid_score: bool | None = setting(None, "scores are logits", default_text="false")
    score_clipping_thresh: float | None = setting(None, "logits are clipped to +- this first", minimum=0.0, cap=1e6,
                                                  default_text="none")
    min_score_thresh: float | None = setting(None, "minimum score, when the pipeline sets no threshold", minimum=0.0,
                                             maximum=1.0, default_text="none")
    keypoint_names: tuple[str, ...] | None = setting(None, "one name per keypoint", default_text="0, 1, ...")
    nms: str | None = setting(None, "weighted: overlapping boxes averaged by score (MediaPipe's WEIGHTED)",
                              choices=NMS_ALGORITHMS, default_text='"plain"')


def resolve_anchor_ssd(anchors: AnchorsConfig, box_decoder: BoxDecoderConfig | None) -> tuple[AnchorsConfig, BoxDecoderConfig]:
    """The keys as given, laid over their preset's values and MediaPipe's defaults (None only where nothing says)."""
    preset = ANCHOR_PRESETS.get(anchors.preset or "", {})

    def lay(given: Any, cls: type, *layers: dict[str, Any]) -> Any:
        values = {f.name: getattr(given, f.name) if given is not None else None for f in fields(cls)}
        for layer in layers:
            values.update({k: v for k, v in layer.items() if values.get(k) is None})
        return cls(**values)

    return (lay(anchors, AnchorsConfig, preset.get("anchors", {}), _ANCHOR_DEFAULTS),
            lay(box_decoder, BoxDecoderConfig, preset.get("box_decoder", {}), _BOX_DECODER_DEFAULTS))


def resolve_anchor_preset(preset: str) -> tuple[AnchorsConfig, BoxDecoderConfig]:
    """A preset's anchors and box decoder (for a model recognised without any [anchors] table)."""
    return resolve_anchor_ssd(AnchorsConfig(preset=preset), None)


def anchor_ssd_problems(anchors: AnchorsConfig, box_decoder: BoxDecoderConfig | None) -> list[tuple[str, str]]:
    """What the preset and the keys given beside it leave wrong or missing, by key (for cross_check)."""
    a, d = resolve_anchor_ssd(anchors, box_decoder)
    how = f"set it, or preset = one of {', '.join(map(repr, ANCHOR_PRESETS))}"
    problems = []
    sized = not a.fixed_anchor_size  # fixed-size anchors (w = h = 1) never use the scales
    for key, missing in (("num_layers", not a.num_layers), ("strides", not a.strides), ("aspect_ratios", not a.aspect_ratios),
                         ("min_scale", sized and not a.min_scale), ("max_scale", sized and not a.max_scale)):
        if missing:
            problems.append((f"anchors.{key}", f"required ({how})"))
    if a.strides and a.num_layers and len(a.strides) != a.num_layers:
        problems.append(("anchors.strides", f"{len(a.strides)} strides for num_layers = {a.num_layers}: give one per layer"))
    if not d.num_coords:
        problems.append(("box_decoder.num_coords", "required (4 box values + keypoints x values per keypoint)"))
    elif d.num_coords < d.box_coord_offset + 4 or d.num_coords != 4 + d.num_keypoints * d.num_values_per_keypoint:
        problems.append(("box_decoder.num_coords", f"{d.num_coords} must be 4 + num_keypoints ({d.num_keypoints}) x "
                                                   f"num_values_per_keypoint ({d.num_values_per_keypoint}), as MediaPipe requires"))
    for key in ("x_scale", "y_scale", "w_scale", "h_scale"):
        if not getattr(d, key):
            problems.append((f"box_decoder.{key}", "required (MediaPipe's graphs use the input size, e.g. 128.0)"))
    if d.keypoint_names and len(d.keypoint_names) != d.num_keypoints:
        problems.append(("box_decoder.keypoint_names", f"{len(d.keypoint_names)} names for num_keypoints = {d.num_keypoints}"))
    return problems


class LabelThresholdsKey:
    """`[pipelines.NAME.thresholds]`: label = minimum score per frame; the older spelling of
    `[pipelines.NAME.labels.LABEL] min_score`, kept so configs written for it still work."""

    type_text = "table"
    allowed_text = "label = number from 0.0 to 1.0"
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[str, float], ...]:
        table.consume(name)
        value = table.data.get(name, {})
        if not isinstance(value, dict):
            table.error(name, f"expected a table of label = minimum score, got {value!r}")
            return ()
        thresholds = []
        for label, score in value.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                table.error(f"{name}.{label}", f"expected a number from 0.0 to 1.0, got {score!r}")
            else:
                thresholds.append((label, float(score)))
        return tuple(thresholds)


@dataclass(frozen=True)
class SnapshotConfig:
    """Annotated JPEG snapshots of a pipeline (MQTT and the HTTP server; see the README's "Snapshots")."""

    height: int = setting(270, "height of a snapshot in pixels (the width follows the frame); 0 = the frame's own",
                          minimum=0, cap=4320)
    quality: int = setting(70, "JPEG quality", minimum=1, maximum=100)
    annotate: bool = setting(True, "draw boxes, labels, scores, track ids, poses, masks, zones and a timestamp")
    crop: bool = setting(False, "event snapshots: crop to the object (with a margin) instead of the whole frame")
    events: bool = setting(True, "publish the best frame of each tracked label, retained, on {label}/snapshot")
    interval_s: float = setting(0.0, "publish a snapshot on {pipeline}/snapshot this often; 0 = only on request",
                                minimum=0.0, cap=86_400.0, smallest=1.0)


def _preprocess_keys(table: Any, values: dict[str, Any]) -> tuple[str, ...]:
    preprocess = table.data.get("preprocess")
    return tuple(k for k in PREPROCESS_KEYS if k in preprocess) if isinstance(preprocess, dict) else ()


@dataclass(frozen=True)
class PipelineConfig:
    name: str = derived("the table's name; part of the pipeline's topics", lambda table, values: table.name,
                        check=lambda name: None if topic_safe(name) else f"the name {TOPIC_UNSAFE}")
    source: SourceSpec = setting(REQUIRED, "where frames come from", custom=SourceKey())
    model: str = setting(REQUIRED, "a .tflite file or a bundle (.eab)", path=True)
    labels: str = setting("", "labels file, one per line; default: the labels in the model or bundle", path=True,
                          custom=LabelsKey(), default_text='""')
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
    threshold: float | None = setting(None, "minimum score of a class, detection, pose or foreground pixel",
                                      minimum=0.0, maximum=1.0,
                                      default_text="0.0 classification, 0.5 detection and segmentation, 0.3 pose")
    max_detections: int = setting(20, "detections, poses or segments per prediction at most", minimum=1, cap=10000)
    preprocess: PreprocessOptions = setting(PreprocessOptions(), "what is done to each frame; keys set here win over "
                                                                 "a bundle's manifest")
    sinks: tuple[str, ...] = setting(("mqtt",), "where predictions go", choices=SINK_CHOICES,
                                     expected=f"a list of {SINK_CHOICES}")
    track: tuple[str, ...] = setting((), "detection: labels to track (events, counts); empty: every label", unique=True)
    label_filters: tuple[LabelFilterConfig, ...] = derived("[labels.LABEL] tables", _label_filters, ())
    events: EventsConfig = setting(EventsConfig(), "tracking, events, counts, stable label")
    zones: tuple[ZoneConfig, ...] = setting((), "detection: areas of the frame with their own counts", optional=True,
                                            item_name="ZONE")
    publish: PublishConfig = setting(PublishConfig(), "how often predictions are published")
    snapshot: SnapshotConfig = setting(SnapshotConfig(), "annotated snapshots over MQTT and HTTP")
    # keys set in [preprocess]; a bundle's manifest supplies the others
    preprocess_keys: tuple[str, ...] = derived("keys set in [preprocess]", _preprocess_keys, ())
    # decoding (see "Models and tasks" in the README)
    iou: float | None = setting(None, "NMS overlap above which the weaker box of a class is dropped", minimum=0.0,
                                maximum=1.0, default_text="0.45 (YOLO), an anchor preset's own (0.3 for faces)")
    thresholds: tuple[tuple[str, float], ...] = setting((), "deprecated alias of `[labels.LABEL] min_score` (detection: "
                                                            "a minimum score per label in each frame); a label given in "
                                                            "both is an error", custom=LabelThresholdsKey(),
                                                        default_text="none")
    box_units: str = setting("auto", "YOLO boxes in 0..1 or in input pixels; auto: decided from the model",
                             choices=BOX_UNITS)
    anchors: AnchorsConfig | None = setting(None, "anchor-SSD heads (MediaPipe): SsdAnchorsCalculatorOptions",
                                            default_text="a preset that fits the model, if any")
    box_decoder: BoxDecoderConfig | None = setting(None, "anchor-SSD heads: TensorsToDetectionsCalculatorOptions",
                                                   default_text="the preset's")

    def cross_check(self) -> list[tuple[str, str]]:
        problems = []
        for zone in self.zones:
            outside = [label for label in zone.labels if self.track and label not in self.track]
            if outside:
                problems.append((f"zones.{zone.name}.labels", f"{outside} not in track = {list(self.track)}: "
                                                              "a zone counts tracked labels only"))
        with_min_score = {f.name for f in self.label_filters if f.min_score is not None}
        for label, _ in self.thresholds:
            if label in with_min_score:
                problems.append((f"thresholds.{label}", f"the minimum score of {label!r} is also set by "
                                                        f"labels.{label}.min_score: give it once, as [pipelines.{self.name}"
                                                        f".labels.{label}] min_score (thresholds is its older spelling)"))
        if self.anchors is not None:
            problems += anchor_ssd_problems(self.anchors, self.box_decoder)
        elif self.box_decoder is not None:
            problems.append(("box_decoder", f"needs a [pipelines.{self.name}.anchors] table (or its preset)"))
        return problems

    @property
    def min_scores(self) -> tuple[tuple[str, float], ...]:
        """Each label's minimum score per frame (decode): `[labels.LABEL] min_score`, or its alias `[thresholds]`."""
        return (tuple((f.name, f.min_score) for f in self.label_filters if f.min_score is not None)
                + tuple(self.thresholds))  # cross_check refuses a label given in both

    def named_labels(self) -> dict[str, str]:
        """Every label this pipeline's keys name, by key path (checked against the model's labels at start)."""
        named = {f"track[{i}]": label for i, label in enumerate(self.track)}
        named.update({f"labels.{f.name}": f.name for f in self.label_filters})
        named.update({f"thresholds.{label}": label for label, _ in self.thresholds})
        for zone in self.zones:
            named.update({f"zones.{zone.name}.labels[{i}]": label for i, label in enumerate(zone.labels)})
        return named


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


SERVER_EXAMPLES = '"broker-2.lan:1883", "10.0.0.7:8883", "[fd00::7]:1883"'


def parse_server(text: Any) -> tuple[str, int] | None:
    """(host, port) of one `mqtt.servers` entry, "HOST:PORT" or "[IPv6]:PORT"; None when malformed."""
    if not isinstance(text, str):
        return None
    address = parse_listen(text)
    if address is None or not address[0] or any(c.isspace() for c in address[0]):
        return None
    return address


class ServersKey:
    """`mqtt.servers = ["host:port", ...]`: the brokers tried in order (failover). Each bad entry is an
    error naming its index; giving host or port as well is refused, so a board never connects to a
    broker its config only seemed to name."""

    type_text = "list of strings"
    allowed_text = '"HOST:PORT" or "[IPv6]:PORT" entries'
    tables: dict[str, type] = {}
    siblings: dict[str, tuple[type, Setting]] = {}

    def read(self, table: Any, name: str) -> tuple[tuple[str, int], ...]:
        table.consume(name)
        if name not in table.data:
            return ()
        value = table.data[name]
        if not isinstance(value, list) or not value:
            table.error(name, f"expected a non-empty list of \"host:port\" strings ({SERVER_EXAMPLES}), got {value!r}")
            return ()
        given = [key for key in ("host", "port") if key in table.data]
        if given:
            table.error(name, f"give either servers or {' and '.join(given)}, not both (host and port name one "
                              f"broker; servers lists every broker to fail over to): remove {' and '.join(given)}")
        servers: list[tuple[str, int]] = []
        for index, entry in enumerate(value):
            address = parse_server(entry)
            if address is None:
                table.error(f"{name}[{index}]", f"expected \"host:port\" ({SERVER_EXAMPLES}) with a port from 1 to "
                                                f"65535, got {entry!r}")
            elif address in servers:
                table.error(f"{name}[{index}]", f"{entry!r} repeats servers[{servers.index(address)}]: list each broker once")
            else:
                servers.append(address)
        return tuple(servers)


def format_server(address: tuple[str, int]) -> str:
    """ "host:port" (IPv6 addresses in brackets), as `mqtt.servers` spells it and the state reports it."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = setting(True, "false: no MQTT at all (pipelines' mqtt sink is skipped)")
    host: str = setting("localhost", "broker host name or address")
    port: int = setting(1883, "broker port", minimum=1, maximum=65535)
    servers: tuple[tuple[str, int], ...] = setting(
        (), "brokers tried in order, moving on to the next when one cannot be reached or is lost (failover; "
            "see the README's \"Several brokers\"); instead of host and port", custom=ServersKey(),
        default_text="[] (host:port)")
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

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every broker to try, in order: `servers`, or the one `host`/`port` names."""
        return self.servers or ((self.host, self.port),)

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
    selftest_timeout_s: float = setting(60.0, "the self-test child (of a push, or of a model not checked before) is "
                                        "killed after this long", minimum=1.0, cap=3600.0)
    probation_s: float = setting(60.0, "a new model that fails within this window is rolled back; 0 = no probation",
                                 minimum=0.0, cap=86400.0)
    # who may change the board, and how much an unauthenticated client can make it do (see "Model delivery")
    max_clock_skew_s: float = setting(300.0, "a signed request issued further than this from the board's clock is "
                                             "refused; 0 = no clock check (replays are then stopped only by the "
                                             "4096 request ids remembered)", minimum=0.0, cap=31_536_000.0)
    max_begins_per_minute: int = setting(12, "push begins taken per minute; more are refused (a slot squatter or "
                                             "a flood)", minimum=1, cap=10_000)
    max_discovery_answers_per_minute: int = setting(12, "fleet discovery requests (`fleet list`, `push --group`) "
                                                        "answered per minute; more get no answer (a flood)",
                                                    minimum=1, cap=10_000)
    device_key: str = setting("", "the board's device key (keys generate-device) for encrypted bundles: a file, or "
                                  "credential:NAME for a systemd credential; empty = encrypted bundles are refused",
                              path=lambda v: not v.startswith("credential:"))


def _discovery_prefix_problem(prefix: str) -> str | None:
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        return "expected a topic prefix such as \"homeassistant\" (no empty levels, no leading or trailing '/')"
    if any(c in prefix for c in "+# \t\n\0"):
        return f"{prefix!r} must not contain MQTT wildcards ('+', '#') or spaces: it is where discovery messages are published"
    return None


@dataclass(frozen=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery: the agent and its pipelines appear as one device with entities."""

    enabled: bool = setting(False, "publish discovery messages (retained) so entities appear in Home Assistant")
    discovery_prefix: str = setting("homeassistant", "Home Assistant's discovery prefix (its MQTT settings)",
                                    check=_discovery_prefix_problem, allowed="a topic prefix without '+', '#' or spaces")
    support_url: str = setting("", "the origin's support URL Home Assistant shows (where your users get help); "
                                   "empty: none", check=lambda v: None if not v or v.startswith(("http://", "https://"))
                               else f"expected an http:// or https:// URL, got {v!r}", allowed="an http(s) URL")


@dataclass(frozen=True)
class HttpConfig:
    """The local HTTP server: status page, live views, snapshots, /api/state, /healthz, /metrics."""

    enabled: bool = setting(False, "serve the status page and the endpoints below (see the README's \"HTTP server\")")
    listen: str = setting("127.0.0.1:8080", "HOST:PORT; beyond loopback (0.0.0.0, a LAN address) it needs token_file "
                                            "or TLS with client certificates", check=_listen_problem, allowed="HOST:PORT")
    token_file: str = setting("", "a file holding the access token (Authorization: Bearer TOKEN, or ?token=TOKEN); "
                                  "empty: no token", path=True)
    tls_cert_file: str = setting("", "serve HTTPS with this certificate (goes with tls_key_file)", path=True)
    tls_key_file: str = setting("", "the certificate's private key", path=True)
    client_ca_file: str = setting("", "with TLS: require client certificates signed by this CA", path=True)
    live_fps: float = setting(5.0, "live views: frames per second at most", minimum=0.1, cap=60.0)
    live_height: int = setting(360, "live views: height in pixels; 0 = the frame's own", minimum=0, cap=4320)
    max_clients: int = setting(16, "connections served at once; more are answered 503 and closed", minimum=1, cap=1024)
    request_timeout_s: float = setting(10.0, "a client that sends its request this slowly, or stops reading, is "
                                             "disconnected", minimum=0.1, cap=3600.0)

    def cross_check(self) -> list[tuple[str, str]]:
        problems = []
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append(("", "tls_cert_file and tls_key_file go together (the certificate and its key)"))
        if self.client_ca_file and not self.tls_cert_file:
            problems.append(("client_ca_file", "client certificates need TLS: set tls_cert_file and tls_key_file too"))
        address = parse_listen(self.listen)
        if self.enabled and address is not None and not is_loopback(address[0]) \
                and not self.token_file and not self.client_ca_file:
            problems.append(("listen", f"{self.listen} can be reached from other machines, and the server shows the "
                                       "camera: set token_file (a long random token) or TLS with client certificates "
                                       "(tls_cert_file, tls_key_file, client_ca_file), or listen on 127.0.0.1"))
        return problems


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
    groups: tuple[str, ...] = setting((), "announced in the retained state and in discovery answers; `edge-agent push "
                                          "--group NAME` targets them",
                                      item_check=lambda v: isinstance(v, str) and topic_safe(v), unique=True,
                                      expected="a list of group names without '/', '+', '#' or spaces")
    models: ModelsConfig = setting(ModelsConfig(), "model delivery")
    homeassistant: HomeAssistantConfig = setting(HomeAssistantConfig(), "Home Assistant discovery")
    http: HttpConfig = setting(HttpConfig(), "the local HTTP server (status page, live view, metrics)")
    # not keys: what was parsed, and the folder its relative paths are relative to (the self-test
    # child parses the same data again instead of receiving dataclasses converted by hand)
    source_toml: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    base_dir: str = field(default=".", compare=False, repr=False)

    def cross_check(self) -> list[tuple[str, str]]:
        problems = [] if self.serial is not None else [
            (f"pipelines.{p.name}.sinks", "'serial' needs a [serial] table with a port") for p in self.pipelines if "serial" in p.sinks]
        if self.homeassistant.enabled:
            problems += _slug_collisions("pipelines", [p.name for p in self.pipelines])
            for p in self.pipelines:
                problems += _slug_collisions(f"pipelines.{p.name}.zones", [z.name for z in p.zones])
                problems += _slug_collisions(f"pipelines.{p.name}.track", list(p.track))
        return problems


def _slug_collisions(path: str, names: list[str]) -> list[tuple[str, str]]:
    """Names that would give Home Assistant the same entity id (and so lose one entity)."""
    by_slug: dict[str, list[str]] = {}
    for name in names:
        by_slug.setdefault(slug(name), []).append(name)
    problems = []
    for key, same in by_slug.items():
        if not key:
            problems.append((path, f"{same[0]!r} has no letter or digit for a Home Assistant entity id: rename it"))
        elif len(same) > 1:
            problems.append((path, f"{' and '.join(repr(n) for n in same)} give the same Home Assistant entity id "
                                   f"({key!r}): rename one"))
    return problems

