"""The converter's other sources and optimisations with real parts: a TF1 frozen graph trained on the digits
and frozen with convert_variables_to_constants, ONNX models in PyTorch's NCHW layout checked with onnxruntime,
magnitude pruning with fine-tuning (tfmot), calibration from a video clip written with OpenCV. The inputs come
from models/make_converter_inputs.py, built once per session."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.runtime import load_model, read_model_file

pytestmark = pytest.mark.tensorflow

REPO = Path(__file__).resolve().parents[1]
NEW_REPORT_KEYS = ("source_format", "sparsity", "size_bytes", "size_compressed_bytes")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict:
    """Every source model and data file of models/make_converter_inputs.py (about 10 s, once)."""
    root = tmp_path_factory.mktemp("converter_inputs")
    summary = _load_script("make_converter_inputs").make_all(root)
    assert summary["frozen_graph_accuracy"] > 0.95 and summary["onnx_vs_keras_max_abs_diff"] < 1e-4, summary
    return {"root": root, "summary": summary}


def run_cli(capsys, *args) -> tuple[int, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def convert(capsys, source: Path, out: Path, *options) -> tuple[int, dict | None, str]:
    report_path = out.with_suffix(".json")
    status, output = run_cli(capsys, "convert", source, "-o", out, "--report-json", report_path, *options)
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return status, report, output


def one_line_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("edge-agent: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def assert_refused(capsys, out: Path, args: tuple, message: str, status: int = 2) -> str:
    code, output = run_cli(capsys, "convert", *args, "-o", out)
    assert code == status, (args, output)
    error = one_line_error(output)
    assert message in error, (args, error)
    assert not out.exists(), args
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name], args
    return error


# ---------------------------------------------------------------------------- TF1 frozen graphs

def test_frozen_graph_converts_with_every_option(capsys, inputs, tmp_path, monkeypatch):
    """toco's flags (with :0 suffixes), int8 calibrated on a video clip, validation, labels, JSON, --edgetpu."""
    root = inputs["root"]
    monkeypatch.setenv("PATH", "/nonexistent")  # --edgetpu without the compiler: reported, not fatal
    out = tmp_path / "frozen_int8.tflite"
    status, report, output = convert(
        capsys, root / "digits_frozen.pb", out, "--input-arrays", "image:0", "--output-arrays", "probs:0",
        "--input-shapes", "1,8,8,1", "--quantize", "int8", "--calibration", root / "heldout_video.avi",
        "--calibration-limit", "100", "--validate", root / "heldout.npz", "--labels", root / "labels.txt",
        "--max-accuracy-drop", "0.02", "--edgetpu")
    assert status == 0, output
    assert report["source_format"] == "frozen_graph" and report["source_kind"] == "frozen_graph"
    assert all(key in report for key in NEW_REPORT_KEYS)
    assert report["size_bytes"] == out.stat().st_size and report["size_compressed_bytes"] < report["size_bytes"]
    assert report["accuracy_original"] == pytest.approx(inputs["summary"]["frozen_graph_accuracy"], abs=1e-4)
    assert report["accuracy_drop"] <= 0.02 and report["agreement_top1"] >= 0.97
    assert report["calibration"] == {"source": str(root / "heldout_video.avi"), "samples": 100}
    assert report["edgetpu"]["fully_mapped"] is True and report["edgetpu_compiler"]["available"] is False
    model = load_model(out)
    assert model.input.shape == (1, 8, 8, 1) and model.input.dtype == np.uint8
    assert model.file.labels == [str(d) for d in range(10)]


def test_frozen_graph_float_conversion_matches_the_graph(capsys, inputs, tmp_path):
    status, report, output = convert(capsys, inputs["root"] / "digits_frozen.pb", tmp_path / "f.tflite",
                                     "--input-arrays", "image", "--output-arrays", "probs",
                                     "--validate", inputs["root"] / "heldout.npz")
    assert status == 0, output
    assert report["max_abs_diff"] < 1e-5 and report["agreement_top1"] == 1.0
    assert load_model(tmp_path / "f.tflite").input.shape == (1, 8, 8, 1)  # batch fixed from [?, 8, 8, 1]


def test_a_savedmodels_saved_model_pb_is_still_a_savedmodel(capsys, inputs, tmp_path):
    status, report, output = convert(capsys, inputs["root"] / "digits_savedmodel" / "saved_model.pb",
                                     tmp_path / "sm.tflite")
    assert status == 0, output
    assert report["source_format"] == "savedmodel" and report["source_kind"] == "saved_model"


