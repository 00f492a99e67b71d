"""Samples for calibration, validation and evaluation, turned into model inputs exactly as the board does it.

Board-side (no TensorFlow): `edge-agent evaluate` reads them on a board, `convert` on the workstation.

A sample is either an image, kept as the BGR uint8 frame a camera would deliver, or an
already-prepared tensor. Images become model inputs through the agent's own
`edge_agent.preprocess.Preprocessor` (resize mode, colour order, mean/std, quantisation),
so the host calibrates and validates with the very code the board runs.

Accepted inputs:
  image files      any size OpenCV decodes, resized like camera frames; refused when smaller
                   than the model input (the board never sees such upscaled blur) or grey
                   while the model takes colour
  a video file     any file OpenCV's VideoCapture reads (.mp4, .avi, .mkv, ...): frames picked
                   evenly through the clip, the same size rule as images
  .npy / .npz `x`  uint8 [N, H, W] or [N, H, W, C]: pixels at the model's input size, channels
                   in the model's colour order (--color); normalised like camera frames
                   float [N, ...]: already preprocessed, used as they are; must match the input shape
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.preprocess import PreprocessError, Preprocessor, image_input_size
from edge_agent.runtime.model import TensorSpec
from edge_agent.sources.spec import IMAGE_SUFFIXES
from edge_agent.errors import InputError

Progress = Callable[[int, int], None]


class SampleError(InputError, ValueError):
    """Calibration or validation data that cannot feed the model (wrong size, channels, empty, unreadable)."""


@dataclass
class SampleSet:
    """Images (BGR frames) or prepared tensors, with optional integer labels."""

    source: str
    frames: list[np.ndarray] | None = None
    tensors: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.frames) if self.frames is not None else len(self.tensors)

    def subset(self, indexes: np.ndarray) -> SampleSet:
        return SampleSet(
            self.source,
            [self.frames[i] for i in indexes] if self.frames is not None else None,
            self.tensors[indexes] if self.tensors is not None else None,
            self.labels[indexes] if self.labels is not None else None,
            self.class_names,
        )

    def model_inputs(self, spec: TensorSpec, options: PreprocessOptions) -> Iterator[np.ndarray]:
        """Each sample as an array shaped and typed like `spec` (float, or quantised as the board does)."""
        if self.frames is not None:
            preprocessor = Preprocessor(spec, options)
            for frame in self.frames:
                buffer = preprocessor.new_buffer()
                preprocessor.prepare(frame, buffer)
                yield buffer
            return
        for tensor in self.tensors:
            yield _tensor_as_input(tensor, spec)


def float_input_spec(name: str, shape: tuple[int, ...]) -> TensorSpec:
    """A TensorSpec for the original model's float input, so the Preprocessor can fill it."""
    return TensorSpec(index=0, name=name, shape=tuple(shape), dtype=np.dtype(np.float32), scale=0.0, zero_point=0)


def image_size_of(spec: TensorSpec, purpose: str) -> tuple[int, int, int]:
    try:
        return image_input_size(spec)
    except PreprocessError:
        raise SampleError(
            f"{purpose}: the model's input {list(spec.shape)} is not an image; pass a .npy/.npz of prepared tensors"
        ) from None


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(paths: list[Path], spec: TensorSpec, purpose: str, progress: Progress | None = None) -> list[np.ndarray]:
    """Decode images to BGR frames, refusing ones that do not fit the model (see the module docstring)."""
    height, width, channels = image_size_of(spec, purpose)
    frames = []
    for number, path in enumerate(paths, 1):
        frames.append(read_image(path, height, width, channels, purpose))
        if progress:
            progress(number, len(paths))
    return frames


