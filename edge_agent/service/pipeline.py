"""One pipeline: source → preprocess → invoke → decode → sinks, on three overlapping threads.

  capture thread   reads frames and prepares each into an input-shaped buffer
  inference thread copies the prepared buffer into the interpreter and invokes it
                   (invoke releases the GIL, so capture and output work meanwhile)
  output thread    decodes outputs, builds the JSON payload, hands it to the sinks

Live sources hand over through a newest-wins slot, so a slow model never processes a
stale frame; files hand over without loss, so a replay is a batch job.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from edge_agent.config import PipelineConfig
from edge_agent.preprocess import Geometry
from edge_agent.records import Prediction
from edge_agent.service.active_model import ActiveModel
from edge_agent.service.handoff import FrameSlot
from edge_agent.sinks import Sink
from edge_agent.sources import SourceError, is_live, make_source

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 2.0  # a camera that comes back is in use again within ~2 s
RESULT_QUEUE_SIZE = 4
POLL_S = 0.2


@dataclass
class PreparedFrame:
    active: ActiveModel
    buffer: np.ndarray
    geometry: Geometry
    index: int
    captured_at: float
    captured_mono: float


@dataclass
class Inferred:
    frame: PreparedFrame
    outputs: list[np.ndarray]
    inference_ms: float


class Pipeline:
    """Runs one configured pipeline until its source ends, max_frames is reached, or stop()."""

    def __init__(self, config: PipelineConfig, device_id: str, active: ActiveModel, sinks: list[Sink]):
        self.config = config
        self.name = config.name
        self.device_id = device_id
        self.sinks = sinks
        self.live = is_live(config.source)
        self.status = "starting"
        self.source_state = "connecting"
        self.error = ""
        self.frames_captured = 0
        self.frames_processed = 0
        self.frames_published = 0
        self.sink_errors = 0
        self.first_published_mono: float | None = None
        self._active = active
        self._slot: FrameSlot[PreparedFrame] = FrameSlot(newest_wins=self.live)
        self._results: queue.Queue[Inferred | None] = queue.Queue(maxsize=RESULT_QUEUE_SIZE)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._seq = 0
        self._fps_mark = (0, time.monotonic())  # frames processed and when, at the last snapshot
        self._threads = [
            threading.Thread(target=self._guard(self._capture_loop), name=f"{self.name}-capture", daemon=True),
            threading.Thread(target=self._guard(self._inference_loop), name=f"{self.name}-inference", daemon=True),
            threading.Thread(target=self._guard(self._output_loop), name=f"{self.name}-output", daemon=True),
        ]
        self._running_threads = len(self._threads)
        self._threads_lock = threading.Lock()

    # --- control -----------------------------------------------------------------
    @property
    def active(self) -> ActiveModel:
        return self._active

    @property
    def frames_dropped(self) -> int:
        return self._slot.dropped

    @property
    def finished(self) -> threading.Event:
        return self._finished

    def start(self) -> None:
        self.status = "running"
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask every stage to end; frames already captured are still published."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        return self._finished.wait(timeout_s)

    def swap_model(self, active: ActiveModel) -> None:
        """Use `active` from the next captured frame on; frames in flight finish on the old model."""
        self._active = active

    # --- stages ------------------------------------------------------------------
    def _guard(self, loop):
        """Run a stage; a bug in one stage fails the pipeline clearly instead of hanging it."""

        def run() -> None:
            try:
                loop()
            except Exception as err:  # the edge of a thread: report, stop the others
                logger.exception("pipeline %s: %s stage failed", self.name, loop.__name__.strip("_"))
                self._fail(f"{type(err).__name__}: {err}")
            finally:
                with self._threads_lock:
                    self._running_threads -= 1
                    if self._running_threads == 0:
                        if self.status == "running":
                            self.status = "stopped"
                        self._finished.set()

        return run

    def _fail(self, error: str) -> None:
        self.error = error
        self.status = "failed"
        self._stop.set()
        dropped = self._slot.close()
        if dropped is not None:
            dropped.active.release_buffer(dropped.buffer)

    def _capture_loop(self) -> None:
        source = make_source(self.config.source)
        interval_s = 1.0 / self.config.max_fps if self.config.max_fps else 0.0
        next_due = 0.0
        opened = False
        delay_s = RECONNECT_MIN_DELAY_S
        index = 0
        try:
            while not self._stop.is_set():
                if not opened:
                    try:
                        source.open()
                    except SourceError as err:
                        if not self.live:
                            self._fail(str(err))
                            logger.error("pipeline %s: %s", self.name, err)
                            return
                        if self.source_state != "lost":
                            logger.error("pipeline %s: %s; retrying with backoff up to %g s", self.name, err, RECONNECT_MAX_DELAY_S)
                            self.source_state, self.error = "lost", str(err)
                        self._stop.wait(delay_s)
                        delay_s = min(delay_s * 2, RECONNECT_MAX_DELAY_S)
                        continue
                    opened, delay_s = True, RECONNECT_MIN_DELAY_S
                    if self.source_state == "lost":
                        logger.info("pipeline %s: %s back", self.name, source.description)
                    self.source_state, self.error = "live" if self.live else "playing", ""
                try:
                    image = source.read()
                except SourceError as err:
                    logger.warning("pipeline %s: %s; reconnecting", self.name, err)
                    self.source_state, self.error = "lost", str(err)
                    source.close()
                    opened = False
                    continue
                if image is None:
                    self.source_state = "ended"
                    return
                captured_mono = time.monotonic()
                captured_at = time.time()
                self.frames_captured += 1
                index += 1
                if interval_s:
                    if captured_mono < next_due:
                        if self.live:
                            continue  # a camera keeps its own pace: skip this frame
                        self._stop.wait(next_due - captured_mono)
                        captured_mono, captured_at = time.monotonic(), time.time()
                    next_due = max(next_due + interval_s, captured_mono) if next_due else captured_mono + interval_s
                active = self._active
                buffer = active.acquire_buffer()
                geometry = active.preprocessor.prepare(image, buffer)
                prepared = PreparedFrame(active, buffer, geometry, index, captured_at, captured_mono)
                leftover = self._slot.put(prepared)
                if leftover is not None:
                    leftover.active.release_buffer(leftover.buffer)
        finally:
            source.close()
            self._slot.finish()

    def _inference_loop(self) -> None:
        max_frames = self.config.max_frames
        try:
            while True:
                frame = self._slot.take(POLL_S)
                if frame is None:
                    if self._slot.closed or self._stop.is_set():
                        return
                    continue
                started = time.perf_counter()
                outputs = frame.active.model.run(frame.buffer)
                inference_ms = (time.perf_counter() - started) * 1000.0
                frame.active.release_buffer(frame.buffer)
                self._results.put(Inferred(frame, outputs, inference_ms))
                self.frames_processed += 1
                if max_frames and self.frames_processed >= max_frames:
                    self._stop.set()
                    leftover = self._slot.close()
                    if leftover is not None:
                        leftover.active.release_buffer(leftover.buffer)
                    return
        finally:
            self._results.put(None)

    def _output_loop(self) -> None:
        failing: set[str] = set()
        while True:
            item = self._results.get()
            if item is None:
                return
            frame = item.frame
            active = frame.active
            decoded = active.decode(item.outputs, frame.geometry)
            self._seq += 1
            prediction = Prediction(
                device=self.device_id,
                pipeline=self.name,
                seq=self._seq,
                ts=frame.captured_at,
                model=active.ref,
                task=active.task,
                inference_ms=item.inference_ms,
                total_ms=(time.monotonic() - frame.captured_mono) * 1000.0,
                classes=decoded.classes,
                detections=decoded.detections,
                outputs=decoded.outputs,
                frame_index=frame.index,
            )
            payload = json.dumps(prediction.to_payload(), separators=(",", ":"))
            for sink in self.sinks:
                try:
                    sink.send(prediction, payload)
                    failing.discard(sink.name)
                except Exception:  # a sink's bug must not stop the others
                    self.sink_errors += 1
                    if sink.name not in failing:
                        failing.add(sink.name)
                        logger.exception("pipeline %s: sink %s failed", self.name, sink.name)
            self.frames_published += 1
            if self.first_published_mono is None:
                self.first_published_mono = time.monotonic()

    # --- reporting ---------------------------------------------------------------
    def snapshot(self) -> dict:
        """Counters and identity for the state topic; fps is measured since the previous snapshot."""
        active = self._active
        now, processed = time.monotonic(), self.frames_processed
        frames_then, then = self._fps_mark
        self._fps_mark = (processed, now)
        return {
            "fps": round((processed - frames_then) / max(now - then, 1e-6), 2),
            "status": self.status,
            "source": {"state": self.source_state, "live": self.live},
            "frames_captured": self.frames_captured,
            "frames_processed": self.frames_processed,
            "frames_published": self.frames_published,
            "frames_dropped": self.frames_dropped,
            "model": {"name": active.ref.name, "sha256": active.ref.sha256, "version": active.ref.version},
            "task": active.task,
            "runtime": active.model.runtime,
            "delegate": active.model.delegate,
            "num_threads": active.model.num_threads,
            "error": self.error,
        }
