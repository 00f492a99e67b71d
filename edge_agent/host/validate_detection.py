"""`convert --validate DATA` for detection models: COCO mAP of the original and of the converted model.

DATA is what `edge-agent evaluate` takes for detection: a YOLO dataset folder (`images/`,
`labels/`) or a COCO JSON file. Both models see every image prepared by the board's
Preprocessor (the original through a float input, the converted one through its own, possibly
quantised, input) and both outputs go through the decoder the board uses for the converted
model: the layout is matched once, on the converted model, and the original's float outputs
are decoded with that same layout (so box units, class count and anchors are decided once, as
on the board). edge_agent.evaluation scores both with pycocotools' COCOeval.

"Original" is the source model run by TensorFlow (or onnxruntime for ONNX) through
SourceModel.predict: the function that was converted, on the same preprocessed inputs.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent.config import PREPROCESS_KEYS, PipelineConfig, PreprocessOptions, SourceSpec
from edge_agent.decode import LayoutMatch, make_decoder
from edge_agent.evaluation.command import DETECTION_MAX, DETECTION_THRESHOLD
from edge_agent.evaluation.detection import check_evaluator, evaluate_detection
from edge_agent.evaluation.detection_data import load_detection_dataset, looks_like_detection_data
from edge_agent.host.source_model import SourceModel
from edge_agent.runtime.model import LoadedModel, TensorSpec
from edge_agent.samples import Progress, SampleError, float_input_spec
from edge_agent.service.active_model import ActiveModel
from edge_agent.service.decoding import DecoderChoice, decode_options, describe_model

logger = logging.getLogger(__name__)

PURPOSE = "convert --validate"

__all__ = ["DetectionValidation", "check_detection_data", "map_gate_problem", "validate_detection"]


@dataclass(frozen=True)
class DetectionValidation:
    images: int
    objects: int
    map50_original: float | None  # None when the images hold no objects
    map50_converted: float | None
    map_original: float | None  # mAP@0.5:0.95, COCO's primary metric
    map_converted: float | None
    layout: str
    problems: tuple[str, ...]  # files left out, one line each
    latency_ms_mean: float  # the converted model's invoke, per image
    latency_ms_p50: float
    latency_ms_p95: float
    runtime: str
    threads: int

    @property
    def map50_drop(self) -> float | None:
        return _drop(self.map50_original, self.map50_converted)

    @property
    def map_drop(self) -> float | None:
        return _drop(self.map_original, self.map_converted)

    def to_dict(self) -> dict:
        values = {**dataclasses.asdict(self), "task": "detection", "map50_drop": self.map50_drop,
                  "map_drop": self.map_drop, "problems": list(self.problems)}
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in values.items()}


def _drop(original: float | None, converted: float | None) -> float | None:
    return None if original is None or converted is None else original - converted


def check_detection_data(path: Path) -> None:
    """Before converting: the data is a detection dataset and pycocotools is there to score it."""
    if not looks_like_detection_data(path):
        raise SampleError(f"--validate {path}: a detection model is validated on detection data, as `edge-agent "
                          "evaluate` takes it: a YOLO dataset folder (images/, labels/ with 'class cx cy w h' lines) "
                          "or a COCO .json file")
    check_evaluator()


def validate_detection(source: SourceModel, converted: LoadedModel, data: Path, options: PreprocessOptions,
                       labels: list[str] | None,
                       progress: Callable[[str], Progress] | None = None) -> DetectionValidation:
    """Score both models on `data` (`progress`: a progress callback for a label, one per model)."""
    check_detection_data(data)
    config = _pipeline_config(data, options)
    on_board = ActiveModel(converted, config, labels)  # DecodeError when no detection layout fits the outputs
    original = _OriginalActiveModel(_OriginalModel(source, converted), config, labels, on_board.layout)
    dataset = load_detection_dataset(data, on_board.labels, len(on_board.labels) if on_board.labels else None)
    converted_report = evaluate_detection(on_board, dataset, progress("validating converted") if progress else None)
    original_report = evaluate_detection(original, dataset, progress("validating original") if progress else None)
    for problem in converted_report.problems:
        logger.warning("%s: left out %s", PURPOSE, problem)
    inference = converted_report.latency["inference"]
    return DetectionValidation(
        images=converted_report.images,
        objects=converted_report.objects,
        map50_original=original_report.map50,
        map50_converted=converted_report.map50,
        map_original=original_report.map50_95,
        map_converted=converted_report.map50_95,
        layout=on_board.layout.layout,
        problems=converted_report.problems,
        latency_ms_mean=inference.mean_ms,
        latency_ms_p50=inference.p50_ms,
        latency_ms_p95=inference.p95_ms,
        runtime=converted.runtime,
        threads=converted.num_threads,
    )


def map_gate_problem(result: DetectionValidation, max_drop: float) -> str | None:
    """Why the converted detector fails --max-map-drop (either mAP dropping by more), or None when it passes."""
    failed = [(name, original, converted, drop) for name, original, converted, drop in (
        ("mAP@0.5", result.map50_original, result.map50_converted, result.map50_drop),
        ("mAP@0.5:0.95", result.map_original, result.map_converted, result.map_drop),
    ) if drop is not None and drop > max_drop]
    if not failed:
        return None
    lost = "; ".join(f"{name} dropped from {original:.4f} to {converted:.4f} ({drop * 100:+.2f} points lost)"
                     for name, original, converted, drop in failed)
    return (f"{lost}; --max-map-drop allows {max_drop * 100:.2f}: the converted model was not written; try another "
            "--quantize mode or a larger, more typical --calibration set")


def _pipeline_config(data: Path, options: PreprocessOptions) -> PipelineConfig:
    """What `edge-agent evaluate` runs: COCO's low threshold and 100 detections per image, convert's preprocessing
    (it is what the bundle's manifest will tell the board, so it counts as set)."""
    return PipelineConfig(
        name="validate", source=SourceSpec(uri=str(data)), model="", task="detection", num_threads=0,
        threshold=DETECTION_THRESHOLD, max_detections=DETECTION_MAX, preprocess=options,
        preprocess_keys=tuple(key for key in PREPROCESS_KEYS if key != "pad"),
    )


class _OriginalModel:
    """The source model behind what ActiveModel drives (a LoadedModel's run/input/outputs): float input in
    the board's frame layout, float outputs shaped as the converted model's."""

    runtime = "original"
    delegate = "none"
    num_threads = 0

    def __init__(self, source: SourceModel, converted: LoadedModel):
        self.file = converted.file  # operators and export metadata: what decides the preprocessing
        self.inputs = [float_input_spec(source.input.name, source.input.shape)]
        self.outputs: list[TensorSpec] = [dataclasses.replace(spec, dtype=np.dtype(np.float32), scale=0.0, zero_point=0)
                                          for spec in converted.outputs]
        self._source = source

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    @property
    def name(self) -> str:
        return f"{self._source.path.name} (original)"

    @property
    def sha256(self) -> str:
        return ""

    def run(self, input_array: np.ndarray) -> list[np.ndarray]:
        outputs = self._source.predict(input_array)
        if len(outputs) != len(self.outputs):
            raise SampleError(f"the converted model has {len(self.outputs)} outputs, the original {len(outputs)}: "
                              "cannot compare them")
        shaped = []
        for output, spec in zip(outputs, self.outputs):
            if output.size != int(np.prod(spec.shape)):
                raise SampleError(f"output sizes differ ({list(output.shape)} vs {list(spec.shape)}): "
                                  "cannot compare the models")
            shaped.append(np.asarray(output, np.float32).reshape(spec.shape))
        return shaped


class _OriginalActiveModel(ActiveModel):
    """The original decoded with the converted model's layout (matched once, as the board matches it)."""

    def __init__(self, model: _OriginalModel, config: PipelineConfig, labels: list[str] | None, match: LayoutMatch):
        self._board_match = match
        super().__init__(model, config, labels)  # type: ignore[arg-type]  # duck-typed LoadedModel

    def _make_decoder(self, config: PipelineConfig, labels: list[str] | None) -> DecoderChoice:
        decode, fitted = make_decoder(self._board_match, describe_model(self.model), decode_options(config), labels)
        return DecoderChoice(self._board_match.task, self._board_match, decode, fitted)
