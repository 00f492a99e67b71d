"""Snapshots: annotated JPEGs of a pipeline's frames, and the MQTT side of them.

Topics (under `{prefix}/{device}/{pipeline}/`):
  snapshot/get       any message asks for one snapshot (the payload is ignored)
  snapshot           the answer: one JPEG, not retained; also every `interval_s` when set
  {label}/snapshot   retained: the best frame of the latest tracked object of that label (as Frigate
                     does): its first frame once it is an object (`new`), then a better one whenever
                     an `update` finds it with a higher score

Anyone on the broker can send requests, so they are rate-limited per pipeline: at most one answer
per REQUEST_INTERVAL_S; requests in between are answered together by the next one. A snapshot is
encoded on this module's worker thread, never on a pipeline's; while the broker is away, requested
snapshots are skipped and each label keeps only its newest picture for the reconnection.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edge_agent.config.topics import label_segment
from edge_agent.views.drawing import crop_box_for, encode_jpeg, render
from edge_agent.views.tap import PipelineTap, ViewFrame

logger = logging.getLogger(__name__)

REQUEST_INTERVAL_S = 1.0  # per pipeline: one answer to snapshot/get at most this often
LABEL_INTERVAL_S = 1.0  # per pipeline and label: one event snapshot at most this often
REQUEST_FRAME_TIMEOUT_S = 3.0  # a request waits this long for a new frame, then takes the newest there is
POLL_S = 0.2


def snapshot_jpeg(tap: PipelineTap, frame: ViewFrame, height: int | None = None,
                  focus: int | None = None) -> bytes:
    """The JPEG of `frame` as the pipeline's [snapshot] options say; `height` overrides theirs (live
    views), `focus` (a detection's index) crops to that object when `crop` is on."""
    settings = tap.settings
    options = settings.snapshot
    crop = None
    if focus is not None and options.crop:
        crop = crop_box_for(frame.decoded.detections[focus].box, *frame.image.shape[:2])
    picture = render(frame.image, frame.decoded, frame.track_ids, height=options.height if height is None else height,
                     annotate=options.annotate, zones=settings.zones, caption=settings.pipeline, ts=frame.ts, crop=crop)
    return encode_jpeg(picture, options.quality)


@dataclass
class _LabelPicture:
    jpeg: bytes
    due_mono: float  # not published before this (LABEL_INTERVAL_S after the previous one)
    sent: bool = False


class SnapshotService:
    """The worker thread that answers snapshot/get and publishes periodic and event snapshots.

    Nothing queues up: a pipeline with requests waiting is one entry in a set, and each label keeps
    only its newest event frame, so a flood of requests or events costs at most one frame per label."""

    def __init__(self, publisher: Any, taps: Callable[[], Mapping[str, PipelineTap]]):
        self._publisher = publisher
        self._taps = taps
        self._base = publisher.base_topic
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._requested: set[str] = set()  # pipelines with a request to answer
        self._next_answer: dict[str, float] = {}  # pipeline -> when its next answer may go
        self._limited_logged: set[str] = set()
        self._event_frames: dict[tuple[str, str], tuple[ViewFrame, int]] = {}  # newest per (pipeline, label)
        self._labels: dict[tuple[str, str], _LabelPicture] = {}
        self._next_periodic: dict[str, float] = {}
        self._served: frozenset[str] = frozenset()  # pipelines that publish over MQTT
        self.answered = 0
        self.limited = 0  # requests folded into another answer by the rate limit
        self.published_events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="views-snapshots", daemon=True)
        publisher.subscribe(f"{self._base}/+/snapshot/get", self._on_request)
        publisher.on_connected(self._wake.set)  # label pictures kept while offline go out

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def attach(self, tap: PipelineTap, served: bool = True) -> None:
        """Serve `tap`'s pipeline (requests, periodic and, when its [snapshot] events is on, event
        snapshots); `served` False for a pipeline that does not publish over MQTT."""
        with self._lock:
            self._served = (self._served | {tap.name}) if served else (self._served - {tap.name})
        tap.on_event_frame = self._event_frame if served and tap.settings.snapshot.events else None

    # --------------------------------------------------------------- other threads' entry points
    def _on_request(self, topic: str, payload: bytes) -> None:
        """paho's thread: note it and return. `topic` is {base}/{pipeline}/snapshot/get."""
        pipeline = topic[len(self._base) + 1:-len("/snapshot/get")]
        if pipeline not in self._served:
            logger.debug("snapshot request for %r ignored: no such pipeline publishes over MQTT", pipeline)
            return
        with self._lock:
            if pipeline in self._requested or time.monotonic() < self._next_answer.get(pipeline, 0.0):
                self.limited += 1
                if pipeline not in self._limited_logged:
                    self._limited_logged.add(pipeline)
                    logger.warning("snapshot requests for %s arrive faster than one per %.0f s: answering at most "
                                   "one per %.0f s", pipeline, REQUEST_INTERVAL_S, REQUEST_INTERVAL_S)
            self._requested.add(pipeline)
        self._wake.set()

    def _event_frame(self, tap: PipelineTap, frame: ViewFrame, index: int, label: str) -> None:
        """A pipeline's output thread: an event's object in a frame with an image (encoded on the worker)."""
        with self._lock:
            self._event_frames[(tap.name, label)] = (frame, index)
        self._wake.set()

    # --------------------------------------------------------------- the worker
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                self._encode_events()
                self._answer_requests()
                self._periodic()
                self._publish_labels()
            except Exception:  # the edge of the thread: one bad snapshot must not end the others
                logger.exception("snapshot failed")

    def _answer_requests(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._requested if now >= self._next_answer.get(p, 0.0)]
            for pipeline in due:
                self._requested.discard(pipeline)
                self._next_answer[pipeline] = now + REQUEST_INTERVAL_S
        for pipeline in due:
            self._answer(pipeline)

    def _answer(self, pipeline: str) -> None:
        tap = self._taps().get(pipeline)
        if tap is None or not self._publisher.connected.is_set():
            return  # a picture for whoever asks now: not worth keeping for later
        frame = tap.next_frame(REQUEST_FRAME_TIMEOUT_S)
        if frame is None:
            logger.warning("snapshot of %s asked for, but it has no frame yet (is its source up?)", pipeline)
            return
        jpeg = tap.jpeg(frame, "snapshot", lambda f: snapshot_jpeg(tap, f))
        self._publisher.publish(f"{self._base}/{pipeline}/snapshot", jpeg, qos=1, retain=False)
        self.answered += 1

    def _periodic(self) -> None:
        now = time.monotonic()
        for name, tap in self._taps().items():
            interval_s = tap.settings.snapshot.interval_s if name in self._served else 0.0
            if not interval_s:
                self._next_periodic.pop(name, None)
                continue
            due = self._next_periodic.setdefault(name, now + interval_s)
            if now >= due:
                self._next_periodic[name] = now + interval_s
                self._answer(name)

    def _encode_events(self) -> None:
        with self._lock:
            frames, self._event_frames = self._event_frames, {}
        for (pipeline, label), (frame, index) in frames.items():
            tap = self._taps().get(pipeline)
            if tap is None:
                continue
            jpeg = snapshot_jpeg(tap, frame, focus=index)
            with self._lock:
                previous = self._labels.get((pipeline, label))
                self._labels[(pipeline, label)] = _LabelPicture(jpeg, previous.due_mono if previous else 0.0)

    def _publish_labels(self) -> None:
        if not self._publisher.connected.is_set():
            return
        now = time.monotonic()
        with self._lock:
            ready = [(key, p) for key, p in self._labels.items() if not p.sent and now >= p.due_mono]
            for _, picture in ready:
                picture.sent = True
                picture.due_mono = now + LABEL_INTERVAL_S
        for (pipeline, label), picture in ready:
            self._publisher.publish(f"{self._base}/{pipeline}/{label_segment(label)}/snapshot", picture.jpeg,
                                    qos=1, retain=True)
            self.published_events += 1
