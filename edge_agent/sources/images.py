"""Still-image sources: one image file, or a folder of images in name order."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SourceSpec
from edge_agent.sources.spec import IMAGE_SUFFIXES, SourceError

logger = logging.getLogger(__name__)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to BGR uint8, or raise SourceError."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not path.exists():
            raise SourceError(f"image {path} does not exist: check the source path")
        raise SourceError(f"{path} is not an image OpenCV can decode")
    return image


class ImageSource:
    """One image, decoded once; repeated while `loop` is set."""

    live = False

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.description = f"image {spec.uri}"
        self._image: np.ndarray | None = None
        self._done = False

    def open(self) -> None:
        self._image = read_image(Path(self.spec.uri))
        self._done = False

    def read(self) -> np.ndarray | None:
        if self._done:
            return None
        self._done = not self.spec.loop
        return self._image

    def close(self) -> None:
        self._image = None


class FolderSource:
    """Every image in a folder, sorted by name; files that do not decode are skipped with a warning."""

    live = False

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.description = f"folder {spec.uri}"
        self._paths: list[Path] = []
        self._position = 0
        self._warned: set[Path] = set()

    def open(self) -> None:
        folder = Path(self.spec.uri)
        if not folder.is_dir():
            raise SourceError(f"folder {folder} does not exist: check the source path")
        self._paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._paths:
            raise SourceError(f"folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._position = 0

    def read(self) -> np.ndarray | None:
        skipped_in_a_row = 0
        while skipped_in_a_row <= len(self._paths):
            if self._position >= len(self._paths):
                if not self.spec.loop:
                    return None
                self._position = 0
            path = self._paths[self._position]
            self._position += 1
            try:
                return read_image(path)
            except SourceError as err:
                skipped_in_a_row += 1
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("skipping %s", err)
        raise SourceError(f"no image in folder {self.spec.uri} could be decoded")

    def close(self) -> None:
        self._paths = []
