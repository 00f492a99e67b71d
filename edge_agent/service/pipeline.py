"""One pipeline: source → preprocess → invoke → decode → interpret → sinks.

The Pipeline owns what a pipeline is (config, model, counters, sequence numbers, status) and
its stages: capture (service.capture), infer and publish (here; publish runs the interpret stage,
edge_agent.interpret, and obeys its publishing policy). A runner (service.runners) puts the stages
on threads: all on one for tiny models, three overlapping ones otherwise or when it interprets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from edge_agent.config import PipelineConfig
from edge_agent.interpret import Interpretation, Interpreter
from edge_agent.interpret.stage import state_entries
from edge_agent.records import Prediction
from edge_agent.service.active_model import ActiveModel
from edge_agent.service.capture import FrameCapture, PreparedFrame
from edge_agent.service.runners import Inferred, choose_runner
from edge_agent.service.rate import RateMeter
from edge_agent.service.source_health import SourceHealth
from edge_agent.sinks import MessageSink, Sink
from edge_agent.sources import SourceError
from edge_agent.views.tap import PipelineTap, ViewFrame

logger = logging.getLogger(__name__)

# (config, model, saved state entries) -> Interpreter
InterpreterFactory = Callable[[PipelineConfig, ActiveModel, "dict[str, str] | None"], Interpreter]


class Pipeline:
    """Runs one configured pipeline until its source ends, max_frames is reached, or stop()."""

    def __init__(self, config: PipelineConfig, device_id: str, active: ActiveModel, sinks: list[Sink], last_seq: int = 0,
                 interpreter_factory: InterpreterFactory | None = None, messages: MessageSink | None = None,
                 saved_state: dict[str, str] | None = None, view: PipelineTap | None = None):
        self.config = config
        self.name = config.name
        self.device_id = device_id
        self.sinks = sinks
        self.status = "starting"
        self.error = ""
        self.frames_processed = 0
        self.frames_published = 0
        self.sink_errors = 0
        self.first_published_mono: float | None = None
        self.inference_ms = 0.0  # the last frame's, for the state topic
        self.total_ms: float | None = None  # capture → publish of the last published prediction
        self._rate = RateMeter()
        # the views' hand-off (edge_agent.views.tap): a copy of a frame only while someone looks
        self._view = view
        # the interpret stage: built for the model in use; its messages go to `messages` (the MQTT publisher)
        self._interpreter_factory = interpreter_factory
        self._messages = messages
        self._interpreter = interpreter_factory(config, active, saved_state) if interpreter_factory else None
        self._interpreted_model = active
        self._active = active
        self.stop_event = threading.Event()
        self.capture = FrameCapture(config, self.stop_event, lambda: self._active, view)
        self.live = self.capture.live
        self._abandoned = False  # replaced while an invoke hung: whatever it still produces is dropped
        self._finished = threading.Event()
        self._seq = last_seq
        self._failing_sinks: set[str] = set()
        # a file replayed with realtime = true behaves like a camera: the newest frame wins
        self.runner = choose_runner(self, active.invoke_ms, newest_wins=self.live or config.source.realtime,
                                    output_thread=self._interpreter is not None)
        self._running_threads = len(self.runner.threads)
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
    def frames_captured(self) -> int:
        return self.capture.frames

    @property
    def frames_dropped(self) -> int:
        return self.runner.dropped

    @property
    def source_health(self) -> SourceHealth | None:
        return self.capture.health

    @property
    def finished(self) -> threading.Event:
        return self._finished

    def heartbeats(self) -> dict[str, float]:
        """The last beat of each loop still running, by name ("front_door capture", …): what
        systemd's watchdog needs fresh. Capture counts as alive while it waits for a lost camera."""
        return {f"{self.name} {stage}".rstrip(): beat.mono
                for stage, beat in self.runner.heartbeats().items() if beat.running}

    @property
    def heartbeat_mono(self) -> float:
        """The last beat of the loop that invokes (probation judges the model by it)."""
        return self.runner.invoking().mono

    def start(self) -> None:
        self.status = "running"
        for thread in self.runner.threads:
            thread.start()

    def stop(self) -> None:
        """Ask every stage to end; frames already captured are still published."""
        self.stop_event.set()

    def abandon(self) -> None:
        """Stop and publish nothing more: the pipeline was replaced while its invoke hung, and a late
        result would repeat a `seq` its successor already used."""
        self._abandoned = True
        self.stop_event.set()

    def join(self, timeout_s: float) -> bool:
        return self._finished.wait(timeout_s)

    def swap_model(self, active: ActiveModel) -> None:
        """Use `active` from the next captured frame on; frames in flight finish on the old model."""
        self._active = active

    # --- stages (driven by the runner) ---------------------------------------------
    def guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        """A stage's thread body: a bug in one stage fails the pipeline clearly instead of hanging it."""

        def run() -> None:
            try:
                loop()
            except SourceError as err:  # a file that cannot be opened: the user's to fix, no traceback
                logger.error("pipeline %s: %s", self.name, err)
                self._fail(str(err))
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
        self.stop_event.set()
        self.runner.release()

    def enough(self) -> bool:
        """max_frames reached."""
        return bool(self.config.max_frames) and self.frames_processed >= self.config.max_frames

    def infer(self, frame: PreparedFrame) -> Inferred:
        started = time.perf_counter()
        outputs = frame.active.model.run(frame.buffer)
        inference_ms = (time.perf_counter() - started) * 1000.0
        frame.active.release_buffer(frame.buffer)
        self.frames_processed += 1
        return Inferred(frame, outputs, inference_ms)

    def output_started(self) -> None:
        if self._interpreter is not None:
            self._send_interpreted(self._interpreter.start())  # ends what a killed run left open, corrects counts

    def output_idle(self) -> None:
        if self._interpreter is not None and not self._abandoned:
            self._send_interpreted(self._interpreter.tick(time.time()), shown=True)  # objects leave without frames

    def output_finished(self) -> None:
        if self._interpreter is not None and not self._abandoned:
            self._send_interpreted(self._interpreter.finish(), shown=True)  # every open event ends, counts fall to 0

    def _send_interpreted(self, result: Interpretation, shown: bool = False) -> None:
        """Publish what the interpret stage says; `shown`: also list its events in the views (events
        of frames are shown with their frame, in publish)."""
        if shown and result.events and self._view is not None:
            self._view.show(None, result.events)
        if self._messages is None or (not result.messages and result.state is None):
            return
        try:
            self._messages.send_messages(self.name, result.messages, result.state)
        except Exception:  # a sink's bug must not stop the pipeline
            self.sink_errors += 1
            logger.exception("pipeline %s: publishing events failed", self.name)

    def _interpreter_for(self, active: ActiveModel) -> Interpreter | None:
        """The interpreter for `active`: a swapped model (other task, labels, threshold) gets a new
        one, which goes on from the old one's state after the old one has ended its events."""
        if self._interpreter is None or active is self._interpreted_model:
            return self._interpreter
        self._send_interpreted(self._interpreter.finish())
        self._interpreter = self._interpreter_factory(self.config, active, state_entries(self._interpreter.snapshot()))
        self._interpreted_model = active
        self._send_interpreted(self._interpreter.start())
        return self._interpreter

    def publish(self, item: Inferred) -> None:
        """Decode, interpret, build the payload once, hand it to every sink (as the policy says)."""
        if self._abandoned:
            return
        frame = item.frame
        active = frame.active
        decoded = active.decode(item.outputs, frame.geometry)
        self.inference_ms = item.inference_ms
        interpreter = self._interpreter_for(active)
        track_ids: tuple[int | None, ...] = ()
        result = None
        if interpreter is not None:
            result = interpreter.step(frame.captured_at, decoded.tracked, decoded.classes, decoded.outputs)
            track_ids = result.track_ids
            if result.messages:
                self._send_interpreted(result)
        view = self._view
        if view is not None:
            self._show(view, item, decoded, track_ids, result.events if result is not None else ())
        if result is not None:
            if not result.publish_prediction:
                if self.first_published_mono is None:  # start-up is over once a frame went through (systemd READY)
                    self.first_published_mono = time.monotonic()
                return
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
            track_ids=track_ids,
            poses=decoded.poses,
            segments=decoded.segments,
            mask=decoded.mask,
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
        self.total_ms = prediction.total_ms
        if view is not None and view.observe_total is not None:
            view.observe_total(prediction.total_ms / 1000.0)
        if self.first_published_mono is None:
            self.first_published_mono = time.monotonic()

    def _show(self, view: PipelineTap, item: Inferred, decoded, track_ids: tuple[int | None, ...], events) -> None:
        """Hand the frame to the views when capture kept an image of it (they draw it on their own threads)."""
        if view.observe_inference is not None:
            view.observe_inference(item.inference_ms / 1000.0)
        frame = item.frame
        if frame.image is None and not events:
            return
        shown = ViewFrame(frame.image, frame.index, frame.captured_at, frame.active.task, decoded, track_ids) \
            if frame.image is not None else None
        try:
            view.show(shown, events)
        except Exception:  # the views' bug must not stop the pipeline
            self.sink_errors += 1
            logger.exception("pipeline %s: the views failed", self.name)

    # --- reporting ---------------------------------------------------------------
    def sample_rate(self, now_mono: float) -> None:
        """The agent's main loop keeps the fps window fresh (see service.rate)."""
        self._rate.sample(self.frames_processed, now_mono)

    def snapshot(self) -> dict:
        """Counters and identity for the state topic; fps over the last few seconds (service.rate)."""
        active, health = self._active, self.source_health
        return {
            "fps": round(self._rate.rate(self.frames_processed, time.monotonic()), 2),
            "status": self.status,
            "source": {"state": health.state if health else "connecting", "live": self.live,
                       "error": health.error if health else ""},
            "frames_captured": self.frames_captured,
            "frames_processed": self.frames_processed,
            "frames_published": self.frames_published,
            "frames_dropped": self.frames_dropped,
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3) if self.total_ms is not None else None,
            "model": {"name": active.ref.name, "sha256": active.ref.sha256, "version": active.ref.version},
            "task": active.task,
            "runtime": active.model.runtime,
            "delegate": active.model.delegate,
            "num_threads": active.model.num_threads,
            "error": self.error,
        }
