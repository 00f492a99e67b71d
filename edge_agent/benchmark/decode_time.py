"""Decode time per frame: the model's real outputs for a frame of the bench source, decoded again and again.

Decoding runs on the output thread beside capture and invoke, so it must stay far below the invoke
time; this measures exactly ActiveModel.decode (the decoder chosen at load, on that model's outputs).
"""

from __future__ import annotations

import time

import numpy as np

from edge_agent.config import PipelineConfig, SourceSpec
from edge_agent.service.active_model import build_active_model
from edge_agent.sources import make_source

DECODE_REPEATS = 500
DECODE_WARMUP = 20


def decode_time_ms(pipeline: PipelineConfig, repeats: int = DECODE_REPEATS) -> tuple[float, str]:
    """(median ms per decode, the layout decoded) for the first frame of the pipeline's source."""
    active = build_active_model(pipeline)
    source = make_source(SourceSpec(uri=pipeline.source.uri, loop=True))
    source.open()
    try:
        image = source.read()
    finally:
        source.close()
    if image is None:
        raise RuntimeError(f"the source {pipeline.source.uri} gave no frame to decode")
    buffer = active.acquire_buffer()
    geometry = active.preprocessor.prepare(image, buffer)
    outputs = active.model.run(buffer)
    for _ in range(DECODE_WARMUP):
        active.decode(outputs, geometry)
    times = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        active.decode(outputs, geometry)
        times[i] = time.perf_counter() - started
    return float(np.median(times) * 1000.0), active.layout.layout
