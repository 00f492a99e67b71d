"""Turn a BGR frame into exactly what the model's input tensor wants, without per-frame allocations.

Everything is derived from the input tensor (size, channels, layout, dtype, quantisation) and the
pipeline's options (resize mode, letterbox padding, colour order, mean/std). Pixel values go through
a 256-entry look-up table that folds normalisation and quantisation into one pass, so a
uint8/int8/float32 input costs the same. Channel-last inputs [1, H, W, C] get the table applied to
the whole image; channel-first inputs [1, C, H, W] (Ultralytics' LiteRT exports) get each colour
plane taken out of the BGR image (in the model's colour order, so no colour conversion) and its
table applied straight into the tensor's plane: the same number of passes, no extra copy.
OpenCV is used here only for resize, colour conversion and the per-plane work.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.runtime import TensorSpec
from edge_agent.errors import InputError

LETTERBOX_PAD_PIXEL = 0  # the default; Ultralytics models are trained with 114 (the service derives it)


class PreprocessError(InputError, ValueError):
    """The model's input cannot be fed from images (or the options do not fit it)."""


@dataclass(frozen=True)
class Geometry:
    """How the frame maps into the input: the source crop, the target region, and the box transform."""

    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 in the frame
    region: tuple[int, int, int, int]  # y0, y1, x0, x1 in the input
    box_transform: tuple[float, float, float, float]  # (ay, by, ax, bx): frame = model * a + b


