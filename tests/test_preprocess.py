"""Frames into input tensors: exact quantised values, colour order, gray, letterbox and centre-crop
geometry (checked by drawing a known rectangle), buffer reuse, and non-image inputs."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from support import MODELS
from edge_agent.config import PreprocessOptions
from edge_agent.preprocess import Preprocessor, PreprocessError
from edge_agent.runtime import TensorSpec, load_model


def spec(shape, dtype, scale: float = 0.0, zero_point: int = 0) -> TensorSpec:
    return TensorSpec(index=0, name="input", shape=tuple(shape), dtype=np.dtype(dtype), scale=scale, zero_point=zero_point)


def every_pixel_value_frame(channels_differ: bool = False) -> np.ndarray:
    """A 16x16 BGR frame holding each value 0..255 once (gray pixels unless channels_differ)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    if not channels_differ:
        return np.dstack([values] * 3)
    return np.dstack([values, values[::-1], values.T])


def expected_quantised(pixels: np.ndarray, mean, std, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    real = (pixels.astype(np.float64) - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return np.clip(np.round(real / scale + zero_point), info.min, info.max).astype(dtype)


QUANTISED_CASES = [
    # dtype, scale, zero point, mean, std
    (np.int8, 1 / 255, -128, (0.0,), (255.0,)),  # the demo model: pixel/255 onto -128..127
    (np.uint8, 1 / 255, 0, (0.0,), (255.0,)),  # pixel values as they are
    (np.int8, 1 / 128, 0, (127.5,), (127.5,)),  # [-1, 1] models
    (np.uint8, 0.0078125, 128, (127.5,), (127.5,)),
    (np.int8, 1 / 200, 0, (127.5,), (127.5,)),  # +-200 steps: both ends clip
    (np.uint8, 0.02, 7, (10.0,), (50.0,)),  # negative reals clip at 0
]


@pytest.mark.parametrize("dtype, scale, zero_point, mean, std", QUANTISED_CASES)
def test_quantised_gray_input_gets_exactly_the_formula(dtype, scale, zero_point, mean, std):
    preprocessor = Preprocessor(spec((1, 16, 16, 1), dtype, scale, zero_point), PreprocessOptions(mean=mean, std=std))
    out = preprocessor.new_buffer()
    frame = every_pixel_value_frame()
    preprocessor.prepare(frame, out)
    assert out.dtype == dtype and out.shape == (1, 16, 16, 1)
    expected = expected_quantised(frame[..., :1], mean, std, scale, zero_point, dtype)
    np.testing.assert_array_equal(out[0], expected)


@pytest.mark.parametrize("dtype, scale, zero_point, mean, std", QUANTISED_CASES)
def test_quantised_colour_input_gets_exactly_the_formula(dtype, scale, zero_point, mean, std):
    preprocessor = Preprocessor(spec((1, 16, 16, 3), dtype, scale, zero_point), PreprocessOptions(mean=mean, std=std))
    out = preprocessor.new_buffer()
    frame = every_pixel_value_frame(channels_differ=True)
    preprocessor.prepare(frame, out)
    np.testing.assert_array_equal(out[0], expected_quantised(frame[..., ::-1], mean, std, scale, zero_point, dtype))


def test_quantised_input_with_per_channel_mean_and_std():
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    preprocessor = Preprocessor(spec((1, 16, 16, 3), np.int8, 0.02, 3), PreprocessOptions(mean=mean, std=std))
    out = preprocessor.new_buffer()
    frame = every_pixel_value_frame(channels_differ=True)
    preprocessor.prepare(frame, out)
    np.testing.assert_array_equal(out[0], expected_quantised(frame[..., ::-1], mean, std, 0.02, 3, np.int8))


def test_float_input_with_per_channel_mean_and_std():
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # ImageNet, in RGB order
    preprocessor = Preprocessor(spec((1, 16, 16, 3), np.float32), PreprocessOptions(mean=mean, std=std))
    out = preprocessor.new_buffer()
    frame = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    preprocessor.prepare(frame, out)
    assert out.dtype == np.float32
    rgb = frame[..., ::-1].astype(np.float64)
    np.testing.assert_allclose(out[0], (rgb - np.array(mean)) / np.array(std), rtol=1e-6, atol=1e-6)
    # each channel really has its own mean: a pure red pixel is high in channel 0 only
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 2] = 255
    preprocessor.prepare(red, out)
    np.testing.assert_allclose(out[0, 0, 0], [(255 - mean[0]) / std[0], -mean[1] / std[1], -mean[2] / std[2]], rtol=1e-6)


def test_float_input_with_one_mean_and_std():
    preprocessor = Preprocessor(spec((1, 16, 16, 3), np.float32), PreprocessOptions(mean=(127.5,), std=(127.5,)))
    out = preprocessor.new_buffer()
    frame = every_pixel_value_frame(channels_differ=True)
    preprocessor.prepare(frame, out)
    np.testing.assert_allclose(out[0], (frame[..., ::-1].astype(np.float64) - 127.5) / 127.5, rtol=1e-6, atol=1e-7)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)


