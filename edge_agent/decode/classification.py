"""Classification: top-k classes of one score vector."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_agent.decode.common import Quantization, dequantize, label_for
from edge_agent.records import ClassScore, Decoded


def classify(
    output: np.ndarray,
    quant: Quantization,
    labels: Sequence[str] | None,
    top_k: int = 3,
    threshold: float = 0.0,
) -> tuple[ClassScore, ...]:
    """Top-k classes above `threshold`, best first, with dequantised scores."""
    scores = dequantize(output, quant).reshape(-1)
    k = min(max(top_k, 1), scores.size)
    best = np.argpartition(scores, -k)[-k:] if k < scores.size else np.arange(scores.size)
    best = best[np.argsort(scores[best])[::-1]]
    return tuple(
        ClassScore(int(i), label_for(labels, int(i)), float(scores[i])) for i in best if scores[i] >= threshold
    )


class ClassificationDecoder:
    def __init__(self, quant: Quantization, labels: Sequence[str] | None, top_k: int, threshold: float):
        self.quant, self.labels, self.top_k, self.threshold = quant, labels, top_k, threshold

    def __call__(self, outputs: Sequence[np.ndarray], box_transform: tuple[float, float, float, float]) -> Decoded:
        return Decoded(classes=classify(outputs[0], self.quant, self.labels, self.top_k, self.threshold))
