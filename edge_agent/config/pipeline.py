"""One pipeline's table, `[pipelines.NAME]`: its keys and the sections they hold of their own:
where frames come from (`source`), the hardware delegate, preprocessing and snapshots. The
per-label keys are in labels.py, tracking, zones and publishing in interpretation.py, the
anchor-SSD decoder's tables in anchor_ssd.py.

The choice lists of these keys live here as constants, so that every module and command
(sources, runtime, bundles, the CLI) uses the same ones.
"""

import re
from dataclasses import dataclass, fields
from typing import Any

from edge_agent.config.anchor_ssd import AnchorsConfig, BoxDecoderConfig, anchor_ssd_problems
from edge_agent.config.interpretation import EventsConfig, PublishConfig, ZoneConfig
from edge_agent.config.labels import LabelFilterConfig, LabelsKey, LabelThresholdsKey
from edge_agent.config.setting import REQUIRED, Setting, derived, setting
from edge_agent.config.topics import TOPIC_UNSAFE, topic_safe

TASKS = ("classification", "detection", "pose", "segmentation", "raw")  # what a model's outputs mean
TASK_CHOICES = ("auto", *TASKS)
RUNTIME_CHOICES = ("auto", "litert", "tflite-runtime")
SINK_CHOICES = ("mqtt", "serial", "stdout")
RESIZE_MODES = ("stretch", "letterbox", "center_crop")
COLOR_ORDERS = ("rgb", "bgr")
SOURCE_KINDS = ("auto", "camera", "v4l2", "stream", "gstreamer", "picamera2", "file", "folder", "image")
DELEGATE_CHOICES = ("none", "edgetpu")  # or a table naming an external delegate's library
DELEGATE_FAILURE_CHOICES = ("cpu", "fail")
# pose: a person's score (mean keypoint score for single-pose models); segmentation: foreground probability
DEFAULT_THRESHOLD = {"classification": 0.0, "detection": 0.5, "pose": 0.3, "segmentation": 0.5}
BOX_UNITS = ("auto", "normalized", "pixels")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
PICAMERA_PATTERN = re.compile(r"^picamera2?(:(\d+))?$")


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


def _label_filters(table: Any, values: dict[str, Any]) -> tuple[LabelFilterConfig, ...]:
    if not isinstance(table.data.get("labels"), dict):
        return ()
    return table.read_named_tables("labels", LabelFilterConfig, optional=True)


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