@pytest.mark.parametrize("color, reverse", [("rgb", True), ("bgr", False)])
def test_colour_order(color, reverse):
    preprocessor = Preprocessor(spec((1, 8, 8, 3), np.float32), PreprocessOptions(color=color))
    out = preprocessor.new_buffer()
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0] = 255  # blue in OpenCV's BGR
    preprocessor.prepare(frame, out)
    blue_channel = 2 if reverse else 0
    assert np.all(out[0, ..., blue_channel] == 1.0)
    assert np.all(np.delete(out[0], blue_channel, axis=-1) == 0.0)


@pytest.mark.parametrize("shape", [(1, 16, 16, 1), (1, 16, 16)])
def test_gray_models_get_opencv_gray(shape):
    preprocessor = Preprocessor(spec(shape, np.uint8, 1 / 255, 0), PreprocessOptions())
    out = preprocessor.new_buffer()
    frame = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    preprocessor.prepare(frame, out)
    np.testing.assert_array_equal(out.reshape(16, 16), cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))


def test_gray_model_downscales_with_inter_area():
    preprocessor = Preprocessor(spec((1, 8, 8, 1), np.uint8, 1 / 255, 0), PreprocessOptions())
    out = preprocessor.new_buffer()
    gray = np.kron(np.random.default_rng(2).integers(0, 256, (8, 8)), np.ones((20, 20))).astype(np.uint8)
    preprocessor.prepare(np.dstack([gray] * 3), out)
    # blocks of 20x20 equal pixels average back to exactly the block value
    np.testing.assert_array_equal(out.reshape(8, 8), cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA))


def find_rectangle(plane: np.ndarray) -> tuple[float, float, float, float]:
    """The normalised [ymin, xmin, ymax, xmax] of the bright pixels of a 2-D array."""
    rows = np.flatnonzero(plane.max(axis=1) > 0.5)
    cols = np.flatnonzero(plane.max(axis=0) > 0.5)
    height, width = plane.shape
    return rows[0] / height, cols[0] / width, (rows[-1] + 1) / height, (cols[-1] + 1) / width


def to_frame(box, transform):
    ay, by, ax, bx = transform
    ymin, xmin, ymax, xmax = box
    return ymin * ay + by, xmin * ax + bx, ymax * ay + by, xmax * ax + bx


def frame_with_rectangle(height: int, width: int, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, tuple]:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[y0:y1, x0:x1] = 255
    return frame, (y0 / height, x0 / width, y1 / height, x1 / width)