class Preprocessor:
    """Prepares frames for one input tensor; buffers are reused across frames of the same size."""

    def __init__(self, spec: TensorSpec, options: PreprocessOptions):
        self.spec = spec
        self.options = options
        self.height, self.width, self.channels, self.layout = image_input_layout(spec)
        self.pad = LETTERBOX_PAD_PIXEL if options.pad is None else options.pad
        self._lut = _value_lut(spec, options, self.channels)
        self._planar = self.layout == "nchw" and self.channels == 3
        if self._planar:  # one [256] table per model channel, and which BGR plane feeds it
            per_channel = self._lut.reshape(256, -1)
            self._plane_luts = [np.ascontiguousarray(per_channel[:, min(c, per_channel.shape[1] - 1)]) for c in range(3)]
            self._plane_sources = (2, 1, 0) if options.color == "rgb" else (0, 1, 2)
            self._plane = np.empty((self.height, self.width), np.uint8)
        self._geometry_cache: dict[tuple[int, int], Geometry] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self._last_geometry: Geometry | None = None
        self._converted = np.empty((self.height, self.width, self.channels), np.uint8)
        self._canvas = np.full((self.height, self.width, self.channels), self.pad, np.uint8)

    def new_buffer(self) -> np.ndarray:
        """An array shaped and typed like the input tensor, to prepare frames into."""
        return np.zeros(self.spec.shape, self.spec.dtype)

    def prepare(self, image: np.ndarray, out: np.ndarray) -> Geometry:
        """Resize, convert and normalise `image` (BGR uint8) into `out` (from new_buffer)."""
        geometry = self.geometry_for(image.shape[0], image.shape[1])
        if geometry is not self._last_geometry:  # a new frame size: old letterbox content must go
            self._canvas.fill(self.pad)
            self._last_geometry = geometry
        (cy0, cy1, cx0, cx1), (ry0, ry1, rx0, rx1) = geometry.crop, geometry.region
        source = image[cy0:cy1, cx0:cx1]
        resized = self._resize(source, rx1 - rx0, ry1 - ry0)
        target = self._canvas if (ry1 - ry0, rx1 - rx0) != (self.height, self.width) else self._converted
        if self._planar:
            if target is self._canvas:
                target[ry0:ry1, rx0:rx1] = resized
                resized = target
            planes = out.reshape(3, self.height, self.width)
            for channel, plane_source in enumerate(self._plane_sources):
                cv2.extractChannel(resized, plane_source, dst=self._plane)
                cv2.LUT(self._plane, self._plane_luts[channel], dst=planes[channel])
            return geometry
        if self.channels == 1:
            gray = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY, dst=self._buffer("gray", resized.shape[:2]))
            target[ry0:ry1, rx0:rx1, 0] = gray
        elif target is self._converted and self.options.color == "rgb":
            cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=target)
        elif self.options.color == "rgb":
            target[ry0:ry1, rx0:rx1] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=self._buffer("rgb", resized.shape))
        else:
            target[ry0:ry1, rx0:rx1] = resized
        self._apply_lut(target, out.reshape(self.height, self.width, self.channels))
        return geometry

    def _resize(self, source: np.ndarray, width: int, height: int) -> np.ndarray:
        """Downscale in two steps: an integer-factor INTER_AREA (fast and anti-aliased), then
        INTER_LINEAR for the rest; a plain INTER_AREA at a fractional factor costs ~7x more."""
        factor = min(source.shape[0] // height, source.shape[1] // width)
        if factor >= 2:
            step = (source.shape[1] // factor, source.shape[0] // factor)
            source = cv2.resize(source, step, dst=self._buffer("area", (step[1], step[0], 3)), interpolation=cv2.INTER_AREA)
        if source.shape[:2] == (height, width):
            return source
        return cv2.resize(source, (width, height), dst=self._buffer("resized", (height, width, 3)), interpolation=cv2.INTER_LINEAR)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A scratch array kept between frames (re-made only when the frame size changes)."""
        buffer = self._scratch.get(name)
        if buffer is None or buffer.shape != shape:
            buffer = self._scratch[name] = np.empty(shape, np.uint8)
        return buffer

    def geometry_for(self, frame_height: int, frame_width: int) -> Geometry:
        key = (frame_height, frame_width)
        if key not in self._geometry_cache:
            self._geometry_cache[key] = _geometry(frame_height, frame_width, self.height, self.width, self.options.resize)
        return self._geometry_cache[key]

    def _apply_lut(self, pixels: np.ndarray, out: np.ndarray) -> None:
        # A [256] table serves every channel; a per-channel table is passed as a 256x1
        # C-channel image, which cv2.LUT applies channel by channel (np.take with out=
        # into a strided view would allocate a temporary per frame).
        cv2.LUT(pixels, self._lut, dst=out)


def image_input_size(spec: TensorSpec) -> tuple[int, int, int]:
    """(height, width, channels) of an image input, channel-last or channel-first; else PreprocessError."""
    height, width, channels, _ = image_input_layout(spec)
    return height, width, channels


def image_input_layout(spec: TensorSpec) -> tuple[int, int, int, str]:
    """(height, width, channels, "nhwc" | "nchw") of an image input: [1, H, W, C] or [1, H, W] (gray) is
    channel-last, [1, C, H, W] (Ultralytics' LiteRT exports) channel-first, C in 1 or 3; else PreprocessError."""
    shape = spec.shape
    if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3) and shape[1] > 0 and shape[2] > 0:
        return shape[1], shape[2], shape[3], "nhwc"
    if len(shape) == 4 and shape[0] == 1 and shape[1] in (1, 3) and shape[2] > 3 and shape[3] > 3:
        return shape[2], shape[3], shape[1], "nchw"
    if len(shape) == 3 and shape[0] == 1 and shape[1] > 0 and shape[2] > 0:
        return shape[1], shape[2], 1, "nhwc"
    raise PreprocessError(
        f"the model's input {spec.name!r} has shape {list(shape)}, which is not an image "
        "([1, height, width, 1 or 3] or [1, 1 or 3, height, width]): a camera, video or image source "
        "cannot feed it; use a model that takes images"
    )


def _value_lut(spec: TensorSpec, options: PreprocessOptions, channels: int) -> np.ndarray:
    """Map each pixel value 0..255 to the tensor's value: (p - mean) / std, then quantised."""
    if spec.dtype not in (np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.int8)):
        raise PreprocessError(f"input {spec.name!r} has dtype {spec.dtype.name}; images feed float32, uint8 or int8")
    mean, std = (_per_channel(values, channels, name) for values, name in ((options.mean, "mean"), (options.std, "std")))
    if any(s == 0 for s in std):
        raise PreprocessError("std must not be 0")
    pixels = np.arange(256, dtype=np.float64)[:, None]
    real = (pixels - mean[None, :]) / std[None, :]
    if spec.dtype == np.float32:
        table = real.astype(np.float32)
    elif spec.quantized:
        info = np.iinfo(spec.dtype)
        table = np.clip(np.round(real / spec.scale + spec.zero_point), info.min, info.max).astype(spec.dtype)
    else:  # an unquantised uint8/int8 input takes pixels as they are
        table = np.repeat(pixels, channels, axis=1).astype(np.int16)
        table = (table - (128 if spec.dtype == np.int8 else 0)).astype(spec.dtype)
    if np.all(table == table[:, :1]):
        return np.ascontiguousarray(table[:, 0])
    return np.ascontiguousarray(table.reshape(256, 1, channels))


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, float(values[0]))
    if len(values) != channels:
        raise PreprocessError(f"{name} has {len(values)} values but the model takes {channels} channel(s)")
    return np.asarray(values, dtype=np.float64)


def _geometry(fh: int, fw: int, h: int, w: int, mode: str) -> Geometry:
    if mode == "letterbox":
        scale = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
        y0, x0 = (h - nh) // 2, (w - nw) // 2
        # model coordinate y maps to frame (y*h - y0) / nh
        return Geometry((0, fh, 0, fw), (y0, y0 + nh, x0, x0 + nw), (h / nh, -y0 / nh, w / nw, -x0 / nw))
    if mode == "center_crop":
        scale = max(h / fh, w / fw)
        ch, cw = min(fh, round(h / scale)), min(fw, round(w / scale))
        y0, x0 = (fh - ch) // 2, (fw - cw) // 2
        return Geometry((y0, y0 + ch, x0, x0 + cw), (0, h, 0, w), (ch / fh, y0 / fh, cw / fw, x0 / fw))
    return Geometry((0, fh, 0, fw), (0, h, 0, w), (1.0, 0.0, 1.0, 0.0))
