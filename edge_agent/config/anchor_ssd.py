"""The anchor-SSD (MediaPipe) decoder's tables, `[pipelines.NAME.anchors]` and
`[pipelines.NAME.box_decoder]`, with the presets that hold every number of MediaPipe's graphs.

The tables hold the keys as given (None: not set); resolve_anchor_ssd() lays them over a preset
and MediaPipe's defaults, and PipelineConfig.cross_check (pipeline.py) checks the result with
anchor_ssd_problems().
"""

from dataclasses import dataclass, fields
from typing import Any

from edge_agent.config.setting import setting

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
