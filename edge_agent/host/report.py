"""The convert report: one dict for JSON (CI) and a text summary for people.

JSON keys (null when not measured): source, source_kind, source_format (savedmodel | keras |
h5 | frozen_graph | onnx), output, quantize, io_type, size_bytes_original,
size_bytes_converted (= size_bytes), size_compressed_bytes (gzip -9 of the written file),
size_ratio, sparsity (fraction of zero convolution/dense weights in the written model),
input_layout (ONNX: NCHW -> NHWC), operators, inputs, outputs, task, calibration {source,
samples}, validation {...}, pruning {...} (with --prune), and at the top level for CI
scripts: accuracy_original, accuracy_converted, accuracy_drop, agreement_top1, max_abs_diff,
mean_abs_diff, latency_ms_mean, max_accuracy_drop, and for detection models (validated on
detection data) map50_original, map50_converted, map_original, map_converted (mAP@0.5 and
mAP@0.5:0.95, COCOeval) and max_map_drop, then passed; edgetpu (readiness, int8 only),
edgetpu_compiler (with --edgetpu), versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.atomic_file import write_file_atomically
from edge_agent.host.edgetpu import Readiness
from edge_agent.samples import SampleSet
from edge_agent.host.source_model import SourceModel
from edge_agent.host.validate import ValidationResult
from edge_agent.host.validate_detection import DetectionValidation
from edge_agent.host.weights import WeightSparsity
from edge_agent.runtime.model import LoadedModel
from edge_agent.runtime.tflite_file import model_file_from_bytes

if TYPE_CHECKING:
    from edge_agent.host.workflow import ConvertRequest

TOP_LEVEL_METRICS = ("accuracy_original", "accuracy_converted", "accuracy_drop", "agreement_top1", "max_abs_diff",
                     "mean_abs_diff", "latency_ms_mean", "map50_original", "map50_converted", "map_original",
                     "map_converted")


def build_report(request: ConvertRequest, source: SourceModel, final: bytes, loaded: LoadedModel,
                 calibration: SampleSet | None, validation: ValidationResult | DetectionValidation | None,
                 readiness: Readiness | None,
                 info: dict[str, Any], sparsity: WeightSparsity, size_compressed_bytes: int,
                 pruning: dict[str, Any] | None) -> dict[str, Any]:
    model_file = model_file_from_bytes(request.output, final)
    validation_dict = validation.to_dict() if validation else None
    report: dict[str, Any] = {
        "source": str(request.source),
        "source_kind": source.kind,
        "source_format": source.source_format,
        "signature": source.signature,
        "input_layout": source.layout,
        "output": str(request.output),
        "quantize": request.quantize,
        "io_type": request.io_type if request.quantize == "int8" else None,
        "task": info["task"],
        "size_bytes_original": source.size_bytes,
        "size_bytes_converted": len(final),
        "size_bytes": len(final),
        "size_compressed_bytes": size_compressed_bytes,
        "size_ratio": round(len(final) / source.size_bytes, 4) if source.size_bytes else None,
        "sparsity": round(sparsity.sparsity, 6) if sparsity.sparsity is not None else None,
        "sha256": model_file.sha256,
        "operators": model_file.operator_counts,
        "inputs": [spec.describe() for spec in loaded.inputs],
        "outputs": [spec.describe() for spec in loaded.outputs],
        "labels": model_file.labels,
        "preprocessing": info["preprocessing"],
        "calibration": {"source": calibration.source, "samples": len(calibration)} if calibration else None,
        "validation": validation_dict,
        "pruning": pruning,
        "max_accuracy_drop": request.max_accuracy_drop,
        "max_map_drop": request.max_map_drop,
        "passed": True,
        "edgetpu": readiness.to_dict() if readiness else None,
        "versions": info["converter"],
    }
    for key in TOP_LEVEL_METRICS:
        report[key] = validation_dict.get(key) if validation_dict else None
    return report


def write_report_json(path: Path, report: dict[str, Any]) -> None:
    write_file_atomically(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))


def format_summary(report: dict[str, Any]) -> str:
    """The report as text for people."""
    lines = [
        f"converted  {report['source']} ({report['source_format']}) -> {report['output']}",
        f"quantize   {report['quantize']}" + (f", inputs/outputs {report['io_type']}" if report["io_type"] else ""),
        f"size       {_size(report['size_bytes_original'])} -> {_size(report['size_bytes_converted'])}"
        + (f" ({report['size_ratio'] * 100:.0f} %)" if report["size_ratio"] else "")
        + f", {_size(report['size_compressed_bytes'])} gzipped"
        + (f"; {report['sparsity'] * 100:.1f} % of the weights are zero" if report.get("sparsity") else ""),
        "operators  " + ", ".join(f"{name}×{count}" for name, count in report["operators"].items()),
    ]
    for kind in ("inputs", "outputs"):
        for spec in report[kind]:
            quant = spec["quantization"]
            quant_text = f" scale={quant['scale']:.6g} zero_point={quant['zero_point']}" if quant else ""
            lines.append(f"{kind[:-1]:<10} {spec['name']} {spec['shape']} {spec['dtype']}{quant_text}")
    layout = report.get("input_layout")
    if layout and layout.get("nchw_to_nhwc"):
        before = layout["onnx_inputs"][0]
        after = layout["converted_inputs"][0]
        lines.append(f"layout     ONNX input {before['name']} {before['shape']} NCHW -> {after['shape']} NHWC, the "
                     "layout of camera frames")
    pruning = report.get("pruning")
    if pruning:
        pruned, unpruned = pruning["pruned"], pruning["unpruned"]
        lines.append(f"pruned     to {pruning['sparsity'] * 100:.1f} % zero weights (target "
                     f"{pruning['target_sparsity'] * 100:.0f} %), fine-tuned {pruning['epochs']} epochs on "
                     f"{pruning['fine_tune_samples']} samples")
        lines.append(f"  gzipped  {_size(unpruned['size_compressed_bytes'])} unpruned -> "
                     f"{_size(pruned['size_compressed_bytes'])} pruned")
        for name, numbers in (("unpruned", unpruned["latency"]), ("pruned", pruned["latency"])):
            lines.append(f"  latency  {name}: " + ", ".join(
                f"{key[:-3].replace('_', ' ')} {value:.4f} ms" for key, value in numbers.items()
                if key.endswith("_ms") and value is not None))
    lines.append(f"task       {report['task']}" + (f", {len(report['labels'])} labels stored in the model" if report["labels"] else ""))
    if report["calibration"]:
        lines.append(f"calibrated on {report['calibration']['samples']} samples from {report['calibration']['source']}")
    validation = report["validation"]
    if validation and validation.get("task") == "detection":
        lines += _detection_lines(validation)
    elif validation:
        lines.append(f"validated  {validation['samples']} samples")
        if validation["accuracy_original"] is not None:
            lines.append(f"  accuracy   original {validation['accuracy_original']:.4f}, converted "
                         f"{validation['accuracy_converted']:.4f} (drop {validation['accuracy_drop'] * 100:+.2f} points)")
        if validation["agreement_top1"] is not None:
            lines.append(f"  top-1 agreement {validation['agreement_top1']:.4f}")
        lines.append(f"  output |difference| max {validation['max_abs_diff']:.4g}, mean {validation['mean_abs_diff']:.4g}")
        lines.append(f"  latency    {validation['latency_ms_mean']:.3f} ms mean, {validation['latency_ms_p95']:.3f} ms p95 "
                     f"per sample ({validation['runtime']}, {validation['threads']} threads, this machine)")
    for gate in ("max_accuracy_drop", "max_map_drop"):
        if report.get(gate) is not None:
            lines.append(f"gate       --{gate.replace('_', '-')} {report[gate]}: {'passed' if report['passed'] else 'FAILED'}")
    edgetpu = report.get("edgetpu")
    if edgetpu:
        first = edgetpu["first_unsupported"]
        on_cpu = edgetpu["run_on_cpu"]
        if edgetpu["fully_mapped"]:
            verdict = "no unsupported operator" + (f" ({on_cpu} float input/output conversion(s) on the CPU)" if on_cpu else "")
        else:
            verdict = f"first unsupported: {first['op']} (#{first['index']}): {first['reason']}"
        lines.append(f"Edge TPU   {edgetpu['mapped_to_edgetpu']} of {edgetpu['operators']} operators mappable; {verdict}")
        lines.extend(f"  note: {note}" for note in edgetpu["notes"])
    compiler = report.get("edgetpu_compiler")
    if compiler:
        if compiler["available"]:
            lines.append(f"edgetpu_compiler exit {compiler['returncode']}" +
                         (f", wrote {compiler['output']}" if compiler.get("output") else ""))
            lines.extend("  " + line for line in compiler["log"].splitlines())
        else:
            lines.append(f"edgetpu_compiler: {compiler['message']}")
    return "\n".join(lines)


def _detection_lines(validation: dict[str, Any]) -> list[str]:
    left_out = len(validation["problems"])
    lines = [f"validated  {validation['images']} images, {validation['objects']} objects"
             + (f" ({left_out} files left out)" if left_out else "") + f", decoded as {validation['layout']}"]
    for name, key, drop in (("mAP@0.5     ", "map50", "map50_drop"), ("mAP@0.5:0.95", "map", "map_drop")):
        original, converted = validation[f"{key}_original"], validation[f"{key}_converted"]
        if original is None or converted is None:
            lines.append(f"  {name} n/a (no objects in the data)")
        else:
            lines.append(f"  {name} original {original:.4f}, converted {converted:.4f} "
                         f"(drop {validation[drop] * 100:+.2f} points)")
    lines.append(f"  latency    {validation['latency_ms_mean']:.3f} ms mean, {validation['latency_ms_p95']:.3f} ms p95 "
                 f"per image ({validation['runtime']}, {validation['threads']} threads, this machine)")
    return lines


def _size(size_bytes: int) -> str:
    if size_bytes >= 1 << 20:
        return f"{size_bytes / (1 << 20):.2f} MiB"
    if size_bytes >= 1 << 10:
        return f"{size_bytes / (1 << 10):.1f} KiB"
    return f"{size_bytes} B"