def read_image(path: Path, height: int, width: int, channels: int, purpose: str) -> np.ndarray:
    """One image file as a BGR frame; SampleError when it cannot feed a model of that input size."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SampleError(f"{purpose}: {path} is not an image OpenCV can decode: remove it from the folder")
    if image.dtype != np.uint8:
        raise SampleError(f"{purpose}: {path} has {image.dtype} pixels; cameras deliver 8-bit images: save it as 8-bit")
    if image.shape[0] < height or image.shape[1] < width:
        raise SampleError(
            f"{purpose}: {path} is {image.shape[1]}x{image.shape[0]} but the model input is {width}x{height}; "
            "images smaller than the input are refused (a camera delivers larger frames): use images at least "
            "the input size"
        )
    image_channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 3 and image_channels == 1:
        raise SampleError(
            f"{purpose}: {path} is a grey image but the model takes 3-channel colour input: use colour images "
            "like the camera's"
        )
    if image_channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image_channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # what the board's IMREAD_COLOR does
    if image_channels != 3:
        raise SampleError(f"{purpose}: {path} has {image_channels} channels; expected grey, colour or colour+alpha")
    return image


def read_video_frames(path: Path, spec: TensorSpec, purpose: str, limit: int,
                      progress: Progress | None = None) -> list[np.ndarray]:
    """At most `limit` BGR frames spread evenly through the video at `path`, as a board's file source reads them.

    The frames are counted by decoding (container frame counts are often wrong), then the chosen
    ones are decoded in a second pass, so a long clip is never held in memory whole.
    """
    height, width, channels = image_size_of(spec, purpose)
    count = _count_frames(path)
    if count == 0:
        raise SampleError(f"{purpose}: {path} has no frame OpenCV can read (not a video, an unsupported codec, or "
                          "empty): pass a clip OpenCV plays, a folder of images or a .npy")
    wanted = set(spread_indexes(count, limit).tolist())
    capture = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        for number in range(count):
            if not capture.grab():
                break
            if number not in wanted:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                continue
            frames.append(_video_frame(frame, path, number, height, width, channels, purpose))
            if progress:
                progress(len(frames), len(wanted))
    finally:
        capture.release()
    if not frames:
        raise SampleError(f"{purpose}: {path}: no frame could be decoded: re-encode the clip (e.g. H.264 or MJPG)")
    return frames


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return 0
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def _video_frame(frame: np.ndarray, path: Path, number: int, height: int, width: int, channels: int,
                 purpose: str) -> np.ndarray:
    if frame.shape[0] < height or frame.shape[1] < width:
        raise SampleError(f"{purpose}: {path} is {frame.shape[1]}x{frame.shape[0]} but the model input is "
                          f"{width}x{height}; frames smaller than the input are refused: use a clip at least the "
                          "input size")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)  # as the board's OpenCV source does
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame.copy()


def spread_indexes(count: int, limit: int) -> np.ndarray:
    """At most `limit` indexes evenly spread over range(count), first and last included (reproducible)."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


def samples_from_array(array: np.ndarray, spec: TensorSpec, options: PreprocessOptions, source: str,
                       purpose: str) -> SampleSet:
    """A .npy/.npz array as samples: uint8 pixels become frames, floats are used as prepared tensors."""
    if array.ndim < 2 or len(array) == 0:
        raise SampleError(f"{purpose}: {source} holds an array of shape {list(array.shape)}; expected [N, ...] with N > 0")
    if array.dtype == np.uint8:
        return SampleSet(source, frames=_pixels_to_frames(array, spec, options, source, purpose))
    if not np.issubdtype(array.dtype, np.floating):
        raise SampleError(f"{purpose}: {source} has dtype {array.dtype}; expected uint8 pixels or float tensors")
    expected = tuple(spec.shape[1:])
    shape = tuple(array.shape[1:])
    if shape != expected and not (shape + (1,) == expected):
        raise SampleError(
            f"{purpose}: {source} has samples of shape {list(shape)} but the model input is {list(spec.shape)} "
            f"(wrong size or channel count): float arrays must already have the input's shape {list(expected)}"
        )
    return SampleSet(source, tensors=array.reshape((len(array),) + expected).astype(np.float32))


