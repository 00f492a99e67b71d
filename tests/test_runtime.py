"""The real interpreters (LiteRT and tflite-runtime) on the committed models: shapes, accuracy on
the demo video, agreement between runtimes, delegate fallback and every load error."""

from __future__ import annotations

import ctypes
import logging

import cv2
import numpy as np
import pytest

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_TRUTH, DEMO_VIDEO, MODELS, RUNTIMES
from edge_agent.config import DelegateSpec, PreprocessOptions
from edge_agent.preprocess import Preprocessor
from edge_agent.runtime import DelegateError, ModelFileError, ModelLoadError, load_model

DEMO_FRAMES = 200
INT8_PROBABILITY_STEP = 1 / 256  # the demo model's output scale


def edgetpu_runtime_installed() -> bool:
    try:
        ctypes.CDLL("libedgetpu.so.1")
    except OSError:
        return False
    return True


needs_no_edgetpu = pytest.mark.skipif(edgetpu_runtime_installed(), reason="these tests expect a machine without libedgetpu")


@pytest.fixture(scope="module")
def demo_frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(DEMO_VIDEO))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame.copy())
    capture.release()
    assert len(frames) == DEMO_FRAMES == len(DEMO_TRUTH)
    return frames


def reference_input(frame: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """What the demo model was trained on, computed without the Preprocessor: gray, INTER_AREA to 8x8, /255."""
    gray = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (8, 8), interpolation=cv2.INTER_AREA)
    real = gray.astype(np.float64) / 255.0
    if dtype == np.float32:
        return real.astype(np.float32).reshape(1, 8, 8, 1)
    info = np.iinfo(dtype)
    return np.clip(np.round(real / scale + zero_point), info.min, info.max).astype(dtype).reshape(1, 8, 8, 1)


def run_demo_video(model, frames: list[np.ndarray]) -> np.ndarray:
    """Every frame through Preprocessor + LoadedModel.run; returns the stacked [N, 10] outputs."""
    preprocessor = Preprocessor(model.input, PreprocessOptions())
    buffer = preprocessor.new_buffer()
    outputs = []
    for frame in frames:
        preprocessor.prepare(frame, buffer)
        expected = reference_input(frame, model.input.scale, model.input.zero_point, model.input.dtype)
        # the Preprocessor resizes before converting to gray: one step of rounding may differ
        np.testing.assert_allclose(buffer.astype(np.float64), expected.astype(np.float64), atol=1.0 if model.input.quantized else 1 / 255)
        (output,) = model.run(buffer)
        outputs.append(output.reshape(-1).copy())
    return np.stack(outputs)


def accuracy(outputs: np.ndarray) -> float:
    return float(np.mean([str(top) == truth for top, truth in zip(outputs.argmax(axis=1), DEMO_TRUTH)]))


def dequantized(model, outputs: np.ndarray) -> np.ndarray:
    spec = model.outputs[0]
    if not spec.quantized:
        return outputs.astype(np.float64)
    return (outputs.astype(np.float64) - spec.zero_point) * spec.scale


@pytest.fixture(scope="module")
def demo_results(demo_frames) -> dict[str, tuple]:
    """runtime -> (model, outputs) for the int8 demo model, computed once for the module."""
    results = {}
    for runtime in RUNTIMES:
        model = load_model(DEMO_MODEL, runtime=runtime)
        results[runtime] = (model, run_demo_video(model, demo_frames))
    return results


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_demo_model_loads_with_its_runtime_and_quantised_shapes(runtime):
    model = load_model(DEMO_MODEL, runtime=runtime)
    assert model.runtime == runtime and model.describe()["runtime"] == runtime
    assert model.delegate == "none"
    assert len(model.inputs) == 1 and len(model.outputs) == 1
    spec = model.input
    assert spec.shape == (1, 8, 8, 1) and spec.dtype == np.int8 and spec.quantized
    # the model takes pixel/255: scale 1/255, zero point -128 maps 0..255 onto -128..127
    assert spec.scale == pytest.approx(1 / 255, rel=1e-6) and spec.zero_point == -128
    output = model.outputs[0]
    assert output.shape == (1, 10) and output.dtype == np.int8 and output.quantized
    assert output.scale == pytest.approx(INT8_PROBABILITY_STEP, rel=1e-6) and output.zero_point == -128
    assert model.guess_task() == "classification"
    assert model.name == "digits_int8" and len(model.sha256) == 64


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_demo_video_is_classified_at_least_90_percent_right(runtime, demo_results):
    model, outputs = demo_results[runtime]
    assert outputs.shape == (DEMO_FRAMES, 10) and outputs.dtype == np.int8
    assert accuracy(outputs) >= 0.90, f"{runtime}: {accuracy(outputs):.1%} of the demo frames right"
    probabilities = dequantized(model, outputs)
    # softmax output: each row sums to ~1 (256 quantisation steps, rounding per class)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=10 * INT8_PROBABILITY_STEP)


