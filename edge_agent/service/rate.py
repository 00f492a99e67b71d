"""Frames per second over the last few seconds, readable from any thread without disturbing others.

The state message used to measure fps "since the previous state message", so every extra reader
(the HTTP server's /api/state, /metrics, the status page) would have shortened the state topic's
window. A RateMeter keeps a few (time, count) samples instead: reading it changes nothing another
reader sees.
"""

from __future__ import annotations

import threading
import time
from collections import deque

WINDOW_S = 5.0
SPACING_S = 1.0


class RateMeter:
    """Rate of a growing count over the last WINDOW_S seconds (a little more, at SPACING_S steps)."""

    def __init__(self, count: int = 0, now_mono: float | None = None):
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic() if now_mono is None else now_mono, count)])

    def sample(self, count: int, now_mono: float) -> None:
        """Remember `count` at `now_mono` (at most one sample per SPACING_S is kept)."""
        with self._lock:
            samples = self._samples
            if now_mono - samples[-1][0] >= SPACING_S:
                samples.append((now_mono, count))
            while len(samples) > 2 and now_mono - samples[1][0] >= WINDOW_S:
                samples.popleft()  # the oldest kept is the newest one at least WINDOW_S old

    def rate(self, count: int, now_mono: float) -> float:
        self.sample(count, now_mono)
        with self._lock:
            then, before = self._samples[0]
        elapsed = now_mono - then
        return (count - before) / elapsed if elapsed > 0.05 else 0.0
