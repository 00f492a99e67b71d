"""When a pipeline publishes a prediction: `[pipelines.NAME.publish] predictions = ...`.

  every_frame  every processed frame (the default, as before)
  on_change    when the frame's signature differs from the last published one (the tracked objects
               present, or the top label), and at least every heartbeat_s as a keep-alive
  interval     the newest frame once interval_s has passed since the last published one
  off          never (events, counts and labels still go out)

Times are the frames' own timestamps. The policy applies to every sink of the pipeline.
"""

from __future__ import annotations

from typing import Hashable

TIME_EPSILON_S = 1e-6  # timestamps are floats: 1000.3 - 1000.0 is 0.2999...; that is 0.3


class PredictionPolicy:
    def __init__(self, mode: str = "every_frame", interval_s: float = 1.0, heartbeat_s: float = 0.0):
        self.mode = mode
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self._last_ts: float | None = None
        self._last_signature: Hashable = object()

    @property
    def needs_signature(self) -> bool:
        return self.mode == "on_change"

    def wants(self, ts: float, signature: Hashable = None) -> bool:
        """Whether the frame at `ts` is published; remembers it when it is."""
        mode = self.mode
        if mode == "every_frame":
            return True
        if mode == "off":
            return False
        last = self._last_ts
        if mode == "interval":
            due = last is None or ts - last >= self.interval_s - TIME_EPSILON_S
        else:
            due = signature != self._last_signature or (
                bool(self.heartbeat_s) and last is not None and ts - last >= self.heartbeat_s - TIME_EPSILON_S)
        if due:
            self._last_ts, self._last_signature = ts, signature
        return due