def test_both_runtimes_agree_on_the_demo_video(demo_results):
    (model_a, out_a), (model_b, out_b) = (demo_results[r] for r in RUNTIMES)
    agreement = float(np.mean(out_a.argmax(axis=1) == out_b.argmax(axis=1)))
    assert agreement >= 0.98, f"the runtimes agree on only {agreement:.1%} of top-1 answers"
    # different kernels (XNNPACK vs built-in) may differ by a few quantisation steps, not more
    np.testing.assert_allclose(dequantized(model_a, out_a), dequantized(model_b, out_b), atol=0.1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_float32_demo_model_agrees_with_int8(runtime, demo_frames, demo_results):
    int8_model, int8_outputs = demo_results[runtime]
    float_model = load_model(DEMO_FLOAT_MODEL, runtime=runtime)
    assert float_model.input.shape == (1, 8, 8, 1) and float_model.input.dtype == np.float32
    assert not float_model.input.quantized and float_model.outputs[0].dtype == np.float32
    float_outputs = run_demo_video(float_model, demo_frames)
    agreement = float(np.mean(float_outputs.argmax(axis=1) == int8_outputs.argmax(axis=1)))
    assert agreement >= 0.95, f"float32 and int8 agree on only {agreement:.1%}"
    assert accuracy(float_outputs) >= 0.90
    difference = np.abs(float_outputs - dequantized(int8_model, int8_outputs))
    assert difference.mean() < 0.01 and difference.max() < 0.25


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_num_threads_is_recorded(runtime):
    model = load_model(DEMO_MODEL, runtime=runtime, num_threads=3)
    assert model.num_threads == 3 and model.describe()["num_threads"] == 3
    default = load_model(DEMO_MODEL, runtime=runtime)
    assert default.num_threads >= 1


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["ssd_tiny", "ssd_tiny_int8"])
def test_ssd_models_load_and_detect_in_both_runtimes(runtime, name):
    model = load_model(MODELS / f"{name}.tflite", runtime=runtime)
    assert model.runtime == runtime and model.guess_task() == "detection"
    assert model.input.shape == (1, 64, 64, 3)
    assert sorted(spec.shape for spec in model.outputs) == [(1,), (1, 10), (1, 10), (1, 10, 4)]
    image = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    if model.input.dtype == np.uint8:
        image = np.round(image / model.input.scale + model.input.zero_point).astype(np.uint8)
    outputs = {model.file.detection_output_roles[spec.index]: array for spec, array in zip(model.outputs, model.run(image))}
    # the README: uniform noise gives 10 detections scored ~0.55-0.9, classes 0..2
    assert int(outputs["count"][0]) == 10
    assert 0.5 < outputs["scores"].max() <= 1.0 and np.all(np.isin(outputs["classes"], [0, 1, 2]))


@pytest.mark.parametrize("name", ["ssd_tiny", "ssd_tiny_int8"])
def test_ssd_outputs_agree_between_runtimes(name):
    rng = np.random.default_rng(5)
    images = {np.float32: rng.random((1, 64, 64, 3), dtype=np.float32), np.uint8: rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)}
    results = []
    for runtime in RUNTIMES:
        model = load_model(MODELS / f"{name}.tflite", runtime=runtime)
        outputs = model.run(images[model.input.dtype.type])
        roles = {model.file.detection_output_roles[spec.index]: array for spec, array in zip(model.outputs, outputs)}
        count = int(roles["count"][0])
        results.append(np.column_stack([roles["scores"][0, :count], roles["classes"][0, :count], roles["boxes"][0, :count]]))
    first, second = results
    assert len(first) == len(second) > 0
    # int8 kernels may differ by a quantisation step, which can swap two detections with close
    # scores: pair each detection with the nearest one of the other runtime instead of by rank
    distances = np.abs(first[:, None, :] - second[None, :, :]).max(axis=2)
    nearest = distances.argmin(axis=1)
    assert sorted(nearest) == list(range(len(second))), "the runtimes found different detections"
    np.testing.assert_allclose(first, second[nearest], atol=0.02)


