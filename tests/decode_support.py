"""Shared by the decoding tests: the planted values of models/make_layout_models.py, a pipeline's
ActiveModel on a layout model, and the hand-computed letterbox mapping that expectations use."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from support import MODELS, REPO
from edge_agent.config import PipelineConfig, PreprocessOptions, SourceSpec
from edge_agent.records import Decoded
from edge_agent.service.active_model import ActiveModel, build_active_model

sys.path.insert(0, str(REPO / "models"))
import make_layout_models as planted  # noqa: E402  (the constants the models were made from)

INPUT = planted.SIZE


def active_model(name: str, runtime: str = "auto", preprocess: PreprocessOptions | None = None, **keys) -> ActiveModel:
    """The ActiveModel a pipeline would build for tests/model_files/NAME.tflite with these config keys."""
    config = PipelineConfig(name="test", source=SourceSpec(uri="unused"), model=str(MODELS / f"{name}.tflite"),
                            runtime=runtime, preprocess=preprocess or PreprocessOptions(resize="letterbox"))
    return build_active_model(dataclasses.replace(config, **keys))


def decode_frame(active: ActiveModel, frame: np.ndarray) -> Decoded:
    """One frame through the model's preprocessing, interpreter and decoder, as the pipeline does it."""
    buffer = active.acquire_buffer()
    geometry = active.preprocessor.prepare(frame, buffer)
    outputs = active.model.run(buffer)
    active.release_buffer(buffer)
    return active.decode(outputs, geometry)


def solid_frame(height: int, width: int, bgr: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = bgr
    return frame


RED, BLUE = (0, 0, 255), (255, 0, 0)


def letterbox(frame_height: int, frame_width: int, size: int = INPUT) -> tuple[float, int, int, int, int]:
    """(scale, new height, new width, top pad, left pad), computed the way Ultralytics letterboxes."""
    scale = min(size / frame_height, size / frame_width)
    new_h, new_w = round(frame_height * scale), round(frame_width * scale)
    return scale, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def model_to_frame(box_yxyx, frame_height: int, frame_width: int, size: int = INPUT) -> np.ndarray:
    """A box normalised to the letterboxed model input -> normalised to the frame, by hand."""
    _, new_h, new_w, top, left = letterbox(frame_height, frame_width, size)
    ymin, xmin, ymax, xmax = box_yxyx
    mapped = [(ymin * size - top) / new_h, (xmin * size - left) / new_w, (ymax * size - top) / new_h, (xmax * size - left) / new_w]
    return np.clip(mapped, 0, 1)


def input_mean(frame_height: int, frame_width: int, frame_value: float, pad: int = 0, size: int = INPUT) -> float:
    """A channel's mean over the letterboxed input (0..1) for a solid frame: the frame's part and the padding's."""
    _, new_h, new_w, _, _ = letterbox(frame_height, frame_width, size)
    covered = new_h * new_w / (size * size)
    return covered * frame_value + (1 - covered) * pad / 255


def cxcywh_to_yxyx(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    return cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2
