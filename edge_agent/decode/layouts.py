"""Which decoder fits a model: each known output layout, matched against the model's description.

A match is decided once, when the model loads, and carries the reason in words (`why`), which
`edge-agent inspect` shows, so `task = "auto"` is never a mystery. A task that no layout of its
family fits is an error naming the output shapes and the layouts that family knows; `raw` always fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edge_agent.config import ANCHOR_PRESETS, resolve_anchor_preset
from edge_agent.decode.anchors import check_anchor_count, generate_anchors
from edge_agent.decode.common import DecodeError
from edge_agent.decode.description import ModelDescription, TensorInfo
from edge_agent.decode.options import DecodeOptions
from edge_agent.decode.yolo import YoloLayout
from edge_agent.errors import EdgeAgentError

DETECTION_POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# Anchor-free heads put one box per cell of each stride's grid: 8400 at 640 for strides 8/16/32.
YOLO_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))
YOLO_V5_ANCHORS_PER_CELL = 3
END2END_VALUES = 6  # x1, y1, x2, y2, score, class
MOVENET_MULTI_VALUES = 56

# (name, task, what the outputs look like): the vocabulary of errors and of `inspect`.
KNOWN_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("classification", "classification", "one output [1, N] of class scores"),
    ("ssd-postprocess", "detection", "4 outputs of TFLite_Detection_PostProcess: boxes [1, K, 4], classes [1, K], scores [1, K], count [1]"),
    ("yolo-v8", "detection", "one output [1, 4+nc, N] or [1, N, 4+nc]: cx, cy, w, h, nc class scores (YOLOv8/v11)"),
    ("yolo-v5", "detection", "one output [1, N, 5+nc]: cx, cy, w, h, objectness, nc class scores (YOLOv5)"),
    ("yolo-end2end", "detection", "one output [1, K, 6]: x1, y1, x2, y2, score, class (NMS inside the model)"),
    ("yolo-seg", "detection", "2 outputs: [1, 4+nc+nm, N] (or [1, N, 4+nc+nm]; end-to-end [1, K, 6+nm]) box rows ending in "
     "nm mask coefficients, and mask prototypes [1, H/4, W/4, nm] (or [1, nm, H/4, W/4]) (YOLOv8/v11-seg)"),
    ("anchor-ssd", "detection", "2 outputs: box regressors [1, N, num_coords] and scores [1, N, classes], decoded against "
     "anchors from [anchors] or a preset (MediaPipe BlazeFace, palm detection)"),
    ("movenet-single", "pose", "one output [1, 1, 17, 3]: y, x, score per COCO keypoint (MoveNet Lightning/Thunder)"),
    ("movenet-multi", "pose", "one output [1, 6, 56]: per person 17 x (y, x, score), then ymin, xmin, ymax, xmax, score"),
    ("yolo-pose", "pose", "one output [1, 4+nc+17x3, N] or [1, N, 4+nc+17x3]: box, class scores, 17 x (x, y, visibility) "
     "(YOLOv8/v11-pose; other keypoint counts from the metadata's kpt_shape)"),
    ("segmentation-scores", "segmentation", "one output [1, H, W, C] (or [1, C, H, W]) of class scores or logits"),
    ("segmentation-ids", "segmentation", "one output [1, H, W] of integer class ids"),
    ("segmentation-foreground", "segmentation", "one output [1, H, W, 1] of foreground probability (MediaPipe selfie)"),
    ("raw", "raw", "any outputs, summarised"),
)


@dataclass(frozen=True)
class LayoutMatch:
    """The layout chosen for a model, why, and what its decoder needs to know."""

    layout: str
    task: str
    why: str
    params: dict[str, Any] = field(default_factory=dict)


class _NoMatch(EdgeAgentError):
    """A family's reason for not fitting (collected for the explanation; never leaves this module)."""


def layouts_for(task: str) -> list[str]:
    return [f"{name}: {shape}" for name, layout_task, shape in KNOWN_LAYOUTS if layout_task == task]