def _pixels_to_frames(array: np.ndarray, spec: TensorSpec, options: PreprocessOptions, source: str,
                      purpose: str) -> list[np.ndarray]:
    height, width, channels = image_size_of(spec, purpose)
    pixels = array[..., None] if array.ndim == 3 else array
    if pixels.ndim != 4 or pixels.shape[1:] != (height, width, channels):
        raise SampleError(
            f"{purpose}: {source} holds uint8 images of shape {list(array.shape[1:])} but the model input is "
            f"{height}x{width} with {channels} channel(s) (wrong size or channel count): pixel arrays must be "
            f"[N, {height}, {width}, {channels}]"
        )
    if channels == 1:
        return [cv2.cvtColor(p[:, :, 0], cv2.COLOR_GRAY2BGR) for p in pixels]
    if options.color == "rgb":
        return [cv2.cvtColor(p, cv2.COLOR_RGB2BGR) for p in pixels]
    return [np.ascontiguousarray(p) for p in pixels]


def _tensor_as_input(tensor: np.ndarray, spec: TensorSpec) -> np.ndarray:
    values = tensor.reshape(spec.shape)
    if spec.dtype == np.float32:
        return values.astype(np.float32)
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        return np.clip(np.round(values / spec.scale + spec.zero_point), info.min, info.max).astype(spec.dtype)
    return values.astype(spec.dtype)


def load_array_file(path: Path, purpose: str) -> dict[str, np.ndarray]:
    """Arrays of a .npy (as {"x": ...}) or .npz file; SampleError when unreadable."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        return {"x": np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as err:
        raise SampleError(f"{purpose}: {path} cannot be read as a numpy file ({err})") from None


def load_labelled_samples(path: Path, spec: TensorSpec, options: PreprocessOptions, labels: list[str] | None,
                          purpose: str, progress: Progress | None = None) -> SampleSet:
    """Samples and their class ids from a folder or a .npz/.npy file (`purpose` starts each error).

    A folder holds one sub-folder of images per class (the folder name is the label; with
    `labels` its position there is the class id, otherwise all-numeric names are the ids and
    other names are numbered in sorted order) or unlabelled images; a .npz holds `x` and
    optionally integer (or one-hot) `y`.
    """
    if not path.exists():
        raise SampleError(f"{purpose}: {path} does not exist")
    if path.is_dir():
        return _load_folder(path, spec, labels, purpose, progress)
    if path.suffix.lower() not in (".npz", ".npy"):
        raise SampleError(f"{purpose}: {path} is neither a folder of images nor a .npz/.npy file")
    arrays = load_array_file(path, purpose)
    if "x" not in arrays:
        raise SampleError(f"{purpose}: {path} has no array 'x' (it has {', '.join(sorted(arrays)) or 'none'})")
    samples = samples_from_array(arrays["x"], spec, options, str(path), purpose)
    if "y" in arrays:
        samples.labels = _class_ids(arrays["y"], len(samples), path, purpose)
    return samples


def _load_folder(folder: Path, spec: TensorSpec, labels: list[str] | None, purpose: str,
                 progress: Progress | None) -> SampleSet:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and list_images(p))
    if not classes:
        images = list_images(folder)
        if not images:
            raise SampleError(f"{purpose}: {folder} holds no images (expected one sub-folder of images per label)")
        return SampleSet(str(folder), frames=read_images(images, spec, purpose, progress))
    names = [c.name for c in classes]
    if labels:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise SampleError(f"{purpose}: sub-folders {unknown} are not in the labels file; name them after its labels")
        ids = {n: labels.index(n) for n in names}
    elif all(n.isdigit() for n in names):
        ids = {n: int(n) for n in names}
    else:
        ids = {n: i for i, n in enumerate(names)}
    paths, targets = [], []
    for folder_path in classes:
        for image in list_images(folder_path):
            paths.append(image)
            targets.append(ids[folder_path.name])
    frames = read_images(paths, spec, purpose, progress)
    return SampleSet(str(folder), frames=frames, labels=np.asarray(targets), class_names=names)


def _class_ids(y: np.ndarray, count: int, path: Path, purpose: str) -> np.ndarray:
    if y.ndim == 2:
        y = y.argmax(axis=1)  # one-hot
    if y.ndim != 1 or len(y) != count or not np.issubdtype(y.dtype, np.integer):
        raise SampleError(f"{purpose}: {path}: 'y' must hold {count} integer class ids (or one-hot rows)")
    return y.astype(np.int64)
