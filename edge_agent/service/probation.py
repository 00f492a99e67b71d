"""Probation: the first minutes of a newly activated model, during which a failure rolls it back.

A model fails its probation when, before `probation_s` has passed since it was activated, its
pipeline fails (an invoke or decode raised: status "failed") or the loop that invokes it stops
beating for longer than the stall limit (a hung or far too slow invoke). The limit is half of
systemd's WatchdogSec= when the watchdog is on, so the rollback comes before systemd restarts the
agent; the pipeline is then replaced, because a thread stuck in invoke() cannot be swapped under.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from edge_agent.delivery.store import StoredModel

DEFAULT_STALL_LIMIT_S = 10.0
PACED_BEATS = 3


@dataclass
class Probation:
    pipeline: str
    transfer_id: str
    model: StoredModel
    until_mono: float
    started_mono: float = field(default_factory=time.monotonic)

    def over(self, now_mono: float) -> bool:
        return now_mono >= self.until_mono


class ProbationList:
    """The pipelines on probation. An install starts an entry (job thread), the updates worker judges
    and ends them, a rollback ends one, the main loop asks whether a pipeline is on probation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Probation] = {}

    def start(self, probation: Probation) -> None:
        with self._lock:
            self._entries[probation.pipeline] = probation

    def end(self, pipeline: str, only: Probation | None = None) -> None:
        """End `pipeline`'s probation; with `only`, just when that is still the entry (a verdict on an
        old entry must not end the probation of a model installed meanwhile)."""
        with self._lock:
            if only is None or self._entries.get(pipeline) is only:
                self._entries.pop(pipeline, None)

    def entries(self) -> list[Probation]:
        with self._lock:
            return list(self._entries.values())

    def __contains__(self, pipeline: str) -> bool:
        with self._lock:
            return pipeline in self._entries


def stall_limit_s(watchdog_timeout_s: float, max_fps: float = 0.0) -> float:
    """How long the invoking loop may go without a beat during probation: half the watchdog (or the
    default), but never less than a few frame intervals of a slowly paced pipeline (a paced loop
    beats once per frame)."""
    limit = watchdog_timeout_s / 2 if watchdog_timeout_s > 0 else DEFAULT_STALL_LIMIT_S
    return max(limit, PACED_BEATS / max_fps) if max_fps > 0 else limit


def probation_failure(status: str, error: str, heartbeat_age_s: float, limit_s: float) -> str:
    """Why a pipeline on probation has failed, or "" while it is fine (pure: easy to test)."""
    if status == "failed":
        return f"the pipeline failed with the new model: {error or 'no detail'}"
    if status == "running" and heartbeat_age_s > limit_s:
        return f"no inference for {heartbeat_age_s:.1f} s (the limit during probation is {limit_s:g} s)"
    return ""
