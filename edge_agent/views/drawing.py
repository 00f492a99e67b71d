"""Overlays drawn with OpenCV on a frame the views own: what the model saw, where.

  boxes          a rectangle per detection in its class's colour, with "label 87% #12" (track id)
  keypoints      a dot per keypoint of a detection (a face's eyes and nose)
  poses          keypoints and the skeleton between named keypoints (COCO's names), with the person's box
  segmentation   the class map as a translucent overlay (background left clear)
  classification the top classes, top left
  zones          each zone's outline and name
  timestamp      the pipeline's name and the capture time, bottom left

Poses and segmentation masks are drawn from the decoded result's `poses` (each with `keypoints`
of name, x, y, score normalised to the frame) and `mask` (`class_ids` [H, W] in the model's input,
`labels`, and `box_transform` (ay, by, ax, bx) to the frame) when the decoder provides them.

The frame is cropped and resized first and everything is drawn at the output size, so drawing
costs the same for a 4K camera as for a VGA one. The views' only OpenCV module (encode_jpeg too).
"""

from __future__ import annotations

import colorsys
import functools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

MASK_ALPHA = 0.45
KEYPOINT_MIN_SCORE = 0.3  # keypoints (and bones) less certain than this are not drawn
CROP_MARGIN = 0.4  # an event snapshot cropped to an object shows this much of its box's size around it
MIN_CROP_FRACTION = 0.15  # ...and at least this share of the frame's height
BACKGROUND_LABELS = frozenset({"background", "__background__", "bg", "???", "none"})
ZONE_COLOUR = (255, 255, 0)  # BGR cyan
TEXT_DARK, TEXT_LIGHT = (0, 0, 0), (255, 255, 255)

# bones between COCO's keypoint names (any model whose keypoints carry these names gets a skeleton)
SKELETON = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"), ("right_knee", "right_hip"),
    ("left_hip", "right_hip"), ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("left_eye", "right_eye"), ("nose", "left_eye"),
    ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)


@functools.lru_cache(maxsize=256)
def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour per class id: hues spread by the golden ratio, starting away from pure red
    (so a box stays visible on the red things cameras often look at)."""
    hue = (0.15 + 0.618034 * class_id) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


@dataclass(frozen=True)
class View:
    """How the frame maps to the picture: the crop (frame pixels) and the scale to the output."""

    x0: float
    y0: float
    scale: float
    frame_width: int
    frame_height: int

    def point(self, x: float, y: float) -> tuple[int, int]:
        """Frame-normalised (x, y) to output pixels."""
        return (int(round((x * self.frame_width - self.x0) * self.scale)),
                int(round((y * self.frame_height - self.y0) * self.scale)))


def crop_box_for(box: Sequence[float], frame_height: int, frame_width: int) -> tuple[int, int, int, int]:
    """The frame region (y0, y1, x0, x1 pixels) an event snapshot shows for an object's box."""
    ymin, xmin, ymax, xmax = box
    h, w = (ymax - ymin) * frame_height, (xmax - xmin) * frame_width
    side = max(h, w) * (1 + 2 * CROP_MARGIN)
    side = max(side, MIN_CROP_FRACTION * frame_height)
    cy, cx = (ymin + ymax) / 2 * frame_height, (xmin + xmax) / 2 * frame_width
    half_h, half_w = min(side, frame_height) / 2, min(side, frame_width) / 2
    y0 = int(max(0, min(cy - half_h, frame_height - 2 * half_h)))
    x0 = int(max(0, min(cx - half_w, frame_width - 2 * half_w)))
    return y0, int(min(frame_height, y0 + 2 * half_h)), x0, int(min(frame_width, x0 + 2 * half_w))