def match_layout(description: ModelDescription, task: str, options: DecodeOptions = DecodeOptions(),
                 labels_count: int | None = None) -> LayoutMatch:
    """The layout for `task` ("auto": the first family that fits); DecodeError when an explicit task fits none."""
    if task == "raw":
        return LayoutMatch("raw", "raw", "task = \"raw\": every output summarised")
    families = [(name, family_task, matcher) for name, family_task, matcher in _FAMILIES if task in ("auto", family_task)]
    reasons = []
    for name, family_task, matcher in families:
        try:
            return matcher(description, options, labels_count, task != "auto")
        except _NoMatch as err:
            reasons.append(f"{name}: {err}")
    shapes = description.output_shapes
    if task == "auto":
        return LayoutMatch("raw", "raw", f"no known layout fits the outputs {shapes}; they are summarised as raw",
                           {"unplaced": shapes, "rejected": reasons})
    known = "; ".join(layouts_for(task))
    raise DecodeError(
        f"task {task!r} cannot decode {description.name}: its outputs are {shapes} "
        f"({'; '.join(reasons)}). The {task} layouts the agent knows: {known}. "
        'Use task = "raw" to publish the outputs as they are, or the task that fits them'
    )


def explain_layout(description: ModelDescription, task: str = "auto", options: DecodeOptions = DecodeOptions(),
                   labels_count: int | None = None) -> dict[str, Any]:
    """For `inspect`: the layout matched and why, or the shapes that could not be placed and the layouts known."""
    try:
        match = match_layout(description, task, options, labels_count)
    except DecodeError as err:
        return {"task": task, "layout": None, "error": str(err), "known_layouts": _known_layouts()}
    report: dict[str, Any] = {"task": match.task, "layout": match.layout, "why": match.why}
    if match.layout == "raw" and "unplaced" in match.params:
        report["unplaced_outputs"] = match.params["unplaced"]
        report["rejected"] = match.params["rejected"]
        report["known_layouts"] = _known_layouts()
    return report


def _known_layouts() -> list[str]:
    return [f"{name} ({task}): {shape}" for name, task, shape in KNOWN_LAYOUTS]


