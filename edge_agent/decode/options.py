"""The pipeline's decoding options, as the decoders take them (built from the config by the service)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config import BOX_UNITS, AnchorsConfig, BoxDecoderConfig  # noqa: F401 (BOX_UNITS re-exported)


@dataclass(frozen=True)
class DecodeOptions:
    threshold: float | None = None  # None: the task's (or preset's) default
    label_thresholds: tuple[tuple[str, float], ...] = ()  # per label min_score, overriding `threshold`
    iou: float | None = None  # NMS overlap; None: 0.45 (YOLO) or the anchor preset's
    max_detections: int = 20
    top_k: int = 3
    box_units: str = "auto"  # YOLO boxes: decided from the model unless set
    anchors: AnchorsConfig | None = None  # anchor-SSD heads; None: a preset that fits the model, if any
    box_decoder: BoxDecoderConfig | None = None
