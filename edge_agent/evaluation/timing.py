"""Run an ActiveModel on one image at a time as a pipeline does, timing each stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.service.active_model import ActiveModel, Decoded

STAGES = ("preprocess", "inference", "decode", "total")


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float

    def to_dict(self) -> dict:
        return {"p50": round(self.p50_ms, 4), "p95": round(self.p95_ms, 4), "mean": round(self.mean_ms, 4)}


@dataclass
class TimedRunner:
    """Prepare (the agent's Preprocessor), invoke (its runtime) and decode (its decoder) each input."""

    active: ActiveModel
    _times_ms: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})

    def run_frame(self, frame: np.ndarray) -> Decoded:
        """One BGR frame, as a camera would deliver it."""
        started = time.perf_counter()
        buffer = self.active.acquire_buffer()
        geometry = self.active.preprocessor.prepare(frame, buffer)
        return self._invoke_and_decode(buffer, geometry, started)

    def run_tensor(self, tensor: np.ndarray) -> Decoded:
        """An input already shaped and typed like the model's input (a prepared .npz sample)."""
        started = time.perf_counter()
        buffer = self.active.acquire_buffer()
        np.copyto(buffer, tensor, casting="unsafe")
        preprocessor = self.active.preprocessor
        return self._invoke_and_decode(buffer, preprocessor.geometry_for(preprocessor.height, preprocessor.width), started)

    def _invoke_and_decode(self, buffer: np.ndarray, geometry, started: float) -> Decoded:
        prepared = time.perf_counter()
        outputs = self.active.model.run(buffer)
        invoked = time.perf_counter()
        self.active.release_buffer(buffer)
        decoded = self.active.decode(outputs, geometry)
        done = time.perf_counter()
        for stage, seconds in (("preprocess", prepared - started), ("inference", invoked - prepared),
                               ("decode", done - invoked), ("total", done - started)):
            self._times_ms[stage].append(seconds * 1000.0)
        return decoded

    def latency(self) -> dict[str, Latency]:
        """Median, 95th percentile and mean per stage over every input run so far."""
        return {stage: Latency(float(np.percentile(times, 50)), float(np.percentile(times, 95)), float(np.mean(times)))
                for stage, times in self._times_ms.items() if times}
