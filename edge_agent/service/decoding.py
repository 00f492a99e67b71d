"""Where the loaded model meets the decoders: its description, the layout that fits, the decoder built once.

The decode package never sees an interpreter: this module turns a LoadedModel into a
ModelDescription (tensor shapes, dtypes, quantisation, operators, the SSD op's output roles,
the exporter's metadata) and the pipeline config into DecodeOptions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.config import ANCHOR_PRESETS, PipelineConfig, PreprocessOptions, resolve_anchor_ssd
from edge_agent.decode import (
    DecodeOptions,
    Decoder,
    ExportFacts,
    LayoutMatch,
    ModelDescription,
    TensorInfo,
    explain_layout,
    make_decoder,
    match_layout,
)
from edge_agent.preprocess import PreprocessError, image_input_layout
from edge_agent.runtime import LoadedModel, TensorSpec
from edge_agent.runtime.tflite_file import ModelFile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderChoice:
    task: str
    match: LayoutMatch
    decode: Decoder
    labels: list[str] | None


def describe_model(model: LoadedModel) -> ModelDescription:
    """The model as the decoders see it."""
    return describe_model_file(model.file, model.input, model.outputs)


def describe_model_file(model_file: ModelFile, input_spec: TensorSpec, outputs: Sequence[TensorSpec]) -> ModelDescription:
    """The same from the file and its tensors, without an interpreter (`bundle create` reads only the file)."""
    try:
        height, width, _, layout = image_input_layout(input_spec)
    except PreprocessError:
        height, width, layout = 0, 0, ""
    metadata = model_file.export_metadata
    export = ExportFacts()
    if metadata is not None:
        for problem in metadata.problems:
            logger.warning("%s: metadata.json: %s (that field is ignored)", model_file.name, problem)
        export = ExportFacts(
            producer="ultralytics", task=metadata.task, end2end=metadata.end2end, keypoint_shape=metadata.kpt_shape,
            keypoint_names=metadata.kpt_names, class_count=len(metadata.names) or None,
        )
    roles = model_file.detection_output_roles
    return ModelDescription(
        name=model_file.name,
        input=_tensor_info(input_spec),
        input_height=height,
        input_width=width,
        input_layout=layout,
        outputs=tuple(_tensor_info(spec) for spec in outputs),
        operators=tuple(model_file.operator_counts),
        output_roles=tuple(roles.get(spec.index, "") for spec in outputs),
        export=export,
    )


def auto_task(model_file: ModelFile, input_spec: TensorSpec, outputs: Sequence[TensorSpec],
              labels_count: int | None = None) -> str:
    """The task `task = "auto"` gives this model on a board: the layout matcher's (what `inspect` shows),
    so a tool that records a task (convert, bundle create) records the one the board would decode."""
    return match_layout(describe_model_file(model_file, input_spec, outputs), "auto", DecodeOptions(), labels_count).task


ULTRALYTICS_PAD_PIXEL = 114  # the grey Ultralytics letterboxes with, in training and in its own predict


def preprocess_options(model: LoadedModel, config: PipelineConfig, match: LayoutMatch | None = None) -> PreprocessOptions:
    """The pipeline's preprocessing, with what the model says about itself where the user set nothing:
    an Ultralytics model (it carries metadata.json) was trained on letterboxed images padded with 114;
    an anchor preset brings its graph's preprocessing (MediaPipe's faces: letterbox, values in -1..1)."""
    options = config.preprocess
    derived: dict = {}
    if model.file.export_metadata is not None:
        derived = {"resize": "letterbox", "pad": ULTRALYTICS_PAD_PIXEL}
    preset = match.params.get("preset") if match is not None else None
    if preset:
        derived = dict(ANCHOR_PRESETS[preset]["preprocess"])
    unset = {key: value for key, value in derived.items()
             if key not in config.preprocess_keys and not (key == "pad" and options.pad is not None)}
    return dataclasses.replace(options, **unset) if unset else options


def decode_options(config: PipelineConfig) -> DecodeOptions:
    anchors, box_decoder = resolve_anchor_ssd(config.anchors, config.box_decoder) if config.anchors else (None, None)
    return DecodeOptions(
        threshold=config.threshold, label_thresholds=config.min_scores, iou=config.iou,
        max_detections=config.max_detections, top_k=config.top_k, box_units=config.box_units,
        anchors=anchors, box_decoder=box_decoder,
    )


def choose_decoder(model: LoadedModel, config: PipelineConfig, labels: list[str] | None) -> DecoderChoice:
    """Match the model's outputs to a layout for the pipeline's task and build its decoder; DecodeError if none fits."""
    description = describe_model(model)
    options = decode_options(config)
    match = match_layout(description, config.task, options, len(labels) if labels else None)
    decode, fitted_labels = make_decoder(match, description, options, labels)
    logger.info("%s: %s layout (%s)", model.name, match.layout, match.why)
    return DecoderChoice(match.task, match, decode, fitted_labels)


def explain_model(model: LoadedModel, task: str = "auto") -> dict:
    """For `edge-agent inspect`: which layout the outputs match and why."""
    labels = model.file.labels
    description = describe_model(model)
    report = explain_layout(description, task, DecodeOptions(), len(labels) if labels else None)
    if task != "auto":  # what auto would pick, beside the answer for the task asked about
        report["auto_task"] = match_layout(description, "auto", DecodeOptions(), len(labels) if labels else None).task
    return report


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    return TensorInfo(spec.name, spec.shape, spec.dtype, spec.scale, spec.zero_point)


__all__ = ["DecoderChoice", "auto_task", "choose_decoder", "decode_options", "describe_model", "describe_model_file",
           "explain_model"]
