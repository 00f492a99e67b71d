"""Turn a BGR frame into exactly what the model's input tensor wants, without per-frame allocations.

Everything is derived from the input tensor (size, channels, dtype, quantisation) and the
pipeline's options (resize mode, colour order, mean/std). Pixel values go through a 256-entry
look-up table that folds normalisation and quantisation into one pass, so a uint8/int8/float32
input costs the same. OpenCV is used here only for resize and colour conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.runtime import TensorSpec

LETTERBOX_PAD_PIXEL = 0


class PreprocessError(ValueError):
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
        self.height, self.width, self.channels = image_input_size(spec)
        self._lut = _value_lut(spec, options, self.channels)
        self._geometry_cache: dict[tuple[int, int], Geometry] = {}
        self._resized: np.ndarray | None = None
        self._last_geometry: Geometry | None = None
        self._converted = np.empty((self.height, self.width, self.channels), np.uint8)
        self._canvas = np.full((self.height, self.width, self.channels), LETTERBOX_PAD_PIXEL, np.uint8)

    def new_buffer(self) -> np.ndarray:
        """An array shaped and typed like the input tensor, to prepare frames into."""
        return np.zeros(self.spec.shape, self.spec.dtype)

    def prepare(self, image: np.ndarray, out: np.ndarray) -> Geometry:
        """Resize, convert and normalise `image` (BGR uint8) into `out` (from new_buffer)."""
        geometry = self.geometry_for(image.shape[0], image.shape[1])
        if geometry is not self._last_geometry:  # a new frame size: old letterbox content must go
            self._canvas.fill(LETTERBOX_PAD_PIXEL)
            self._last_geometry = geometry
        (cy0, cy1, cx0, cx1), (ry0, ry1, rx0, rx1) = geometry.crop, geometry.region
        source = image[cy0:cy1, cx0:cx1]
        size = (rx1 - rx0, ry1 - ry0)
        if self._resized is None or self._resized.shape[:2] != (size[1], size[0]):
            self._resized = np.empty((size[1], size[0], 3), np.uint8)
        interpolation = cv2.INTER_AREA if source.shape[0] > size[1] else cv2.INTER_LINEAR
        cv2.resize(source, size, dst=self._resized, interpolation=interpolation)
        target = self._canvas if (ry1 - ry0, rx1 - rx0) != (self.height, self.width) else self._converted
        region = target[ry0:ry1, rx0:rx1]
        if self.channels == 1:
            region[..., 0] = cv2.cvtColor(self._resized, cv2.COLOR_BGR2GRAY)
        elif self.options.color == "rgb":
            region[...] = self._resized[..., ::-1]
        else:
            region[...] = self._resized
        self._apply_lut(target, out.reshape(self.height, self.width, self.channels))
        return geometry

    def geometry_for(self, frame_height: int, frame_width: int) -> Geometry:
        key = (frame_height, frame_width)
        if key not in self._geometry_cache:
            self._geometry_cache[key] = _geometry(frame_height, frame_width, self.height, self.width, self.options.resize)
        return self._geometry_cache[key]

    def _apply_lut(self, pixels: np.ndarray, out: np.ndarray) -> None:
        if self._lut.ndim == 1:
            cv2.LUT(pixels.reshape(self.height, self.width * self.channels), self._lut,
                    dst=out.reshape(self.height, self.width * self.channels))
        else:  # per-channel mean/std
            for c in range(self.channels):
                np.take(self._lut[:, c], pixels[..., c], out=out[..., c])


def image_input_size(spec: TensorSpec) -> tuple[int, int, int]:
    """(height, width, channels) of an image input [1, H, W, C] with C in 1 or 3; else PreprocessError."""
    shape = spec.shape
    if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3) and shape[1] > 0 and shape[2] > 0:
        return shape[1], shape[2], shape[3]
    if len(shape) == 3 and shape[0] == 1 and shape[1] > 0 and shape[2] > 0:
        return shape[1], shape[2], 1
    raise PreprocessError(
        f"the model's input {spec.name!r} has shape {list(shape)}, which is not an image "
        "([1, height, width, 1 or 3]): a camera, video or image source cannot feed it; "
        "use a model that takes images, or the 'raw' task with a source that produces tensors"
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
    return np.ascontiguousarray(table)


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
