"""The YOLO families' layouts (v8/v11, v5, end-to-end, instance segmentation), matched against a model's
description; layouts.py lists them with the other families.

N, the number of boxes, tells the variants apart (the anchor-free grid of the input, three times it
for v5); Ultralytics' metadata, when the export carries it, settles the rest.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.decode.common import DecodeError
from edge_agent.decode.description import ModelDescription, TensorInfo
from edge_agent.decode.layout_match import LayoutMatch, NoMatch
from edge_agent.decode.options import DecodeOptions
from edge_agent.decode.yolo import YoloLayout
from edge_agent.decode.yolo_seg import YoloSegLayout

# Anchor-free heads put one box per cell of each stride's grid: 8400 at 640 for strides 8/16/32.
YOLO_STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64), (4, 8, 16, 32))
YOLO_V5_ANCHORS_PER_CELL = 3
END2END_VALUES = 6  # x1, y1, x2, y2, score, class


def yolo_grid_sizes(height: int, width: int) -> dict[int, str]:
    """Anchor-free box counts (one box per grid cell over each stride) for an input size -> description."""
    sizes = {}
    for strides in YOLO_STRIDE_SETS:
        cells = sum(math.ceil(height / s) * math.ceil(width / s) for s in strides)
        sizes.setdefault(cells, "strides " + "/".join(map(str, strides)))
    return sizes


def match_yolo(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 1:
        raise NoMatch(f"needs one output, the model has {len(outputs)}")
    output = outputs[0]
    shape = output.shape
    if len(shape) != 3 or shape[0] != 1 or min(shape[1:]) < END2END_VALUES:
        raise NoMatch(f"the output {list(shape)} is not [1, C, N] / [1, N, C] with C >= 6")
    export = description.export
    if export.task and export.task not in ("detect", "obb"):
        raise NoMatch(f"the model's metadata says its task is {export.task!r}, not detection")
    if export.task == "obb":
        raise NoMatch("oriented boxes (YOLO-OBB) are not decoded")
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
    raise NoMatch(f"{list(shape)} has no YOLO grid size for a {description.input_height}x{description.input_width} "
                   f"input ({', '.join(map(str, sorted(grid)))} for v8, 3x that for v5) and nothing else says it is YOLO")


def _yolo_match(description: ModelDescription, output: TensorInfo, layout: YoloLayout, options: DecodeOptions,
                why: str) -> LayoutMatch:
    pixel, units_why = box_units(description, output, layout, options)
    layout = YoloLayout(layout.kind, layout.channels_first, layout.classes, layout.boxes, pixel)
    name = {"v8": "yolo-v8", "v5": "yolo-v5", "end2end": "yolo-end2end"}[layout.kind]
    return LayoutMatch(name, "detection", f"{why}; boxes {units_why}", {"yolo": layout})


def box_units(description: ModelDescription, output: TensorInfo, layout: YoloLayout,
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


def match_yolo_seg(description: ModelDescription, options: DecodeOptions, labels_count, explicit: bool) -> LayoutMatch:
    outputs = description.outputs
    if len(outputs) != 2:
        raise NoMatch(f"needs 2 outputs (boxes with mask coefficients, mask prototypes), the model has {len(outputs)}")
    export = description.export
    if export.task and export.task != "segment":
        raise NoMatch(f"the model's metadata says its task is {export.task!r}, not instance segmentation")
    segment = export.task == "segment"
    shapes = description.output_shapes
    if sorted(len(o.shape) for o in outputs) != [3, 4]:
        message = f"the outputs {shapes} are not a head [1, C, N] and mask prototypes [1, h, w, nm] or [1, nm, h, w]"
        if segment:
            raise DecodeError(f"{description.name}'s metadata says instance segmentation, but {message}")
        raise NoMatch(message)

    def refuse(message: str) -> LayoutMatch:
        """The outputs have YOLO-seg's form but not its numbers: an error when the model or task says segmentation."""
        if segment or explicit:
            raise DecodeError(f"{description.name} cannot be decoded as YOLO instance segmentation: {message}. "
                              'Use the file as Ultralytics exported it (format=tflite), or task = "raw"')
        raise NoMatch(message)

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
            raise NoMatch(f"{head_shape} has no YOLO grid size for a {height}x{width} input "
                           f"({', '.join(map(str, sorted(grid)))}) and nothing else says it is YOLO-seg")
        layout = YoloLayout("v8", channels_first, classes, boxes, False)
        what = f"cx, cy, w, h + {classes} class scores + {coefficients} mask coefficients (YOLOv8/v11-seg)"
    pixel, units_why = box_units(description, head, layout, options, range_tells=False)
    layout = YoloLayout(layout.kind, layout.channels_first, layout.classes, layout.boxes, pixel)
    seg = YoloSegLayout(1 - protos_index, protos_index, protos_first, mask_h, mask_w, coefficients,
                        END2END_VALUES if end2end else 4 + layout.classes, height // mask_h)
    return LayoutMatch("yolo-seg", "detection", f"outputs {head_shape} = {orientation}: {what}, and {where}; "
                       f"boxes {units_why}", {"yolo": layout, "seg": seg})
