"""`edge-agent evaluate MODEL DATA`: accuracy and latency of a model on labelled data, on a board or a workstation.

Exit status: 0 measured (files with problems are named on stderr and left out), 1 measured but
below a gate (--min-accuracy, --min-map, --min-map50-95), 2 bad input (model, data, options; an
empty dataset; pycocotools missing for detection).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from edge_agent.cli.workstation import add_preprocess_options
from edge_agent.config import RUNTIME_CHOICES, PipelineConfig, PreprocessOptions, SourceSpec
from edge_agent.errors import EXIT_FAILED, EXIT_OK, InputError

TASKS = ("auto", "classification", "detection")
# COCO evaluation keeps nearly every detection (Ultralytics' `val` uses 0.001 as well): a high
# threshold cuts the precision-recall curve short and understates mAP.
DETECTION_THRESHOLD = 0.001
DETECTION_MAX = 100  # COCO's maxDets
PURPOSE = "evaluate"

@dataclass(frozen=True)
class Gate:
    option: str
    key: str  # in the report
    task: str
    name: str  # as the report prints it


GATES = (Gate("--min-accuracy", "top1_accuracy", "classification", "top-1 accuracy"),
         Gate("--min-map", "map50", "detection", "mAP@0.5"),
         Gate("--min-map50-95", "map50_95", "detection", "mAP@0.5:0.95"))


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    """Register `evaluate` (its arguments and handler) on the `edge-agent` parser."""
    parser = commands.add_parser(
        "evaluate", help="accuracy (classification) or COCO mAP (detection) and latency of a model on labelled data",
        description="Run MODEL on DATA through the agent's own preprocessing, runtime and decoder, and report "
                    "top-1/top-5 accuracy or COCO mAP@0.5 and mAP@0.5:0.95, with latency per image. "
                    "Classification DATA: a folder with one sub-folder of images per class, or a .npz with x and y. "
                    "Detection DATA: a YOLO dataset folder (images/, labels/ with 'class cx cy w h' lines) or a COCO "
                    "JSON file. Detection needs pycocotools: pip install 'edge-agent[eval]'.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .tflite file or a model bundle")
    parser.add_argument("data", type=Path, metavar="DATA", help="the labelled data (see above)")
    parser.add_argument("--task", choices=TASKS, default="auto",
                        help="default: the model's own task (as `edge-agent inspect` shows it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--labels", type=Path, help="labels file (one per line); default: the model's own")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="COCO: the folder of the images (default: the JSON's folder, then its images/)")
    parser.add_argument("--threshold", type=float,
                        help=f"lowest score kept (default: {DETECTION_THRESHOLD} for detection, as COCO evaluation "
                             "expects; top classes for classification)")
    parser.add_argument("--max-detections", type=int, default=DETECTION_MAX, metavar="N",
                        help=f"detections kept per image (default {DETECTION_MAX}, COCO's limit)")
    parser.add_argument("--iou", type=float, help="detection: NMS overlap, as the pipeline's `iou` (default: the decoder's, "
                                                 "0.45 for YOLO)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    parser.add_argument("--threads", type=int, default=0, help="interpreter threads (default: all cores)")
    gates = parser.add_argument_group("gates (exit 1 when the model measures below one, after the report)")
    for gate in GATES:
        gates.add_argument(gate.option, type=float, metavar="X",
                           help=f"{gate.task}: the lowest acceptable {gate.name}, from 0 to 1")
    add_preprocess_options(parser, defaults=False)  # unset: the model's own (a bundle's manifest), else the defaults
    parser.set_defaults(handler=evaluate_command, log_level="warning")  # the report, not the loading, is the output


def evaluate_command(args: argparse.Namespace) -> int:
    """Errors are InputErrors (exit 2) that the CLI prints; files with problems are listed, not fatal."""
    from edge_agent.evaluation.classification import evaluate_classification
    from edge_agent.evaluation.detection import check_evaluator, evaluate_detection
    from edge_agent.evaluation.detection_data import load_detection_dataset
    from edge_agent.samples import load_labelled_samples
    from edge_agent.service.active_model import build_active_model

    if args.max_detections < 1 or args.threads < 0 or not (args.iou is None or 0.0 <= args.iou <= 1.0):
        raise InputError("evaluate: --max-detections must be at least 1, --threads at least 0, --iou from 0 to 1")
    gates = _gates(args)
    if not args.data.exists():
        raise InputError(f"evaluate: {args.data} does not exist: give the labelled data to evaluate on")
    progress = _progress_printer() if sys.stderr.isatty() and not args.json else None
    active = build_active_model(_pipeline_config(args, args.task))
    if active.task not in ("classification", "detection"):
        raise InputError(f"evaluate: {args.model} looks like a {active.task!r} model: pass --task classification or "
                         "--task detection if it is one (`edge-agent inspect` shows its outputs)")
    for gate in gates:
        if gate.task != active.task:
            raise InputError(f"evaluate: {gate.option} is for {gate.task} models and {args.model} is a {active.task} "
                             "model: use " + " or ".join(g.option for g in GATES if g.task == active.task))
    if args.task == "auto" and args.threshold is None:  # the task's evaluation threshold is known only now
        active = build_active_model(_pipeline_config(args, active.task))
    try:
        if active.task == "detection":
            check_evaluator()
            labels = active.labels
            dataset = load_detection_dataset(args.data, labels, len(labels) if labels else None, args.images)
            report = evaluate_detection(active, dataset, progress).to_dict()
        else:
            samples = load_labelled_samples(args.data, active.model.input, active.preprocessor.options,
                                            active.labels, PURPOSE)
            report = evaluate_classification(active, samples, progress).to_dict()
    finally:
        if progress:
            print(file=sys.stderr)
    report = {"model": {**active.model.describe(), "input": active.model.input.describe()},
              "data": str(args.data), **report, "threshold": _threshold(args, active.task)}
    for problem in report.get("problems", []):
        print(f"edge-agent evaluate: left out {problem}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    below = [f"{gate.name} {_metric(report[gate.key])} is below {gate.option} {minimum:g}"
             for gate, minimum in gates.items() if report[gate.key] is None or report[gate.key] < minimum]
    for failure in below:
        print(f"edge-agent evaluate: {failure}", file=sys.stderr)
    return EXIT_FAILED if below else EXIT_OK


def _gates(args: argparse.Namespace) -> dict[Gate, float]:
    """Each gate asked for -> its minimum, checked to be a fraction."""
    gates = {}
    for gate in GATES:
        minimum = getattr(args, gate.option[2:].replace("-", "_"))
        if minimum is None:
            continue
        if not 0.0 <= minimum <= 1.0:  # NaN too
            raise InputError(f"evaluate: {gate.option} must be from 0 to 1 (a fraction, not a percentage), "
                             f"got {minimum:g}")
        gates[gate] = minimum
    return gates


def _pipeline_config(args: argparse.Namespace, task: str) -> PipelineConfig:
    """The pipeline a board would run for this model, as far as evaluation needs one."""
    given = {key: getattr(args, key) for key in ("resize", "color", "mean", "std") if getattr(args, key) is not None}
    return PipelineConfig(
        name=PURPOSE,
        source=SourceSpec(uri=str(args.data)),
        model=str(args.model),
        labels=str(args.labels) if args.labels else "",
        task=task,
        runtime=args.runtime,
        num_threads=args.threads,
        top_k=5,
        threshold=_threshold(args, task),
        max_detections=args.max_detections,
        iou=args.iou,
        preprocess=PreprocessOptions(**given),
        preprocess_keys=tuple(given),  # a bundle's manifest supplies the others
    )


def _threshold(args: argparse.Namespace, task: str) -> float | None:
    if args.threshold is not None:
        return args.threshold
    if task == "detection":
        return DETECTION_THRESHOLD
    if task == "classification":
        return float("-inf")  # every sample gets its top classes, whatever the scores' range
    return None


def _progress_printer():
    def show(done: int, total: int) -> None:
        print(f"\r  {done}/{total} images", end="", file=sys.stderr, flush=True)

    return show


def format_report(report: dict) -> str:
    model = report["model"]
    lines = [f"{model['name']} on {report['data']}"]
    if report["task"] == "classification":
        top5 = report["top5_accuracy"]
        lines += [f"  samples         {report['samples']}",
                  f"  top-1 accuracy  {report['top1_accuracy']:.4f}",
                  *([f"  top-5 accuracy  {top5:.4f}"] if top5 is not None else []),
                  "  per class (top-1): " + "  ".join(f"{label} {v['top1_accuracy']:.3f}"
                                                       for label, v in report["per_class"].items())]
    else:
        lines += [f"  images          {report['images']} ({len(report['problems'])} files left out)",
                  f"  objects         {report['objects']} (detections kept: {report['detections']}, "
                  f"score >= {report['threshold']:g})",
                  f"  mAP@0.5         {_metric(report['map50'])}",
                  f"  mAP@0.5:0.95    {_metric(report['map50_95'])}",
                  f"  AR@100          {_metric(report['recall100'])}",
                  "  AP@0.5 per class: " + "  ".join(f"{label} {ap:.3f}" for label, ap in report["per_class_ap50"].items())]
    latency = report["latency_ms"]
    lines.append(f"latency per image, ms ({model['runtime']}, {model['num_threads']} thread(s)):")
    lines += [f"  {stage:10s} median {value['p50']:8.3f}  p95 {value['p95']:8.3f}" for stage, value in latency.items()]
    return "\n".join(lines)


def _metric(value: float | None) -> str:
    return "n/a (no objects in the data)" if value is None else f"{value:.4f}"