def test_letterbox_of_a_wide_frame_pads_top_and_bottom():
    preprocessor = Preprocessor(spec((1, 96, 96, 3), np.float32), PreprocessOptions(resize="letterbox", mean=(0.0,), std=(1.0,)))
    out = preprocessor.new_buffer()
    geometry = preprocessor.prepare(np.full((120, 160, 3), 200, np.uint8), out)
    # 160x120 scaled by 0.6 to 96x72, centred: 12 rows of padding above and below
    assert geometry.crop == (0, 120, 0, 160)
    assert geometry.region == (12, 84, 0, 96)
    assert np.all(out[0, :12] == 0) and np.all(out[0, 84:] == 0)
    assert np.all(out[0, 12:84] == 200)


def test_letterbox_of_a_tall_frame_pads_left_and_right_and_forgets_the_old_padding():
    preprocessor = Preprocessor(spec((1, 96, 96, 3), np.float32), PreprocessOptions(resize="letterbox", mean=(0.0,), std=(1.0,)))
    out = preprocessor.new_buffer()
    preprocessor.prepare(np.full((120, 160, 3), 200, np.uint8), out)
    geometry = preprocessor.prepare(np.full((160, 120, 3), 100, np.uint8), out)
    assert geometry.region == (0, 96, 12, 84)
    assert np.all(out[0, :, :12] == 0) and np.all(out[0, :, 84:] == 0), "padding from the wide frame must be cleared"
    assert np.all(out[0, :, 12:84] == 100)


@pytest.mark.parametrize(
    "frame_size, rectangle",
    [((120, 160), (30, 40, 90, 100)), ((160, 120), (20, 10, 140, 70)), ((90, 300), (10, 250, 80, 290))],
)
def test_letterbox_box_transform_maps_a_drawn_rectangle_back_to_the_frame(frame_size, rectangle):
    preprocessor = Preprocessor(spec((1, 96, 96, 1), np.float32), PreprocessOptions(resize="letterbox"))
    out = preprocessor.new_buffer()
    frame, truth = frame_with_rectangle(*frame_size, *rectangle)
    geometry = preprocessor.prepare(frame, out)
    model_box = find_rectangle(out[0, ..., 0])
    # one model pixel of slack for the resampling at the rectangle's edges
    slack = 1.5 / 96 * max(frame_size) / min(frame_size)
    np.testing.assert_allclose(to_frame(model_box, geometry.box_transform), truth, atol=slack)