def test_frozen_graph_bad_input(capsys, inputs, tmp_path):
    root = inputs["root"]
    graph = root / "digits_frozen.pb"
    (tmp_path / "text.pb").write_text("this is not a graph\n" * 20)
    (tmp_path / "random.pb").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out.tflite"
    error = assert_refused(capsys, out, (graph,), "name its inputs and outputs")
    assert "--input-arrays image" in error and "--output-arrays probs" in error  # ready to copy
    assert "placeholders: image" in error and "likely outputs, nodes nothing consumes: probs" in error
    assert_refused(capsys, out, (graph, "--input-arrays", "image"), "name its inputs and outputs")
    for bad in (tmp_path / "text.pb", tmp_path / "random.pb"):
        assert_refused(capsys, out, (bad, "--input-arrays", "x", "--output-arrays", "y"), "is not a TensorFlow GraphDef")
    error = assert_refused(capsys, out, (graph, "--input-arrays", "input", "--output-arrays", "probs"),
                           "has no node 'input' (--input-arrays)")
    assert error.endswith("its placeholders: image")
    error = assert_refused(capsys, out, (graph, "--input-arrays", "image", "--output-arrays", "softmax"),
                           "has no node 'softmax' (--output-arrays)")
    assert error.endswith("its likely outputs: probs")
    assert_refused(capsys, out, (graph, "--input-arrays", "image", "--output-arrays", "probs", "--input-shapes",
                                 "1,8,8"), "has 3 dimensions but 'image' has 4 ([?, 8, 8, 1])")
    assert_refused(capsys, out, (graph, "--input-arrays", "image", "--output-arrays", "probs", "--input-shapes",
                                 "1,16,16,1"), "does not fit 'image'")
    assert_refused(capsys, out, (graph, "--input-arrays", "image", "--output-arrays", "probs", "--input-shapes",
                                 "1,eight"), "expected integers")
    assert_refused(capsys, out, (graph, "--input-arrays", "image:1", "--output-arrays", "probs"), "first tensor (:0)")
    assert_refused(capsys, out, (root / "digits.keras", "--input-arrays", "image"), "apply to frozen graphs")
    renamed = tmp_path / "exported"
    shutil.copytree(root / "digits_savedmodel", renamed)
    (renamed / "saved_model.pb").rename(renamed / "model.pb")
    assert_refused(capsys, out, (renamed / "model.pb", "--input-arrays", "x", "--output-arrays", "y"),
                   "looks like a SavedModel")


# ---------------------------------------------------------------------------- ONNX (PyTorch's route)

def test_onnx_nchw_model_becomes_nhwc_and_matches_onnxruntime(capsys, inputs, tmp_path):
    root = inputs["root"]
    out = tmp_path / "onnx.tflite"
    status, report, output = convert(capsys, root / "digits_nchw.onnx", out, "--validate", root / "heldout.npz",
                                     "--labels", root / "labels.txt")
    assert status == 0, output
    assert report["source_format"] == "onnx"
    layout = report["input_layout"]
    assert layout["nchw_to_nhwc"] is True
    assert layout["onnx_inputs"] == [{"name": "image", "shape": [1, 1, 8, 8], "layout": "NCHW"}]
    assert layout["converted_inputs"] == [{"name": "image", "shape": [1, 8, 8, 1], "layout": "NHWC"}]
    assert "NCHW -> [1, 8, 8, 1] NHWC" in output
    # the original ran in onnxruntime (NCHW), the converted model in LiteRT (NHWC), from the same NHWC data
    assert report["max_abs_diff"] < 1e-4 and report["agreement_top1"] == 1.0
    assert report["accuracy_converted"] == pytest.approx(inputs["summary"]["onnx_accuracy"], abs=1e-4)
    assert load_model(out).input.shape == (1, 8, 8, 1)
    status, stdout = run_cli(capsys, "inspect", out, "--json")
    converted_from = json.loads(stdout[stdout.index("{"):])["converted_from"]
    assert converted_from["source_format"] == "onnx" and converted_from["input_layout"]["nchw_to_nhwc"] is True
    status, text = run_cli(capsys, "inspect", out)
    assert "input layout NCHW [1, 1, 8, 8] in the original, NHWC [1, 8, 8, 1] here" in text


