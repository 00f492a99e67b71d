"""Both pipeline runners in process, with real sources (videos written with OpenCV, the local MJPEG
camera) and real models: the one-thread runner for the tiny demo model, the three-thread runner for
a model of a few ms per invoke. Predictions go to a list sink, a real Sink that keeps what it gets."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from crafted_models import FIXED_COST_ITERATIONS, slow_on_contrast_model
from support import DEMO_FLOAT_MODEL, DEMO_MODEL, numbered_frames, wait_until, write_video
from edge_agent.config import PipelineConfig, SourceSpec
from edge_agent.service.active_model import build_active_model
from edge_agent.service.pipeline import Pipeline
from edge_agent.service.runners import InlineRunner, StagedRunner

HANG_S = 60.0  # bounds only catch hangs


class ListSink:
    name = "list"

    def __init__(self):
        self.payloads: list[dict] = []
        self._lock = threading.Lock()

    def send(self, prediction, payload_json: str) -> None:
        with self._lock:
            self.payloads.append(json.loads(payload_json))

    def close(self, timeout_s: float) -> None:
        pass

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.payloads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model paths by runner: inline (the demo model) and staged (a fixed cost of a few ms), two of each for swaps."""
    folder = tmp_path_factory.mktemp("runner-models")
    staged = folder / "fixed_cost.tflite"
    staged.write_bytes(slow_on_contrast_model(0, FIXED_COST_ITERATIONS))
    staged_other = folder / "fixed_cost_other.tflite"
    staged_other.write_bytes(slow_on_contrast_model(0, FIXED_COST_ITERATIONS + 1))
    return {"inline": (str(DEMO_MODEL), str(DEMO_FLOAT_MODEL)), "staged": (str(staged), str(staged_other))}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("runner-video") / "numbered.avi", numbered_frames(40))


def make_pipeline(uri: str, model: str, sinks, **options) -> Pipeline:
    loop = options.pop("loop", False)
    config = PipelineConfig(name="cam", source=SourceSpec(uri=uri, loop=loop), model=model, task="classification", **options)
    return Pipeline(config, "runner-test", build_active_model(config), sinks)


RUNNER_CLASSES = {"inline": InlineRunner, "staged": StagedRunner}


@pytest.mark.parametrize("mode", ["inline", "staged"])
def test_a_file_is_replayed_whole_and_in_order_on_as_many_threads_as_the_runner_needs(mode, models, video):
    sink = ListSink()
    pipeline = make_pipeline(str(video), models[mode][0], [sink])
    assert isinstance(pipeline.runner, RUNNER_CLASSES[mode])
    before = {t.name for t in threading.enumerate()}
    pipeline.start()
    started = {t.name for t in threading.enumerate()} - before
    assert pipeline.join(HANG_S) and pipeline.status == "stopped", pipeline.error
    expected_threads = {"inline": {"cam-pipeline"}, "staged": {"cam-capture", "cam-inference", "cam-output"}}[mode]
    assert started <= expected_threads and len(pipeline.runner.threads) == len(expected_threads)
    payloads = sink.received()
    assert [p["seq"] for p in payloads] == list(range(1, 41))
    assert [p["frame"] for p in payloads] == list(range(1, 41)), "a file loses no frame"
    snapshot = pipeline.snapshot()
    assert (snapshot["frames_captured"], snapshot["frames_processed"], snapshot["frames_published"]) == (40, 40, 40)
    assert snapshot["frames_dropped"] == 0 and snapshot["source"]["state"] == "ended"
    assert pipeline.heartbeats() == {}, "ended loops are not watched"


@pytest.mark.parametrize("mode", ["inline", "staged"])
def test_max_frames_stops_a_looping_source_exactly(mode, models, video):
    sink = ListSink()
    pipeline = make_pipeline(str(video), models[mode][0], [sink], loop=True, max_frames=55)
    pipeline.start()
    assert pipeline.join(HANG_S) and pipeline.status == "stopped", pipeline.error
    assert [p["seq"] for p in sink.received()] == list(range(1, 56))
    assert pipeline.frames_processed == 55


@pytest.mark.parametrize("mode", ["inline", "staged"])
def test_a_model_swapped_between_frames_leaves_no_gap_in_seq(mode, models, video):
    sink = ListSink()
    first, second = models[mode]
    pipeline = make_pipeline(str(video), first, [sink], loop=True, max_fps=200)
    pipeline.start()
    try:
        assert wait_until(lambda: len(sink.received()) >= 10, HANG_S)
        old_sha = sink.received()[0]["model"]["sha256"]
        pipeline.swap_model(build_active_model(dataclasses.replace(pipeline.config, model=second)))
        assert wait_until(lambda: sink.received()[-1]["model"]["sha256"] != old_sha, HANG_S)
        assert wait_until(lambda: len(sink.received()) >= 30, HANG_S)
    finally:
        pipeline.stop()
        assert pipeline.join(HANG_S)
    payloads = sink.received()
    assert [p["seq"] for p in payloads] == list(range(1, len(payloads) + 1))
    shas = [p["model"]["sha256"] for p in payloads]
    switch = shas.index(next(sha for sha in shas if sha != old_sha))
    assert set(shas[:switch]) == {old_sha} and old_sha not in shas[switch:], "frames in flight finish on the old model, then only the new one"


def test_a_model_slower_than_the_camera_processes_the_newest_frame_and_counts_the_rest(tmp_path, mjpeg_server):
    slow = tmp_path / "slow.tflite"
    slow.write_bytes(slow_on_contrast_model(0, FIXED_COST_ITERATIONS * 15))  # ~50 ms per invoke, camera at 30 fps
    sink = ListSink()
    pipeline = make_pipeline(mjpeg_server.url, str(slow), [sink])
    assert isinstance(pipeline.runner, StagedRunner)
    pipeline.start()
    try:
        assert wait_until(lambda: len(sink.received()) >= 15, HANG_S)
        assert set(pipeline.heartbeats()) == {"cam capture", "cam inference"}
        assert all(time.monotonic() - beat < 5 for beat in pipeline.heartbeats().values())
    finally:
        pipeline.stop()
        assert pipeline.join(HANG_S)
    payloads = sink.received()
    assert [p["seq"] for p in payloads] == list(range(1, len(payloads) + 1))
    frames = [p["frame"] for p in payloads]
    assert frames == sorted(frames) and max(b - a for a, b in zip(frames, frames[1:])) > 1, "stale frames are skipped"
    assert pipeline.frames_dropped > 0
    # every captured frame was processed, replaced by a newer one (counted), or still waiting at stop
    assert pipeline.frames_captured - pipeline.frames_processed - pipeline.frames_dropped in (0, 1)
