"""What decoding needs to know about a model, as plain data (no interpreter, so decoders test without one).

The service builds a ModelDescription from the loaded model when the model loads; layout matching
and every decoder read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_agent.decode.common import Quantization


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: name, shape, dtype and quantisation (scale 0: not quantised)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quant(self) -> Quantization:
        return Quantization(self.scale, self.zero_point)

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.dtype(self.dtype).kind in "iu"


@dataclass(frozen=True)
class ExportFacts:
    """What an exporter wrote into the file about the model (Ultralytics' metadata.json); empty when nothing."""

    producer: str = ""  # "ultralytics" when the file carries Ultralytics' metadata
    task: str = ""  # the exporter's own word: detect, pose, segment, classify, obb, semantic
    end2end: bool | None = None  # NMS inside the model (None: the metadata does not say)
    keypoint_shape: tuple[int, int] | None = None  # pose: (keypoints, values per keypoint)
    keypoint_names: tuple[str, ...] = ()
    class_count: int | None = None  # len(names)


@dataclass(frozen=True)
class ModelDescription:
    """A model as the decoders see it; `input_height`/`input_width` come from the preprocessing's reading
    of the input tensor (NHWC or NCHW) so the two never disagree."""

    name: str
    input: TensorInfo
    input_height: int
    input_width: int
    input_layout: str  # "nhwc" | "nchw" | "" (not an image)
    outputs: tuple[TensorInfo, ...]
    operators: tuple[str, ...] = ()
    output_roles: tuple[str, ...] = ()  # per output: boxes/classes/scores/count of TFLite_Detection_PostProcess, or ""
    export: ExportFacts = field(default_factory=ExportFacts)

    @property
    def output_shapes(self) -> list[list[int]]:
        return [list(o.shape) for o in self.outputs]
