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
from edge_agent.service.source_health import SourceHealth
from edge_agent.sinks import Sink
from edge_agent.sources import SourceError, is_live, make_source

logger = logging.getLogger(__name__)

RESULT_QUEUE_SIZE = 4
POLL_S = 0.2
INLINE_BELOW_INVOKE_MS = 0.2


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

    def __init__(self, config: PipelineConfig, device_id: str, active: ActiveModel, sinks: list[Sink], last_seq: int = 0):
        self.config = config
        self.name = config.name
        self.device_id = device_id
        self.sinks = sinks
        self.live = is_live(config.source)
        self.status = "starting"
        self.error = ""
        self.source_health: SourceHealth | None = None
        self.frames_captured = 0
        self.frames_processed = 0
        self.frames_published = 0
        self.sink_errors = 0
        self.first_published_mono: float | None = None
        # the loop that invokes beats at least every POLL_S, even while waiting for frames: a hung
        # invoke() stops it (systemd's watchdog restarts the agent), a missing camera does not
        self.heartbeat_mono = time.monotonic()
        self._active = active
        # a file replayed with realtime = true behaves like a camera: the newest frame wins
        self._slot: FrameSlot[PreparedFrame] = FrameSlot(newest_wins=self.live or config.source.realtime)
        self._results: queue.Queue[Inferred | None] = queue.Queue(maxsize=RESULT_QUEUE_SIZE)
        self._stop = threading.Event()
        self._abandoned = False  # replaced while an invoke hung: whatever it still produces is dropped
        self._finished = threading.Event()
        self._seq = last_seq
        self._fps_mark = (0, time.monotonic())  # frames processed and when, at the last snapshot
        self._results_open = True
        self._failing_sinks: set[str] = set()
        # Overlapping stages pays only when invoke outlasts a thread hand-off; for tiny models
        # (sensor-rate use) one thread doing everything is faster.
        self.inline = active.invoke_ms < INLINE_BELOW_INVOKE_MS
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
    def last_seq(self) -> int:
        """The last prediction number published (a restarted pipeline goes on from here)."""
        return self._seq

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

    def abandon(self) -> None:
        """Stop and publish nothing more: the pipeline was replaced while its invoke hung, and a late
        result would repeat a `seq` its successor already used."""
        self._abandoned = True
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
        self._results_open = False  # the output stage may be the one that died: nobody takes results now
        while True:
            try:
                self._results.get_nowait()
            except queue.Empty:
                return

    def _capture_loop(self) -> None:
        source = make_source(self.config.source)
        health = self.source_health = SourceHealth(self.name, source.description, self.live)
        interval_s = 1.0 / self.config.max_fps if self.config.max_fps else 0.0
        next_due = 0.0
        opened = False
        index = 0
        try:
            while not self._stop.is_set():
                if self.inline:
                    self.heartbeat_mono = time.monotonic()
                if not opened:
                    try:
                        source.open()
                    except SourceError as err:
                        if not self.live:
                            logger.error("pipeline %s: %s", self.name, err)
                            self._fail(str(err))
                            return
                        self._pause(health.failed(str(err)))
                        continue
                    opened = True
                    health.opened()
                try:
                    image = source.read()
                except SourceError as err:
                    source.close()
                    opened = False
                    self._pause(health.failed(str(err)))
                    continue
                if image is None:
                    health.ended()
                    return
                health.frame_arrived()
                captured_mono = time.monotonic()
                captured_at = time.time()
                self.frames_captured += 1
                index += 1
                if interval_s:
                    if captured_mono < next_due:
                        if self.live:
                            continue  # a camera keeps its own pace: skip this frame
                        self._pause(next_due - captured_mono)
                        captured_mono, captured_at = time.monotonic(), time.time()
                    # keep the average rate, but after a stall start the spacing again from now
                    late_s = captured_mono - next_due
                    next_due = next_due + interval_s if next_due and late_s < interval_s else captured_mono + interval_s
                active = self._active
                buffer = active.acquire_buffer()
                geometry = active.preprocessor.prepare(image, buffer)
                prepared = PreparedFrame(active, buffer, geometry, index, captured_at, captured_mono)
                if self.inline:
                    self._publish(self._infer(prepared))
                    if self.config.max_frames and self.frames_processed >= self.config.max_frames:
                        return
                    continue
                leftover = self._slot.put(prepared)
                if leftover is not None:
                    leftover.active.release_buffer(leftover.buffer)
        finally:
            source.close()
            self._slot.finish()

    def _inference_loop(self) -> None:
        if self.inline:
            return
        max_frames = self.config.max_frames
        try:
            while True:
                self.heartbeat_mono = time.monotonic()
                frame = self._slot.take(POLL_S)
                if frame is None:
                    if self._slot.closed or self._stop.is_set():
                        return
                    continue
                self._hand_to_output(self._infer(frame))
                if max_frames and self.frames_processed >= max_frames:
                    self._stop.set()
                    leftover = self._slot.close()
                    if leftover is not None:
                        leftover.active.release_buffer(leftover.buffer)
                    return
        finally:
            self._hand_to_output(None)

    def _hand_to_output(self, item: Inferred | None) -> None:
        """Queue for the output stage; gives up once the pipeline has failed (it may be the output that died)."""
        while self._results_open:
            try:
                self._results.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _pause(self, seconds: float) -> None:
        """Wait (stoppable); in inline mode keep beating, since this thread is also the one that invokes."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            if self.inline:
                self.heartbeat_mono = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, POLL_S))

    def _infer(self, frame: PreparedFrame) -> Inferred:
        started = time.perf_counter()
        outputs = frame.active.model.run(frame.buffer)
        inference_ms = (time.perf_counter() - started) * 1000.0
        frame.active.release_buffer(frame.buffer)
        self.frames_processed += 1
        return Inferred(frame, outputs, inference_ms)

    def _output_loop(self) -> None:
        if self.inline:
            return
        while True:
            item = self._results.get()
            if item is None:
                return
            self._publish(item)

    def _publish(self, item: Inferred) -> None:
        """Decode, build the payload once, hand it to every sink."""
        if self._abandoned:
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
                self._failing_sinks.discard(sink.name)
            except Exception:  # a sink's bug must not stop the others
                self.sink_errors += 1
                if sink.name not in self._failing_sinks:
                    self._failing_sinks.add(sink.name)
                    logger.exception("pipeline %s: sink %s failed", self.name, sink.name)
        self.frames_published += 1
        if self.first_published_mono is None:
            self.first_published_mono = time.monotonic()

    # --- reporting ---------------------------------------------------------------
    def snapshot(self) -> dict:
        """Counters and identity for the state topic; fps is measured since the previous snapshot."""
        active, health = self._active, self.source_health
        now, processed = time.monotonic(), self.frames_processed
        frames_then, then = self._fps_mark
        self._fps_mark = (processed, now)
        return {
            "fps": round((processed - frames_then) / max(now - then, 1e-6), 2),
            "status": self.status,
            "source": {"state": health.state if health else "connecting", "live": self.live,
                       "error": health.error if health else ""},
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