def test_onnx_int8_keeps_accuracy(capsys, inputs, tmp_path):
    root = inputs["root"]
    status, report, output = convert(capsys, root / "digits_nchw.onnx", tmp_path / "q.tflite", "--quantize", "int8",
                                     "--calibration", root / "calibration.npy", "--validate", root / "heldout.npz",
                                     "--max-accuracy-drop", "0.02")
    assert status == 0, output
    assert report["accuracy_drop"] <= 0.02 and report["agreement_top1"] >= 0.97
    assert report["edgetpu"]["fully_mapped"] is True
    assert load_model(tmp_path / "q.tflite").input.dtype == np.uint8


def test_pytorch_style_export_with_dynamic_batch_converts_with_batch_1(capsys, inputs, tmp_path):
    """What torch.onnx.export(..., dynamic_axes={"image": {0: "batch"}}) writes; no torch needed to convert it."""
    root = inputs["root"]
    status, report, output = convert(capsys, root / "digits_dynamic_batch.onnx", tmp_path / "b.tflite",
                                     "--validate", root / "heldout.npz")
    assert status == 0, output
    assert report["input_layout"]["onnx_inputs"][0]["shape"] == [1, 1, 8, 8]
    assert report["max_abs_diff"] < 1e-4


def test_onnx_dynamic_sizes_are_refused_until_input_shapes_fix_them(capsys, inputs, tmp_path):
    root = inputs["root"]
    out = tmp_path / "dyn.tflite"
    error = assert_refused(capsys, out, (root / "digits_dynamic.onnx",), "sizes fixed only at run time")
    assert "[batch, 1, height, width]" in error and "--input-shapes" in error
    assert_refused(capsys, out, (root / "digits_dynamic.onnx", "--input-shapes", "1,8,8,1"), "does not fit 'image'")
    assert_refused(capsys, out, (root / "digits_dynamic.onnx", "--input-shapes", "1,8,8"), "has 3 dimensions")
    assert_refused(capsys, out, (root / "digits_dynamic.onnx", "--input-shapes", "2,1,8,8"), "the batch must be 1")
    status, report, output = convert(capsys, root / "digits_dynamic.onnx", out, "--input-shapes", "1,1,8,8",
                                     "--validate", root / "heldout.npz")
    assert status == 0, output
    assert report["max_abs_diff"] < 1e-4 and load_model(out).input.shape == (1, 8, 8, 1)


def test_onnx_bad_input(capsys, inputs, tmp_path):
    root = inputs["root"]
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 100)
    (tmp_path / "empty.onnx").write_bytes(b"")
    out = tmp_path / "out.tflite"
    error = assert_refused(capsys, out, (root / "digits_lppool.onnx",), "onnx2tf cannot convert: LpPool")
    assert "nothing was written" in error
    assert_refused(capsys, out, (tmp_path / "garbage.onnx",), "cannot be read as an ONNX model")
    assert_refused(capsys, out, (tmp_path / "empty.onnx",), "not an ONNX model")
    assert_refused(capsys, out, (root / "digits_nchw.onnx", "--input-arrays", "image"), "apply to frozen graphs")


# ---------------------------------------------------------------------------- pruning

def test_pruning_zeroes_weights_compresses_and_keeps_accuracy(capsys, inputs, tmp_path):
    root = inputs["root"]
    out = tmp_path / "pruned.tflite"
    status, report, output = convert(
        capsys, root / "digits.keras", out, "--prune", "0.75", "--fine-tune", root / "train.npz",
        "--fine-tune-epochs", "5", "--quantize", "int8", "--calibration", root / "calibration.npy",
        "--validate", root / "heldout.npz", "--max-accuracy-drop", "0.03", "--labels", root / "labels.txt")
    assert status == 0, output
    pruning = report["pruning"]
    # counted in the written model's int8 kernels, not taken from tfmot
    assert 0.74 <= report["sparsity"] <= 0.80 and pruning["sparsity"] == pytest.approx(report["sparsity"], abs=1e-6)
    assert pruning["unpruned"]["sparsity"] < 0.05
    assert pruning["pruned"]["size_compressed_bytes"] < 0.7 * pruning["unpruned"]["size_compressed_bytes"]
    assert report["accuracy_original"] > 0.95 and report["accuracy_drop"] <= 0.03
    for side in ("pruned", "unpruned"):
        latency = pruning[side]["latency"]
        assert latency["xnnpack_ms"] > 0 and latency["reference_kernels_ms"] > 0
    assert pruning["route"].startswith("Keras 3 model rebuilt in tf-keras")
    assert "80 %" not in output and "75 %" in output and "gzipped" in output
    model = load_model(out)
    assert model.input.dtype == np.uint8 and model.file.labels == [str(d) for d in range(10)]