def render(image: np.ndarray, decoded: Any = None, track_ids: Sequence[int | None] = (), *, height: int = 0,
           annotate: bool = True, zones: Sequence[tuple[str, Sequence[tuple[float, float]]]] = (),
           caption: str = "", ts: float | None = None, crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A new BGR picture: `image` cropped to `crop` (y0, y1, x0, x1), resized to `height` (0: as it
    is), with the overlays of `decoded` when `annotate`; `image` itself is not changed."""
    frame_h, frame_w = image.shape[:2]
    y0, y1, x0, x1 = crop if crop is not None else (0, frame_h, 0, frame_w)
    region = image[y0:y1, x0:x1]
    scale = (height / region.shape[0]) if height else 1.0
    if scale != 1.0:
        size = (max(1, int(round(region.shape[1] * scale))), max(1, int(round(region.shape[0] * scale))))
        canvas = cv2.resize(region, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    else:
        canvas = region.copy()
    if not annotate:
        return canvas
    view = View(x0, y0, scale, frame_w, frame_h)
    style = _Style.for_height(canvas.shape[0])
    if decoded is not None:
        mask = getattr(decoded, "mask", None)
        if mask is not None:
            draw_mask(canvas, mask, view)
    for name, polygon in zones:
        draw_zone(canvas, name, polygon, view, style)
    if decoded is not None:
        detections, poses = getattr(decoded, "detections", ()), getattr(decoded, "poses", ())
        # one track id per tracked object: a decoder fills detections or poses, never both
        ids = list(track_ids) + [None] * (len(detections) + len(poses))
        for detection, track_id in zip(detections, ids):
            draw_detection(canvas, detection, track_id, view, style)
        for pose, track_id in zip(poses, ids):
            draw_pose(canvas, pose, track_id, view, style)
        classes = getattr(decoded, "classes", ())
        if classes:
            draw_classes(canvas, classes, style)
    if caption or ts is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts is not None else ""
        _label(canvas, f"{caption}  {stamp}".strip(), (style.pad, canvas.shape[0] - style.pad), (32, 32, 32), style,
               anchor="bottom")
    return canvas


@dataclass(frozen=True)
class _Style:
    font_scale: float
    thickness: int
    pad: int
    radius: int

    @classmethod
    def for_height(cls, height: int) -> _Style:
        unit = max(height, 120) / 360.0
        return cls(font_scale=0.5 * unit, thickness=max(2, int(round(2 * unit))), pad=max(2, int(4 * unit)),
                   radius=max(2, int(round(3 * unit))))


def draw_detection(canvas: np.ndarray, detection: Any, track_id: int | None, view: View, style: _Style) -> None:
    ymin, xmin, ymax, xmax = detection.box
    colour = class_colour(int(detection.id))
    top_left, bottom_right = view.point(xmin, ymin), view.point(xmax, ymax)
    cv2.rectangle(canvas, top_left, bottom_right, colour, style.thickness)
    text = f"{detection.label} {detection.score * 100:.0f}%" + (f" #{track_id}" if track_id is not None else "")
    _label(canvas, text, top_left, colour, style)
    for keypoint in getattr(detection, "keypoints", ()):
        if _certain(keypoint):
            cv2.circle(canvas, view.point(keypoint.x, keypoint.y), style.radius, colour, -1, cv2.LINE_AA)


def draw_pose(canvas: np.ndarray, pose: Any, track_id: int | None, view: View, style: _Style) -> None:
    colour = class_colour(int(getattr(pose, "id", 0)))
    points = {k.name: view.point(k.x, k.y) for k in pose.keypoints if _certain(k)}
    for a, b in SKELETON:
        if a in points and b in points:
            cv2.line(canvas, points[a], points[b], colour, style.thickness + 1, cv2.LINE_AA)
    for point in points.values():
        cv2.circle(canvas, point, style.radius + 1, TEXT_LIGHT, -1, cv2.LINE_AA)
        cv2.circle(canvas, point, style.radius, colour, -1, cv2.LINE_AA)
    box = getattr(pose, "box", None)
    if box is not None:
        ymin, xmin, ymax, xmax = box
        cv2.rectangle(canvas, view.point(xmin, ymin), view.point(xmax, ymax), colour, 1, cv2.LINE_AA)
        text = f"{pose.label} {pose.score * 100:.0f}%" + (f" #{track_id}" if track_id is not None else "")
        _label(canvas, text, view.point(xmin, ymin), colour, style)


def draw_mask(canvas: np.ndarray, mask: Any, view: View) -> None:
    """The class map warped onto the picture (nearest class per pixel), blended over it."""
    class_ids = np.asarray(mask.class_ids)
    if class_ids.ndim != 2 or class_ids.size == 0:
        return
    mask_h, mask_w = class_ids.shape
    ay, by, ax, bx = mask.box_transform
    if not ax or not ay:
        return
    # picture pixel (u, v) -> frame-normalised -> model-normalised -> mask pixel, all affine
    fw, fh, s = view.frame_width, view.frame_height, view.scale
    sx, sy = mask_w / (ax * fw * s), mask_h / (ay * fh * s)
    # pixel centres: the picture's pixel u covers [u, u + 1), its centre is u + 0.5; a mask pixel likewise
    tx = mask_w * (view.x0 / fw - bx) / ax + 0.5 * sx - 0.5
    ty = mask_h * (view.y0 / fh - by) / ay + 0.5 * sy - 0.5
    labels = list(getattr(mask, "labels", ()))
    background = next((i for i, name in enumerate(labels) if str(name).lower() in BACKGROUND_LABELS), -1)
    source = class_ids.astype(np.uint16 if class_ids.max(initial=0) > 254 else np.uint8)
    outside = 65535 if source.dtype == np.uint16 else 255
    warped = cv2.warpAffine(source, np.float32([[sx, 0, tx], [0, sy, ty]]), (canvas.shape[1], canvas.shape[0]),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=outside)
    shown = warped != outside
    if background >= 0:
        shown &= warped != background
    if not shown.any():
        return
    palette = np.array([class_colour(i) for i in range(int(warped[shown].max()) + 1)], np.float32)
    pixels = canvas[shown].astype(np.float32)
    canvas[shown] = (pixels * (1 - MASK_ALPHA) + palette[warped[shown]] * MASK_ALPHA).astype(np.uint8)


def draw_zone(canvas: np.ndarray, name: str, polygon: Sequence[tuple[float, float]], view: View, style: _Style) -> None:
    points = np.array([view.point(x, y) for x, y in polygon], np.int32)
    cv2.polylines(canvas, [points], True, ZONE_COLOUR, style.thickness)
    top = min(points, key=lambda p: (p[1], p[0]))
    _label(canvas, name, (int(top[0]), int(top[1]) + 1), ZONE_COLOUR, style, anchor="top")


def draw_classes(canvas: np.ndarray, classes: Sequence[Any], style: _Style, shown: int = 3) -> None:
    line_height = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, style.font_scale, 1)[0][1] * 1.8) + style.pad
    for row, item in enumerate(classes[:shown]):
        _label(canvas, f"{item.label} {item.score * 100:.0f}%", (style.pad, style.pad + row * line_height),
               class_colour(int(item.id)), style, anchor="top")


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the picture as JPEG")
    return data.tobytes()


def _certain(keypoint: Any) -> bool:
    score = getattr(keypoint, "score", None)
    return score is None or score >= KEYPOINT_MIN_SCORE


def _label(canvas: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int], style: _Style,
           anchor: str = "above") -> None:
    """`text` on a filled box of `colour`: above the point (box labels), below it (`top`), or with
    its baseline on it (`bottom`); kept inside the picture."""
    font, scale, weight = cv2.FONT_HERSHEY_SIMPLEX, style.font_scale, max(1, style.thickness - 1)
    (width, height), baseline = cv2.getTextSize(text, font, scale, weight)
    box_h = height + baseline + style.pad
    x = min(max(0, at[0]), max(0, canvas.shape[1] - width - style.pad))
    if anchor == "above":
        y = at[1] - box_h if at[1] - box_h >= 0 else at[1]
    elif anchor == "top":
        y = at[1]
    else:
        y = at[1] - box_h
    y = min(max(0, y), max(0, canvas.shape[0] - box_h))
    cv2.rectangle(canvas, (x, y), (x + width + style.pad, y + box_h), colour, -1)
    luminance = 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2]
    cv2.putText(canvas, text, (x + style.pad // 2, y + height + style.pad // 2), font, scale,
                TEXT_DARK if luminance > 140 else TEXT_LIGHT, weight, cv2.LINE_AA)
