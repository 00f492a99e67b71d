"""Frame sources. Every source has `open()`, `read()` (a BGR frame, or None at the end),
`close()`, `live` and `description`; `open_source` picks the right one for a SourceSpec."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_agent.config import SOURCE_KINDS, SourceSpec
from edge_agent.sources.spec import LIVE_KINDS, SourceError, detect_kind, is_live, redact_url, source_kind


class Source(Protocol):
    live: bool
    description: str

    def open(self) -> None: ...
    def read(self) -> np.ndarray | None: ...
    def close(self) -> None: ...


def make_source(spec: SourceSpec) -> Source:
    """A Source object for `spec` (not opened yet)."""
    kind = source_kind(spec)
    if kind == "image":
        from edge_agent.sources.images import ImageSource

        return ImageSource(spec)
    if kind == "folder":
        from edge_agent.sources.images import FolderSource

        return FolderSource(spec)
    if kind == "picamera2":
        from edge_agent.sources.picamera import PicameraSource

        return PicameraSource(spec)
    from edge_agent.sources.opencv import VideoCaptureSource

    return VideoCaptureSource(spec)


__all__ = [
    "LIVE_KINDS",
    "SOURCE_KINDS",
    "Source",
    "SourceError",
    "SourceSpec",
    "detect_kind",
    "is_live",
    "make_source",
    "redact_url",
    "source_kind",
]