# --- families -------------------------------------------------------------------------------------
def _classification(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 1:
        raise _NoMatch(f"needs one output, the model has {len(outputs)}")
    shape = outputs[0].shape
    wide = [d for d in shape if d != 1]
    if shape[0] != 1 or len(wide) != 1 or wide[0] < 2 or (len(shape) != 2 and not explicit):
        raise _NoMatch(f"the output {list(shape)} is not one vector of class scores [1, N]")
    return LayoutMatch("classification", "classification",
                       f"one output {list(shape)}: {wide[0]} class scores", {"classes": wide[0]})


def _ssd_postprocess(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    has_op = DETECTION_POSTPROCESS_OP in description.operators
    if len(outputs) != 4:
        raise _NoMatch(f"needs the 4 outputs of {DETECTION_POSTPROCESS_OP}, the model has {len(outputs)}")
    roles = tuple(description.output_roles)
    if has_op and sorted(roles) == ["boxes", "classes", "count", "scores"]:
        return LayoutMatch("ssd-postprocess", "detection",
                           f"the model ends in {DETECTION_POSTPROCESS_OP}; the file says which output holds "
                           f"boxes, classes, scores and count ({', '.join(roles)})", {"roles": roles})
    boxes = [o for o in outputs if len(o.shape) == 3 and o.shape[-1] == 4]
    counts = [o for o in outputs if int(np.prod(o.shape)) == 1]
    if len(boxes) == 1 and len(counts) == 1 and (has_op or explicit):
        return LayoutMatch("ssd-postprocess", "detection",
                           "4 outputs shaped like SSD post-processing (boxes [1, K, 4], count [1]); "
                           "classes and scores are told apart by name or values", {"roles": None})
    raise _NoMatch("the 4 outputs are not boxes [1, K, 4], classes, scores and a count [1]")


def yolo_grid_sizes(height: int, width: int) -> dict[int, str]:
    """Anchor-free box counts (one box per grid cell over each stride) for an input size -> description."""
    sizes = {}
    for strides in YOLO_STRIDE_SETS:
        cells = sum(math.ceil(height / s) * math.ceil(width / s) for s in strides)
        sizes.setdefault(cells, "strides " + "/".join(map(str, strides)))
    return sizes


def _yolo(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 1:
        raise _NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = output.shape
    if len(shape) != 3 or shape[0] != 1 or min(shape[1:]) < END2END_VALUES:
        raise _NoMatch(f"the output {list(shape)} is not [1, C, N] / [1, N, C] with C >= 6")
    export = description.export
    if export.task and export.task not in ("detect", "obb"):
        raise _NoMatch(f"the model's metadata says its task is {export.task!r}, not detection")
    if export.task == "obb":
        raise _NoMatch("oriented boxes (YOLO-OBB) are not decoded")
    a, b = shape[1], shape[2]
    grid = yolo_grid_sizes(description.input_height, description.input_width) if description.input_height else {}
    v5_grid = {YOLO_V5_ANCHORS_PER_CELL * cells: f"3 anchors per cell, {how}" for cells, how in grid.items()}
    classes_known = export.class_count if export.class_count else labels_count

    if b == END2END_VALUES and (export.end2end or a not in grid):
        return _yolo_match(description, output, YoloLayout("end2end", False, 0, a, False), options,
                           f"one output {list(shape)}: {a} rows of x1, y1, x2, y2, score, class "
                           + ("(the metadata says NMS is inside the model)" if export.end2end else
                              f"({a} is not a grid size for a {description.input_height}x{description.input_width} input)"))
    for boxes, channels, channels_first in ((b, a, True), (a, b, False)):
        orientation = "[1, C, N]" if channels_first else "[1, N, C]"
        if boxes in grid and channels >= 5:
            return _yolo_match(description, output, YoloLayout("v8", channels_first, channels - 4, boxes, False), options,
                               f"one output {list(shape)} = {orientation}: N = {boxes} is the anchor-free grid of a "
                               f"{description.input_height}x{description.input_width} input ({grid[boxes]}), "
                               f"so cx, cy, w, h + {channels - 4} class scores (YOLOv8/v11)")
        if boxes in v5_grid and channels >= 6 and export.producer != "ultralytics":
            return _yolo_match(description, output, YoloLayout("v5", channels_first, channels - 5, boxes, False), options,
                               f"one output {list(shape)} = {orientation}: N = {boxes} is {v5_grid[boxes]} of a "
                               f"{description.input_height}x{description.input_width} input, "
                               f"so cx, cy, w, h, objectness + {channels - 5} class scores (YOLOv5)")
    # a grid of its own (custom strides or head): the smaller side holds the values
    channels_first = a < b
    channels, boxes = (a, b) if channels_first else (b, a)
    orientation = "[1, C, N]" if channels_first else "[1, N, C]"
    if classes_known == channels - 5 and export.producer != "ultralytics":
        return _yolo_match(description, output, YoloLayout("v5", channels_first, channels - 5, boxes, False), options,
                           f"one output {list(shape)} = {orientation} with {classes_known} labels = C - 5: "
                           "cx, cy, w, h, objectness + class scores (YOLOv5)")
    if export.producer == "ultralytics" or explicit or classes_known == channels - 4:
        evidence = ("Ultralytics metadata" if export.producer == "ultralytics" else
                    f"{classes_known} labels = C - 4" if classes_known == channels - 4 else "task = \"detection\"")
        return _yolo_match(description, output, YoloLayout("v8", channels_first, channels - 4, boxes, False), options,
                           f"one output {list(shape)} = {orientation} ({evidence}): cx, cy, w, h + "
                           f"{channels - 4} class scores (YOLOv8/v11)")
    raise _NoMatch(f"{list(shape)} has no YOLO grid size for a {description.input_height}x{description.input_width} "
                   f"input ({', '.join(map(str, sorted(grid)))} for v8, 3x that for v5) and nothing else says it is YOLO")


def _yolo_match(description: ModelDescription, output: TensorInfo, layout: YoloLayout, options: DecodeOptions,
                why: str) -> LayoutMatch:
    pixel, units_why = _box_units(description, output, layout, options)
    layout = YoloLayout(layout.kind, layout.channels_first, layout.classes, layout.boxes, pixel)
    name = {"v8": "yolo-v8", "v5": "yolo-v5", "end2end": "yolo-end2end"}[layout.kind]
    return LayoutMatch(name, "detection", f"{why}; boxes {units_why}", {"yolo": layout})


def _box_units(description: ModelDescription, output: TensorInfo, layout: YoloLayout,
               options: DecodeOptions, range_tells: bool = True) -> tuple[bool, str]:
    """Normalised or pixel boxes, decided from the model once (never from a frame's values).
    `range_tells`: an int8 output's range is its boxes' (not when mask coefficients share the tensor)."""
    if options.box_units != "auto":
        return options.box_units == "pixels", f"in {options.box_units} units (box_units)"
    if output.quantized and range_tells:
        info = np.iinfo(output.dtype)
        largest = (info.max - output.zero_point) * output.scale
        if largest > 2.0:  # coordinates in 0..1 need no range beyond it; pixel coordinates do
            return True, f"in input pixels (the int8 output reaches {largest:.4g})"
        return False, f"normalised to 0-1 (the quantised output ends at {largest:.4g})"
    if layout.kind == "end2end" and description.export.producer == "ultralytics" and description.input_layout == "nchw":
        return True, "in input pixels (an Ultralytics LiteRT export with NMS: NCHW input)"
    return False, "normalised to 0-1 (as Ultralytics' TFLite exports write them; set box_units = \"pixels\" if not)"


def _anchor_ssd(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 2:
        raise _NoMatch(f"needs 2 outputs (box regressors and scores), the model has {len(outputs)}")
    shapes = [o.shape for o in outputs]
    flat = [(o.shape[-2], o.shape[-1]) if len(o.shape) in (3, 4) and all(d == 1 for d in o.shape[:-2]) else None
            for o in outputs]
    if None in flat or flat[0][0] != flat[1][0]:
        raise _NoMatch(f"the outputs {[list(s) for s in shapes]} are not [1, N, coords] and [1, N, classes] with one N")
    boxes_index = 0 if flat[0][1] > flat[1][1] else 1
    scores_index = 1 - boxes_index
    boxes, coords = flat[boxes_index]
    classes = flat[scores_index][1]
    if coords < 4:
        raise _NoMatch(f"the box regressors have {coords} values per box, fewer than 4")
    size = f"{description.input_height}x{description.input_width}"
    head = f"box regressors {list(outputs[boxes_index].shape)} and scores {list(outputs[scores_index].shape)}"
    params = {"boxes_index": boxes_index, "scores_index": scores_index, "classes": classes}
    if options.anchors is not None:
        anchors = generate_anchors(options.anchors, description.input_height, description.input_width)
        where = f"preset {options.anchors.preset}" if options.anchors.preset else "[anchors]"
        check_anchor_count(anchors, boxes, where + (" with your overrides" if options.anchors.preset else ""))
        if options.box_decoder.num_coords != coords:
            raise DecodeError(f"box_decoder.num_coords is {options.box_decoder.num_coords} but {description.name}'s "
                              f"box regressors {list(outputs[boxes_index].shape)} hold {coords} values per box: fix num_coords")
        return LayoutMatch("anchor-ssd", "detection", f"{head}, decoded against {len(anchors)} anchors from {where}",
                           {**params, "anchors": anchors, "box_decoder": options.box_decoder, "preset": options.anchors.preset})
    for preset in ANCHOR_PRESETS:
        anchor_options, decoder = resolve_anchor_preset(preset)
        if (anchor_options.input_size_height, anchor_options.input_size_width) != (description.input_height, description.input_width):
            continue
        anchors = generate_anchors(anchor_options, description.input_height, description.input_width)
        if len(anchors) == boxes and decoder.num_coords == coords:
            return LayoutMatch("anchor-ssd", "detection",
                               f"{head}: the {size} input, {boxes} boxes and {coords} values per box fit preset {preset}",
                               {**params, "anchors": anchors, "box_decoder": decoder, "preset": preset})
    message = (f"{head} look like an anchor-SSD head, but no preset fits ({boxes} boxes, {coords} values per box, "
               f"{size} input): set [pipelines.NAME.anchors] (SsdAnchorsCalculatorOptions) and [box_decoder]")
    if explicit:
        raise DecodeError(message)
    raise _NoMatch(message)


COCO_KEYPOINT_COUNT = 17
MAX_MOVENET_PEOPLE = 20


def _pose(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    from edge_agent.decode.pose import COCO_KEYPOINTS, YoloPoseLayout

    outputs = description.outputs
    if len(outputs) != 1:
        raise _NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = list(output.shape)
    export = description.export
    if export.task and export.task != "pose":
        raise _NoMatch(f"the model's metadata says its task is {export.task!r}, not pose")

    def unexpected(count: int, layout: str) -> LayoutMatch:
        message = (f"the output {shape} is {layout}'s layout but holds {count} keypoints, not COCO's "
                   f"{COCO_KEYPOINT_COUNT}: the agent decodes COCO's 17 (or a count the model's metadata kpt_shape declares)")
        if explicit:
            raise DecodeError(message)
        raise _NoMatch(message)

    if len(shape) == 4 and shape[:2] == [1, 1] and shape[3] == 3:
        if shape[2] != COCO_KEYPOINT_COUNT:
            return unexpected(shape[2], "MoveNet single-pose")
        return LayoutMatch("movenet-single", "pose", f"one output {shape}: 17 keypoints of y, x, score (MoveNet single-pose)",
                           {"names": COCO_KEYPOINTS})
    if len(shape) != 3 or shape[0] != 1:
        raise _NoMatch(f"the output {shape} is none of [1, 1, 17, 3], [1, P, 56], [1, 4+nc+3k, N]")
    if shape[1] <= MAX_MOVENET_PEOPLE and shape[2] > 5 and (shape[2] - 5) % 3 == 0 and not export.task:
        if shape[2] != MOVENET_MULTI_VALUES:
            return unexpected((shape[2] - 5) // 3, "MoveNet multi-pose")
        return LayoutMatch("movenet-multi", "pose", f"one output {shape}: up to {shape[1]} people of 17 x (y, x, score) "
                           "+ box + score (MoveNet multi-pose)", {})
    grid = yolo_grid_sizes(description.input_height, description.input_width) if description.input_height else {}
    a, b = shape[1], shape[2]
    channels_first = b in grid or (a not in grid and a < b)
    channels, boxes = (a, b) if channels_first else (b, a)
    if export.keypoint_shape:
        keypoints, per_keypoint = export.keypoint_shape
        classes = export.class_count or 1
        if channels != 4 + classes + keypoints * per_keypoint:
            raise DecodeError(f"{description.name}'s metadata says kpt_shape {list(export.keypoint_shape)} with {classes} "
                              f"classes, i.e. {4 + classes + keypoints * per_keypoint} values per box, but the output "
                              f"{shape} holds {channels}: the metadata does not belong to this model")
        evidence = "the metadata's kpt_shape"
    else:
        classes, per_keypoint = 1, 3
        if (channels - 5) % 3 or channels < 8:
            raise _NoMatch(f"the output {shape} has no room for a box, one class and (x, y, visibility) keypoints")
        keypoints = (channels - 5) // 3
        if not (explicit or export.task == "pose" or (boxes in grid and keypoints == COCO_KEYPOINT_COUNT)):
            raise _NoMatch(f"the output {shape} is not a YOLO-pose head of a {description.input_height}x"
                           f"{description.input_width} input (N = {sorted(grid)}, 56 values)")
        if keypoints != COCO_KEYPOINT_COUNT:
            return unexpected(keypoints, "YOLO-pose")
        evidence = "56 = 4 box + 1 class + 17 x 3"
    if len(export.keypoint_names) == keypoints:
        names = export.keypoint_names
    else:
        names = COCO_KEYPOINTS if keypoints == COCO_KEYPOINT_COUNT else tuple(str(k) for k in range(keypoints))
    probe = YoloLayout("v8", channels_first, classes, boxes, False)
    pixel, units_why = _box_units(description, output, probe, options)
    layout = YoloPoseLayout(channels_first, classes, keypoints, per_keypoint, pixel)
    orientation = "[1, C, N]" if channels_first else "[1, N, C]"
    return LayoutMatch("yolo-pose", "pose", f"one output {shape} = {orientation} ({evidence}): box, {classes} class "
                       f"score(s), {keypoints} keypoints (YOLO-pose); boxes {units_why}", {"pose": layout, "names": names})


def _yolo_seg(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    from edge_agent.decode.yolo_seg import YoloSegLayout

    outputs = description.outputs
    if len(outputs) != 2:
        raise _NoMatch(f"needs 2 outputs (boxes with mask coefficients, mask prototypes), the model has {len(outputs)}")
    export = description.export
    if export.task and export.task != "segment":
        raise _NoMatch(f"the model's metadata says its task is {export.task!r}, not instance segmentation")
    segment = export.task == "segment"
    shapes = description.output_shapes
    if sorted(len(o.shape) for o in outputs) != [3, 4]:
        message = f"the outputs {shapes} are not a head [1, C, N] and mask prototypes [1, h, w, nm] or [1, nm, h, w]"
        if segment:
            raise DecodeError(f"{description.name}'s metadata says instance segmentation, but {message}")
        raise _NoMatch(message)

    def refuse(message: str) -> LayoutMatch:
        """The outputs have YOLO-seg's form but not its numbers: an error when the model or task says segmentation."""
        if segment or explicit:
            raise DecodeError(f"{description.name} cannot be decoded as YOLO instance segmentation: {message}. "
                              'Use the file as Ultralytics exported it (format=tflite), or task = "raw"')
        raise _NoMatch(message)

    protos_index = 0 if len(outputs[0].shape) == 4 else 1
    head, protos = outputs[1 - protos_index], outputs[protos_index]
    head_shape, protos_shape = list(head.shape), list(protos.shape)
    height, width = description.input_height, description.input_width
    if head_shape[0] != 1 or protos_shape[0] != 1 or not height:
        return refuse(f"the outputs {shapes} are not batch 1 (or the input {list(description.input.shape)} is no image)")
    readings = [(False, *protos_shape[1:]), (True, protos_shape[2], protos_shape[3], protos_shape[1])]
    if description.input_layout == "nchw":  # LiteRT exports (NCHW input) keep PyTorch's [1, nm, h, w]
        readings.reverse()
    fitting = [(first, h, w, c) for first, h, w, c in readings if h and w and height % h == 0 and width % w == 0
               and height // h == width // w]
    if not fitting:
        return refuse(f"the mask prototypes {protos_shape} are not maps of the {height}x{width} input at a whole "
                      f"fraction of its size (Ultralytics: [1, {height // 4}, {width // 4}, 32])")
    protos_first, mask_h, mask_w, coefficients = fitting[0]
    grid = yolo_grid_sizes(height, width)
    a, b = head_shape[1], head_shape[2]
    # an end-to-end head is [1, K, 6 + nm] (K kept boxes, not a grid size); else the grid size N says where the boxes are
    end2end = export.end2end is True or (export.end2end is None and b - coefficients == END2END_VALUES and a not in grid)
    channels_first = not end2end and (b in grid or (a not in grid and a < b))
    channels, boxes = (a, b) if channels_first else (b, a)
    orientation = "[1, C, N]" if channels_first else "[1, N, C]"
    where = (f"mask prototypes {protos_shape}: {coefficients} maps of {mask_h}x{mask_w}, 1/{height // mask_h} of the "
             f"{height}x{width} input" + (", channels first" if protos_first else ""))
    if end2end:
        if channels != END2END_VALUES + coefficients:
            return refuse(f"an end-to-end head holds 6 + {coefficients} values per box for the mask prototypes "
                          f"{protos_shape} ({coefficients} channels), but the output {head_shape} holds {channels}")
        layout = YoloLayout("end2end", False, 0, boxes, False)
        what = f"x1, y1, x2, y2, score, class + {coefficients} mask coefficients (NMS inside the model)"
    else:
        classes = channels - 4 - coefficients
        named = export.class_count
        if named and named != classes:
            return refuse(f"the mask prototypes {protos_shape} have {coefficients} channels and the metadata names "
                          f"{named} classes, so each box should hold 4 + {named} + {coefficients} = "
                          f"{4 + named + coefficients} values, but the output {head_shape} holds {channels} (that is "
                          f"{channels - 4 - named} mask coefficients for {coefficients} prototypes, or {classes} classes "
                          f"for {named} names): the two outputs and the metadata are not of one model")
        if classes < 1:
            return refuse(f"the output {head_shape} holds {channels} values per box: no room for 4 box values, a class "
                          f"and the {coefficients} mask coefficients the prototypes {protos_shape} call for")
        if not (boxes in grid or segment or explicit or labels_count == classes):
            raise _NoMatch(f"{head_shape} has no YOLO grid size for a {height}x{width} input "
                           f"({', '.join(map(str, sorted(grid)))}) and nothing else says it is YOLO-seg")
        layout = YoloLayout("v8", channels_first, classes, boxes, False)
        what = f"cx, cy, w, h + {classes} class scores + {coefficients} mask coefficients (YOLOv8/v11-seg)"
    pixel, units_why = _box_units(description, head, layout, options, range_tells=False)
    layout = YoloLayout(layout.kind, layout.channels_first, layout.classes, layout.boxes, pixel)
    seg = YoloSegLayout(1 - protos_index, protos_index, protos_first, mask_h, mask_w, coefficients,
                        END2END_VALUES if end2end else 4 + layout.classes, height // mask_h)
    return LayoutMatch("yolo-seg", "detection", f"outputs {head_shape} = {orientation}: {what}, and {where}; "
                       f"boxes {units_why}", {"yolo": layout, "seg": seg})


MAX_SEGMENTATION_CLASSES = 1024


def _segmentation(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    from edge_agent.decode.segmentation import map_fits_input

    outputs = description.outputs
    if len(outputs) != 1:
        raise _NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = list(output.shape)
    size = (description.input_height, description.input_width)
    if description.export.task and description.export.task != "semantic":
        raise _NoMatch(f"the model's metadata says its task is {description.export.task!r}, not semantic segmentation")
    integer_ids = np.dtype(output.dtype).kind in "iu" and not output.quantized
    if len(shape) == 3 and shape[0] == 1 and map_fits_input(shape[1], shape[2], *size):
        if integer_ids:
            classes = labels_count or MAX_SEGMENTATION_CLASSES
            return LayoutMatch("segmentation-ids", "segmentation", f"one output {shape} of {output.dtype.name} class ids "
                               f"(a {shape[1]}x{shape[2]} map of the {size[0]}x{size[1]} input)",
                               {"kind": "ids", "height": shape[1], "width": shape[2], "classes": classes, "channels_first": False})
        return LayoutMatch("segmentation-foreground", "segmentation", f"one output {shape}: a {shape[1]}x{shape[2]} "
                           "foreground probability map", {"kind": "foreground", "height": shape[1], "width": shape[2],
                                                          "classes": 1, "channels_first": False})
    if len(shape) == 4 and shape[0] == 1:
        layouts = [(False, shape[1], shape[2], shape[3]), (True, shape[2], shape[3], shape[1])]
        if description.input_layout == "nchw":
            layouts.reverse()
        for channels_first, height, width, channels in layouts:
            if not map_fits_input(height, width, *size) or channels > MAX_SEGMENTATION_CLASSES:
                continue
            where = f"a {height}x{width} map of the {size[0]}x{size[1]} input" + (", channels first" if channels_first else "")
            if channels == 1:
                kind = "ids" if integer_ids else "foreground"
                what = "class ids" if integer_ids else "foreground probability"
                return LayoutMatch(f"segmentation-{kind}", "segmentation", f"one output {shape}: {what} ({where})",
                                   {"kind": kind, "height": height, "width": width,
                                    "classes": (labels_count or MAX_SEGMENTATION_CLASSES) if integer_ids else 1,
                                    "channels_first": False})
            return LayoutMatch("segmentation-scores", "segmentation", f"one output {shape}: {channels} class scores per "
                               f"pixel ({where})", {"kind": "scores", "height": height, "width": width,
                                                    "classes": channels, "channels_first": channels_first})
    raise _NoMatch(f"the output {shape} is not a per-pixel map with the {size[0]}x{size[1]} input's aspect ratio")


_FAMILIES: list[tuple[str, str, Callable[..., LayoutMatch]]] = [
    ("ssd-postprocess", "detection", _ssd_postprocess),
    ("anchor-ssd", "detection", _anchor_ssd),
    ("pose", "pose", _pose),
    ("yolo", "detection", _yolo),
    ("yolo-seg", "detection", _yolo_seg),
    ("segmentation", "segmentation", _segmentation),
    ("classification", "classification", _classification),
]