def test_pruning_too_far_fails_the_accuracy_gate(capsys, inputs, tmp_path):
    root = inputs["root"]
    out = tmp_path / "gutted.tflite"
    status, report, output = convert(capsys, root / "digits.keras", out, "--prune", "0.98", "--fine-tune",
                                     root / "train.npz", "--fine-tune-epochs", "1", "--validate",
                                     root / "heldout.npz", "--max-accuracy-drop", "0.02")
    assert status == 1, output
    assert not out.exists() and report["passed"] is False and report["accuracy_drop"] > 0.02
    assert report["sparsity"] > 0.9


def test_functional_keras_3_models_are_rebuilt_in_tf_keras_with_the_same_outputs():
    import keras
    import tf_keras

    from edge_agent.host.pruning import rebuild_in_tf_keras

    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 1), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    b = keras.layers.Conv2D(4, 1, padding="same")(image)
    x = keras.layers.Add()([a, b])
    x = keras.layers.GlobalAveragePooling2D()(x)
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    original = keras.Model(image, probs)
    rebuilt = rebuild_in_tf_keras(original, keras, tf_keras)
    sample = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rebuilt(sample)), np.asarray(original(sample)), atol=1e-6)


def test_pruning_bad_input(capsys, inputs, tmp_path):
    root = inputs["root"]
    keras_model = root / "digits.keras"
    np.savez(tmp_path / "labels_12.npz", x=np.load(root / "train.npz")["x"][:50], y=np.full(50, 12))
    np.savez(tmp_path / "big.npz", x=np.zeros((20, 16, 16, 1), np.uint8), y=np.zeros(20, np.int64))
    np.savez(tmp_path / "unlabelled.npz", x=np.load(root / "train.npz")["x"][:50])
    fine = ("--fine-tune", root / "train.npz")
    out = tmp_path / "out.tflite"
    for sparsity in ("0", "1", "1.5", "-0.2"):
        assert_refused(capsys, out, (keras_model, "--prune", sparsity, *fine), "between 0 and 1")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5"), "--prune needs --fine-tune")
    assert_refused(capsys, out, (keras_model, *fine), "only used with --prune")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5", *fine, "--fine-tune-epochs", "0"), "at least 1")
    assert_refused(capsys, out, (root / "digits_nchw.onnx", "--prune", "0.5", *fine), "works on Keras models")
    assert_refused(capsys, out, (root / "digits_savedmodel", "--prune", "0.5", *fine), "works on Keras models")
    assert_refused(capsys, out, (root / "digits_frozen.pb", "--input-arrays", "image", "--output-arrays", "probs",
                                 "--prune", "0.5", *fine), "works on Keras models")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5", "--fine-tune", tmp_path / "labels_12.npz"),
                   "labels run from 12 to 12 but the model has 10 classes")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5", "--fine-tune", tmp_path / "big.npz"),
                   "wrong size or channel count")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5", "--fine-tune", tmp_path / "unlabelled.npz"),
                   "has no labels")
    assert_refused(capsys, out, (keras_model, "--prune", "0.5", "--fine-tune", tmp_path / "missing.npz"),
                   "--fine-tune: ")


# ---------------------------------------------------------------------------- calibration from video

def test_video_calibration_matches_the_same_frames_as_an_array(capsys, inputs, tmp_path):
    """Frames sampled from the clip go through the board's Preprocessor: int8 as good as from the pixels."""
    root = inputs["root"]
    status, report, output = convert(capsys, root / "digits.keras", tmp_path / "v.tflite", "--quantize", "int8",
                                     "--calibration", root / "heldout_video.avi", "--validate", root / "heldout.npz",
                                     "--max-accuracy-drop", "0.02")
    assert status == 0, output
    assert report["calibration"]["samples"] == 300  # the default limit, spread over 450 frames
    assert report["accuracy_drop"] <= 0.02


def test_video_calibration_bad_input(capsys, inputs, tmp_path):
    root = inputs["root"]
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    (tmp_path / "empty.avi").write_bytes(b"")
    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10, (6, 6), True)  # 4x4 aborts the encoder
    for _ in range(5):
        writer.write(np.zeros((6, 6, 3), np.uint8))
    writer.release()
    out = tmp_path / "out.tflite"
    int8 = (root / "digits.keras", "--quantize", "int8", "--calibration")
    for clip in (tmp_path / "noise.mp4", tmp_path / "empty.avi"):
        assert_refused(capsys, out, (*int8, clip), "has no frame OpenCV can read")
    assert_refused(capsys, out, (*int8, tiny), "frames smaller than the input are refused")
