"""Compare the converted model with the original on the same samples; the accuracy gate for CI.

`--validate DATA` is a folder with one sub-folder of images per class (the folder name is
the label; with --labels its position in the labels file is the class id, otherwise
all-numeric names are the ids and other names are numbered in sorted order), a folder of
unlabelled images, or a .npz with `x` (and optionally integer `y`). Both models see every
sample prepared by the board's Preprocessor: the original through a float input, the
converted one through its own (possibly quantised) input, as on the device. The converted
side runs in the agent's runtime (LiteRT / tflite-runtime), which also gives the latency.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.samples import Progress, SampleError, SampleSet, float_input_spec, load_labelled_samples
from edge_agent.host.source_model import SourceModel
from edge_agent.runtime.model import LoadedModel, TensorSpec
from edge_agent.errors import EdgeAgentError

PURPOSE = "--validate"
WARMUP_INVOKES = 3


class AccuracyGateError(EdgeAgentError, RuntimeError):
    """The converted model is worse than the original by more than --max-accuracy-drop."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ValidationResult:
    samples: int
    labelled: bool
    accuracy_original: float | None
    accuracy_converted: float | None
    accuracy_drop: float | None
    agreement_top1: float | None
    max_abs_diff: float
    mean_abs_diff: float
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p95: float
    runtime: str
    threads: int

    def to_dict(self) -> dict:
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def load_validation_data(path: Path, spec: TensorSpec, options: PreprocessOptions, labels: list[str] | None,
                         progress: Progress | None = None, purpose: str = PURPOSE) -> SampleSet:
    """Read the validation (or --fine-tune) samples and their class ids (see the module docstring for the layouts)."""
    return load_labelled_samples(path, spec, options, labels, purpose, progress)


def validate_conversion(source: SourceModel, converted: LoadedModel, samples: SampleSet,
                        options: PreprocessOptions, progress: Progress | None = None) -> ValidationResult:
    """Run both models on every sample and compare them (see ValidationResult for what is measured)."""
    original_spec = float_input_spec(source.input.name, source.input.shape)
    top1_original, top1_converted, latencies, max_diff, diff_sum, diff_count = [], [], [], 0.0, 0.0, 0
    pairs = zip(samples.model_inputs(original_spec, options), samples.model_inputs(converted.input, options))
    for number, (original_input, converted_input) in enumerate(pairs, 1):
        if number == 1:
            for _ in range(WARMUP_INVOKES):  # the first invokes set up caches and thread pools
                converted.run(converted_input)
        expected = source.predict(original_input)
        started = time.perf_counter()
        outputs = converted.run(converted_input)
        latencies.append((time.perf_counter() - started) * 1000.0)
        if len(outputs) != len(expected):
            raise SampleError(
                f"the converted model has {len(outputs)} outputs, the original {len(expected)}: cannot compare them"
            )
        actual = [_dequantize(out, spec) for out, spec in zip(outputs, converted.outputs)]
        for a, b in zip(expected, actual):
            if a.size != b.size:
                raise SampleError(f"output sizes differ ({a.shape} vs {b.shape}): cannot compare the models")
            difference = np.abs(a.astype(np.float64).ravel() - b.astype(np.float64).ravel())
            max_diff = max(max_diff, float(difference.max()))
            diff_sum += float(difference.sum())
            diff_count += difference.size
        if expected[0].size > 1:
            top1_original.append(int(np.argmax(expected[0])))
            top1_converted.append(int(np.argmax(actual[0])))
        if progress:
            progress(number, len(samples))
    return _result(samples, top1_original, top1_converted, latencies, max_diff, diff_sum / max(diff_count, 1), converted)


def _result(samples: SampleSet, top1_original: list[int], top1_converted: list[int], latencies: list[float],
            max_diff: float, mean_diff: float, converted: LoadedModel) -> ValidationResult:
    classified = len(top1_original) == len(samples)
    labelled = samples.labels is not None and classified
    accuracy_original = float(np.mean(np.asarray(top1_original) == samples.labels)) if labelled else None
    accuracy_converted = float(np.mean(np.asarray(top1_converted) == samples.labels)) if labelled else None
    return ValidationResult(
        samples=len(samples),
        labelled=labelled,
        accuracy_original=accuracy_original,
        accuracy_converted=accuracy_converted,
        accuracy_drop=accuracy_original - accuracy_converted if labelled else None,
        agreement_top1=float(np.mean(np.asarray(top1_original) == np.asarray(top1_converted))) if classified else None,
        max_abs_diff=max_diff,
        mean_abs_diff=mean_diff,
        latency_ms_mean=float(np.mean(latencies)),
        latency_ms_p50=float(np.percentile(latencies, 50)),
        latency_ms_p95=float(np.percentile(latencies, 95)),
        runtime=converted.runtime,
        threads=converted.num_threads,
    )


def _dequantize(output: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantized:
        return (output.astype(np.float32) - spec.zero_point) * spec.scale
    return output.astype(np.float32)


def accuracy_gate_problem(result: ValidationResult, max_drop: float) -> str | None:
    """Why the converted model fails the gate, or None when it passes."""
    if result.accuracy_drop is None:
        return None
    if result.accuracy_drop > max_drop:
        return (
            f"accuracy dropped from {result.accuracy_original:.4f} to {result.accuracy_converted:.4f} "
            f"({result.accuracy_drop * 100:+.2f} points lost; --max-accuracy-drop allows {max_drop * 100:.2f}): "
            "the converted model was not written; try another --quantize mode or a larger, more typical --calibration set"
        )
    return None