@pytest.mark.parametrize(
    "frame_size, rectangle",
    [((120, 160), (30, 40, 90, 100)), ((160, 120), (40, 20, 120, 100)), ((100, 400), (20, 170, 90, 240))],
)
def test_center_crop_box_transform_maps_a_drawn_rectangle_back_to_the_frame(frame_size, rectangle):
    preprocessor = Preprocessor(spec((1, 96, 96, 1), np.float32), PreprocessOptions(resize="center_crop"))
    out = preprocessor.new_buffer()
    frame, truth = frame_with_rectangle(*frame_size, *rectangle)
    geometry = preprocessor.prepare(frame, out)
    height, width = frame_size
    side = min(height, width)
    assert geometry.crop == ((height - side) // 2, (height - side) // 2 + side, (width - side) // 2, (width - side) // 2 + side)
    assert geometry.region == (0, 96, 0, 96)
    model_box = find_rectangle(out[0, ..., 0])
    np.testing.assert_allclose(to_frame(model_box, geometry.box_transform), truth, atol=1.5 / 96)


def test_center_crop_keeps_the_middle_of_the_frame():
    preprocessor = Preprocessor(spec((1, 64, 64, 1), np.uint8, 1 / 255, 0), PreprocessOptions(resize="center_crop"))
    out = preprocessor.new_buffer()
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[:, 20:140] = 255  # exactly the 120x120 middle square is white
    preprocessor.prepare(frame, out)
    assert np.all(out == 255)


def test_stretch_maps_boxes_unchanged():
    preprocessor = Preprocessor(spec((1, 96, 96, 1), np.float32), PreprocessOptions(resize="stretch"))
    out = preprocessor.new_buffer()
    frame, truth = frame_with_rectangle(120, 160, 30, 40, 90, 100)
    geometry = preprocessor.prepare(frame, out)
    assert geometry.box_transform == (1.0, 0.0, 1.0, 0.0)
    np.testing.assert_allclose(find_rectangle(out[0, ..., 0]), truth, atol=1.5 / 96)


def internal_arrays(preprocessor: Preprocessor) -> dict[str, int]:
    """id() of every numpy array the Preprocessor keeps (attributes, and arrays inside dict attributes)."""
    found = {}
    for name, value in vars(preprocessor).items():
        if isinstance(value, np.ndarray):
            found[name] = id(value)
        elif isinstance(value, dict):
            found.update({f"{name}[{key}]": id(item) for key, item in value.items() if isinstance(item, np.ndarray)})
    return found


@pytest.mark.parametrize(
    "input_spec, options",
    [
        (spec((1, 224, 224, 3), np.float32), PreprocessOptions(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))),
        (spec((1, 224, 224, 3), np.uint8, 1 / 255, 0), PreprocessOptions(resize="letterbox", color="bgr")),
        (spec((1, 224, 224, 1), np.int8, 1 / 255, -128), PreprocessOptions(resize="center_crop")),
        (spec((1, 224, 224, 1), np.float32), PreprocessOptions(resize="letterbox")),
        (spec((1, 3, 224, 224), np.float32), PreprocessOptions(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))),
        (spec((1, 3, 224, 224), np.int8, 1 / 255, -128), PreprocessOptions(resize="letterbox", pad=114)),
        (spec((1, 1, 224, 224), np.uint8, 1 / 255, 0), PreprocessOptions(resize="center_crop")),
    ],
    ids=["float-per-channel", "uint8-letterbox", "int8-gray-crop", "float-gray-letterbox",
         "nchw-float-per-channel", "nchw-int8-letterbox-114", "nchw-gray-crop"],
)
def test_preparing_again_reuses_every_buffer(input_spec, options):
    preprocessor = Preprocessor(input_spec, options)
    out = preprocessor.new_buffer()
    frames = np.random.default_rng(3).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    first_geometry = preprocessor.prepare(frames[0], out)
    internals = internal_arrays(preprocessor)
    address = out.__array_interface__["data"][0]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        geometry = preprocessor.prepare(frames[1], out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the input alone is 50-600 kB: a per-frame array anywhere would show far above this bound
    assert peak - before < 4096, f"prepare allocated {peak - before} bytes"
    assert geometry is first_geometry
    assert out.__array_interface__["data"][0] == address
    assert internal_arrays(preprocessor) == internals, "the Preprocessor replaced one of its buffers"
    # and the second frame really was written: it is not the first frame's result
    again = preprocessor.new_buffer()
    preprocessor.prepare(frames[1], again)
    np.testing.assert_array_equal(out, again)


def test_new_buffer_matches_the_input_tensor():
    preprocessor = Preprocessor(spec((1, 8, 8, 1), np.int8, 1 / 255, -128), PreprocessOptions())
    buffer = preprocessor.new_buffer()
    assert buffer.shape == (1, 8, 8, 1) and buffer.dtype == np.int8
    assert preprocessor.new_buffer() is not buffer


def test_non_image_input_is_refused():
    with pytest.raises(PreprocessError, match="not an image") as info:
        Preprocessor(spec((1, 16), np.float32), PreprocessOptions())
    assert "[1, 16]" in str(info.value)


def test_non_image_input_of_a_real_model_is_refused():
    model = load_model(MODELS / "sensor_tiny.tflite")
    with pytest.raises(PreprocessError, match="not an image") as info:
        Preprocessor(model.input, PreprocessOptions())
    assert "'features'" in str(info.value)


def test_options_that_do_not_fit_the_input_are_refused():
    with pytest.raises(PreprocessError, match="mean has 3 values but the model takes 1"):
        Preprocessor(spec((1, 8, 8, 1), np.float32), PreprocessOptions(mean=(1.0, 2.0, 3.0)))
    with pytest.raises(PreprocessError, match="int32"):
        Preprocessor(spec((1, 8, 8, 3), np.int32), PreprocessOptions())


# --- channel-first inputs [1, C, H, W] (Ultralytics >= 8.4 exports through LiteRT) ----------------------
NCHW_CASES = [
    (np.float32, 0.0, 0, PreprocessOptions()),
    (np.float32, 0.0, 0, PreprocessOptions(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))),
    (np.int8, 1 / 255, -128, PreprocessOptions()),
    (np.uint8, 0.02, 7, PreprocessOptions(mean=(10.0, 20.0, 30.0), std=(50.0, 40.0, 30.0))),
    (np.float32, 0.0, 0, PreprocessOptions(color="bgr")),
    (np.float32, 0.0, 0, PreprocessOptions(resize="letterbox", pad=114)),
    (np.int8, 1 / 255, -128, PreprocessOptions(resize="center_crop")),
]


