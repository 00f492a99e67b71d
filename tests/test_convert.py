"""The host converter with real parts: a small CNN trained once on scikit-learn's handwritten digits,
saved as .keras, .h5 and SavedModel, converted by `edge-agent convert` in every quantisation mode,
validated on held-out digits, checked for the Edge TPU, bundled, signed and run by the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from support import write_config
from edge_agent.cli import main
from edge_agent.delivery.bundle import read_bundle
from edge_agent.runtime import load_model, read_model_file

pytestmark = pytest.mark.tensorflow

SEED = 0
EPOCHS = 15
INT8_MAX_ACCURACY_GAP = 0.02


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Train once per session (seeded, ~2 s) and write every form of model and data the tests use."""
    root = tmp_path_factory.mktemp("digits")
    keras.utils.set_random_seed(SEED)
    data = load_digits()
    images = np.round(data.data * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.25, stratify=data.target, random_state=SEED)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train.astype(np.float32) / 255.0, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
    model.save(root / "digits.keras")
    model.save(root / "digits.h5")
    model.export(str(root / "digits_savedmodel"), verbose=False)
    np.save(root / "calibration.npy", x_train[:200])
    np.savez(root / "heldout.npz", x=x_test, y=y_test)
    for i, image in enumerate(x_train[:100]):
        write_png(root / "calibration_png" / f"{i:04d}.png", image[:, :, 0])
    for i, (image, label) in enumerate(zip(x_test, y_test)):
        write_png(root / "heldout_png" / str(label) / f"{i:04d}.png", image[:, :, 0])
        write_png(root / "heldout_flat" / f"{i:04d}.png", image[:, :, 0])  # the agent's folder source
    (root / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    return {"root": root, "y_test": y_test, "x_test": x_test}


def convert(capsys, digits, source: str, out: Path, *options) -> tuple[int, dict | None, str]:
    report_path = out.with_suffix(".json")
    status, stdout, stderr = run_cli(capsys, "convert", digits["root"] / source, "-o", out, "--report-json", report_path,
                                     *options)
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return status, report, stdout + stderr


# ---------------------------------------------------------------------------- modes and sources

@pytest.mark.parametrize("quantize, io_type", [
    ("none", None), ("float16", None), ("dynamic", None), ("int8", "uint8"), ("int8", "int8"), ("int8", "float32"),
])
def test_each_quantisation_mode_converts_validates_and_keeps_accuracy(capsys, digits, tmp_path, quantize, io_type):
    out = tmp_path / f"digits_{quantize}.tflite"
    options = ["--quantize", quantize, "--validate", digits["root"] / "heldout.npz", "--labels",
               digits["root"] / "labels.txt", "--max-accuracy-drop", "0.02"]
    if io_type:
        options += ["--io-type", io_type, "--calibration", digits["root"] / "calibration.npy"]
    status, report, output = convert(capsys, digits, "digits.keras", out, *options)
    assert status == 0, output
    assert report["passed"] is True and report["quantize"] == quantize and report["io_type"] == io_type
    assert report["accuracy_original"] > 0.9
    assert report["accuracy_original"] - report["accuracy_converted"] <= 0.02
    assert report["agreement_top1"] >= 0.97
    assert report["validation"]["samples"] == len(digits["y_test"])
    assert report["latency_ms_mean"] > 0
    assert report["size_bytes_converted"] == out.stat().st_size < report["size_bytes_original"]
    model = load_model(out)
    expected_dtype = io_type or "float32"
    assert model.input.dtype.name == expected_dtype and model.outputs[0].dtype.name == expected_dtype
    assert model.file.labels == [str(d) for d in range(10)]  # stored in the model's metadata
    if quantize == "none":
        assert report["max_abs_diff"] < 1e-4
    if quantize == "int8":
        assert report["calibration"]["samples"] == 200
        assert report["edgetpu"]["fully_mapped"] is True
    for line in ("size", "operators", "input", "output", "accuracy", "latency"):
        assert any(l.startswith(line) or l.strip().startswith(line) for l in output.splitlines()), line


def test_int8_accuracy_is_within_two_points_of_float(capsys, digits, tmp_path):
    accuracies = {}
    for quantize in ("none", "int8"):
        extra = ["--calibration", digits["root"] / "calibration_png"] if quantize == "int8" else []
        status, report, output = convert(capsys, digits, "digits.keras", tmp_path / f"{quantize}.tflite",
                                         "--quantize", quantize, "--validate", digits["root"] / "heldout_png", *extra)
        assert status == 0, output
        accuracies[quantize] = report["accuracy_converted"]
    assert accuracies["none"] > 0.9
    assert abs(accuracies["none"] - accuracies["int8"]) <= INT8_MAX_ACCURACY_GAP, accuracies


@pytest.mark.parametrize("source", ["digits.keras", "digits.h5", "digits_savedmodel"])
def test_every_source_format_converts_to_the_same_predictions(capsys, digits, tmp_path, source):
    status, report, output = convert(capsys, digits, source, tmp_path / "out.tflite", "--quantize", "int8",
                                     "--calibration", digits["root"] / "calibration_png",
                                     "--validate", digits["root"] / "heldout_png", "--labels", digits["root"] / "labels.txt")
    assert status == 0, output
    assert report["source_kind"] == {"digits.keras": "keras", "digits.h5": "h5", "digits_savedmodel": "saved_model"}[source]
    assert report["agreement_top1"] >= 0.97 and report["accuracy_converted"] > 0.9
    assert load_model(tmp_path / "out.tflite").input.shape == (1, 8, 8, 1)  # static batch of 1


def test_validation_on_images_uses_the_labels_file_for_folder_names(capsys, digits, tmp_path):
    status, report, output = convert(capsys, digits, "digits.keras", tmp_path / "m.tflite",
                                     "--validate", digits["root"] / "heldout_png", "--labels", digits["root"] / "labels.txt")
    assert status == 0, output
    status, npz_report, _ = convert(capsys, digits, "digits.keras", tmp_path / "n.tflite",
                                    "--validate", digits["root"] / "heldout.npz")
    # PNG files and the uint8 array hold the same pixels and go through the same Preprocessor
    assert report["accuracy_original"] == npz_report["accuracy_original"]


def test_labels_of_other_tasks_reach_the_bundle_but_not_the_model_metadata(capsys, digits, tmp_path):
    model, bundle = tmp_path / "raw.tflite", tmp_path / "raw.eab"
    status, report, output = convert(capsys, digits, "digits.keras", model, "--task", "raw",
                                     "--labels", digits["root"] / "labels.txt", "--resize", "center_crop")
    assert status == 0 and report["task"] == "raw", output
    assert read_model_file(model).labels is None  # only classification labels go into the .tflite
    status, _, stderr = run_cli(capsys, "bundle", "create", model, "-o", bundle)
    assert status == 0, stderr
    manifest = read_bundle(bundle).manifest
    assert manifest.task == "raw" and manifest.labels == tuple(str(d) for d in range(10))
    assert manifest.preprocessing.resize == "center_crop"  # recorded by convert, used by the board


# ---------------------------------------------------------------------------- the accuracy gate

def test_accuracy_gate_fails_with_exit_1_and_writes_nothing(capsys, digits, tmp_path):
    out = tmp_path / "gated.tflite"
    status, report, output = convert(capsys, digits, "digits.keras", out, "--validate", digits["root"] / "heldout.npz",
                                     "--max-accuracy-drop", "-1")
    assert status == 1, output
    assert not out.exists()
    assert report["passed"] is False and report["accuracy_converted"] is not None
    assert "accuracy dropped" in output and "was not written" in output


def test_a_really_worse_model_fails_the_gate(capsys, digits, tmp_path):
    """Calibrating on images 20x too dark saturates the real ones: the int8 model gets much worse."""
    dark = tmp_path / "dark.npy"
    np.save(dark, np.load(digits["root"] / "calibration.npy") // 20)
    out = tmp_path / "dark.tflite"
    status, report, output = convert(capsys, digits, "digits.keras", out, "--quantize", "int8", "--calibration", dark,
                                     "--validate", digits["root"] / "heldout.npz", "--max-accuracy-drop", "0.01")
    assert status == 1, output
    assert report["accuracy_drop"] > 0.05 and not out.exists()


# ---------------------------------------------------------------------------- bad input

def one_line_error(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("edge-agent: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_bad_inputs_give_one_clear_error_and_leave_nothing_at_out(capsys, digits, tmp_path):
    root = digits["root"]
    (tmp_path / "not_a_model.keras").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain_folder").mkdir()
    (tmp_path / "plain_folder" / "notes.txt").write_text("no model here")
    np.save(tmp_path / "big.npy", np.zeros((10, 16, 16, 1), np.uint8))
    np.save(tmp_path / "rgb.npy", np.zeros((10, 8, 8, 3), np.uint8))
    np.save(tmp_path / "float_rgb.npy", np.zeros((10, 8, 8, 3), np.float32))
    write_png(tmp_path / "tiny" / "a.png", np.zeros((4, 4), np.uint8))
    cases = [
        ((tmp_path / "not_a_model.keras",), "is not a model"),
        ((tmp_path / "plain_folder",), "not a SavedModel"),
        ((tmp_path / "missing.keras",), "does not exist"),
        ((root / "digits.keras", "--quantize", "int8"), "needs --calibration"),
        ((root / "digits.keras", "--quantize", "int8", "--calibration", tmp_path / "empty"), "holds no images"),
        ((root / "digits.keras", "--quantize", "int8", "--calibration", tmp_path / "big.npy"), "wrong size or channel count"),
        ((root / "digits.keras", "--quantize", "int8", "--calibration", tmp_path / "rgb.npy"), "wrong size or channel count"),
        ((root / "digits.keras", "--quantize", "int8", "--calibration", tmp_path / "float_rgb.npy"), "wrong size or channel count"),
        ((root / "digits.keras", "--quantize", "int8", "--calibration", tmp_path / "tiny"), "smaller than the input"),
        ((root / "digits.keras", "--labels", tmp_path / "missing.txt"), "does not exist"),
        ((root / "digits.keras", "--max-accuracy-drop", "0.01"), "needs --validate"),
    ]
    out = tmp_path / "out.tflite"
    for args, message in cases:
        status, stdout, stderr = run_cli(capsys, "convert", *args, "-o", out)
        assert status == 2, (args, stdout, stderr)
        assert message in one_line_error(stderr), (args, stderr)
        assert not out.exists(), args
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_several_signatures_need_signature_to_pick_one(capsys, tmp_path):
    class TwoWays(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def double(self, x):
            return {"y": x * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def total(self, x):
            return {"y": tf.reduce_sum(x, axis=1, keepdims=True)}

    module = TwoWays()
    path = tmp_path / "two_signatures"
    tf.saved_model.save(module, str(path), signatures={"double": module.double, "total": module.total})
    out = tmp_path / "out.tflite"
    status, _, stderr = run_cli(capsys, "convert", path, "-o", out)
    assert status == 2 and "several signatures (double, total)" in one_line_error(stderr) and "--signature" in stderr
    assert not out.exists()
    status, _, stderr = run_cli(capsys, "convert", path, "--signature", "nope", "-o", out)
    assert status == 2 and "no signature 'nope'" in stderr
    status, _, stderr = run_cli(capsys, "convert", path, "--signature", "total", "-o", out)
    assert status == 0, stderr
    model = load_model(out)
    assert model.input.shape == (1, 3)
    assert model.run(np.array([[1.0, 2.0, 3.5]], np.float32))[0].ravel().tolist() == [6.5]


# ---------------------------------------------------------------------------- Edge TPU readiness

def test_edgetpu_readiness_names_the_first_unsupported_operator(capsys, digits, tmp_path):
    keras.utils.set_random_seed(SEED)
    leaky = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3),
        keras.layers.LeakyReLU(0.1),  # int8 in TFLite, not on the Edge TPU
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    leaky.save(tmp_path / "leaky.keras")
    status, report, output = convert(capsys, {"root": tmp_path}, "leaky.keras", tmp_path / "leaky.tflite",
                                     "--quantize", "int8", "--calibration", digits["root"] / "calibration.npy")
    assert status == 0, output
    first = report["edgetpu"]["first_unsupported"]
    assert first["op"] == "LEAKY_RELU" and report["edgetpu"]["fully_mapped"] is False
    placements = {v["op"]: v["placement"] for v in report["edgetpu"]["per_operator"]}
    assert placements["LEAKY_RELU"] == "cpu" and placements["FULLY_CONNECTED"] == "cpu"  # after it
    assert "first unsupported: LEAKY_RELU" in output

    float_model = tmp_path / "float.tflite"
    assert convert(capsys, digits, "digits.keras", float_model)[0] == 0
    status, stdout, _ = run_cli(capsys, "edgetpu-check", float_model, "--json")
    readiness = json.loads(stdout)["edgetpu"]
    assert readiness["mapped_to_edgetpu"] == 0 and readiness["first_unsupported"]["op"] == "CONV_2D"
    assert "float32" in readiness["first_unsupported"]["reason"]


def test_edgetpu_flag_without_the_compiler_says_where_to_get_it(capsys, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    out = tmp_path / "m.tflite"
    status, report, output = convert(capsys, digits, "digits.keras", out, "--quantize", "int8",
                                     "--calibration", digits["root"] / "calibration.npy", "--edgetpu")
    assert status == 0 and out.exists()
    assert report["edgetpu_compiler"]["available"] is False
    assert "edgetpu_compiler is not on the PATH" in output and "edgetpu-compiler" in output


# ---------------------------------------------------------------------------- end to end

def test_convert_bundle_sign_and_classify_on_the_agent(digits, tmp_path, agent_process):
    """The documented command shapes, each as its own process, then the agent on held-out digit PNGs."""
    root = digits["root"]
    cli = [sys.executable, "-m", "edge_agent"]

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run(cli + [str(a) for a in args], capture_output=True, text=True, cwd=tmp_path, timeout=180)

    model, report_path = tmp_path / "digits_int8.tflite", tmp_path / "report.json"
    result = run("convert", root / "digits.keras", "-o", model, "--quantize", "int8", "--calibration",
                 root / "calibration_png", "--validate", root / "heldout.npz", "--max-accuracy-drop", "0.01",
                 "--report-json", report_path, "--labels", root / "labels.txt", "--task", "classification")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    for key in ("accuracy_original", "accuracy_converted", "agreement_top1", "max_abs_diff"):
        assert isinstance(report[key], float), key
    inspected = json.loads(run("inspect", model, "--json").stdout)
    assert inspected["labels"] == [str(d) for d in range(10)]

    assert run("keys", "generate", tmp_path / "ci").returncode == 0
    assert run("keys", "generate", tmp_path / "stranger").returncode == 0
    bundle = tmp_path / "digits.eab"
    result = run("bundle", "create", model, "--name", "digits", "--version", "3.1", "-o", bundle)
    assert result.returncode == 0 and "UNSIGNED" in result.stdout
    assert run("bundle", "verify", bundle, "--trusted-key", tmp_path / "ci.pub").returncode == 2
    assert run("bundle", "sign", bundle, "--key", tmp_path / "ci.key").returncode == 0
    result = run("bundle", "verify", bundle, "--trusted-key", tmp_path / "ci.pub", "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["validation"]["accuracy_converted"] == pytest.approx(report["accuracy_converted"], abs=1e-6)
    assert manifest["converter"]["tensorflow"] == tf.__version__ and manifest["converter"]["quantize"] == "int8"

    config = write_config(tmp_path / "agent.toml", textwrap.dedent(f"""
        device_id = "board-1"
        state_dir = "{tmp_path / 'state'}"
        trusted_keys = ["{tmp_path / 'ci.pub'}"]
        [pipelines.digits]
        model = "{bundle}"
        source = "{root / 'heldout_flat'}"
        sinks = ["stdout"]
    """))
    agent = agent_process("run", "--config", str(config))
    assert agent.wait(120) == 0, agent.stderr
    predictions = [json.loads(line) for line in agent.stdout.splitlines()]
    truth = digits["y_test"]
    assert len(predictions) == len(truth)
    assert {p["model"]["version"] for p in predictions} == {"3.1"}
    correct = sum(int(p["classes"][0]["label"]) == truth[p["frame"] - 1] for p in predictions)
    accuracy = correct / len(truth)
    # The agent reads the PNGs and prepares them with the same Preprocessor the validation used.
    assert accuracy == pytest.approx(report["accuracy_converted"], abs=0.005), accuracy
    assert accuracy > 0.9

    assert run("bundle", "sign", bundle, "--key", tmp_path / "stranger.key").returncode == 0
    agent = agent_process("run", "--config", str(config))
    assert agent.wait(60) == 1
    assert "not trusted here" in agent.stderr and agent.stdout == ""
    assert read_model_file(model).labels == [str(d) for d in range(10)]
