"""`edge-agent convert` from start to finish: load, prune, calibrate, convert, label, validate, check, write.

Nothing is written to OUT until every step has passed: the model is converted and
validated in memory, and only then written with temp file + fsync + rename. A failed
accuracy gate raises AccuracyGateError carrying the report (so CI still gets the JSON).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edge_agent import __version__
from edge_agent.atomic_file import write_file_atomically
from edge_agent.config import PreprocessOptions
from edge_agent.host.bundling import read_labels_option
from edge_agent.host.calibration import load_calibration, representative_dataset
from edge_agent.host.convert import ConversionError, convert_to_tflite
from edge_agent.host.edgetpu import COMPILER_HELP, analyse_readiness, find_compiler, run_compiler
from edge_agent.host.metadata import (
    CONVERSION_INFO_FILE,
    LABELS_FILE,
    attach_files,
    conversion_info_bytes,
    labels_file_bytes,
)
from edge_agent.host.pruning import PruneResult, check_prune_request, prune_model
from edge_agent.host.report import build_report
from edge_agent.samples import SampleError, SampleSet, float_input_spec
from edge_agent.host.source_model import SourceModel, SourceModelError, SourceOptions, load_source_model
from edge_agent.host.tensorflow_loader import TensorFlowMissing, import_tensorflow
from edge_agent.host.weights import WeightSparsity, compressed_size, kernel_latency, weight_sparsity
from edge_agent.host.validate import AccuracyGateError, accuracy_gate_problem, load_validation_data, validate_conversion
from edge_agent.host.validate_detection import check_detection_data, map_gate_problem, validate_detection
from edge_agent.evaluation.detection_data import looks_like_detection_data
from edge_agent.delivery.keys import SigningKeyError
from edge_agent.preprocess import PreprocessError
from edge_agent.runtime import DelegateError, ModelFileError, ModelLoadError, load_model_file
from edge_agent.runtime.tflite_file import model_file_from_bytes
from edge_agent.service.decoding import auto_task

logger = logging.getLogger(__name__)

# Errors that mean "the input was wrong" (exit 2); AccuracyGateError is the only exit-1 case.
HOST_INPUT_ERRORS = (
    TensorFlowMissing, SourceModelError, SampleError, ConversionError, PreprocessError, ModelFileError,
    ModelLoadError, DelegateError, SigningKeyError, OSError, ValueError,
)
ProgressFactory = Callable[[str], Callable[[int, int], None]]

__all__ = ["AccuracyGateError", "ConvertRequest", "HOST_INPUT_ERRORS", "run_convert"]


@dataclass(frozen=True)
class ConvertRequest:
    source: Path
    output: Path
    quantize: str = "none"
    io_type: str = "uint8"
    calibration: Path | None = None
    calibration_limit: int = 300
    signature: str | None = None
    labels: Path | None = None
    task: str | None = None
    resize: str = "stretch"
    color: str = "rgb"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (255.0,)
    validate: Path | None = None
    max_accuracy_drop: float | None = None
    max_map_drop: float | None = None  # detection: mAP@0.5 and mAP@0.5:0.95 may each drop this much
    threads: int = 0
    edgetpu: bool = False
    # frozen graphs (toco's names) and ONNX (--input-shapes only)
    input_arrays: tuple[str, ...] = ()
    output_arrays: tuple[str, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()
    # pruning (Keras sources)
    prune: float | None = None
    fine_tune: Path | None = None
    fine_tune_epochs: int = 5

    @property
    def source_options(self) -> SourceOptions:
        return SourceOptions(self.signature, self.input_arrays, self.output_arrays, self.input_shapes)

    @property
    def preprocess(self) -> PreprocessOptions:
        return PreprocessOptions(resize=self.resize, color=self.color, mean=tuple(self.mean), std=tuple(self.std))


def run_convert(request: ConvertRequest, progress: ProgressFactory | None = None) -> dict:
    """Convert, validate and check one model; returns the report (see report.build_report)."""
    _check_request(request)
    import_tensorflow()  # fail first, with the install command, when the host extra is missing
    labels = _read_labels(request.labels)
    options = request.preprocess
    if any(s == 0 for s in options.std):
        raise ValueError("--std must not contain 0")
    source = load_source_model(request.source, options=request.source_options)
    if request.prune is not None:
        check_prune_request(request.prune, source.kind, request.fine_tune_epochs)
    float_spec = float_input_spec(source.input.name, source.input.shape)
    calibration = None
    representative = None
    if request.quantize == "int8":
        if len(source.inputs) != 1:
            raise SourceModelError(f"{request.source} has {len(source.inputs)} inputs; int8 calibration supports one")
        calibration = load_calibration(request.calibration, float_spec, options, request.calibration_limit,
                                       progress("calibration") if progress else None)
        representative = representative_dataset(calibration, float_spec, options)
    elif request.calibration is not None:
        logger.warning("--calibration is only used by --quantize int8; ignoring it for %s", request.quantize)
    validation_samples = None
    detection_data = request.validate is not None and looks_like_detection_data(request.validate)
    if detection_data:
        check_detection_data(request.validate)  # pycocotools is there, before the conversion's minutes
        if request.max_accuracy_drop is not None:
            raise SampleError(f"--validate {request.validate} is detection data: gate a detection model with "
                              "--max-map-drop D, not --max-accuracy-drop")
    elif request.max_map_drop is not None:
        raise SampleError("--max-map-drop needs detection data in --validate: a YOLO dataset folder (images/, labels/) "
                          "or a COCO .json file, as `edge-agent evaluate` takes")
    elif request.validate is not None:
        validation_samples = load_validation_data(request.validate, float_spec, options, labels,
                                                  progress("validation data") if progress else None)
        if request.max_accuracy_drop is not None and validation_samples.labels is None:
            raise SampleError("--max-accuracy-drop needs labelled validation data (sub-folders per label, or y in the .npz)")
    pruned = None
    to_convert = source
    if request.prune is not None:
        fine_tune = load_validation_data(request.fine_tune, float_spec, options, labels,
                                         progress("fine-tune data") if progress else None, purpose="--fine-tune")
        pruned = prune_model(source, request.prune, fine_tune, request.fine_tune_epochs, options,
                             progress("fine-tuning") if progress else None)
        to_convert = source.with_function(pruned.function, pruned.model)
    logger.info("converting %s (%s) with --quantize %s", request.source, source.kind, request.quantize)
    converted = convert_to_tflite(to_convert, request.quantize, request.io_type, representative)
    model_file = model_file_from_bytes(request.output, converted)
    loaded = load_model_file(model_file, runtime="auto", num_threads=request.threads or None)
    task = request.task or auto_task(loaded.file, loaded.input, loaded.outputs, len(labels) if labels else None)
    if detection_data and task != "detection":
        raise SampleError(f"--validate {request.validate} is detection data, but the converted model's outputs "
                          f"{[list(spec.shape) for spec in loaded.outputs]} decode as {task!r}: pass --task detection "
                          "if it is a detector (`edge-agent inspect` shows the layouts the agent knows)")
    if labels and task == "classification":
        classes = loaded.outputs[0].shape[-1]
        if len(labels) not in (classes, classes + 1):
            raise ValueError(f"--labels has {len(labels)} entries but the model's output has {classes} classes: "
                             "pass the labels file that belongs to this model")
    validation = None
    if validation_samples is not None:
        validation = validate_conversion(source, loaded, validation_samples, options,
                                         progress("validating") if progress else None)
    if detection_data:
        validation = validate_detection(source, loaded, request.validate, options, labels, progress)
    sparsity = weight_sparsity(converted)
    pruning = _pruning_report(request, source, pruned, converted, sparsity, representative, validation_samples,
                              options) if pruned else None
    readiness = analyse_readiness(converted, str(request.output)) if request.quantize == "int8" else None
    info = {
        "source": str(request.source),
        "source_kind": source.kind,
        "source_format": source.source_format,
        "signature": source.signature,
        "input_layout": source.layout,
        "task": task,
        "task_option": request.task,  # None: `task` is the layout matcher's, as the board's task = "auto"
        "labels": labels,
        "preprocessing": {"resize": options.resize, "color": options.color, "mean": list(options.mean),
                          "std": list(options.std)},
        "converter": {"edge_agent": __version__, "tensorflow": import_tensorflow().__version__,
                      "quantize": request.quantize, "io_type": request.io_type if request.quantize == "int8" else None},
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "validation": validation.to_dict() if validation else None,
        "pruning": {"target_sparsity": pruned.target_sparsity, "sparsity": sparsity.sparsity,
                    "fine_tune_epochs": pruned.epochs} if pruned else None,
    }
    files = {CONVERSION_INFO_FILE: conversion_info_bytes(info)}
    if labels and task == "classification":
        files[LABELS_FILE] = labels_file_bytes(labels)
    final = attach_files(converted, files)
    report = build_report(request, source, final, loaded, calibration, validation, readiness, info, sparsity,
                          compressed_size(final), pruning)
    problem = None
    if validation is not None and request.max_accuracy_drop is not None and not detection_data:
        problem = accuracy_gate_problem(validation, request.max_accuracy_drop)
    if validation is not None and request.max_map_drop is not None and detection_data:
        problem = map_gate_problem(validation, request.max_map_drop)
    if request.max_accuracy_drop is not None or request.max_map_drop is not None:
        report["passed"] = problem is None
    if problem:
        raise AccuracyGateError(problem, report)
    if request.edgetpu:
        report["edgetpu_compiler"] = _compile_for_edgetpu(final, request.output)
    write_file_atomically(request.output, final)
    return report


def _pruning_report(request: ConvertRequest, source: SourceModel, pruned: PruneResult, converted: bytes,
                    sparsity: WeightSparsity, representative: Callable | None, samples: SampleSet | None,
                    options: PreprocessOptions) -> dict:
    """What pruning bought: the same conversion without pruning beside the pruned one (size, zeros, latency)."""
    unpruned = convert_to_tflite(source, request.quantize, request.io_type, representative)
    sample = _latency_sample(converted, samples, options)
    threads = request.threads or 1
    report = pruned.to_dict()
    report.update({
        "sparsity": sparsity.sparsity,
        "zero_weights": sparsity.zeros,
        "weights": sparsity.weights,
        "pruned": {"size_bytes": len(converted), "size_compressed_bytes": compressed_size(converted),
                   "latency": kernel_latency(converted, sample, threads).to_dict()},
        "unpruned": {"size_bytes": len(unpruned), "size_compressed_bytes": compressed_size(unpruned),
                     "sparsity": weight_sparsity(unpruned).sparsity,
                     "latency": kernel_latency(unpruned, sample, threads).to_dict()},
        "note": "sizes without the attached labels/record; latency per invoke on this machine, one sample repeated. "
                "XNNPACK's sparse inference covers float 1x1 convolutions (MobileNet-style NCHW subgraphs); "
                "where a model has none, its latency does not change with the zeros",
    })
    return report


def _latency_sample(content: bytes, samples: SampleSet | None, options: PreprocessOptions) -> np.ndarray:
    loaded = load_model_file(model_file_from_bytes(Path("pruned.tflite"), content), runtime="auto", num_threads=1)
    if samples is not None:
        return next(iter(samples.subset(np.arange(1)).model_inputs(loaded.input, options)))
    return np.zeros(loaded.input.shape, loaded.input.dtype)


def _check_request(request: ConvertRequest) -> None:
    if request.prune is not None and request.fine_tune is None:
        raise ValueError("--prune needs --fine-tune DATA (labelled data in the --validate formats): pruning without "
                         "fine-tuning loses accuracy for nothing")
    if request.fine_tune is not None and request.prune is None:
        raise ValueError("--fine-tune is only used with --prune SPARSITY")
    if request.prune is not None:
        check_prune_request(request.prune, None, request.fine_tune_epochs)
    if request.quantize == "int8" and request.calibration is None:
        raise ValueError("--quantize int8 needs --calibration DATA (a folder of images or a .npy file like the camera's)")
    if request.max_accuracy_drop is not None and request.validate is None:
        raise ValueError("--max-accuracy-drop needs --validate DATA to measure the accuracy")
    if request.max_map_drop is not None and request.validate is None:
        raise ValueError("--max-map-drop needs --validate DATA (a YOLO dataset folder or a COCO .json) to measure mAP")
    if request.output.exists() and request.output.is_dir():
        raise ValueError(f"-o {request.output} is a folder: name the .tflite file to write")
    if not request.output.parent.is_dir():
        raise ValueError(f"-o {request.output}: the folder {request.output.parent} does not exist")


def _read_labels(path: Path | None) -> list[str] | None:
    return None if path is None else read_labels_option(path)


def _compile_for_edgetpu(model: bytes, output: Path) -> dict:
    if find_compiler() is None:
        logger.warning("%s", COMPILER_HELP)
        return {"available": False, "message": COMPILER_HELP}
    run = run_compiler(model, output.stem)
    result = {"available": True, "returncode": run.returncode, "log": run.log, "output": None}
    if run.compiled_model is not None and run.returncode == 0:
        compiled_path = output.with_name(f"{output.stem}_edgetpu.tflite")
        write_file_atomically(compiled_path, run.compiled_model)
        result["output"] = str(compiled_path)
    return result