@pytest.mark.parametrize("dtype, scale, zero_point, options", NCHW_CASES)
def test_channel_first_input_is_the_channel_last_result_transposed(dtype, scale, zero_point, options):
    """Same frame, same options: the NCHW tensor holds exactly the NHWC values, plane by plane."""
    nhwc = Preprocessor(spec((1, 48, 64, 3), dtype, scale, zero_point), options)
    nchw = Preprocessor(spec((1, 3, 48, 64), dtype, scale, zero_point), options)
    assert nchw.layout == "nchw" and (nchw.height, nchw.width, nchw.channels) == (48, 64, 3)
    frame = np.random.default_rng(4).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    out_last, out_first = nhwc.new_buffer(), nchw.new_buffer()
    assert out_first.shape == (1, 3, 48, 64)
    assert nhwc.prepare(frame, out_last) == nchw.prepare(frame, out_first)
    np.testing.assert_array_equal(out_first[0], out_last[0].transpose(2, 0, 1))


def test_channel_first_quantised_input_gets_exactly_the_formula():
    mean, std = (127.5,), (127.5,)
    preprocessor = Preprocessor(spec((1, 3, 16, 16), np.int8, 1 / 128, 0), PreprocessOptions(mean=mean, std=std))
    out = preprocessor.new_buffer()
    frame = every_pixel_value_frame(channels_differ=True)
    preprocessor.prepare(frame, out)
    expected = expected_quantised(frame[..., ::-1], mean, std, 1 / 128, 0, np.int8)  # RGB
    np.testing.assert_array_equal(out[0], expected.transpose(2, 0, 1))
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 2] = 255
    preprocessor.prepare(red, out)
    assert np.all(out[0, 0] == 127) and np.all(out[0, 1:] == -128), "plane 0 is red in RGB order"


def test_letterbox_pad_value_fills_the_padding_and_survives_a_frame_size_change():
    preprocessor = Preprocessor(spec((1, 3, 96, 96), np.uint8, 1 / 255, 0), PreprocessOptions(resize="letterbox", pad=114))
    out = preprocessor.new_buffer()
    preprocessor.prepare(np.full((120, 160, 3), 200, np.uint8), out)
    assert np.all(out[0, :, :12] == 114) and np.all(out[0, :, 84:] == 114) and np.all(out[0, :, 12:84] == 200)
    preprocessor.prepare(np.full((160, 120, 3), 50, np.uint8), out)
    assert np.all(out[0, :, :, :12] == 114) and np.all(out[0, :, :, 12:84] == 50) and np.all(out[0, :, :12, 40] == 50)


def test_gray_channel_first_input():
    preprocessor = Preprocessor(spec((1, 1, 16, 16), np.uint8, 1 / 255, 0), PreprocessOptions())
    out = preprocessor.new_buffer()
    frame = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    preprocessor.prepare(frame, out)
    np.testing.assert_array_equal(out[0, 0], cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
