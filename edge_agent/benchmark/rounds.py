"""Interleaved rounds: why one bench number can be trusted on a shared machine.

A VM's speed drifts by 10-20 % within minutes (a neighbour's load, frequency changes), so
measurements taken one after another compare different machines. The bench alternates short
windows instead: each round measures the interpreter alone, the agent and the plain loop back to
back, and the ratio of a round compares windows a few seconds apart. The order flips every
round (interpreter, agent, plain; then plain, agent, interpreter) so the agent always sits
between the two references and a drift within a round cancels over two rounds. The reported
ratio is the median round's, with the min-max of all rounds beside it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from edge_agent.errors import InputError

DEFAULT_ROUNDS = 5
# A window frozen agent keeps its MQTT connection only while the broker hears from it within
# 1.5 x keepalive (30 s: 45 s); two in-process windows of at most this length fit well inside.
MAX_ROUND_S = 10.0


@dataclass(frozen=True)
class Round:
    """The three rates of one round, in frames per second."""

    interpreter_fps: float
    pipeline_fps: float
    plain_loop_fps: float

    @property
    def ratio(self) -> float:
        return self.pipeline_fps / self.interpreter_fps if self.interpreter_fps else 0.0

    @property
    def speedup(self) -> float:
        return self.pipeline_fps / self.plain_loop_fps if self.plain_loop_fps else 0.0


def plan_rounds(seconds: float, rounds: int) -> tuple[int, float]:
    """(rounds, seconds per window) for `seconds` of measuring per kind in `rounds` rounds; more
    rounds when a window would pass MAX_ROUND_S."""
    if seconds <= 0:
        raise InputError(f"--seconds must be > 0, got {seconds:g}")
    if rounds < 1:
        raise InputError(f"--rounds must be at least 1, got {rounds}")
    rounds = max(rounds, math.ceil(seconds / MAX_ROUND_S))
    return rounds, seconds / rounds


def order_of(round_index: int) -> tuple[str, str, str]:
    """Which measurement comes when in round `round_index` (0-based)."""
    forward = ("interpreter", "agent", "plain")
    return forward if round_index % 2 == 0 else forward[::-1]


def median_round(rounds: list[Round]) -> Round:
    """The round whose ratio is the median (the lower middle one for an even count), so the
    reported ratio is exactly that round's pipeline_fps / interpreter_fps."""
    if not rounds:
        raise ValueError("no rounds were measured")
    return sorted(rounds, key=lambda r: r.ratio)[(len(rounds) - 1) // 2]


def summarise(rounds: list[Round]) -> dict:
    """The JSON keys bench reports about the rounds."""
    middle = median_round(rounds)
    ratios = [r.ratio for r in rounds]
    speedups = [r.speedup for r in rounds]
    return {
        "interpreter_fps": round(middle.interpreter_fps, 1),
        "pipeline_fps": round(middle.pipeline_fps, 1),
        "ratio": round(middle.ratio, 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "plain_loop_fps": round(statistics.median(r.plain_loop_fps for r in rounds), 1),
        "speedup_over_plain_loop": round(statistics.median(speedups), 3),
        "speedup_min": round(min(speedups), 3),
        "speedup_max": round(max(speedups), 3),
        "rounds": len(rounds),
        "per_round": [
            {"interpreter_fps": round(r.interpreter_fps, 1), "pipeline_fps": round(r.pipeline_fps, 1),
             "plain_loop_fps": round(r.plain_loop_fps, 1), "ratio": round(r.ratio, 3)}
            for r in rounds
        ],
    }
