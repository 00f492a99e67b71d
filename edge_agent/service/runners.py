"""How a pipeline's stages are spread over threads: one thread, or three that overlap.

Both runners drive the same stages (service.pipeline.Pipeline provides them): capture (with
preprocessing), infer, publish. They differ only in threads and hand-offs:

  InlineRunner   one thread does capture → invoke → publish for each frame in turn. For models
                 under INLINE_BELOW_INVOKE_MS per invoke, where a hand-off between threads costs
                 more than overlapping gains (sensor-rate models).
  StagedRunner   capture thread    reads frames and prepares each into an input-shaped buffer
                 inference thread  invokes (invoke releases the GIL, so the others work meanwhile)
                 output thread     decodes outputs, interprets them (edge_agent.interpret), builds
                                   the payload, hands it to the sinks; a pipeline that interprets
                                   always gets this runner
                 Live sources hand over through a newest-wins slot, so a slow model never
                 processes a stale frame; files hand over without loss, so a replay is a batch job.

Each runner names the heartbeats that must stay fresh while it runs (the watchdog and probation
read them): a loop that waits for work still beats; one stuck in read(), invoke() or a sink does not.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edge_agent.service.capture import FrameCapture, Heartbeat, PreparedFrame
from edge_agent.service.handoff import FrameSlot

INLINE_BELOW_INVOKE_MS = 0.2
RESULT_QUEUE_SIZE = 4
POLL_S = 0.2


@dataclass
class Inferred:
    frame: PreparedFrame
    outputs: list[np.ndarray]
    inference_ms: float


class Stages(Protocol):
    """What a runner drives (the Pipeline)."""

    name: str
    capture: FrameCapture
    stop_event: threading.Event

    def infer(self, frame: PreparedFrame) -> Inferred: ...
    def publish(self, item: Inferred) -> None: ...
    def output_started(self) -> None: ...  # the output thread begins (before the first result)
    def output_idle(self) -> None: ...  # no result for POLL_S (time still passes for the interpret stage)
    def output_finished(self) -> None: ...  # the output thread ends (after the last result)
    def enough(self) -> bool: ...  # max_frames reached
    def guarded(self, loop: Callable[[], None]) -> Callable[[], None]: ...


class Runner(Protocol):
    threads: list[threading.Thread]
    description: str

    def heartbeats(self) -> dict[str, Heartbeat]: ...
    def invoking(self) -> Heartbeat: ...
    @property
    def dropped(self) -> int: ...
    def release(self) -> None: ...


def choose_runner(stages: Stages, invoke_ms: float, newest_wins: bool, output_thread: bool = False) -> Runner:
    """One thread for tiny models, three overlapping threads otherwise, or when the output side must
    have its own thread (the interpret stage never runs on the thread that invokes)."""
    if invoke_ms < INLINE_BELOW_INVOKE_MS and not output_thread:
        return InlineRunner(stages)
    return StagedRunner(stages, newest_wins)


class InlineRunner:
    """Capture, invoke and publish each frame in turn on one thread."""

    description = "one thread (capture, invoke, publish in turn)"

    def __init__(self, stages: Stages):
        self._stages = stages
        self.threads = [threading.Thread(target=stages.guarded(self._inline_loop), name=f"{stages.name}-pipeline", daemon=True)]

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {"": self._stages.capture.heartbeat}  # one loop does everything

    def invoking(self) -> Heartbeat:
        return self._stages.capture.heartbeat

    @property
    def dropped(self) -> int:
        return 0  # nothing waits between stages, so nothing is replaced

    def release(self) -> None:
        pass  # no hand-off holds a frame

    def _inline_loop(self) -> None:
        stages = self._stages
        infer, publish, enough = stages.infer, stages.publish, stages.enough

        def deliver(frame: PreparedFrame) -> bool:
            publish(infer(frame))
            return not enough()

        stages.capture.run(deliver)


class StagedRunner:
    """Capture, inference and output on three threads, overlapping."""

    description = "three threads (capture, inference, output overlap)"

    def __init__(self, stages: Stages, newest_wins: bool):
        self._stages = stages
        self._slot: FrameSlot[PreparedFrame] = FrameSlot(newest_wins=newest_wins)
        self._results: queue.Queue[Inferred | None] = queue.Queue(maxsize=RESULT_QUEUE_SIZE)
        self._results_open = True
        # beats at least every POLL_S, even while waiting for frames: a hung invoke() stops it
        self._inference_beat = Heartbeat()
        name = stages.name
        self.threads = [
            threading.Thread(target=stages.guarded(self._capture_loop), name=f"{name}-capture", daemon=True),
            threading.Thread(target=stages.guarded(self._inference_loop), name=f"{name}-inference", daemon=True),
            threading.Thread(target=stages.guarded(self._output_loop), name=f"{name}-output", daemon=True),
        ]

    def heartbeats(self) -> dict[str, Heartbeat]:
        return {"capture": self._stages.capture.heartbeat, "inference": self._inference_beat}

    def invoking(self) -> Heartbeat:
        return self._inference_beat

    @property
    def dropped(self) -> int:
        return self._slot.dropped

    def release(self) -> None:
        """The pipeline failed: recycle the waiting frame, let nobody wait on a stage that died."""
        self._recycle(self._slot.close())
        self._results_open = False  # the output stage may be the one that died: nobody takes results now
        while True:
            try:
                self._results.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _recycle(frame: PreparedFrame | None) -> None:
        if frame is not None:
            frame.active.release_buffer(frame.buffer)

    def _capture_loop(self) -> None:
        try:
            self._stages.capture.run(self._hand_to_inference)
        finally:
            self._slot.finish()

    def _hand_to_inference(self, frame: PreparedFrame) -> bool:
        self._recycle(self._slot.put(frame))
        return True

    def _inference_loop(self) -> None:
        stages, slot, beat = self._stages, self._slot, self._inference_beat
        try:
            while True:
                beat.beat()
                frame = slot.take(POLL_S)
                if frame is None:
                    if slot.closed or stages.stop_event.is_set():
                        return
                    continue
                self._hand_to_output(stages.infer(frame))
                if stages.enough():
                    stages.stop_event.set()
                    self._recycle(slot.close())
                    return
        finally:
            beat.stop()
            self._hand_to_output(None)

    def _hand_to_output(self, item: Inferred | None) -> None:
        """Queue for the output stage; gives up once the pipeline has failed (it may be the output that died)."""
        while self._results_open:
            try:
                self._results.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _output_loop(self) -> None:
        stages = self._stages
        publish = stages.publish
        stages.output_started()
        try:
            while True:
                try:
                    item = self._results.get(timeout=POLL_S)
                except queue.Empty:
                    if not self._results_open:  # the pipeline failed: no end of results will come
                        return
                    stages.output_idle()
                    continue
                if item is None:
                    return
                publish(item)
        finally:
            stages.output_finished()
