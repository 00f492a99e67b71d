"""`edge-agent inspect`: what a model file contains and how the agent would run it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edge_agent.runtime.backends import RuntimeNotAvailable, import_runtime
from edge_agent.runtime.delegates import DelegateError
from edge_agent.runtime.model import LoadedModel, ModelLoadError, guess_task, load_model_file
from edge_agent.runtime.tflite_file import ModelFile, read_model_file


def inspect_model(path: str | Path, runtime: str = "auto", explain_layout: Callable[[LoadedModel], dict] | None = None,
                  model_file: ModelFile | None = None) -> dict:
    """A JSON-ready description of the model (read from `path`, or the `model_file` already read, e.g. out
    of a bundle); raises ModelFileError when the file is unusable.

    `explain_layout` (the service's layout matcher, passed in so this module stays below the decoders)
    says which output layout the model matched and why; its task replaces the plain guess."""
    model_file = model_file or read_model_file(path)
    report: dict = {
        "path": str(model_file.path),
        "size_bytes": len(model_file.content),
        "sha256": model_file.sha256,
        "operators": model_file.operator_counts,
        "custom_operators": model_file.custom_ops,
        "needs_edgetpu": model_file.needs_edgetpu,
        "metadata": list(model_file.metadata_names),
        "labels": model_file.labels,
        "converted_from": _converted_from(model_file.conversion_info),
    }
    try:
        report["runtime"] = import_runtime(runtime)[0]
    except RuntimeNotAvailable as err:
        report["runtime"] = None
        report["error"] = str(err)
        return report
    if model_file.needs_edgetpu:
        report["task"] = None
        report["error"] = (
            "compiled for the Edge TPU: inputs and outputs can only be read with the Edge TPU "
            "delegate (run it with delegate = \"edgetpu\")"
        )
        return report
    try:
        loaded = load_model_file(model_file, runtime=runtime, num_threads=1)
    except (ModelLoadError, DelegateError) as err:
        report["error"] = str(err)
        return report
    report["inputs"] = [spec.describe() for spec in loaded.inputs]
    report["outputs"] = [spec.describe() for spec in loaded.outputs]
    report["task"] = guess_task(model_file, loaded.outputs)
    if explain_layout is not None:
        report["layout"] = explain_layout(loaded)
        layout = report["layout"]
        # a task that cannot decode the model leaves what auto would pick standing
        report["task"] = layout["task"] if layout.get("layout") else layout.get("auto_task", report["task"])
    metadata = model_file.export_metadata
    if metadata is not None:
        report["export_metadata"] = {"producer": "ultralytics", "task": metadata.task, "imgsz": metadata.imgsz,
                                     "classes": len(metadata.names), "end2end": metadata.end2end,
                                     "kpt_shape": metadata.kpt_shape, "problems": list(metadata.problems)}
    return report


def _converted_from(info: dict) -> dict | None:
    """The source format and input layout `edge-agent convert` recorded, e.g. an ONNX model's NCHW -> NHWC."""
    if not info:
        return None
    layout = info.get("input_layout") if isinstance(info.get("input_layout"), dict) else None
    return {"source_format": info.get("source_format") or info.get("source_kind"), "input_layout": layout}


def format_report(report: dict) -> str:
    """The report as text for people."""
    bundle = report.get("bundle")
    head = [f"bundle    {bundle['summary']}"] if bundle else []
    if "sha256" not in report:  # an encrypted bundle inspected without its board's key
        return "\n".join(head)
    lines = head + [
        f"model     {report['path']}",
        f"size      {report['size_bytes']:,} bytes   sha256 {report['sha256']}",
        f"runtime   {report.get('runtime') or 'none available'}",
        f"task      {report.get('task') or 'unknown'} (guessed)",
    ]
    for kind in ("inputs", "outputs"):
        for spec in report.get(kind, []):
            quant = spec["quantization"]
            quant_text = f"scale={quant['scale']:.6g} zero_point={quant['zero_point']}" if quant else "not quantised"
            lines.append(f"{kind[:-1]:<9} {spec['name']}  {spec['shape']}  {spec['dtype']}  {quant_text}")
    converted = report.get("converted_from")
    if converted:
        line = f"converted from {converted['source_format']} by edge-agent convert"
        layout = converted.get("input_layout") or {}
        if layout.get("nchw_to_nhwc"):
            before, after = layout["onnx_inputs"][0], layout["converted_inputs"][0]
            line += (f"; input layout NCHW {before['shape']} in the original, NHWC {after['shape']} here "
                     "(frames go in as the camera delivers them)")
        lines.append(line)
    ops = ", ".join(f"{name}×{count}" for name, count in report["operators"].items())
    lines.append(f"operators {ops}")
    if report["custom_operators"]:
        lines.append(f"custom    {', '.join(report['custom_operators'])}")
    layout = report.get("layout")
    if layout:
        if layout.get("layout"):
            lines.append(f"layout    {layout['layout']}: {layout['why']}")
        if layout.get("error"):
            lines.append(f"layout    none for task {layout['task']!r}: {layout['error']}")
        for shape in layout.get("unplaced_outputs", []):
            lines.append(f"unplaced  output {shape}")
        for reason in layout.get("rejected", []):
            lines.append(f"  tried   {reason}")
        if layout.get("known_layouts") and (layout.get("unplaced_outputs") or layout.get("error")):
            lines.append("known     " + "\n          ".join(layout["known_layouts"]))
    metadata = report.get("export_metadata")
    if metadata:
        lines.append(f"metadata  Ultralytics: task {metadata['task'] or '?'}, imgsz {metadata['imgsz']}, "
                     f"{metadata['classes']} classes" + (", NMS inside" if metadata["end2end"] else ""))
        for problem in metadata["problems"]:
            lines.append(f"          ignored: {problem}")
    labels = report.get("labels")
    if labels:
        shown = ", ".join(labels[:10]) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
        lines.append(f"labels    {shown} (from the model's metadata)")
    else:
        lines.append("labels    none in the model (pass --labels / labels = ...)")
    if report.get("error"):
        lines.append(f"note      {report['error']}")
    return "\n".join(lines)
