"""When to retry a live source and what to log about it.

A camera that fails is retried with backoff (0.25 s doubling to 2 s, so a camera that comes
back is used again within ~2 s). The trouble is logged once when it starts and once when
frames have flowed again for STABLE_S; a source that flaps (fails again within STABLE_S of
coming back) keeps its growing backoff and is not logged again until it has stayed up.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

RECONNECT_MIN_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 2.0
STABLE_S = 5.0


class SourceHealth:
    """State of one pipeline's source: connecting, live, playing, lost, ended."""

    def __init__(self, pipeline: str, description: str, live: bool):
        self.pipeline = pipeline
        self.description = description
        self.live = live
        self.state = "connecting"
        self.error = ""
        self._delay_s = RECONNECT_MIN_DELAY_S
        self._in_trouble = False
        self._opened_mono = 0.0

    def opened(self) -> None:
        self._opened_mono = time.monotonic()

    def frame_arrived(self) -> None:
        if self.state in ("live", "playing"):
            # "back" is said once the source has stayed up STABLE_S, so a relapse can never
            # leave "back" as the last word about a source that is down
            if self._in_trouble and time.monotonic() - self._opened_mono >= STABLE_S:
                logger.info("pipeline %s: %s back", self.pipeline, self.description)
                self._in_trouble, self._delay_s = False, RECONNECT_MIN_DELAY_S
            return
        self.state, self.error = ("live" if self.live else "playing"), ""

    def failed(self, error: str) -> float:
        """Record a failure to open or read; returns how long to wait before the next attempt."""
        flapping = self._in_trouble and time.monotonic() - self._opened_mono < STABLE_S
        if not flapping:
            if self._in_trouble and self.state == "lost":
                pass  # still failing to open: said already
            else:
                logger.warning("pipeline %s: %s; retrying with backoff up to %g s", self.pipeline, error, RECONNECT_MAX_DELAY_S)
                self._delay_s = RECONNECT_MIN_DELAY_S
            self._in_trouble = True
        self.state, self.error = "lost", error
        delay_s = self._delay_s
        self._delay_s = min(self._delay_s * 2, RECONNECT_MAX_DELAY_S)
        return delay_s

    def ended(self) -> None:
        self.state = "ended"
