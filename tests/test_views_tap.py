"""The hand-off between a pipeline and its views: nothing is copied while nobody looks, a viewer
gets at most the live rate, a request is answered by a frame captured after it, the newest frame
wins, and a viewer busy drawing never holds the pipeline up. Event snapshots: an event's object is
pictured in the next frame that shows it, again only when its score beats its last picture."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from edge_agent.interpret.events import ObjectEvent
from edge_agent.records import Decoded, Detection
from edge_agent.views.tap import OWED_FOR_S, PipelineTap, ViewFrame


IMAGE = np.zeros((12, 16, 3), np.uint8)


def frame(index: int = 1, detections=(), track_ids=()) -> ViewFrame:
    return ViewFrame(IMAGE, index, 1000.0 + index, "detection", Decoded(detections=tuple(detections)), tuple(track_ids))


def event(kind: str, track_id: int, score: float = 0.8) -> ObjectEvent:
    return ObjectEvent(kind, track_id, 0, "person", score, score, (0.1, 0.1, 0.5, 0.5), (), 1000.0, 1001.0)


def test_nobody_watching_means_no_frame_is_kept():
    tap = PipelineTap("door")
    assert tap.due_mono == math.inf
    assert not tap.claim(time.monotonic())
    tap.show(None, ())  # a frame without an image: nothing happens
    assert tap.latest() is None and tap.frames_shown == 0


def test_a_live_viewer_gets_frames_at_the_live_rate_at_most():
    tap = PipelineTap("door", live_fps=5)
    with tap.watching():
        assert tap.due_mono == 0.0
        now = time.monotonic()
        assert tap.claim(now)
        assert tap.due_mono == now + 0.2
        assert not tap.claim(now + 0.1)
        assert tap.claim(now + 0.2)
        kept = sum(tap.claim(now + 1 + i / 30) for i in range(30))  # a 30 fps camera for one second
        assert kept in (5, 6)
    assert tap.due_mono == math.inf, "the last viewer left: nothing is kept any more"


def test_a_request_is_answered_by_the_next_frame_shown():
    tap = PipelineTap("door")
    tap.show(frame(1))  # an old frame (someone watched earlier)
    answers = []
    asking = threading.Thread(target=lambda: answers.append(tap.next_frame(5.0)))
    asking.start()
    assert wait_for(lambda: tap.due_mono == 0.0), "the request makes capture keep the next frame"
    assert tap.claim(time.monotonic())
    tap.show(frame(2))
    asking.join(5)
    assert answers[0].index == 2, "not the frame from before the request"
    assert tap.due_mono == math.inf


def test_a_request_without_frames_gives_up_and_returns_what_there_is():
    tap = PipelineTap("door")
    started = time.monotonic()
    assert tap.next_frame(0.3) is None
    assert 0.25 <= time.monotonic() - started < 3 and tap.due_mono == math.inf
    tap.show(frame(7))
    assert tap.next_frame(0.2).index == 7, "a lost camera: the newest frame there is"


def test_newest_wins_and_a_busy_viewer_never_holds_the_pipeline_up():
    tap = PipelineTap("door")
    drawing = threading.Event()
    release = threading.Event()

    def slow_render(f: ViewFrame) -> bytes:
        drawing.set()
        release.wait(5)  # a viewer stuck drawing (or writing to a stalled client)
        return b"jpeg"

    with tap.watching():
        tap.show(frame(1))
        viewer = threading.Thread(target=lambda: tap.jpeg(tap.wait_newer(0, 5), "live", slow_render))
        viewer.start()
        assert drawing.wait(5)
        started = time.perf_counter()
        for i in range(2, 502):
            tap.show(frame(i))
        per_frame_s = (time.perf_counter() - started) / 500
        release.set()
        viewer.join(5)
        assert per_frame_s < 0.001, f"show() took {per_frame_s * 1e6:.0f} µs while a viewer was busy"
        newest = tap.wait_newer(1, 1)
        assert newest.index == 501, "a slow viewer finds the newest frame, not a queue of old ones"
        assert tap.wait_newer(newest.seq, 0.05) is None


def test_one_encoding_per_frame_however_many_viewers():
    tap = PipelineTap("door")
    tap.show(frame(1))
    calls = []
    render = lambda f: calls.append(f.index) or b"x"  # noqa: E731
    first = tap.latest()
    assert tap.jpeg(first, "live", render) == tap.jpeg(first, "live", render) == b"x"
    tap.show(frame(2))
    tap.jpeg(tap.latest(), "live", render)
    assert calls == [1, 2]


def test_an_events_object_is_pictured_once_then_only_when_its_score_improves():
    tap = PipelineTap("door")
    pictured: list[tuple[int, int, str]] = []
    tap.on_event_frame = lambda t, f, index, label: pictured.append((f.index, index, label))
    person = Detection(0, "person", 0.8, (0.1, 0.1, 0.5, 0.5))
    car = Detection(1, "car", 0.7, (0.6, 0.6, 0.9, 0.9))
    tap.show(None, [event("new", 4)])  # the event's own frame had no image
    assert tap.due_mono == 0.0, "an event wants the next frame"
    tap.show(frame(10, [car, person], [9, 4]))
    assert pictured == [(10, 1, "person")], "found by its track id, in the next frame"
    assert tap.due_mono == math.inf
    tap.show(None, [event("update", 4, 0.7)])
    tap.show(frame(11, [Detection(0, "person", 0.7, person.box)], [4]))
    assert len(pictured) == 1, "a worse frame does not replace the picture"
    tap.show(None, [event("update", 4, 0.95)])
    tap.show(frame(12, [Detection(0, "person", 0.95, person.box)], [4]))
    assert pictured[-1] == (12, 0, "person")
    tap.show(None, [event("end", 4)])
    assert [e["type"] for e in tap.recent_events] == ["new", "update", "update", "end"]


def test_an_event_whose_object_is_not_seen_again_stops_wanting_frames():
    tap = PipelineTap("door")
    tap.on_event_frame = lambda *args: None
    tap.show(None, [event("new", 4)])
    assert tap.due_mono == 0.0
    time.sleep(OWED_FOR_S + 0.1)
    tap.show(frame(3))  # the object is gone from this frame
    assert tap.due_mono == math.inf


def test_events_do_not_ask_for_frames_when_nobody_publishes_snapshots():
    tap = PipelineTap("door")
    tap.show(None, [event("new", 4)])
    assert tap.due_mono == math.inf and len(tap.recent_events) == 1


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_latency_histograms_count_a_value_on_a_bound_in_that_bucket_and_add_up():
    from edge_agent.views.latency import LatencyHistogram

    histogram = LatencyHistogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 7.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 4), ("+Inf", 5)]
    assert histogram.sum_s == pytest.approx(7.0135)