def test_auto_runtime_prefers_litert():
    assert load_model(DEMO_MODEL, runtime="auto").runtime == "litert"
    assert load_model(DEMO_MODEL).runtime == "litert"


@needs_no_edgetpu
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_edgetpu_falls_back_to_cpu_with_one_warning(runtime, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=DelegateSpec(kind="edgetpu"), on_delegate_failure="cpu")
    assert model.delegate == "none" and model.describe()["delegate"] == "none"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "libedgetpu" in message and "on the CPU instead" in message and "digits_int8" in message
    # the fallback model still works
    (output,) = model.run(np.zeros(model.input.shape, model.input.dtype))
    assert output.shape == (1, 10)


@needs_no_edgetpu
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_edgetpu_with_fail_raises_with_the_fix(runtime, caplog):
    with pytest.raises(DelegateError) as info:
        load_model(DEMO_MODEL, runtime=runtime, delegate=DelegateSpec(kind="edgetpu", device="usb:0"), on_delegate_failure="fail")
    message = str(info.value)
    assert "libedgetpu" in message and "usb:0" in message
    assert "Fix:" in message and "libedgetpu1-std" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a failure that raises must not also warn"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_external_delegate_that_does_not_exist_names_the_path(runtime, tmp_path):
    path = tmp_path / "no_such_delegate.so"
    with pytest.raises(DelegateError) as info:
        load_model(DEMO_MODEL, runtime=runtime, delegate=DelegateSpec(kind="external", path=str(path)), on_delegate_failure="fail")
    assert str(path) in str(info.value) and "Fix:" in str(info.value)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_external_delegate_that_is_not_a_delegate_is_a_delegate_error(runtime, caplog):
    # libm exists on every Linux but exports no tflite_plugin_create_delegate
    spec = DelegateSpec(kind="external", path="libm.so.6")
    with pytest.raises(DelegateError, match="not a TFLite delegate"):
        load_model(DEMO_MODEL, runtime=runtime, delegate=spec, on_delegate_failure="fail")
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=spec, on_delegate_failure="cpu")
    assert model.delegate == "none"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_edgetpu_model_without_delegate_names_the_custom_op_and_fix(runtime):
    with pytest.raises(ModelLoadError) as info:
        load_model(MODELS / "edgetpu_fake.tflite", runtime=runtime)
    message = str(info.value)
    assert "edgetpu-custom-op" in message and "edgetpu_fake.tflite" in message
    assert 'delegate = "edgetpu"' in message


@needs_no_edgetpu
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_edgetpu_model_without_edgetpu_hardware_cannot_fall_back(runtime):
    with pytest.raises(DelegateError) as info:
        load_model(MODELS / "edgetpu_fake.tflite", runtime=runtime, delegate=DelegateSpec(kind="edgetpu"), on_delegate_failure="cpu")
    message = str(info.value)
    assert "cannot fall back to the CPU" in message and "libedgetpu" in message and "edgetpu_fake.tflite" in message


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["not_a_model", "truncated"])
def test_broken_files_are_model_file_errors(runtime, name):
    path = MODELS / f"{name}.tflite"
    with pytest.raises(ModelFileError) as info:
        load_model(path, runtime=runtime)
    message = str(info.value)
    assert str(path) in message and "not a valid TFLite model" in message and "re-export" in message


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_empty_and_directory_paths_are_model_file_errors(runtime, tmp_path):
    missing = tmp_path / "missing.tflite"
    with pytest.raises(ModelFileError, match="does not exist") as info:
        load_model(missing, runtime=runtime)
    assert str(missing) in str(info.value)
    with pytest.raises(ModelFileError, match="is a directory") as info:
        load_model(tmp_path, runtime=runtime)
    assert str(tmp_path) in str(info.value)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not a valid TFLite model"):
        load_model(empty, runtime=runtime)
