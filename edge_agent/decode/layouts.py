"""Which decoder fits a model: each known output layout, matched against the model's description.

A match is decided once, when the model loads, and carries the reason in words (`why`), which
`edge-agent inspect` shows, so `task = "auto"` is never a mystery. A task that no layout of its
family fits is an error naming the output shapes and the layouts that family knows; `raw` always fits.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edge_agent.config import ANCHOR_PRESETS, resolve_anchor_preset
from edge_agent.decode.anchors import check_anchor_count, generate_anchors
from edge_agent.decode.common import DecodeError
from edge_agent.decode.description import ModelDescription
from edge_agent.decode.layout_match import LayoutMatch, NoMatch
from edge_agent.decode.options import DecodeOptions
from edge_agent.decode.yolo import YoloLayout
from edge_agent.decode.yolo_layouts import box_units, match_yolo, match_yolo_seg, yolo_grid_sizes

DETECTION_POSTPROCESS_OP = "TFLite_Detection_PostProcess"
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
        except NoMatch as err:
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
        raise NoMatch(f"needs one output, the model has {len(outputs)}")
    shape = outputs[0].shape
    wide = [d for d in shape if d != 1]
    if shape[0] != 1 or len(wide) != 1 or wide[0] < 2 or (len(shape) != 2 and not explicit):
        raise NoMatch(f"the output {list(shape)} is not one vector of class scores [1, N]")
    return LayoutMatch("classification", "classification",
                       f"one output {list(shape)}: {wide[0]} class scores", {"classes": wide[0]})


def _ssd_postprocess(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    has_op = DETECTION_POSTPROCESS_OP in description.operators
    if len(outputs) != 4:
        raise NoMatch(f"needs the 4 outputs of {DETECTION_POSTPROCESS_OP}, the model has {len(outputs)}")
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
    raise NoMatch("the 4 outputs are not boxes [1, K, 4], classes, scores and a count [1]")


def _anchor_ssd(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 2:
        raise NoMatch(f"needs 2 outputs (box regressors and scores), the model has {len(outputs)}")
    shapes = [o.shape for o in outputs]
    flat = [(o.shape[-2], o.shape[-1]) if len(o.shape) in (3, 4) and all(d == 1 for d in o.shape[:-2]) else None
            for o in outputs]
    if None in flat or flat[0][0] != flat[1][0]:
        raise NoMatch(f"the outputs {[list(s) for s in shapes]} are not [1, N, coords] and [1, N, classes] with one N")
    boxes_index = 0 if flat[0][1] > flat[1][1] else 1
    scores_index = 1 - boxes_index
    boxes, coords = flat[boxes_index]
    classes = flat[scores_index][1]
    if coords < 4:
        raise NoMatch(f"the box regressors have {coords} values per box, fewer than 4")
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
    raise NoMatch(message)


COCO_KEYPOINT_COUNT = 17
MAX_MOVENET_PEOPLE = 20


def _pose(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    from edge_agent.decode.pose import COCO_KEYPOINTS, YoloPoseLayout

    outputs = description.outputs
    if len(outputs) != 1:
        raise NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = list(output.shape)
    export = description.export
    if export.task and export.task != "pose":
        raise NoMatch(f"the model's metadata says its task is {export.task!r}, not pose")

    def unexpected(count: int, layout: str) -> LayoutMatch:
        message = (f"the output {shape} is {layout}'s layout but holds {count} keypoints, not COCO's "
                   f"{COCO_KEYPOINT_COUNT}: the agent decodes COCO's 17 (or a count the model's metadata kpt_shape declares)")
        if explicit:
            raise DecodeError(message)
        raise NoMatch(message)

    if len(shape) == 4 and shape[:2] == [1, 1] and shape[3] == 3:
        if shape[2] != COCO_KEYPOINT_COUNT:
            return unexpected(shape[2], "MoveNet single-pose")
        return LayoutMatch("movenet-single", "pose", f"one output {shape}: 17 keypoints of y, x, score (MoveNet single-pose)",
                           {"names": COCO_KEYPOINTS})
    if len(shape) != 3 or shape[0] != 1:
        raise NoMatch(f"the output {shape} is none of [1, 1, 17, 3], [1, P, 56], [1, 4+nc+3k, N]")
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
            raise NoMatch(f"the output {shape} has no room for a box, one class and (x, y, visibility) keypoints")
        keypoints = (channels - 5) // 3
        if not (explicit or export.task == "pose" or (boxes in grid and keypoints == COCO_KEYPOINT_COUNT)):
            raise NoMatch(f"the output {shape} is not a YOLO-pose head of a {description.input_height}x"
                           f"{description.input_width} input (N = {sorted(grid)}, 56 values)")
        if keypoints != COCO_KEYPOINT_COUNT:
            return unexpected(keypoints, "YOLO-pose")
        evidence = "56 = 4 box + 1 class + 17 x 3"
    if len(export.keypoint_names) == keypoints:
        names = export.keypoint_names
    else:
        names = COCO_KEYPOINTS if keypoints == COCO_KEYPOINT_COUNT else tuple(str(k) for k in range(keypoints))
    probe = YoloLayout("v8", channels_first, classes, boxes, False)
    pixel, units_why = box_units(description, output, probe, options)
    layout = YoloPoseLayout(channels_first, classes, keypoints, per_keypoint, pixel)
    orientation = "[1, C, N]" if channels_first else "[1, N, C]"
    return LayoutMatch("yolo-pose", "pose", f"one output {shape} = {orientation} ({evidence}): box, {classes} class "
                       f"score(s), {keypoints} keypoints (YOLO-pose); boxes {units_why}", {"pose": layout, "names": names})


MAX_SEGMENTATION_CLASSES = 1024


def _segmentation(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    from edge_agent.decode.segmentation import map_fits_input

    outputs = description.outputs
    if len(outputs) != 1:
        raise NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = list(output.shape)
    size = (description.input_height, description.input_width)
    if description.export.task and description.export.task != "semantic":
        raise NoMatch(f"the model's metadata says its task is {description.export.task!r}, not semantic segmentation")
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
    raise NoMatch(f"the output {shape} is not a per-pixel map with the {size[0]}x{size[1]} input's aspect ratio")


_FAMILIES: list[tuple[str, str, Callable[..., LayoutMatch]]] = [
    ("ssd-postprocess", "detection", _ssd_postprocess),
    ("anchor-ssd", "detection", _anchor_ssd),
    ("pose", "pose", _pose),
    ("yolo", "detection", match_yolo),
    ("yolo-seg", "detection", match_yolo_seg),
    ("segmentation", "segmentation", _segmentation),
    ("classification", "classification", _classification),
]
