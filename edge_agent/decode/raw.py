"""Raw: a summary of every output, for models no decoder understands (always works)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_agent.decode.common import Quantization, dequantize
from edge_agent.records import Decoded

RAW_FULL_VALUES_MAX = 32  # outputs this small are published whole


def summarize_raw(outputs: Sequence[np.ndarray], names: Sequence[str], quants: Sequence[Quantization]) -> tuple[dict, ...]:
    """Each output's shape, dtype, min/max/argmax (dequantised), and all values when small."""
    summaries = []
    for array, name, quant in zip(outputs, names, quants):
        values = dequantize(array, quant)
        summary = {
            "name": name,
            "shape": list(array.shape),
            "dtype": array.dtype.name,
            "min": float(values.min()) if values.size else None,
            "max": float(values.max()) if values.size else None,
            "argmax": int(values.argmax()) if values.size else None,
        }
        if values.size <= RAW_FULL_VALUES_MAX:
            summary["values"] = [round(float(v), 6) for v in values.reshape(-1)]
        summaries.append(summary)
    return tuple(summaries)


class RawDecoder:
    def __init__(self, names: Sequence[str], quants: Sequence[Quantization]):
        self.names, self.quants = list(names), list(quants)

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        return Decoded(outputs=summarize_raw(outputs, self.names, self.quants))
